"""Issue 14: reports, calibration, saved outputs, runs at a glance, seeds and charts, on
LeNet-5 runs of a few steps over the bundled digits and on hand-made scores."""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnntrain.cli import main
from cnntrain.compare import ArchRow, paper_errors, plot
from cnntrain.engine.outputs import Scores, combine, load_scores
from cnntrain.engine.report import calibration, confusion_matrix, per_class, write_report
from cnntrain.plots import compare_chart
from cnntrain.recipe import load_recipe
from cnntrain.runs import find_runs
from tests.conftest import run_cli

FAST = ["--no-progress", "--workers", "0"]


def assert_png(path: Path, size: tuple[int, int] | None = None) -> None:
    """A readable PNG (of ``size``, when given) with more than a handful of colours."""
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG"
        if size is not None:
            assert img.size == size
        assert len(img.convert("RGB").getcolors(1 << 20) or []) > 16


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    """`fit --seeds 0,1`: two LeNet-5 runs of 3 steps each into OUT/seed0 and OUT/seed1."""
    out = tmp_path_factory.mktemp("seeds") / "lenet"
    try:
        main(["fit", "--recipe", "lenet5", "--out", str(out), "--seeds", "0,1", "--set", "train.iterations=3",
              *FAST])
    except SystemExit as exc:
        assert not exc.code
    return out


def test_fit_seeds_writes_one_run_per_seed_and_runs_groups_them(seeds, capsys):
    assert sorted(p.name for p in seeds.iterdir()) == ["seed0", "seed1"]
    for s in (0, 1):
        assert load_recipe(str(seeds / f"seed{s}" / "recipe.toml")).train.seed == s
        assert not (seeds / f"seed{s}" / ".running").exists()
    code, out, err = run_cli(["runs", seeds.parent, "--json"], capsys)
    assert code == 0, err
    table = json.loads(out)
    rows = {r["run"]: r for r in table["runs"]}
    assert set(rows) == {"lenet/seed0", "lenet/seed1"}
    assert all(r["state"] == "finished" and (r["epochs_done"], r["epochs_planned"]) == (1, 1) for r in rows.values())
    (group,) = table["seed_groups"]
    tops = [rows[f"lenet/seed{s}"]["best_top1"] for s in (0, 1)]
    assert group["seeds"] == [0, 1] and group["best_top1_mean"] == pytest.approx(statistics.fmean(tops))
    assert group["best_top1_std"] == pytest.approx(statistics.stdev(tops))
    code, out, _ = run_cli(["runs", seeds.parent], capsys)
    assert code == 0 and "seeds of lenet5 in lenet (n=2: 0,1)" in out and "±" in out


def _run(folder: Path, records: list[dict], epochs: int = 3) -> Path:
    folder.mkdir(parents=True)
    (folder / "recipe.toml").write_text(load_recipe("lenet5", [f"train.epochs={epochs}"]).to_toml())
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _rec(epoch: int, top1: float, secs: float = 10.0) -> dict:
    return {"epoch": epoch, "step": 45 * epoch, "train_loss": 1.0 / epoch, "train_top1": top1 - 5, "lr": 0.05,
            "epoch_time_s": secs, "val_top1": top1, "val_top5": top1 + 3, "val_loss": 0.5}


def test_runs_reads_finished_interrupted_resumed_and_running(tmp_path):
    _run(tmp_path / "done", [_rec(1, 80), _rec(2, 90), _rec(3, 88)])
    _run(tmp_path / "cut", [_rec(1, 70)])
    # killed during epoch 3 after logging it, resumed from the epoch-2 checkpoint: epoch 3 logged again
    _run(tmp_path / "resumed", [_rec(1, 60), _rec(2, 70), _rec(3, 71, 99.0), _rec(3, 75), _rec(4, 77)], epochs=4)
    live = _run(tmp_path / "live", [_rec(1, 50)])
    (live / ".running").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid()}))
    dead = _run(tmp_path / "killed", [_rec(1, 50)])
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (dead / ".running").write_text(json.dumps({"host": os.uname().nodename, "pid": int(gone.stdout)}))
    rows = {r.run: r for r in find_runs(tmp_path)}
    assert (rows["done"].state, rows["done"].epochs_done, rows["done"].best_top1, rows["done"].best_topk) == \
        ("finished", 3, 90, 93)
    assert rows["done"].wall_s == 30 and rows["done"].paper == {"top1_err": 0.95}
    assert (rows["cut"].state, rows["cut"].epochs_done, rows["cut"].epochs_planned) == ("interrupted", 1, 3)
    assert (rows["resumed"].state, rows["resumed"].epochs_done, rows["resumed"].best_top1) == ("finished", 4, 77)
    assert rows["resumed"].wall_s == 40  # the rewritten epoch 3 counts once
    assert rows["live"].state == "running" and rows["killed"].state == "interrupted"


def test_eval_report_and_saved_logits(seeds, tmp_path, capsys):
    rep, npz, js = tmp_path / "rep", tmp_path / "a.npz", tmp_path / "e.json"
    code, out, err = run_cli(["eval", seeds / "seed0/best.pt", "--report", rep, "--save-logits", npz,
                              "--json", js], capsys)
    assert code == 0, err
    result, scores = json.loads(js.read_text()), load_scores(npz)
    n = result["samples"]
    assert n == 360 and scores.ids[:2] == ["val[0]", "val[1]"] and scores.classes == [str(d) for d in range(10)]
    matrix = confusion_matrix(scores.labels, scores.probs.argmax(1), 10)
    assert matrix.sum() == n and 100 * np.trace(matrix) / n == pytest.approx(result["top1"])
    rows = list(csv.DictReader(open(rep / "per_class.csv")))
    assert sum(int(r["samples"]) for r in rows) == n
    weighted = sum(float(r["top1"]) * int(r["samples"]) for r in rows) / n
    assert weighted == pytest.approx(result["top1"], abs=0.01)  # the csv rounds to 0.01
    assert result["ece"] == pytest.approx(calibration(scores.probs, scores.labels)["ece"])
    assert {"nll", "brier"} <= set(result) and result["nll"] == pytest.approx(result["loss"], rel=1e-4)
    assert_png(rep / "confusion.png")
    assert_png(rep / "calibration.png", (520, 620))
    assert_png(rep / "curves.png", (1380, 390))
    md = (rep / "report.md").read_text()
    assert "![confusion](confusion.png)" in md and "![curves](curves.png)" in md and "ECE" in md
    assert not (rep / "mistakes.md").exists()  # digits have no paths


def test_ensemble_of_saved_logits_equals_ensemble_of_checkpoints(seeds, tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for ckpt, npz in ((seeds / "seed0/best.pt", a), (seeds / "seed1/best.pt", b)):
        assert run_cli(["eval", ckpt, "--save-logits", npz], capsys)[0] == 0
    for how in ("prob", "logit"):
        code, _, err = run_cli(["ensemble", seeds / "seed0/best.pt", seeds / "seed1/best.pt", "--combine", how,
                                "--json", tmp_path / "c.json"], capsys)
        assert code == 0, err
        code, _, err = run_cli(["ensemble", "--logits", a, b, "--combine", how, "--json", tmp_path / "s.json",
                                "--report", tmp_path / f"rep-{how}"], capsys)
        assert code == 0, err
        ckpt, saved = (json.loads((tmp_path / f).read_text()) for f in ("c.json", "s.json"))
        assert (saved["top1"], saved["top5"], saved["samples"]) == (ckpt["top1"], ckpt["top5"], ckpt["samples"])
        assert saved["loss"] == pytest.approx(ckpt["loss"], rel=1e-5)
        assert [m["top1"] for m in saved["members"]] == [m["top1"] for m in ckpt["members"]]
        assert_png(tmp_path / f"rep-{how}" / "calibration.png")
    shuffled = load_scores(b)
    shuffled.ids = shuffled.ids[1:] + shuffled.ids[:1]
    shuffled.save(tmp_path / "other.npz")
    code, _, err = run_cli(["ensemble", "--logits", a, tmp_path / "other.npz"], capsys)
    assert code == 2 and "another order" in err and err.count("\n") == 1
    code, _, err = run_cli(["ensemble", "--logits", a, tmp_path / "none.npz"], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(["ensemble", "--logits", a, seeds / "seed0/best.pt"], capsys)
    assert code == 2 and ".npz" in err


def test_report_into_a_file_is_refused_before_any_evaluation(seeds, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    for args in (["eval", seeds / "seed0/best.pt"], ["ensemble", seeds / "seed0/best.pt", seeds / "seed1/best.pt"]):
        for report, blame in ((afile, f"--report {afile} is a file"), (afile / "sub", f"{afile} is a file")):
            code, out, err = run_cli([*args, "--report", report], capsys)
            assert code == 2 and err.count("\n") == 1 and blame in err and "give a folder" in err, err
            assert out == ""  # refused before the evaluation printed anything


def test_ensemble_names_files_that_are_not_saved_outputs(tmp_path, capsys):
    junk, pickled = tmp_path / "junk.npz", tmp_path / "objects.npz"
    junk.write_text("not an archive\n")
    np.savez(pickled, logits=np.zeros((1, 2)), probs=np.zeros((1, 2)), labels=np.zeros(1), classes=np.array(["a"]),
             ids=np.array([object()], dtype=object))
    for bad in (junk, pickled):
        code, _, err = run_cli(["ensemble", "--logits", bad, bad], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert f"{bad} is not a .npz archive written by eval --save-logits" in err
        assert "pickle" not in err


def test_ece_nll_brier_by_their_formulas():
    # 10 images at confidence 0.8 of which 8 are right, 5 at 0.6 of which 3 are right: calibrated
    probs = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5)
    labels = np.array([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    cal = calibration(probs, labels)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-12) and cal["bins"]["count"].sum() == 15
    # all at 0.9 but only half right: |0.5 - 0.9| = 0.4
    probs = np.array([[0.9, 0.1]] * 4)
    labels = np.array([0, 0, 1, 1])
    cal = calibration(probs, labels)
    assert cal["ece"] == pytest.approx(0.4)
    assert cal["nll"] == pytest.approx(-(2 * np.log(0.9) + 2 * np.log(0.1)) / 4)
    assert cal["brier"] == pytest.approx((2 * (0.1 ** 2 + 0.1 ** 2) + 2 * (0.9 ** 2 + 0.9 ** 2)) / 4)
    # two bins: 0.95 (2 right of 2) and 0.55 (0 right of 2) -> (2 * 0.05 + 2 * 0.55) / 4
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    assert calibration(probs, np.array([0, 0, 1, 1]))["ece"] == pytest.approx(0.3)


def _random_scores(n: int, classes: int, seed: int = 0, paths: bool = False) -> Scores:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    logits[np.arange(n), labels] += 1.5  # better than chance
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ids = [f"/data/val/c{labels[i]}/img{i}.jpg" if paths else f"val[{i}]" for i in range(n)]
    return Scores(logits, probs.astype(np.float32), labels, ids, [f"c{i}" for i in range(classes)])


def test_per_class_weights_to_the_overall_top1_and_many_classes_get_pairs(tmp_path):
    s = _random_scores(600, 60, paths=True)
    rows = per_class(s, 5)
    top1 = 100 * np.mean(s.probs.argmax(1) == s.labels)
    counted = [r for r in rows if r["samples"]]
    assert sum(r["top1"] * r["samples"] for r in counted) / len(s.labels) == pytest.approx(top1)
    headline = {**s.metrics((1, 5)), "samples": 600}
    out = write_report(s, tmp_path / "rep", 5, "random", headline)
    assert not (tmp_path / "rep/confusion.png").exists()
    assert_png(tmp_path / "rep/confused_pairs.png", (800, 980))
    mistakes = (tmp_path / "rep/mistakes.md").read_text()
    assert "/data/val/" in mistakes and mistakes.count("\n| ") == 27  # header, rule, 25 rows
    assert "[mistakes.md](mistakes.md)" in (tmp_path / "rep/report.md").read_text() and out["ece"] >= 0


def test_combine_refuses_other_labels():
    a, b = _random_scores(20, 3), _random_scores(20, 3)
    b.labels = (b.labels + 1) % 3
    with pytest.raises(Exception, match="different labels"):
        combine([a, b], "prob")


def test_plot_command_draws_curves_and_checks_its_metrics(seeds, tmp_path, capsys):
    png = tmp_path / "curves.png"
    code, out, err = run_cli(["plot", seeds / "seed0", seeds / "seed1", "--out", png, "--metrics", "loss,top1,lr"],
                             capsys)
    assert code == 0, err
    assert_png(png, (1380, 390))
    code, _, err = run_cli(["plot", seeds / "seed0", "--metrics", "acc"], capsys)
    assert code == 2 and "--metrics" in err
    code, _, err = run_cli(["plot", tmp_path / "nothing"], capsys)
    assert code == 2 and "metrics.jsonl" in err


def _drawn(monkeypatch, capsys, args):
    """Run `cnntrain plot args` and return the figure it drew instead of saving it."""
    figs = []
    monkeypatch.setattr("cnntrain.plots._save", lambda fig, path: figs.append(fig))
    code, _, err = run_cli(["plot", *args], capsys)
    assert code == 0, err
    return figs[0]


def test_plot_labels_same_named_runs_by_their_shortest_distinct_path(seeds, tmp_path, monkeypatch, capsys):
    for parent in ("x", "y"):
        (tmp_path / parent / "seed0").mkdir(parents=True)
        (tmp_path / parent / "seed0" / "metrics.jsonl").write_text((seeds / "seed0/metrics.jsonl").read_text())
    fig = _drawn(monkeypatch, capsys, [tmp_path / "x/seed0", tmp_path / "y/seed0", seeds / "seed1",
                                       "--metrics", "loss"])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["x/seed0", "y/seed0", "seed1", "train", "validation"]


def test_plot_draws_a_resumed_runs_repeated_epoch_once(seeds, tmp_path, monkeypatch, capsys):
    record = json.loads((seeds / "seed0/metrics.jsonl").read_text().splitlines()[0])
    run = tmp_path / "resumed"
    run.mkdir()
    # epoch 2 logged, the run killed and resumed from epoch 1's checkpoint: epoch 2 again
    epochs = [(1, 1.0), (2, 0.9), (2, 0.8), (3, 0.7)]
    run.joinpath("metrics.jsonl").write_text("".join(
        json.dumps({**record, "epoch": e, "train_loss": loss}) + "\n" for e, loss in epochs))
    fig = _drawn(monkeypatch, capsys, [run, "--metrics", "loss"])
    (train_line, *_) = fig.axes[0].get_lines()
    assert list(train_line.get_xdata()) == [1, 2, 3]
    assert list(train_line.get_ydata()) == [1.0, 0.8, 0.7]  # the resumed (later) epoch 2


def test_compare_chart_labels_do_not_overlap_on_the_default_set(tmp_path):
    """The default model set's sizes (tests/data/compare_default.json, written by
    `cnntrain compare --json`) with the recipes' errors: no two labels share a pixel, and
    top-1 and top-5 are on separate panels."""
    sizes = json.loads((Path(__file__).parent / "data/compare_default.json").read_text())
    rows = [ArchRow(s["model"], 2000, 224, 1, 1, 0, [], [], False, False, False, s["params"], s["macs"],
                    *paper_errors(s["model"])) for s in sizes]
    panels = [(metric, [{"model": r.model, "macs": r.macs, "params": r.params, "err": getattr(r, attr)}
                        for r in rows if getattr(r, attr) is not None])
              for metric, attr in (("top-1 error", "top1_err"), ("top-5 error", "top5_err"))]
    boxes = compare_chart(panels, tmp_path / "c.png")
    for panel in boxes:
        for i, a in enumerate(panel):
            for b in panel[i + 1:]:
                assert not a.overlaps(b)
    assert_png(tmp_path / "c.png", (1440, 640))
    assert plot(rows, tmp_path / "d.png") == []


def test_report_on_a_folder_dataset_lists_mistakes_by_path(tmp_path, folder_root, capsys):
    code, _, err = run_cli(["fit", "--recipe", "resnet20", "--data", folder_root, "--out", tmp_path / "r",
                            "--set", "train.iterations=1", "--batch-size", "4", *FAST], capsys)
    assert code == 0, err
    code, _, err = run_cli(["eval", tmp_path / "r/best.pt", "--data", folder_root, "--report", tmp_path / "rep",
                            "--save-logits", tmp_path / "f.npz", "--workers", "0"], capsys)
    assert code == 0, err
    scores = load_scores(tmp_path / "f.npz")
    assert sorted(scores.ids) == sorted(str(p) for p in (folder_root / "val").rglob("img*"))
    wrong = int((scores.probs.argmax(1) != scores.labels).sum())
    text = (tmp_path / "rep/mistakes.md").read_text()  # always written for folder data
    assert text.count(f"| `{folder_root / 'val'}") == min(wrong, 25)


def test_save_logits_on_synthetic_data_names_samples_by_position(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["fit", "--recipe", "lenet5", "--data", "synthetic", "--out", out, "--no-progress",
                            "--workers", "0", "--set", "train.iterations=1", "--set", "data.synthetic_train_samples=8",
                            "--set", "data.synthetic_val_samples=4"], capsys)
    assert code == 0, err
    npz = tmp_path / "s.npz"
    code, _, err = run_cli(["eval", out / "best.pt", "--save-logits", npz, "--workers", "0"], capsys)
    assert code == 0, err
    assert [str(v) for v in np.load(npz)["ids"]] == [f"val[{i}]" for i in range(4)]


def test_ensemble_prints_each_topk_once_and_clips_k(seeds, tmp_path, capsys):
    pair = [seeds / "seed0/best.pt", seeds / "seed1/best.pt"]
    npz = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for ckpt, path in zip(pair, npz):
        assert run_cli(["eval", ckpt, "--save-logits", path], capsys)[0] == 0
    for members in (pair, ["--logits", *npz]):
        code, out, err = run_cli(["ensemble", *members, "--topk", "1"], capsys)
        assert code == 0, err
        lines = [line for line in out.splitlines() if line.startswith(("member", "ensemble"))]
        assert len(lines) == 3 and all(line.count("top1 ") == 1 for line in lines), out
        code, out, err = run_cli(["ensemble", *members, "--topk", "20", "--json", tmp_path / "e.json"], capsys)
        assert code == 0, err
        assert "top20" not in out and "top10 " in out and "top-20 clipped to top-10: the model has 10 classes" in out
        assert "top10" in json.loads((tmp_path / "e.json").read_text())
