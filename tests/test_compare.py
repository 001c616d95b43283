"""`cnntrain compare`: structural columns read off the built models, the paper errors
from the recipes, and the accuracy-against-MACs chart."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from PIL import Image

from cnntrain.cli import main
from cnntrain.compare import ArchRow, compare_model, default_models, plot, structure
from cnntrain.errors import CnnTrainError


def test_alexnet_row():
    r = compare_model("alexnet")
    assert (r.year, r.weight_layers, r.conv_layers, r.fc_layers) == (2012, 8, 5, 3)
    assert r.kernels == ["11", "5", "3"] and r.fc_widths == [4096, 4096, 1000]
    assert r.lrn and r.dropout and not r.batchnorm
    assert r.top5_err == 18.2 and r.top1_err == 40.7
    assert r.params == 62_378_344 and r.macs == 1_135_256_096


def test_resnet18_row():
    r = compare_model("resnet18")
    # 18 = conv1 + 16 block convolutions + fc; the 1x1 projection shortcuts are on a shorter path
    assert (r.year, r.weight_layers, r.conv_layers, r.fc_layers) == (2015, 18, 17, 1)
    assert r.batchnorm and not r.dropout and not r.lrn
    assert r.kernels == ["7", "3", "1"] and r.fc_widths == [1000]
    assert r.top5_err is None and r.top1_err == 27.88


def test_depth_is_the_longest_weight_path():
    with torch.device("meta"):
        vgg = torchvision.models.vgg16()
        goog = torchvision.models.googlenet(aux_logits=False, init_weights=False)
    v = structure(vgg, (3, 224, 224))
    assert (v["weight_layers"], v["conv_layers"], v["kernels"]) == (16, 13, ["3"])
    assert v["dropout"] and not v["batchnorm"]
    g = structure(goog, (3, 224, 224))
    assert g["weight_layers"] == 22 and g["fc_layers"] == 1  # "22 layers deep when counting only layers with parameters"


def test_default_models_are_imagenet_models_with_a_recipe():
    names = default_models()
    assert "alexnet" in names and "resnet50" in names
    assert "lenet5" not in names and "resnet20" not in names


def test_cli_compare_table_json_and_plot(capsys, tmp_path):
    png, js = tmp_path / "chart.png", tmp_path / "cmp.json"
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "alexnet", "resnet18", "densenet169", "--json", str(js), "--plot", str(png)])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    header, _, alex, res18, dn169 = out.splitlines()[:5]
    assert alex.split()[:8] == ["alexnet", "2012", "8", "5", "11/5/3", "3", "4096/4096/1000", "yes"]
    assert res18.split()[:10] == ["resnet18", "2015", "18", "17", "7/3/1", "1", "1000", "no", "no", "yes"]
    assert dn169.split()[-2:] == ["-", "-"] and "not plotted: densenet169" in out
    rows = json.loads(js.read_text())["models"]
    assert [r["model"] for r in rows] == ["alexnet", "resnet18", "densenet169"]
    assert rows[0]["lrn"] is True and isinstance(rows[0]["macs"], int)
    with Image.open(png) as img:
        img.load()
        assert img.format == "PNG" and img.size == (1440, 640)  # top-1 and top-5 panels
        assert len(img.getcolors(1 << 16) or range(2)) > 2  # something was drawn


def test_cli_compare_unknown_model(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "alexnet", "vgg16x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and 'unknown model "vgg16x"' in err and err.count("\n") == 1


def test_plot_needs_a_reported_error(tmp_path):
    row = ArchRow("m", 2020, 224, 1, 1, 0, ["3"], [], False, False, False, 10, 10)
    with pytest.raises(CnnTrainError, match="nothing to plot"):
        plot([row], tmp_path / "x.png")
