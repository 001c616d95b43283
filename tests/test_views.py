"""Training views (cnntrain.data.views): each crop policy, chosen once from the recipe,
gives exactly the view that the public helpers compute for the same generator."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from cnntrain.data.transforms import (center_crop, random_color_jitter, random_resized_params, resize_shorter,
                                      shorter_side_size)
from cnntrain.data.views import CROPS, TrainTransform, View
from cnntrain.recipe import AugmentSection, DataSection

SIZE, EVAL_RESIZE = 24, 30


def augment(crop: str, hflip: bool = True, jitter: float = 0.4) -> AugmentSection:
    return AugmentSection(crop=crop, pad=4, resize=30, scale_range=[26, 50], scale=[0.1, 1.0], ratio=[0.75, 4 / 3],
                          hflip=hflip, color_jitter=[jitter] * 3)


def randint(high: int, g: torch.Generator) -> int:
    return int(torch.randint(0, high, (), generator=g).item())


def reference(img: torch.Tensor, aug: AugmentSection, g: torch.Generator) -> torch.Tensor:
    """The view written out from the public helpers: crop draws, then the flip, then jitter."""
    h, w = img.shape[-2:]
    if aug.crop == "resized":
        top, left, ch, cw = random_resized_params(h, w, aug.scale, aug.ratio, g)
        out = TF.resized_crop(img, top, left, ch, cw, [SIZE, SIZE], antialias=True)
    elif aug.crop in ("random", "scale_jitter"):
        if aug.crop == "random":
            side = max(aug.resize, SIZE)
        else:
            lo, hi = max(aug.scale_range[0], SIZE), max(aug.scale_range[1], SIZE)
            side = lo + randint(hi - lo + 1, g)
        rh, rw = shorter_side_size(h, w, side)
        top, left = randint(rh - SIZE + 1, g), randint(rw - SIZE + 1, g)
        out = resize_shorter(img, side)[..., top:top + SIZE, left:left + SIZE]
    elif aug.crop == "pad":
        top, left = randint(2 * aug.pad + 1, g), randint(2 * aug.pad + 1, g)
        out = TF.pad(center_crop(resize_shorter(img, SIZE), SIZE), [aug.pad])[..., top:top + SIZE, left:left + SIZE]
    else:
        out = center_crop(resize_shorter(img, EVAL_RESIZE), SIZE)
    if aug.hflip and torch.rand((), generator=g) < 0.5:
        out = out.flip(-1)
    if any(aug.color_jitter):
        out = random_color_jitter(out, aug.color_jitter, g)
    return out


@pytest.mark.parametrize("crop", sorted(CROPS))
@pytest.mark.parametrize("hflip, jitter", [(True, 0.4), (False, 0.0)])
def test_each_policy_gives_the_reference_view(crop, hflip, jitter):
    aug = augment(crop, hflip, jitter)
    tf = TrainTransform(DataSection(train_size=SIZE, eval_resize=EVAL_RESIZE), aug)
    for hw in [(40, 61), (57, 33)]:
        img = torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(hw[0]))
        for seed in range(6):
            g, g_ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            out, ref = tf(img, g), reference(img, aug, g_ref)
            assert out.shape == ref.shape == (3, SIZE, SIZE) and out.dtype == torch.uint8
            assert torch.equal(out, ref), (crop, hw, seed)
            # the same number of draws: both generators are left in the same state
            assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=g_ref)), (crop, hw, seed)


def test_flip_and_jitter_are_drawn_after_the_crop():
    tf = TrainTransform(DataSection(train_size=SIZE), augment("pad"))
    view = tf.draw(40, 40, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    top, left = randint(9, g), randint(9, g)
    flip = bool(torch.rand((), generator=g) < 0.5)
    order = tuple(torch.randperm(3, generator=g).tolist())
    assert (view.top, view.left, view.flip) == (top, left, flip) and view.jitter[0] == order


@pytest.mark.parametrize("crop", sorted(CROPS))
def test_the_policy_is_chosen_once_and_draws_views(crop, monkeypatch):
    assert len(set(CROPS.values())) == len(CROPS) == 5  # one class per policy
    made = []
    policy = CROPS[crop]
    monkeypatch.setitem(CROPS, crop, lambda *a: made.append(crop) or policy(*a))
    tf = TrainTransform(DataSection(train_size=SIZE, eval_resize=EVAL_RESIZE), augment(crop))
    img = torch.zeros(3, 40, 50, dtype=torch.uint8)
    for seed in range(5):
        view = tf.draw(40, 50, torch.Generator().manual_seed(seed))
        assert isinstance(view, View) and isinstance(view.flip, bool)
        assert tf.apply(img, view).shape == (3, SIZE, SIZE)
        tf(img, torch.Generator().manual_seed(seed))
    assert made == [crop] and type(tf.crop) is policy


def test_views_are_typed_and_only_resized_crops_read_a_region():
    g = torch.Generator().manual_seed(0)
    resized = TrainTransform(DataSection(train_size=SIZE), augment("resized"))
    view = resized.draw(120, 90, g)
    assert resized.region(view) == view.box and view.box[2:] == (view.height, view.width) != (0, 0)
    moved = resized.on_region(view, (17, 23))
    assert moved.box == (0, 0, 17, 23) and (moved.flip, moved.jitter) == (view.flip, view.jitter)
    assert resized.support(view, (120, 90)) is None
    jitter = TrainTransform(DataSection(train_size=SIZE), augment("scale_jitter"))
    view = jitter.draw(120, 90, g)
    assert 26 <= view.side <= 50 and jitter.region(view) is None
    assert jitter.max_reduction(120, 90, view) == 90 / view.side
    y0, x0, bh, bw = jitter.support(view, (120, 90))
    assert 0 <= y0 and 0 <= x0 and y0 + bh <= 120 and x0 + bw <= 90
    with pytest.raises(AttributeError):
        view.top = 1  # frozen
