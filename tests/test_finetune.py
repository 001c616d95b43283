"""Fine-tuning: starting weights (--init / model.init), frozen parts, per-module
learning rates, and a fine-tune on real images beating a start from scratch."""
from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

from cnntrain import build_model
from cnntrain.engine.checkpoint import load_checkpoint
from cnntrain.engine.init_weights import init_from
from cnntrain.engine.optim import LRSchedule, build_optimizer
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import load_recipe
from tests.conftest import run_cli

FAST = ["--no-progress", "--workers", "0"]


def seeded(name: str, seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **kw)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_init_loads_matching_tensors_and_reports_the_new_head(tmp_path, suffix):
    source = seeded("lenet5", 1, num_classes=10, in_channels=3).state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(source, path)
    else:
        safetensors.torch.save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    model = seeded("lenet5", 2, num_classes=2, in_channels=3)
    fresh_head = model.classifier[5].weight.detach().clone()
    line = init_from(model, str(path), "lenet5")
    assert "loaded 8 of 10 tensors" in line
    assert "classifier.5.weight, classifier.5.bias: 10 → 2 classes, initialised fresh" in line
    for key, value in model.state_dict().items():
        if key.startswith("classifier.5"):
            continue
        assert torch.equal(value, source[key]), key
    assert torch.equal(model.classifier[5].weight, fresh_head)  # the model's own fresh init


def test_init_from_another_architecture_names_both(tmp_path, capsys):
    weights = {k: v.contiguous() for k, v in build_model("resnet20").state_dict().items()}
    safetensors.torch.save_file(weights, str(tmp_path / "r20.safetensors"), {"arch": "resnet20"})
    code, _, err = run_cli(["fit", "--recipe", "lenet5", "--out", tmp_path / "a", "--init",
                            tmp_path / "r20.safetensors", *FAST], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "its weights are resnet20's, not lenet5's (only 0 of 10 tensors match" in err


@pytest.mark.parametrize("content", [b"", b"fc.weight = 1\nnot a weights file\n"])
def test_init_from_an_empty_or_text_file_is_one_line(tmp_path, capsys, content):
    """An empty or junk file is damaged, not unsafe: one line, no traceback."""
    (tmp_path / "w.pth").write_bytes(content)
    code, _, err = run_cli(["fit", "--recipe", "lenet5", "--out", tmp_path / "a", "--init",
                            tmp_path / "w.pth", *FAST], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"--init {tmp_path / 'w.pth'}: not a torch.save file (nor .safetensors)" in err
    assert "refused" not in err


def test_first_line_of_an_empty_message():
    from cnntrain.errors import first_line

    assert first_line(EOFError()) == "EOFError"
    assert first_line(RuntimeError("\n  first <_io.BytesIO object at 0x7f00>\nsecond")) == "first"


def test_torchvision_weights_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub/checkpoints/resnet18-f37072fd.pth"  # IMAGENET1K_V1's file name
    cached.parent.mkdir(parents=True)
    with torch.device("meta"):
        shapes = build_model("resnet18").state_dict()
    gen = torch.Generator().manual_seed(0)
    torch.save({k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
                for k, v in shapes.items()}, cached)
    model = build_model("resnet18", num_classes=3)
    line = init_from(model, "torchvision:IMAGENET1K_V1", "resnet18")
    assert "fc.weight, fc.bias: 1000 → 3 classes" in line and "loaded 120 of 122" in line
    assert torch.equal(model.conv1.weight, torch.load(cached)["conv1.weight"])

    with pytest.raises(CnnTrainError, match="no such weights; its weights: DEFAULT, IMAGENET1K_V1"):
        init_from(model, "torchvision:IMAGENET1K_V9", "resnet18")

    def offline(url, dst, **kw):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CnnTrainError, match=r"resnet34-b627a593.pth is not in .* fetch https://download.pytorch.org"
                                            r"/models/resnet34-b627a593.pth and put it at"):
        init_from(build_model("resnet34", num_classes=3), "torchvision:IMAGENET1K_V1", "resnet34")
    with pytest.raises(CnnTrainError, match="torchvision has no model with lenet5's layout"):
        init_from(build_model("lenet5"), "torchvision:IMAGENET1K_V1", "lenet5")


def test_lr_mult_groups_and_their_rates():
    r = load_recipe("resnet20", ["optim.lr_mult={ fc = 10.0, layer3 = 0.5 }"])
    model = build_model("resnet20", num_classes=3)
    opt = build_optimizer(model, r.optim)
    LRSchedule(r.schedule, 0.1, 10, 100).apply(opt, 0)
    by_mult = {g["lr_mult"]: g for g in opt.param_groups}
    assert by_mult[10.0]["params"] == [model.fc.weight, model.fc.bias]
    assert len(by_mult[0.5]["params"]) == len(list(model.layer3.parameters()))
    assert by_mult[10.0]["lr"] == pytest.approx(10 * by_mult[1.0]["lr"])
    assert by_mult[0.5]["lr"] == pytest.approx(0.5 * by_mult[1.0]["lr"])
    with pytest.raises(CnnTrainError, match="'fcc' names no trainable parameter"):
        build_optimizer(model, load_recipe("resnet20", ["optim.lr_mult={ fcc = 10.0 }"]).optim)


def test_frozen_parameters_and_bn_statistics_stay_bit_identical(tmp_path, folder_root, capsys):
    start = seeded("resnet20", 3, num_classes=3).state_dict()
    torch.save(start, tmp_path / "w.pth")
    code, out, err = run_cli(["fit", "--recipe", "resnet20", "--data", folder_root, "--out", tmp_path / "r",
                              "--init", tmp_path / "w.pth", "--batch-size", "4", "--epochs", "1", *FAST,
                              "--set", 'train.freeze=["conv1", "bn1", "layer1"]',
                              "--set", "optim.lr_mult={ fc = 10.0 }"], capsys)
    assert code == 0, err
    assert "freeze conv1, bn1, layer1:" in out and "BatchNorm layers hold their statistics" in out
    trained = load_checkpoint(tmp_path / "r/last.pt")["model"]
    frozen = [k for k in start if k.split(".")[0] in ("conv1", "bn1", "layer1")]
    assert any("running_mean" in k for k in frozen)
    for key in frozen:
        assert torch.equal(trained[key], start[key]), key
    assert not torch.equal(trained["layer2.0.bn1.running_mean"], start["layer2.0.bn1.running_mean"])
    assert not torch.equal(trained["fc.weight"], start["fc.weight"])

    code, _, err = run_cli(["fit", "--recipe", "resnet20", "--data", folder_root, "--out", tmp_path / "x", *FAST,
                            "--set", 'train.freeze=["layer9"]'], capsys)
    assert code == 2 and "has no module 'layer9'" in err


# ------------------------------------------------------------------ real images: init beats scratch

def digit_folder(root: Path, digits: list[int], train_n: int, val_n: int) -> Path:
    """scikit-learn's real 8x8 handwritten digits as 32x32 RGB PNGs in class folders."""
    d = load_digits()
    for digit in digits:
        images = d.images[d.target == digit]
        for split, chunk in (("train", images[:train_n]), ("val", images[train_n:train_n + val_n])):
            folder = root / split / f"d{digit}"
            folder.mkdir(parents=True)
            for i, im in enumerate(chunk):
                grey = Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((32, 32), Image.NEAREST)
                grey.convert("RGB").save(folder / f"{i}.png")
    return root


def pretrain_lenet(path: Path, held_out: dict[int, int], steps: int = 150) -> None:
    """LeNet-5 weights trained on all ten digits but for the first ``held_out[d]`` images of
    digit d (the fine-tuning folder's), written as a plain torchvision-layout state dict."""
    d = load_digits()
    rank = np.zeros(len(d.target), dtype=int)  # position of each image among its digit's
    for digit in range(10):
        rank[d.target == digit] = np.arange((d.target == digit).sum())
    keep = np.array([r >= held_out.get(int(t), 0) for t, r in zip(d.target, rank)])
    x = F.interpolate(torch.tensor(d.images[keep] / 16, dtype=torch.float32)[:, None], size=32).repeat(1, 3, 1, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)  # the folder reader's normalisation
    y = torch.tensor(d.target[keep])
    model = seeded("lenet5", 0, num_classes=10, in_channels=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # LeNet's tiny ops: extra threads only wait on each other on a busy machine
    try:
        for _ in range(steps):
            i = torch.randint(0, len(x), (32,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    torch.save(model.state_dict(), path)


def test_init_from_other_real_images_beats_scratch(tmp_path, capsys):
    pretrain_lenet(tmp_path / "w.pth", held_out={3: 44, 8: 44})  # other images of the same digits
    data = digit_folder(tmp_path / "threes-eights", [3, 8], train_n=4, val_n=40)
    results = {}
    for name, extra in (("scratch", []), ("init", ["--init", tmp_path / "w.pth"])):
        code, out, err = run_cli(["fit", "--recipe", "lenet5", "--data", data, "--out", tmp_path / name,
                                  "--set", "train.iterations=6", "--batch-size", "8", *FAST, *extra], capsys)
        assert code == 0, err
        results[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
        assert results[name]["step"] == 6
    assert "classifier.5.weight, classifier.5.bias: 10 → 2 classes, initialised fresh" in out
    init, scratch = results["init"], results["scratch"]
    assert init["val_top1"] > scratch["val_top1"]
    assert init["val_loss"] < 0.5 * scratch["val_loss"], (init, scratch)


def test_finetune_recipes_report_their_starting_weights_metrics():
    import torchvision

    for recipe, arch in (("finetune-resnet18", "resnet18"), ("finetune-resnet50", "resnet50")):
        r = load_recipe(recipe)
        assert (r.model.arch, r.model.init, r.optim.lr_mult) == (arch, "torchvision:IMAGENET1K_V1", {"fc": 10.0})
        metrics = torchvision.models.get_model_weights(arch)["IMAGENET1K_V1"].meta["_metrics"]["ImageNet-1K"]
        assert r.paper.reported["start_top1_err"] == pytest.approx(100 - metrics["acc@1"])
        assert r.paper.reported["start_top5_err"] == pytest.approx(100 - metrics["acc@5"])


@pytest.mark.cuda
def test_frozen_bn_statistics_stay_bit_identical_on_cuda(tmp_path, folder_root, capsys):
    """The same freeze on the GPU, under the default bf16 autocast and channels_last."""
    start = seeded("resnet20", 3, num_classes=3).state_dict()
    torch.save(start, tmp_path / "w.pth")
    code, _, err = run_cli(["fit", "--recipe", "resnet20", "--data", folder_root, "--out", tmp_path / "r",
                            "--init", tmp_path / "w.pth", "--batch-size", "4", "--epochs", "1", "--device", "cuda",
                            *FAST, "--set", 'train.freeze=["backbone"]'], capsys)
    assert code == 0, err
    trained = load_checkpoint(tmp_path / "r/last.pt")["model"]
    for key in start:
        if not key.startswith("fc."):
            assert torch.equal(trained[key], start[key]), key
    assert not torch.equal(trained["fc.weight"], start["fc.weight"])
