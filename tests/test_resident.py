"""Device-resident data (data.on_device): the same pixels as the per-sample path for the
same drawn view, the same view distribution, DDP shards and exact resume from the
sampler; and train.compile in fit."""
from __future__ import annotations

import pytest
import torch

from cnntrain.data import build_data, resident
from cnntrain.data.sampler import EpochSampler
from cnntrain.data.views import TrainTransform, View
from cnntrain.engine.checkpoint import load_checkpoint
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import load_recipe
from tests.conftest import run_cli

FAST = ["--set", "schedule.name=constant", "--workers", "0", "--no-progress"]


def loader_for(recipe_name: str, data: str | None, batch: int = 16, rank: int = 0, world: int = 1,
               overrides: list[str] | None = None):
    recipe = load_recipe(recipe_name, overrides or [])
    bundle = build_data(recipe, data, train=True)
    return recipe, bundle, resident.resident_loader(recipe, bundle.train, torch.device("cpu"), batch, rank, world,
                                                    seed=3)


@pytest.mark.parametrize("recipe_name,data", [("resnet20", "cifar"), ("lenet5", None)])
def test_batches_equal_the_per_sample_views_for_the_same_draws(recipe_name, data, cifar10_root):
    recipe, bundle, batches = loader_for(recipe_name, str(cifar10_root) if data else None)
    batches.sampler.set_epoch(2)
    index, top, left, flip = batches.epoch_draws()
    images, labels, skipped = next(iter(batches))
    assert skipped == [] and images.dtype == torch.uint8 and len(images) == 16
    tf: TrainTransform = bundle.train.transform
    for i in range(16):
        img, label = bundle.train.images[index[i]], int(bundle.train.labels[index[i]])
        view = View(top=int(top[i]), left=int(left[i]), flip=bool(flip[i]))
        assert torch.equal(images[i], tf.apply(img, view)), i
        assert int(labels[i]) == label
    if recipe.augment.hflip:  # both branches exercised (LeNet-5's digits are not flipped)
        assert flip[:16].any() and not flip[:16].all()
    assert len(set(top[:16].tolist())) > 1


def test_view_statistics_match_the_per_sample_path():
    """Other draws, same distribution: crop offsets uniform over 0..2*pad, flips at 1/2."""
    recipe = load_recipe("resnet20")
    sampler = EpochSampler(9000, seed=1)
    tf = TrainTransform(recipe.data, recipe.augment)
    ours = resident.ResidentBatches(torch.zeros(1, 3, 40, 40, dtype=torch.uint8), torch.zeros(1, dtype=torch.long),
                                    resident.resident_view(recipe), 512, sampler)
    _, top, left, flip = ours.epoch_draws()
    _, seeds = sampler.order()
    views = [tf.draw(32, 32, torch.Generator().manual_seed(int(s))) for s in seeds[:3000]]
    theirs_top = torch.tensor([v.top for v in views])
    theirs_flip = torch.tensor([v.flip for v in views], dtype=torch.float)
    for drawn, n in ((top, 9000), (left, 9000), (theirs_top, 3000)):
        freq = torch.bincount(drawn, minlength=9).float() / n
        assert len(freq) == 9 and (freq - 1 / 9).abs().max() < 0.03, freq
    assert abs(flip.float().mean() - 0.5) < 0.02 and abs(theirs_flip.mean() - 0.5) < 0.03
    assert float((top - left).abs().float().mean()) > 2  # offsets drawn independently


def concat(batches) -> tuple[torch.Tensor, torch.Tensor]:
    parts = list(batches)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def test_ddp_shards_and_exact_resume(cifar10_root):
    _, _, whole = loader_for("resnet20", str(cifar10_root), batch=8)
    whole.sampler.set_epoch(1)
    images, labels = concat(whole)
    assert len(images) == 40  # 5 x 8 CIFAR training images
    # Two ranks take alternate positions of the same epoch (the padded permutation).
    for rank in (0, 1):
        _, _, part = loader_for("resnet20", str(cifar10_root), batch=8, rank=rank, world=2)
        part.sampler.set_epoch(1)
        got, got_labels = concat(part)
        assert len(part) == 3 and torch.equal(got, images[rank::2]) and torch.equal(got_labels, labels[rank::2])
    # Restarting at sample 16 of the epoch gives the uninterrupted run's batches from there on.
    whole.sampler.set_epoch(1, start=16)
    resumed, _ = concat(whole)
    assert len(whole) == 3 and torch.equal(resumed, images[16:])


def test_the_crop_policy_states_the_resident_base():
    """crop = "none" holds the evaluation view (resized to eval_resize, centre-cropped):
    the policy class says so, and the batches equal its per-sample views."""
    over = ["augment.crop=none", "data.eval_resize=40", "augment.hflip=true"]
    recipe, bundle, batches = loader_for("lenet5", None, overrides=over)
    assert resident.resident_view(recipe) == resident.ResidentView(32, 0, True, 40)
    assert resident.resident_view(load_recipe("resnet20")) == resident.ResidentView(32, 4, True, 32)
    batches.sampler.set_epoch(1)
    index, _, _, flip = batches.epoch_draws()
    images = next(iter(batches))[0]
    tf: TrainTransform = bundle.train.transform
    for i in range(len(images)):
        assert torch.equal(images[i], tf.apply(bundle.train.images[index[i]], View(flip=bool(flip[i])))), i


def test_on_device_on_refuses_what_it_cannot_hold(folder_root, cifar10_root):
    with pytest.raises(CnnTrainError, match="augment.crop"):
        resident.use_resident(load_recipe("resnet20", ["data.on_device=on", "augment.crop=resized"]),
                              build_data(load_recipe("resnet20"), str(cifar10_root)).train, 3, torch.device("cpu"))
    with pytest.raises(CnnTrainError, match="shorter side augment.resize"):  # same-size images, but resized first
        resident.use_resident(load_recipe("resnet20", ["data.on_device=on", "augment.crop=random"]),
                              build_data(load_recipe("resnet20"), str(cifar10_root)).train, 3, torch.device("cpu"))
    recipe = load_recipe("resnet18", ["data.on_device=on"])
    with pytest.raises(CnnTrainError, match="folder"):
        resident.use_resident(recipe, build_data(recipe, str(folder_root)).train, 3, torch.device("cpu"))
    assert not resident.use_resident(load_recipe("resnet20", ["data.on_device=off"]),
                                     build_data(load_recipe("resnet20"), str(cifar10_root)).train, 3,
                                     torch.device("cpu"))


def test_fit_resumed_mid_epoch_ends_bitwise_equal(tmp_path, capsys):
    args = ["fit", "--recipe", "lenet5", "--set", "train.iterations=12", "--set", "train.save_every_steps=5", *FAST]
    code, out, err = run_cli([*args, "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    assert "held on cpu" in out
    # prev.pt is the step-10 checkpoint (mid-epoch: 45 steps an epoch); resume from it.
    code, _, err = run_cli([*args, "--out", tmp_path / "b", "--resume", tmp_path / "a" / "prev.pt"], capsys)
    assert code == 0, err
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fit_compiled_on_cpu_and_its_checkpoint_evaluates_without_compile(tmp_path, capsys):
    from torch._dynamo.utils import counters

    out = tmp_path / "run"
    counters.clear()
    code, text, err = run_cli(["fit", "--recipe", "lenet5", "--set", "train.iterations=46",
                               "--set", "train.compile=on", "--out", out, *FAST], capsys)
    assert code == 0, err
    assert "compiled" in text
    # 1437 digits in batches of 32: the epoch ends in a batch of 29, which runs eagerly, so
    # one graph serves both epochs (sending it to the compiled model makes a second one)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    state = load_checkpoint(out / "last.pt")["model"]
    assert state and not any(k.startswith("_orig_mod") for k in state)
    code, text, err = run_cli(["eval", out / "last.pt", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    assert "top1" in text and (tmp_path / "e.json").is_file()


@pytest.mark.cuda
def test_resident_batches_on_cuda_equal_the_cpu_ones(cifar10_root):
    recipe, bundle, cpu = loader_for("resnet20", str(cifar10_root))
    gpu = resident.resident_loader(recipe, bundle.train, torch.device("cuda"), 16, 0, 1, seed=3)
    cpu.sampler.set_epoch(1)
    gpu.sampler.set_epoch(1)
    (a, la, _), (b, lb, _) = next(iter(cpu)), next(iter(gpu))
    assert b.is_cuda and torch.equal(a, b.cpu()) and torch.equal(la, lb.cpu())


@pytest.mark.cuda
def test_compiled_resident_fit_on_cuda_with_bf16_ema_and_channels_last(tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = run_cli(["fit", "--recipe", "lenet5", "--device", "cuda", "--out", out,
                               "--set", "train.iterations=46", "--set", "train.compile=on", "--set", "train.amp=bf16",
                               "--set", "train.channels_last=on", "--set", "train.ema_decay=0.9", *FAST], capsys)
    assert code == 0, err
    assert "compiled" in text and "held on cuda" in text  # 45 full batches an epoch, then a short one, eager
    state = load_checkpoint(out / "last.pt")["model"]
    assert not any(k.startswith("_orig_mod") for k in state)
    code, _, err = run_cli(["eval", out / "best.pt", "--device", "cpu"], capsys)
    assert code == 0, err


def test_compile_auto_and_data_parallel():
    from torch import nn

    from cnntrain.engine.factory import AUTO_COMPILE_STEPS, wants_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert not wants_compile("auto", cpu, 10**6) and not wants_compile("auto", cuda, AUTO_COMPILE_STEPS - 1)
    assert wants_compile("auto", cuda, AUTO_COMPILE_STEPS) and wants_compile("on", cpu, 1)
    dp = nn.DataParallel(nn.Linear(2, 2))
    assert not wants_compile("auto", cuda, 10**6, dp)
    with pytest.raises(CnnTrainError, match="strategy dp"):
        wants_compile("on", cuda, 10, dp)
