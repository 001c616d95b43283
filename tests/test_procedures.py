"""The papers' procedures: named recipe values, augmentations on known images, EMA."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cnntrain.data.transforms import EvalTransform, random_color_jitter
from cnntrain.data.views import TrainTransform
from cnntrain.engine.ema import WeightAverage
from cnntrain.engine.evaluate import protocol_name
from cnntrain.engine.optim import LRSchedule, build_optimizer
from cnntrain.engine.train import training_loss
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import AugmentSection, DataSection, ScheduleSection, load_recipe


def test_alexnet_values():
    r = load_recipe("alexnet")
    assert (r.optim.batch_size, r.optim.momentum, r.optim.weight_decay, r.optim.lr) == (128, 0.9, 5e-4, 0.01)
    assert (r.schedule.name, r.schedule.factor, r.train.epochs) == ("plateau", 0.1, 90)
    assert (r.augment.crop, r.augment.resize, r.data.train_size, r.augment.hflip) == ("random", 256, 224, True)
    assert r.augment.pca_lighting == 0.1 and r.eval.crops == 10


@pytest.mark.parametrize("name", ["vgg16-c", "vgg16", "vgg19"])
def test_vgg_values(name):
    r = load_recipe(name)
    assert (r.optim.batch_size, r.optim.momentum, r.optim.weight_decay, r.optim.lr) == (256, 0.9, 5e-4, 0.01)
    assert r.model.dropout == 0.5 and r.schedule.name == "plateau" and r.schedule.factor == 0.1
    assert r.augment.crop == "scale_jitter" and r.augment.scale_range == [256, 512]
    assert r.eval.scales == [256, 384, 512]


def test_googlenet_values():
    r = load_recipe("googlenet")
    assert r.optim.momentum == 0.9
    assert (r.schedule.name, r.schedule.factor, r.schedule.step_size) == ("step", 0.96, 8)
    assert r.train.aux_weight == 0.3 and r.train.ema_decay == 0.9999
    assert r.augment.crop == "resized" and r.augment.scale == [0.08, 1.0]
    assert r.augment.ratio == pytest.approx([3 / 4, 4 / 3]) and any(r.augment.color_jitter)


def test_resnet_values():
    r = load_recipe("resnet50")
    assert (r.optim.batch_size, r.optim.momentum, r.optim.weight_decay, r.optim.lr) == (256, 0.9, 1e-4, 0.1)
    assert r.schedule.name == "plateau" and r.schedule.factor == 0.1 and r.model.dropout is None
    assert r.augment.crop == "scale_jitter" and r.augment.scale_range == [256, 480] and r.eval.crops == 10
    c = load_recipe("resnet110")
    assert (c.optim.batch_size, c.optim.lr, c.schedule.unit, c.schedule.milestones, c.train.iterations) == (
        128, 0.1, "iteration", [32000, 48000], 64000)
    assert (c.schedule.warmup, c.schedule.warmup_factor) == (400, 0.1)


def test_successor_values():
    d = load_recipe("densenet-bc-100")
    assert (d.optim.batch_size, d.train.epochs, d.schedule.milestones, d.optim.nesterov) == (64, 300, [150, 225], True)
    w = load_recipe("wrn-28-10")
    assert (w.schedule.milestones, w.schedule.factor, w.optim.weight_decay, w.model.dropout) == (
        [60, 120, 160], 0.2, 5e-4, 0.3)
    s = load_recipe("resnet110-stochastic-depth")
    assert (s.train.epochs, s.schedule.milestones, s.model.options["p_last"]) == (500, [250, 375], 0.5)


def test_new_keys_default_to_old_behaviour():
    r = load_recipe("resnet20")
    assert r.train.aux_weight == 0.3 and r.train.ema_decay == 0.0 and r.eval.scales == []
    assert r.augment.color_jitter == [0.0, 0.0, 0.0]
    with pytest.raises(CnnTrainError, match="ema_decay"):
        load_recipe("resnet20", ["train.ema_decay=1.5"])
    with pytest.raises(CnnTrainError, match="scale_range"):
        load_recipe("vgg16", ["augment.scale_range=[512, 256]"])


# ------------------------------------------------------------------ augmentations

def ramp(h: int, w: int) -> torch.Tensor:
    """uint8 (3, h, w) image whose red channel is the column index: crops show where they came from."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[0] = torch.arange(w, dtype=torch.uint8)[None, :]
    img[1] = torch.arange(h, dtype=torch.uint8)[:, None]
    img[2] = 100
    return img


def test_scale_jitter_resizes_to_a_side_in_range(monkeypatch):
    import cnntrain.data.views as T
    sides = []
    real = T.resize_shorter
    monkeypatch.setattr(T, "resize_shorter", lambda img, s: (sides.append(s), real(img, s))[1])
    tf = TrainTransform(DataSection(train_size=16), AugmentSection(crop="scale_jitter", scale_range=[20, 40]))
    torch.manual_seed(0)
    for _ in range(200):
        out = tf(ramp(50, 100))
        assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    assert min(sides) == 20 and max(sides) == 40 and len(set(sides)) > 10  # uniform over the integers


def test_random_resized_crop_shape_and_content():
    tf = TrainTransform(DataSection(train_size=16), AugmentSection(crop="resized", scale=[0.5, 0.5], ratio=[1.0, 1.0]))
    torch.manual_seed(0)
    img = ramp(64, 64)
    out = tf(img)
    assert out.shape == (3, 16, 16)
    # half the area, square: a 45x45 box, so the column ramp spans about 45 of 64 columns
    span = int(out[0, 0, -1]) - int(out[0, 0, 0])
    assert 38 <= span <= 46


def test_color_jitter_changes_brightness_within_range():
    torch.manual_seed(0)
    img = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    seen = set()
    for _ in range(50):
        out = random_color_jitter(img, [0.4, 0.0, 0.0])
        assert out.shape == img.shape and out.dtype == torch.uint8
        v = int(out[0, 0, 0])
        assert 60 <= v <= 140 and (out == v).all()  # uniform grey stays uniform: brightness only
        seen.add(v)
    assert len(seen) > 10
    assert torch.equal(random_color_jitter(img, [0.0, 0.0, 0.0]), img)
    grey = ramp(8, 8)
    sat = random_color_jitter(grey, [0.0, 0.0, 0.9])
    assert not torch.equal(sat, grey)


def test_multi_scale_eval_stacks_views_per_scale():
    data = DataSection(train_size=16, eval_resize=16)
    img = ramp(32, 64)
    views = EvalTransform(data, crops=1, scales=[16, 24, 32])(img)
    assert views.shape == (3, 3, 16, 16)
    # the centre crop at a larger scale covers a smaller part of the image: narrower column span
    spans = [int(v[0, 0, -1]) - int(v[0, 0, 0]) for v in views]
    assert spans[0] > spans[1] > spans[2]
    assert EvalTransform(data, crops=10, scales=[16, 24]).__call__(img).shape == (20, 3, 16, 16)
    assert EvalTransform(data, crops=1)(img).shape == (3, 16, 16)  # default unchanged
    assert protocol_name(1, [256, 384, 512]) == "1-crop at scales 256/384/512"
    assert protocol_name(10, []) == "10-crop"


# ------------------------------------------------------------------ engine pieces

def test_ema_follows_the_decay_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    avg.update(model)
    expected = 0.9 * w0 + 0.1 * (w0 + 1.0)
    assert torch.allclose(avg.module[0].weight, expected)
    assert not torch.allclose(avg.module[0].weight, model[0].weight)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    avg.update(model)
    assert torch.allclose(avg.module[0].weight, 0.9 * expected + 0.1 * (w0 + 2.0))
    assert avg.module[1].num_batches_tracked == model[1].num_batches_tracked  # integer buffers copied
    other = WeightAverage(model, decay=0.9)
    other.load_state_dict(avg.state_dict())
    assert torch.equal(other.module[0].weight, avg.module[0].weight) and other.updates == 2


def test_aux_weight():
    y = torch.tensor([0, 1])
    main, aux = torch.randn(2, 3), torch.randn(2, 3)
    base = training_loss(main, y, 0.0)
    ce = torch.nn.functional.cross_entropy(aux, y)
    assert torch.allclose(training_loss((main, aux), y, 0.0, 0.5), base + 0.5 * ce)
    assert torch.allclose(training_loss((main, aux), y, 0.0), base + 0.3 * ce)


def test_poly_schedule_and_rmsprop():
    s = LRSchedule(ScheduleSection(name="poly", unit="iteration", power=1.0), 0.04, 10, 100)
    assert s.lr_at(0) == pytest.approx(0.04) and s.lr_at(50) == pytest.approx(0.02) and s.lr_at(100) == 0
    r = load_recipe("inception-v4")
    opt = build_optimizer(nn.Linear(2, 2), r.optim)
    assert isinstance(opt, torch.optim.RMSprop)
    assert opt.defaults["alpha"] == 0.9 and opt.defaults["eps"] == 1.0
    g = LRSchedule(load_recipe("googlenet").schedule, 1.0, 10, 10_000)
    assert g.lr_at(79) == pytest.approx(1.0) and g.lr_at(80) == pytest.approx(0.96)


def test_fit_with_ema_then_eval_at_several_scales(tmp_path, capsys):
    import json

    from tests.conftest import run_cli
    out = tmp_path / "run"
    sets = ["data.synthetic_train_samples=4", "data.synthetic_val_samples=2", "optim.batch_size=2",
            "train.iterations=2", "data.num_classes=10", "train.ema_decay=0.5"]
    args = ["fit", "--recipe", "resnet20", "--data", "synthetic", "--out", out, "--no-progress", "--workers", "0",
            "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert last["ema"]["updates"] == 2
    key = "fc.weight" if "fc.weight" in last["model"] else next(k for k in last["model"] if k.endswith("weight"))
    assert torch.equal(best["model"][key], last["ema"]["model"][key])  # best.pt holds the averaged weights
    assert not torch.equal(last["ema"]["model"][key], last["model"][key])
    code, text, err = run_cli(["eval", out / "best.pt", "--data", "synthetic", "--workers", "0", "--device", "cpu",
                               "--scales", "32,40", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["scales"] == [32, 40] and result["protocol"] == "1-crop at scales 32/40"
    assert "1-crop at scales 32/40" in text and "paper's numbers left out: they are for cifar10" in text
    assert run_cli(["eval", out / "best.pt", "--scales", "a,b"], capsys)[0] != 0
