"""Issue 15: the papers' test protocols (eval --protocol), dense evaluation, ZFNet's filter
renormalisation and the honest listings. Tiny models and images throughout."""
from __future__ import annotations

import json

import pytest
import torch

from cnntrain.cli import main
from cnntrain.data import DataBundle
from cnntrain.data.protocols import PROTOCOLS, get_protocol, protocol_scales, protocol_transform
from cnntrain.engine.paperline import paper_lines
from cnntrain.engine.dense import DenseScorer, fully_convolutional
from cnntrain.engine.renorm import FilterRenorm, filter_rms, first_conv
from cnntrain.errors import CnnTrainError
from cnntrain.compare import compare_model, table
from cnntrain.models import aux_head_params, build_model, inference_params
from cnntrain.recipe import load_recipe
from tests.conftest import run_cli

FAST = ["--workers", "0", "--device", "cpu"]
SMALL = ["--data", "synthetic", "--set", "data.synthetic_val_samples=8", "--set", "data.synthetic_train_samples=32",
         "--set", "optim.batch_size=16"]


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """A LeNet-5 checkpoint on 32 px synthetic images (two steps: the numbers do not matter)."""
    out = tmp_path_factory.mktemp("proto") / "l5"
    code = run_cli_plain(["fit", "--recipe", "lenet5", "--data", "synthetic", "--out", out, "--no-progress", *FAST,
                          "--set", "train.iterations=2", "--set", "data.synthetic_val_samples=12",
                          "--set", "data.synthetic_train_samples=32", "--set", "optim.batch_size=16"])
    assert code == 0
    return out


def run_cli_plain(args) -> int:
    """The CLI without capsys (a module-scoped fixture cannot use it)."""
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0


# --------------------------------------------------------------------------- views per image


def _views(name: str, recipe: str, hw: tuple[int, int], scales=None) -> torch.Tensor:
    r = load_recipe(recipe)
    protocol = get_protocol(name)
    sides, _ = protocol_scales(protocol, r, scales)
    img = torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return protocol_transform(protocol, r.data.train_size, sides)(img)


def _distinct(stack: torch.Tensor) -> int:
    """Distinct views, by a random projection of each (equal views project equally)."""
    flat = stack.flatten(1).double()
    weights = torch.rand(flat.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return torch.unique(flat @ weights).numel()


def test_googlenet_144_at_the_papers_sizes():
    """4 scales x 3 squares x 6 crops x 2 mirrors, every one of them a different view."""
    stack = _views("googlenet-144", "googlenet", (240, 320))
    assert stack.shape == (144, 3, 224, 224)
    assert _distinct(stack) == 144
    assert protocol_scales(get_protocol("googlenet-144"), load_recipe("googlenet"))[0] == [256, 288, 320, 352]


@pytest.mark.parametrize("name, views", [("center", 1), ("center-flip", 2), ("10crop", 10), ("vgg-multicrop", 50)])
def test_crop_presets_count_their_views(name, views):
    stack = _views(name, "resnet20", (40, 48), scales=[40])
    stack = stack if stack.ndim == 4 else stack[None]
    assert stack.shape[0] == views and _distinct(stack) == views


def test_vgg_multicrop_is_50_per_scale_and_scaled_presets():
    """VGG's Q come from the recipe (vgg16: 256/384/512, 150 crops); the pixel presets
    scale with the crop (resnet20: 32 px), and --scales replaces them."""
    r = load_recipe("vgg16")
    sides, _ = protocol_scales(get_protocol("vgg-multicrop"), r)
    assert sides == [256, 384, 512]
    assert protocol_transform(get_protocol("vgg-multicrop"), 224, sides).views == 150
    assert protocol_scales(get_protocol("resnet-fcn-multiscale"), load_recipe("resnet20"))[0] == [32, 37, 55, 69, 91]
    assert _views("vgg-multicrop", "resnet20", (40, 40), scales=[36, 44]).shape[0] == 100


def test_dense_presets_count_their_views():
    r = load_recipe("resnet20")
    fcn = get_protocol("resnet-fcn-multiscale")
    tf = protocol_transform(fcn, 32, protocol_scales(fcn, r)[0])
    assert tf.views == 5 and tf.distinct(32, 32) == 5
    dense = protocol_transform(get_protocol("vgg-dense"), 32, [32, 32, 40])
    assert dense.views == 6 and dense.distinct(32, 32) == 4  # two scales coincide


def test_every_preset_is_listed_and_unknown_names_fail(capsys):
    code, out, _ = run_cli(["eval", "--protocol", "list"], capsys)
    assert code == 0
    for name, p in PROTOCOLS.items():
        assert name in out and p.paper in out
    with pytest.raises(CnnTrainError, match="googlenet-144"):
        get_protocol("googlenet144")


# --------------------------------------------------------------------------- dense evaluation


def test_dense_equals_fc_model_at_training_size():
    """LeNet-5 has the AlexNet/VGG layout (features, k x k adaptive pool, flatten, FC
    layers); at 32 px its map is exactly 5x5, at 16 px smaller than the window."""
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=10, in_channels=1).eval()
    fcn = fully_convolutional(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in fcn.modules())
    assert fcn.head[0].kernel_size == (5, 5) and fcn.head[2].kernel_size == (1, 1)
    for size in (32, 16):
        x = torch.randn(2, 1, size, size)
        with torch.no_grad():
            torch.testing.assert_close(fcn(x), model(x), rtol=1e-4, atol=1e-5)


def test_dense_on_a_larger_image_averages_the_fc_model_over_its_windows():
    """LeNet-5's features have stride 4: at 36 px the score map is 2x2, each position the
    FC model's scores on the 32 px crop there."""
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, 36, 36)
    with torch.no_grad():
        dense = fully_convolutional(model)(x)
        crops = torch.cat([model(x[..., 4 * i:4 * i + 32, 4 * j:4 * j + 32]) for i in (0, 1) for j in (0, 1)])
    torch.testing.assert_close(dense, crops.mean(0, keepdim=True), rtol=1e-4, atol=1e-5)


def test_global_pool_networks_are_used_as_they_are():
    model = build_model("resnet20", num_classes=10).eval()
    assert fully_convolutional(model) is model
    scorer = DenseScorer(model, [32, 40], flips=True, size=32)
    with torch.no_grad():
        assert scorer(torch.randn(3, 3, 32, 32)).shape == (3 * 4, 10)


# --------------------------------------------------------------------------- renormalisation


def test_renorm_caps_first_layer_filter_rms():
    model = build_model("lenet5", num_classes=10, in_channels=1)
    conv = first_conv(model)
    with torch.no_grad():
        conv.weight.normal_(0, 0.01)
        conv.weight[:2] *= 50  # two filters dominate, as in the paper's Fig. 6(a)
    before = filter_rms(conv).clone()
    FilterRenorm(model, 0.1)()
    after = filter_rms(conv)
    assert (before[:2] > 0.1).all() and (after <= 0.1 + 1e-6).all()
    assert torch.allclose(after[:2], torch.full((2,), 0.1), atol=1e-6)
    torch.testing.assert_close(after[2:], before[2:])  # the others are left alone


def test_fit_applies_renorm_after_each_step(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run_cli(["fit", "--recipe", "lenet5", "--out", out, "--no-progress", *FAST, *SMALL,
                            "--set", "train.iterations=2", "--set", "train.renorm_first_conv=0.02"], capsys)
    assert code == 0, err
    weight = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["model"]["features.0.weight"]
    assert weight.pow(2).flatten(1).mean(1).sqrt().max() <= 0.02 + 1e-6
    assert load_recipe("zfnet").train.renorm_first_conv == 0.1
    assert run_cli(["fit", "--recipe", "lenet5", "--set", "train.renorm_first_conv=-1"], capsys)[0] == 2


# --------------------------------------------------------------------------- eval through the CLI


def test_eval_protocols_on_cpu_state_their_views(lenet_run, tmp_path, capsys):
    ckpt = lenet_run / "best.pt"
    code, out, err = run_cli(["eval", ckpt, "--protocol", "googlenet-144", *FAST, "--json", tmp_path / "g.json"],
                             capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["views"] == 144 and result["distinct_views"] == 48  # a square image: its 3 squares coincide
    assert "144 views per image averaged, 48 distinct" in out and result["samples"] == 12
    code, out, err = run_cli(["eval", ckpt, "--protocol", "vgg-dense", "--scales", "32,40", *FAST], capsys)
    assert code == 0, err
    assert "4 views per image averaged" in out and "scales 32/40 (from --scales)" in out
    assert run_cli(["eval", ckpt, "--protocol", "10crop", "--crops", "10"], capsys)[0] == 2


def test_eval_listing_fixes(lenet_run, capsys):
    ckpt = lenet_run / "best.pt"
    code, out, _ = run_cli(["eval", ckpt, "--topk", "1", *FAST], capsys)
    assert code == 0 and out.splitlines()[0].count("top1 ") == 1
    code, out, _ = run_cli(["eval", ckpt, "--topk", "20", "--crops", "10", *FAST], capsys)
    assert code == 0 and "top10 " in out and "top20" not in out.splitlines()[0]
    assert "top-20 clipped to top-10: the model has 10 classes" in out
    assert "10-crop (2 distinct views" in out
    code, _, err = run_cli(["eval", ckpt, "--batch-size", "0"], capsys)
    assert code == 2 and "--batch-size 0" in err


def test_paper_number_only_for_the_recipes_own_data_and_protocol(lenet_run, capsys):
    """lenet5's recipe is for the digits; its checkpoint here was trained on synthetic data."""
    code, text, _ = run_cli(["eval", lenet_run / "best.pt", *FAST], capsys)
    assert code == 0 and "paper (" not in text
    assert "paper's numbers left out: they are for digits (10 classes); this data is synthetic" in text


def test_paper_line_picks_the_protocols_numbers():
    r = load_recipe("resnet50")
    bundle = DataBundle("folder", "/x", None, [], [f"c{i}" for i in range(1000)], 3, (0,) * 3, (1,) * 3)
    (line,) = paper_lines(r, bundle, "resnet-fcn-multiscale", "m")
    assert "multiscale_top1 error 20.74%" in line and "top1 error 22.85%" not in line
    (line,) = paper_lines(r, bundle, "center", "1-crop")
    assert "left out" in line and "--protocol 10crop" in line
    faces = DataBundle("folder", "/x", None, [], ["a", "b"], 3, (0,) * 3, (1,) * 3)
    (line,) = paper_lines(r, faces, "10crop", "10-crop")
    assert line.startswith("paper's numbers left out") and "2 classes" in line


def test_recipe_eval_protocols_are_checked(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "resnet50"\n[paper]\neval_protocols = { "10-crop" = ["top1_err"] }\n')
    with pytest.raises(CnnTrainError, match="10crop"):
        load_recipe(str(bad))
    bad.write_text('base = "resnet50"\n[paper]\neval_protocols = { center = ["top9_err"] }\n')
    with pytest.raises(CnnTrainError, match="top9_err"):
        load_recipe(str(bad))
    # resnet18 replaces resnet50's numbers, so it states its own protocols
    assert load_recipe("resnet18").paper.eval_protocols == {"10crop": ["top1_err"]}
    assert load_recipe("googlenet").paper.eval_protocols["googlenet-144"] == ["crops144_top5_err"]


# --------------------------------------------------------------------------- fit and listings


def test_header_shows_real_steps_and_finished_resume_says_complete(tmp_path, capsys):
    out = tmp_path / "short"
    args = ["fit", "--recipe", "lenet5", "--out", out, "--no-progress", *FAST, *SMALL, "--set", "train.iterations=1"]
    code, text, err = run_cli(args, capsys)
    assert code == 0, err
    assert "1 step (train.iterations; 1 epoch of 2 steps)" in text
    code, text, err = run_cli([*args, "--resume", "auto"], capsys)
    assert code == 0, err
    assert "is complete (step 1 of 1" in text and "epoch 1/1" not in text


def test_models_and_compare_count_inference_parameters():
    with torch.device("meta"):
        goog = build_model("googlenet", num_classes=1000)
    assert (inference_params(goog), aux_head_params(goog)) == (6_998_552, 6_379_728)
    rows = [compare_model("googlenet"), compare_model("se-resnet50")]
    assert rows[0].params == 6_998_552 and rows[0].aux_params == 6_379_728
    assert "7.0M (+6.4M aux heads)" in table(rows)
    se = rows[1]
    assert (se.weight_layers, se.conv_layers, se.fc_layers, se.fc_widths) == (50, 49, 1, [1000])


@pytest.mark.cuda
def test_dense_protocol_runs_on_cuda(lenet_run, capsys):
    """The same dense scores on the GPU (channels_last, the run's autocast; fp32 classifier)."""
    code, out, err = run_cli(["eval", lenet_run / "best.pt", "--protocol", "resnet-fcn-multiscale",
                              "--workers", "0", "--device", "cuda"], capsys)
    assert code == 0, err
    gpu = out.splitlines()[1]
    code, out, err = run_cli(["eval", lenet_run / "best.pt", "--protocol", "resnet-fcn-multiscale", *FAST], capsys)
    assert code == 0, err
    assert gpu.split()[:2] == out.splitlines()[1].split()[:2]  # same top-1 on 12 images


def test_fit_and_runs_clip_topk_and_leave_out_the_paper_on_other_data(tmp_path, capsys):
    """A 2-class run of the digits recipe: no top-5 in its epoch line, metrics.jsonl or
    `runs`, and `runs` leaves the paper's (10-class digits) number out, saying why."""
    out = tmp_path / "runs/two"
    code, text, err = run_cli(["fit", "--recipe", "lenet5", "--out", out, "--no-progress", *FAST, *SMALL,
                               "--set", "data.num_classes=2", "--set", "train.iterations=1"], capsys)
    assert code == 0, err
    assert "note: top-5 clipped to top-2: the model has 2 classes" in text
    (epoch_line,) = [line for line in text.splitlines() if line.startswith("epoch 1/1")]
    assert "top2 " in epoch_line and "top5" not in epoch_line
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "val_top2" in record and "val_top5" not in record
    assert record["data"] == {"kind": "synthetic", "classes": 2}
    own = tmp_path / "runs/own"  # a run on the recipe's own data keeps the paper's number
    own.mkdir()
    (own / "recipe.toml").write_text(load_recipe("lenet5").to_toml())
    (own / "metrics.jsonl").write_text(json.dumps({**record, "data": {"kind": "digits", "classes": 10}}) + "\n")
    code, text, err = run_cli(["runs", tmp_path / "runs", "--json"], capsys)
    rows = {r["run"]: r for r in json.loads(text)["runs"]}
    assert (rows["two"]["topk"], rows["two"]["paper"], rows["own"]["paper"]) == (2, {}, {"top1_err": 0.95})
    assert (rows["two"]["dataset"], rows["own"]["dataset"]) == ("synthetic", "digits")  # what the run read
    assert "this data is synthetic with 2 classes" in rows["two"]["paper_note"] and rows["own"]["paper_note"] is None
    code, text, err = run_cli(["runs", tmp_path / "runs"], capsys)
    (line,) = [row for row in text.splitlines() if row.startswith("two ")]
    assert code == 0 and "left out (other data)" in line and "top2 " in line and "top5" not in line
    assert "two: paper's numbers left out: they are for digits (10 classes)" in text


def test_epoch_line_prints_top1_once():
    from cnntrain.engine.metrics import epoch_line

    record = {"epoch": 1, "step": 2, "train_loss": 1.0, "train_top1": 50.0, "val_top1": 60.0, "lr": 0.1,
              "images_per_s": 10.0}
    assert epoch_line(record, 1, 1).count("top1 ") == 2  # train top1, val top1: no repeated top-K
    assert "top3 0.00%" in epoch_line(record, 1, 3)


def test_presets_crop_at_the_recipes_eval_size():
    """Train low, test high (tv-v2: trained at 176, tested at 224 of 232): the presets use
    the test crop, as plain eval does."""
    r = load_recipe("resnet50-tv-v2")
    assert protocol_scales(get_protocol("center"), r)[0] == [232]
    assert protocol_scales(get_protocol("resnet-fcn-multiscale"), r)[0] == [224, 256, 384, 480, 640]


def test_every_reported_number_names_its_protocol_or_says_it_is_unstated():
    """Without a mapping, eval would lay a paper's number beside any protocol."""
    from cnntrain.recipe import EVAL_PROTOCOLS, UNSTATED, recipe_names

    for name in recipe_names():
        paper = load_recipe(name).paper
        if paper.reported:
            assert paper.eval_protocols, f"{name}: paper.reported without paper.eval_protocols"
            assert set(paper.eval_protocols) <= {*EVAL_PROTOCOLS, UNSTATED}, name


def test_unstated_protocol_is_printed_beside_the_recipes_own_eval_only():
    r = load_recipe("squeezenet1.0")
    assert r.paper.eval_protocols == {"unstated": ["top1_err", "top5_err"]}
    bundle = DataBundle("folder", "/x", None, [], [f"c{i}" for i in range(1000)], 3, (0,) * 3, (1,) * 3)
    (line,) = paper_lines(r, bundle, "center", "1-crop", own_view=True)
    assert line.startswith("paper, protocol not stated by the paper") and "top1 error 42.5%" in line
    (line,) = paper_lines(r, bundle, "googlenet-144", "googlenet-144", own_view=False)
    assert line.startswith("paper's numbers left out") and "plain `eval`" in line
    (line,) = paper_lines(r, bundle, "10crop", "10-crop", own_view=False)  # eval --crops 10: not the recipe's own
    assert line.startswith("paper's numbers left out")


def test_plain_eval_of_a_flip_recipe_is_the_center_flip_preset():
    from cnntrain.engine.evaluate import preset_of, protocol_name

    assert preset_of(1, [], flip=True) == "center-flip" and preset_of(1, []) == "center"
    assert protocol_name(1, [], flip=True) == "1-crop and its mirror"
    r = load_recipe("resnet50-ffcv-16ep")
    bundle = DataBundle("folder", "/x", None, [], [f"c{i}" for i in range(1000)], 3, (0,) * 3, (1,) * 3)
    (line,) = paper_lines(r, bundle, "center-flip", "1-crop and its mirror", own_view=True)
    assert line.startswith("paper, center-flip") and "top1 error 26.2%" in line
    (line,) = paper_lines(r, bundle, "center", "1-crop")
    assert line.startswith("paper's numbers left out") and "--protocol center-flip" in line


def test_evaluation_transforms_draw_one_typed_empty_view():
    import dataclasses

    from cnntrain.data.transforms import EVAL_VIEW, EvalTransform, EvalView

    transforms = [EvalTransform(load_recipe("resnet20").data), protocol_transform(get_protocol("10crop"), 32, [32]),
                  protocol_transform(get_protocol("vgg-dense"), 32, [32, 40])]
    img = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    for t in transforms:
        view = t.draw(40, 48)
        assert isinstance(view, EvalView) and view == EVAL_VIEW
        assert torch.equal(t.apply(img, view), t.apply(img))
    with pytest.raises(dataclasses.FrozenInstanceError):
        EVAL_VIEW.side = 1


def test_non_positive_scales_are_refused_once_with_one_line(capsys):
    from cnntrain.engine.options import EvalOptions, parse_scales

    assert parse_scales("256,0") == [256, 0]  # parsing only; the options check the values
    code, out, err = run_cli(["eval", "missing.pt", "--scales", "256,0"], capsys)
    assert code == 2 and err.strip().splitlines() == ["error: --scales 256,0: scales must be positive"]
    with pytest.raises(CnnTrainError, match="scales must be positive"):
        EvalOptions(checkpoint="x.pt", scales=[-1])
