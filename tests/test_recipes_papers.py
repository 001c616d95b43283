"""Every paper recipe: it loads, names its paper, and runs through the engine.

Each recipe is trained for 2 optimisation steps on synthetic data (CPU, tiny inputs,
batch 2) and validated once, through ``cnntrain fit``. Only sizes are overridden: the
input side (the smallest the model accepts), the jitter range and test scales scaled
down with it, the batch and the step count; the optimiser, schedule, augmentation,
EMA and auxiliary losses are the recipe's own.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnntrain.errors import CnnTrainError
from cnntrain.recipe import load_recipe, recipe_names
from tests.conftest import run_cli

PAPER_RECIPES = [
    "lenet5", "alexnet", "alexnet-2gpu", "zfnet", "vgg11", "vgg11-lrn", "vgg13", "vgg16-c", "vgg16", "vgg19",
    "nin-cifar", "nin-imagenet", "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202", "preact-resnet110",
    "preact-resnet164", "preact-resnet1001", "wrn-28-10", "wrn-50-2", "resnext50-32x4d", "resnext29-8x64d",
    "resnet110-stochastic-depth", "resnet152-stochastic-depth", "densenet121", "densenet-bc-100",
    "fractalnet", "squeezenet1.0", "squeezenet1.1", "se-resnet50", "inception-v4",
    # later training procedures (issue 13)
    "resnet50-bag-of-tricks", "resnet50-rsb-a1", "resnet50-rsb-a2", "resnet50-rsb-a3", "resnet50-tv-v2",
    "resnet50-ffcv-16ep", "resnet18-ffcv-16ep",
]
# Smallest input side each model accepts where 32 is too small.
MIN_SIDE = {"inception-v4": 75}


def test_every_paper_recipe_exists_with_its_paper(capsys):
    code, out, err = run_cli(["recipes", "--json"], capsys)
    assert code == 0, err
    listed = json.loads(out)
    rows = listed if isinstance(listed, list) else list(listed.values())
    text = json.dumps(rows)
    for name in PAPER_RECIPES:
        assert f'"{name}"' in text, name
        recipe = load_recipe(name)
        assert recipe.paper.title and recipe.paper.cite and recipe.paper.url, name
        assert recipe.paper.protocol and recipe.paper.reported, name
        assert all(isinstance(v, float) for v in recipe.paper.reported.values())
    assert set(PAPER_RECIPES) <= set(recipe_names())


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_recipe_runs_two_steps(name, tmp_path, capsys):
    recipe = load_recipe(name)
    side = MIN_SIDE.get(recipe.model.arch, 32)
    sets = [f"data.train_size={side}", f"data.eval_resize={side}", "optim.batch_size=2",
            "train.iterations=2", "train.epochs=1", "data.synthetic_train_samples=4",
            "data.synthetic_val_samples=2", "data.num_classes=10", "augment.resize=" + str(side),
            f"augment.scale_range=[{side}, {side + 8}]"]
    if recipe.eval.scales:
        sets.append(f"eval.scales=[{side}, {side + 8}]")
    if recipe.data.eval_size:  # train low / test high, scaled down with the rest
        sets.append(f"data.eval_size={side + 8}")
    if recipe.data.progressive:
        sets += [f"data.progressive=[{side}, {side + 32}]", "data.progressive_epochs=[0, 1]"]
    if recipe.data.dataset == "digits":
        sets = ["train.iterations=2", "train.epochs=1", "optim.batch_size=2"]
    args = ["fit", "--recipe", name, "--out", tmp_path, "--no-progress", "--workers", "0", "--device", "cpu"]
    if recipe.data.dataset != "digits":
        args += ["--data", "synthetic"]
    for s in sets:
        args += ["--set", s]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err + out
    assert "step 2" in out
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_top1" in record
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 2
    assert ("ema" in state) == (recipe.train.ema_decay > 0)


# --------------------------------------------------------------------------- reported numbers

def test_every_reported_number_names_its_protocol_and_verification():
    unverified = set()
    for name in recipe_names():
        paper = load_recipe(name).paper
        assert isinstance(paper.verified, bool), name
        if paper.reported:
            assert paper.protocol.strip(), f"{name}: reported numbers without a protocol"
        if paper.reported and not paper.verified:
            unverified.add(name)
    # The README names FractalNet's 5.24 and RSB A2's 79.8% as the numbers that could not be checked.
    assert unverified == {"fractalnet", "resnet50-rsb-a2"}


def test_fractalnet_20_is_the_20_layer_net_with_fractalnets_procedure_and_no_number(capsys):
    twenty, forty = load_recipe("fractalnet-20"), load_recipe("fractalnet")
    assert twenty.model.arch == "fractalnet-20" and forty.model.arch == "fractalnet"
    assert (twenty.optim, twenty.schedule, twenty.train.epochs) == (forty.optim, forty.schedule, forty.train.epochs)
    # Not the 40-layer net's 5.24: no figure for this network could be checked.
    assert twenty.paper.reported == {} and twenty.paper.eval_protocols == {} and twenty.paper.verified is False
    assert "Table 1" in twenty.paper.protocol
    code, out, err = run_cli(["recipes"], capsys)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.split()[:1] == ["fractalnet-20"])
    assert line.split()[-1] == "-"


def test_corrected_numbers_and_their_labels():
    inc = load_recipe("inception-v4").paper
    assert (inc.reported["crops144_top1_err"], inc.reported["crops144_top5_err"]) == (17.7, 3.8)
    assert (inc.reported["crops12_top1_err"], inc.reported["crops12_top5_err"]) == (18.7, 4.2)
    assert (inc.reported["top1_err"], inc.reported["top5_err"]) == (20.0, 5.0)
    assert "non-blacklisted" in inc.protocol and "AAAI Table 3 = arXiv Table 4" in inc.protocol

    frac = load_recipe("fractalnet").paper
    assert frac.reported["top1_err"] == 5.24 and frac.verified is False
    assert "C10++" in frac.protocol and "NOT CHECKED" in frac.protocol

    se = load_recipe("se-resnet50").paper
    assert (se.reported["top1_err"], se.reported["top5_err"]) == (23.29, 6.62)
    assert "'SENet' column of Table 2" in se.protocol and "24.80 / 7.48" in se.protocol

    assert "Table 1" in load_recipe("nin-cifar").paper.protocol
    r18 = load_recipe("resnet18").paper
    assert r18.reported == {"top1_err": 27.88} and "option A" in r18.protocol and "option B" in r18.protocol
    lenet = load_recipe("lenet5").paper
    assert lenet.reported == {"top1_err": 0.95} and "MNIST" in lenet.protocol and "8x8 digits" in lenet.protocol

    r110 = load_recipe("resnet110").paper
    assert r110.reported == {"top1_err": 6.43, "mean_top1_err": 6.61} and "BEST of 5 runs" in r110.protocol
    for name in ("preact-resnet110", "preact-resnet164", "preact-resnet1001", "wrn-28-10"):
        assert "median of 5 runs" in load_recipe(name).paper.protocol, name
    assert "MEAN of 10 runs" in load_recipe("resnext29-8x64d").paper.protocol
    assert load_recipe("preact-resnet164").paper.reported == {"top1_err": 5.46, "cifar100_top1_err": 24.33}

    sq11 = load_recipe("squeezenet1.1").paper
    assert sq11.reported == {"top5_err": 19.7} and "repository" in sq11.protocol
    assert load_recipe("vgg16").paper.reported["ensemble_top5_err"] == 6.8
    assert "Table 6" in load_recipe("vgg16").paper.protocol


def test_verified_is_not_inherited_by_new_numbers(tmp_path):
    assert load_recipe("resnet110").paper.verified is True
    same = tmp_path / "same.toml"
    same.write_text('base = "resnet110"\n[optim]\nlr = 0.05\n')
    assert load_recipe(str(same)).paper.verified is True  # the base's checked numbers, unchanged
    mine = tmp_path / "mine.toml"
    mine.write_text('base = "resnet110"\n[paper]\nreported = { top1_err = 5.0 }\n')
    r = load_recipe(str(mine))
    assert r.paper.reported == {"top1_err": 5.0} and r.paper.verified is False
    mine.write_text('base = "resnet110"\n[paper]\nreported = { top1_err = 5.0 }\nverified = true\n')
    assert load_recipe(str(mine)).paper.verified is True
    assert load_recipe("resnet110", ["paper.reported={ top1_err = 1.0 }"]).paper.verified is False
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "resnet110"\n[paper]\nverified = "yes"\n')
    with pytest.raises(CnnTrainError, match="paper.verified must be bool"):
        load_recipe(str(bad))


def test_recipes_listing_marks_unverified_numbers(tmp_path, capsys, monkeypatch):
    import cnntrain.recipe as recipe_mod

    (tmp_path / "zz-unchecked.toml").write_text(
        'base = "resnet20"\n[paper]\nprotocol = "made up"\nreported = { top1_err = 1.25 }\nverified = false\n')
    dirs = recipe_mod.recipe_dirs
    monkeypatch.setattr(recipe_mod, "recipe_dirs", lambda: [tmp_path, *dirs()])

    code, out, err = run_cli(["recipes"], capsys)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["zz-unchecked"].endswith("top1_err 1.25% (unverified)")
    assert lines["fractalnet"].endswith("(unverified)")
    assert "unverified" not in lines["resnet20"] and "unverified" not in lines["inception-v4"]

    code, out, err = run_cli(["recipes", "--json"], capsys)
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["zz-unchecked"]["verified"] is False and rows["zz-unchecked"]["reported"] == {"top1_err": 1.25}
    assert rows["resnet20"]["verified"] is True and rows["fractalnet"]["verified"] is False


def test_readme_names_exactly_the_unverified_recipes():
    """The README's list of unverified numbers stays true as recipes are checked."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = re.search(r"At the time of writing the unverified recipes are:\s*(.*?)\s*\(", text, re.S)
    assert listed, "README lost its list of unverified recipes"
    named = set(re.findall(r"`([^`]+)`", listed.group(1)))
    # A recipe with no number (fractalnet-20) has nothing unverified to list.
    assert named == {n for n in recipe_names() if load_recipe(n).paper.reported and not load_recipe(n).paper.verified}
