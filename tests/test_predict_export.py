"""cnntrain predict (equal to eval on the validation images; per-file errors; --with)
and cnntrain export (every format reloaded and run against the checkpoint)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import onnx  # the test extra installs it: the ONNX check must not skip silently
import pytest
import safetensors
import torch
import torchvision

from tests.conftest import run_cli, write_image_folder

FAST = ["--no-progress", "--workers", "0"]
TINY = ["--set", "data.train_size=32", "--set", "data.eval_resize=36", "--set", 'augment.crop="none"',
        "--set", "train.iterations=2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory) -> tuple[Path, Path]:
    """LeNet-5 trained two tiny steps on a 3-class RGB folder, so it is still often wrong
    and predict-equals-eval means something: (checkpoint, data root)."""
    root = write_image_folder(tmp_path_factory.mktemp("data") / "folder", per_class=4, val_per_class=3)
    out = tmp_path_factory.mktemp("run")
    code = run_cli(["fit", "--recipe", "lenet5", "--data", root, "--out", out, *TINY, *FAST,
                    "--lr", "0.01", "--seed", "0"], _Quiet())[0]
    assert code == 0
    return out / "best.pt", root


class _Quiet:
    """A capsys stand-in for module-scoped fixtures (their output is not checked)."""

    def readouterr(self):
        return type("Out", (), {"out": "", "err": ""})()


def test_predict_says_when_topk_exceeds_the_classes(tmp_path, lenet_run, capsys):
    ckpt, root = lenet_run  # three classes
    code, out, err = run_cli(["predict", ckpt, root / "val/cat", "--topk", "5", "--json", tmp_path / "p.json"], capsys)
    assert code == 0, err
    assert "top-5 clipped to top-3: the model has 3 classes" in out  # eval's words
    assert json.loads((tmp_path / "p.json").read_text())["topk"] == 3


def test_predict_top1_equals_eval_and_reports_unreadable_files(tmp_path, lenet_run, capsys):
    ckpt, root = lenet_run
    code, _, err = run_cli(["eval", ckpt, "--data", root, "--json", tmp_path / "e.json", "--topk", "2"], capsys)
    assert code == 0, err
    evaluated = json.loads((tmp_path / "e.json").read_text())
    (tmp_path / "notes.txt").write_text("not an image")
    code, out, err = run_cli(["predict", ckpt, root / "val", tmp_path / "notes.txt", "--topk", "2",
                              "--json", tmp_path / "p.json", "--csv", tmp_path / "p.csv"], capsys)
    assert code == 1, err  # one file could not be read; the others were labelled
    assert f"{tmp_path / 'notes.txt'}  error:" in out and "1 of 10 file(s) could not be read" in out
    result = json.loads((tmp_path / "p.json").read_text())
    rows = [r for r in result["predictions"] if "top" in r]
    assert len(rows) == evaluated["samples"] == 9
    hits = sum(r["top"][0]["class"] == Path(r["path"]).parent.name for r in rows)
    assert 100.0 * hits / len(rows) == pytest.approx(evaluated["top1"])
    assert 0 < hits < len(rows), "a model always right (or wrong) would not test the equality"
    hits2 = sum(Path(r["path"]).parent.name in [t["class"] for t in r["top"]] for r in rows)
    assert 100.0 * hits2 / len(rows) == pytest.approx(evaluated["top2"])
    assert all(abs(sum(t["prob"] for t in r["top"]) - 1) < 1 for r in rows)
    table = list(csv.reader((tmp_path / "p.csv").open()))
    assert table[0] == ["path", "class1", "prob1", "class2", "prob2", "error"] and len(table) == 11

    code, _, _ = run_cli(["predict", ckpt, root / "val", "--with", ckpt, "--json", tmp_path / "w.json"], capsys)
    assert code == 0
    twice = json.loads((tmp_path / "w.json").read_text())["predictions"]
    once = [r for r in json.loads((tmp_path / "p.json").read_text())["predictions"] if "top" in r]
    assert [r["top"][0]["class"] for r in twice] == [r["top"][0]["class"] for r in once]
    assert [r["top"][0]["prob"] for r in twice] == pytest.approx([r["top"][0]["prob"] for r in once])

    code, _, err = run_cli(["predict", ckpt, tmp_path / "missing.jpg"], capsys)
    assert code == 2 and "no such file or folder" in err


@pytest.mark.parametrize("fmt,suffix", [("safetensors", ".safetensors"), ("torchscript", ".pt"),
                                        ("exported", ".pt2"), ("onnx", ".onnx")])
def test_export_round_trips(tmp_path, lenet_run, capsys, fmt, suffix):
    ckpt, _ = lenet_run
    out = tmp_path / f"m{suffix}"
    code, stdout, err = run_cli(["export", ckpt, "--format", fmt, "--out", out, "--json", tmp_path / "x.json"],
                                capsys)
    assert code == 0, err
    assert "max abs diff" in stdout and out.is_file()
    assert json.loads((tmp_path / "x.json").read_text())["max_abs_diff"] <= 1e-4
    if fmt == "safetensors":
        with safetensors.safe_open(str(out), framework="pt") as fh:
            meta = fh.metadata()
        assert meta["arch"] == "lenet5" and json.loads(meta["classes"]) == ["cat", "dog", "fox"]
        assert meta["input_size"] == "32" and len(json.loads(meta["mean"])) == 3 and meta["recipe"] == "lenet5"
    if fmt == "onnx":
        model = onnx.load(str(out))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch


def test_export_torchvision_state_dict_and_refusals(tmp_path, folder_root, lenet_run, capsys):
    code, _, err = run_cli(["fit", "--recipe", "resnet18", "--data", folder_root, "--out", tmp_path / "r", *TINY,
                            *FAST, "--set", "train.iterations=1"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["export", tmp_path / "r/best.pt", "--format", "torchvision", "--out",
                              tmp_path / "r18.pth"], capsys)
    assert code == 0, err
    theirs = torchvision.models.resnet18(num_classes=3)
    theirs.load_state_dict(torch.load(tmp_path / "r18.pth", weights_only=True))  # strict

    ckpt, _ = lenet_run
    for args, fragment in ((["--format", "torchvision", "--out", tmp_path / "l.pth"], "torchvision has no model"),
                           (["--format", "exported", "--out", tmp_path / "l.pt"], "a .pt2 file"),
                           (["--format", "keras", "--out", tmp_path / "l.k"], "use one of safetensors")):
        code, _, err = run_cli(["export", ckpt, *args], capsys)
        assert code == 2 and fragment in err and "Traceback" not in err


@pytest.mark.cuda
def test_predict_equals_eval_on_cuda(tmp_path, lenet_run, capsys):
    ckpt, root = lenet_run
    code, _, err = run_cli(["eval", ckpt, "--data", root, "--device", "cuda", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["predict", ckpt, root / "val", "--device", "cuda", "--json", tmp_path / "p.json"], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "p.json").read_text())["predictions"]
    hits = sum(r["top"][0]["class"] == Path(r["path"]).parent.name for r in rows)
    assert 100.0 * hits / len(rows) == pytest.approx(json.loads((tmp_path / "e.json").read_text())["top1"])
