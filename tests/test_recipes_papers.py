"""Every paper recipe: it loads, names its paper, and runs through the engine.

Each recipe is trained for 2 optimisation steps on synthetic data (CPU, tiny inputs,
batch 2) and validated once, through ``cnntrain fit``. Only sizes are overridden: the
input side (the smallest the model accepts), the jitter range and test scales scaled
down with it, the batch and the step count; the optimiser, schedule, augmentation,
EMA and auxiliary losses are the recipe's own.
"""
from __future__ import annotations

import json

import pytest
import torch

from cnntrain.recipe import load_recipe, recipe_names
from tests.conftest import run_cli

PAPER_RECIPES = [
    "lenet5", "alexnet", "alexnet-2gpu", "zfnet", "vgg11", "vgg11-lrn", "vgg13", "vgg16-c", "vgg16", "vgg19",
    "nin-cifar", "nin-imagenet", "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202", "preact-resnet110",
    "preact-resnet164", "preact-resnet1001", "wrn-28-10", "wrn-50-2", "resnext50-32x4d", "resnext29-8x64d",
    "resnet110-stochastic-depth", "resnet152-stochastic-depth", "densenet121", "densenet-bc-100",
    "fractalnet", "squeezenet1.0", "squeezenet1.1", "se-resnet50", "inception-v4",
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
