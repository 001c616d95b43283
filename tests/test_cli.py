"""fit -> eval -> ensemble through the command line, on tiny data."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from cnntrain.engine.checkpoint import load_checkpoint
from tests.conftest import run_cli

FAST = ["--no-progress", "--workers", "0"]


def lenet_fit(out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    return run_cli(["fit", "--recipe", "lenet5", "--out", out, "--epochs", "2", *FAST, *extra], capsys)


def test_fit_eval_ensemble(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    code, out, err = lenet_fit(a, capsys, "--seed", "0")
    assert code == 0, err
    assert "epoch 2/2" in out
    for name in ("recipe.toml", "last.pt", "best.pt", "metrics.jsonl"):
        assert (a / name).is_file(), name
    assert list((a / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["val_top1"] > 50  # two epochs of LeNet-5 on real digits already learn
    assert lenet_fit(b, capsys, "--seed", "1")[0] == 0

    code, out, err = run_cli(["eval", a / "best.pt", "--topk", "5", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["samples"] == 360 and set(result) >= {"top1", "top5", "loss", "samples"}
    assert result["top1"] == max(r["val_top1"] for r in records)
    assert "paper" in out and "top1" in out

    code, out, err = run_cli(["ensemble", a / "best.pt", b / "best.pt", "--json", tmp_path / "ens.json"], capsys)
    assert code == 0, err
    ens = json.loads((tmp_path / "ens.json").read_text())
    assert len(ens["members"]) == 2 and ens["samples"] == 360
    assert ens["members"][0]["top1"] == result["top1"]
    assert "ensemble of 2" in out


def test_ensemble_probability_average_by_hand(tmp_path, capsys):
    """The ensemble's accuracy is that of the averaged member probabilities."""
    from cnntrain.data import build_data
    from cnntrain.engine.checkpoint import build_from_checkpoint
    from cnntrain.recipe import load_recipe

    for seed in ("0", "1"):
        assert lenet_fit(tmp_path / seed, capsys, "--seed", seed, "--epochs", "1")[0] == 0
    code, _, err = run_cli(["ensemble", tmp_path / "0/best.pt", tmp_path / "1/best.pt", "--json",
                            tmp_path / "e.json"], capsys)
    assert code == 0, err
    bundle = build_data(load_recipe("lenet5"), None, train=False)
    x = torch.stack([bundle.val[i][0] for i in range(len(bundle.val))]).float()
    y = torch.tensor([bundle.val[i][1] for i in range(len(bundle.val))])
    probs = []
    for seed in ("0", "1"):
        payload = load_checkpoint(tmp_path / seed / "best.pt")
        mean, std = payload["meta"]["mean"][0] * 255, payload["meta"]["std"][0] * 255
        model = build_from_checkpoint(payload, "test").eval()
        with torch.no_grad():
            probs.append(model((x - mean) / std).softmax(-1))
    expected = 100 * int((torch.stack(probs).mean(0).argmax(-1) == y).sum()) / len(y)
    assert abs(json.loads((tmp_path / "e.json").read_text())["top1"] - expected) < 1e-6


def test_resume_continues_from_the_saved_epoch(tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # A step schedule does not depend on the run's length, so 2 + 1 epochs equal 3.
    sched = ["--set", "schedule.name=step", "--set", "schedule.step_size=2"]
    assert lenet_fit(straight, capsys, "--epochs", "3", *sched)[0] == 0
    assert lenet_fit(resumed, capsys, "--epochs", "2", *sched)[0] == 0
    code, out, err = lenet_fit(resumed, capsys, "--epochs", "3", "--resume", "auto", *sched)
    assert code == 0, err
    assert "at epoch 2" in out and "epoch 3/3" in out and "epoch 1/3" not in out
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    a = load_checkpoint(straight / "last.pt")["model"]
    b = load_checkpoint(resumed / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # epoch-boundary resume is exact on CPU


def test_resnet20_on_official_cifar_files(tmp_path, cifar10_root, capsys):
    code, out, err = run_cli(["fit", "--recipe", "resnet20", "--data", cifar10_root, "--out", tmp_path / "r",
                              "--epochs", "1", "--batch-size", "16", *FAST], capsys)
    assert code == 0, err
    assert "on cifar10 (40 train / 10 val, 10 classes)" in out
    code, out, err = run_cli(["eval", tmp_path / "r/best.pt", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["samples"] == 10


def test_resnet20_on_an_image_folder(tmp_path, folder_root, capsys):
    code, out, err = run_cli(["fit", "--recipe", "resnet20", "--data", folder_root, "--out", tmp_path / "r",
                              "--epochs", "1", "--batch-size", "4", *FAST], capsys)
    assert code == 0, err
    assert "on folder (12 train / 6 val, 3 classes)" in out
    code, _, err = run_cli(["eval", tmp_path / "r/best.pt", "--data", folder_root, "--topk", "2",
                            "--crops", "10", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["samples"] == 6 and "top2" in result and result["crops"] == 10


def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    cases = [
        (["fit", "--recipe", "lenet6"], 'unknown recipe "lenet6" (did you mean "lenet5"?)'),
        (["fit", "--recipe", "lenet5", "--set", "optim.lrr=1"], 'did you mean "lr"'),
        (["fit", "--recipe", "resnet50", "--out", tmp_path / "x"], "give --data"),
        (["fit", "--recipe", "lenet5", "--data", tmp_path / "nope"], "no such file or folder"),
        (["eval", tmp_path / "missing.pt"], "does not exist"),
    ]
    for args, fragment in cases:
        code, out, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert fragment in err and "Traceback" not in err


def test_eval_refuses_a_truncated_checkpoint(tmp_path, capsys):
    assert lenet_fit(tmp_path / "a", capsys, "--epochs", "1")[0] == 0
    data = (tmp_path / "a/best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["eval", tmp_path / "cut.pt"], capsys)
    assert code == 2 and "truncated or damaged" in err


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cnntrain", "recipes"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "resnet110" in proc.stdout and "lenet5" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "cnntrain", "fit", "--recipe", "nope"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown recipe")


def test_models_and_recipes_listings(capsys):
    code, out, _ = run_cli(["models", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["resnet50"]["params"] == 25_557_032 and rows["lenet5"]["params"] == 61_706
    code, out, _ = run_cli(["recipes", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["alexnet"]["reported"]["top5_err"] == 18.2
    code, out, _ = run_cli(["recipes", "resnet110"], capsys)
    assert 'arch = "resnet110"' in out and "milestones" in out
