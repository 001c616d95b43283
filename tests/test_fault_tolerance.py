"""Fault tolerance: kills, signals, interrupted writes, NaN losses, bad files, unsafe
checkpoints and bad requests (issue 6)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnntrain.engine.checkpoint as checkpoint
import cnntrain.engine.step as step_module
from cnntrain.data.folder import read_image
from cnntrain.engine.checkpoint import load_checkpoint, save_atomic
from cnntrain.errors import CnnTrainError
from tests.conftest import run_cli, write_image_folder

REPO = Path(__file__).resolve().parent.parent
# A step schedule does not depend on when a run is resumed; 3 epochs of 45 steps.
LENET = ["fit", "--recipe", "lenet5", "--epochs", "3", "--workers", "0", "--no-progress",
         "--set", "schedule.name=step", "--set", "schedule.step_size=2"]


def cli_process(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cnntrain", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_to_end(args: list[str], timeout: float = 300) -> tuple[int, str]:
    proc = cli_process(args)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("reference")
    code, text = run_to_end([*LENET, "--out", out])
    assert code == 0, text
    return weights(out / "last.pt")


def wait_for_line(proc: subprocess.Popen, fragment: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if fragment in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"process ended before printing {fragment!r}")
    raise AssertionError(f"no {fragment!r} within {timeout}s")


def test_sigkill_at_random_points_then_resume_is_bitwise_exact(tmp_path, reference):
    out = tmp_path / "killed"
    rng = random.Random(1234)
    args = [*LENET, "--out", out, "--set", "train.save_every_steps=4", "--resume", "auto"]
    kills = 0
    for _ in range(3):
        proc = cli_process(args)
        wait_for_line(proc, "fit lenet5")  # started training
        time.sleep(rng.uniform(0.05, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    code, text = run_to_end(args)
    assert code == 0, text
    assert kills >= 1
    assert_bitwise_equal(weights(out / "last.pt"), reference)
    epochs = [line for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 3  # no epoch logged twice after a kill


def test_sigterm_mid_epoch_saves_within_one_step_and_resumes_there(tmp_path, reference):
    # The signal must land inside epoch 1: a quiet machine trains its 45 steps in under
    # 0.3 s, a loaded one takes seconds, and before the handler is installed SIGTERM kills
    # (-15). So a few waits are tried, each run in a folder of its own.
    for attempt, wait in enumerate((0.05, 0.15, 0.3, 0.6, 1.0)):
        out = tmp_path / f"term{attempt}"
        proc = cli_process([*LENET, "--out", out])
        wait_for_line(proc, "fit lenet5")
        time.sleep(wait)
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=60)
        if proc.returncode == 75 and "after step" in text:
            break
    assert proc.returncode == 75, text
    assert "stopped by SIGTERM after step" in text and "--resume auto" in text
    saved = load_checkpoint(out / "last.pt")
    stopped_at = int(text.split("after step ")[1].split()[0])
    assert saved["step"] == stopped_at
    code, text = run_to_end([*LENET, "--out", out, "--resume", "auto"])
    assert code == 0, text
    assert f"step {stopped_at}" in text.splitlines()[0] or f"step {stopped_at}" in text
    assert_bitwise_equal(weights(out / "last.pt"), reference)


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"format": checkpoint.FORMAT, "meta": {}, "x": torch.ones(3)}, path)

    def killed(*_args):
        raise KeyboardInterrupt  # as if the process died between write and rename

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"format": checkpoint.FORMAT, "meta": {}, "x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]  # no temporary left behind


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"format": checkpoint.FORMAT, "meta": {}, "x": torch.ones(3)}, path)

    def disk_full(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(CnnTrainError, match="No space left on device; the previous checkpoint is intact"):
        save_atomic({"format": checkpoint.FORMAT, "meta": {}, "x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))


def test_resume_auto_falls_back_past_a_damaged_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*LENET, "--out", out, "--epochs", "1", "--set", "train.save_every_steps=10"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert (out / "prev.pt").is_file()
    prev_step = load_checkpoint(out / "prev.pt")["step"]
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:1000])  # damaged
    code, text, err = run_cli([*args[:-4], "--out", out, "--epochs", "2", "--resume", "auto"], capsys)
    assert code == 0, err
    assert "passing over damaged" in text and "last.pt" in text and "is damaged" in text
    assert f"prev.pt at epoch 0, step {prev_step}" in text


def nan_at(step: int, monkeypatch) -> None:
    original = step_module.training_loss
    calls = {"n": 0}

    def poisoned(outputs, target, smoothing, *rest):
        calls["n"] += 1
        loss = original(outputs, target, smoothing, *rest)
        return loss * float("nan") if calls["n"] == step else loss

    monkeypatch.setattr(step_module, "training_loss", poisoned)


def test_nan_loss_stops_with_step_lr_and_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    nan_at(7, monkeypatch)
    out = tmp_path / "nan"
    code, _, err = run_cli([*LENET, "--out", out, "--set", "train.save_every_steps=5"], capsys)
    assert code == 3
    assert "loss became nan at step 7 (epoch 1, lr 0.05)" in err
    assert f"the last good checkpoint is {out / 'last.pt'}" in err
    assert load_checkpoint(out / "last.pt")["step"] == 5


def test_nan_steps_can_be_skipped_up_to_a_limit(tmp_path, capsys, monkeypatch):
    nan_at(3, monkeypatch)
    out = tmp_path / "skip"
    code, text, err = run_cli([*LENET, "--out", out, "--epochs", "1", "--set", "train.on_nonfinite=skip"], capsys)
    assert code == 0, err
    assert "step skipped (1 of at most 10)" in text
    assert '"nonfinite_skipped": 1' in (out / "metrics.jsonl").read_text()


def odd_images(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Write one image per odd mode; return the RGB each should decode to."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=100)  # red
    Image.new("L", (12, 10), 128).save(folder / "grey.png")
    rgba = Image.new("RGBA", (12, 10), (0, 0, 255, 255))
    rgba.save(folder / "rgba.png")
    pal = Image.new("P", (12, 10), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(folder / "palette.png")
    Image.fromarray(np.full((10, 12), 65535 // 2, dtype=np.uint16)).save(folder / "deep16.png")
    return {"cmyk.jpg": (255, 0, 0), "grey.png": (128, 128, 128), "rgba.png": (0, 0, 255),
            "palette.png": (0, 255, 0), "deep16.png": (127, 127, 127)}


def test_odd_image_modes_become_rgb(tmp_path):
    for name, rgb in odd_images(tmp_path).items():
        img = read_image(str(tmp_path / name))
        assert img.dtype == torch.uint8 and img.shape == (3, 10, 12), name
        assert np.allclose(img[:, 5, 6].tolist(), rgb, atol=3), (name, img[:, 5, 6].tolist())


def bad_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    root = write_image_folder(tmp_path / "bad")
    cat = root / "train" / "cat"
    good = (cat / "img0.jpg").read_bytes()
    (cat / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (cat / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "notes.txt").write_text("not an image")
    odd_images(root / "train" / "dog")
    return root, ["corrupt.png", "empty.jpg", "notes.txt", "truncated.jpg"]


def test_bad_files_are_skipped_reported_and_strict_mode_stops(tmp_path, capsys):
    root, bad = bad_folder(tmp_path)
    out = tmp_path / "run"
    args = ["fit", "--recipe", "resnet20", "--data", root, "--epochs", "1", "--batch-size", "4",
            "--workers", "0", "--no-progress", "--set", "data.max_bad_fraction=0.5"]
    code, text, err = run_cli([*args, "--out", out], capsys)
    assert code == 0, err
    assert "skipped 4 unreadable" in text
    listed = sorted(Path(line.split("\t")[0]).name for line in (out / "skipped.txt").read_text().splitlines())
    assert listed == bad
    code, _, err = run_cli([*args, "--out", tmp_path / "strict", "--set", "data.strict=true"], capsys)
    assert code == 2 and "unreadable image" in err and "data.strict = true stops here" in err


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": checkpoint.FORMAT, "meta": Evil()}, tmp_path / "evil.pt")
    code, _, err = run_cli(["eval", tmp_path / "evil.pt"], capsys)
    assert code == 2 and "refused" in err
    assert not marker.exists()


def test_data_layout_errors_name_the_path(tmp_path, capsys):
    root = write_image_folder(tmp_path / "empty-class")
    (root / "train" / "owl").mkdir()
    code, _, err = run_cli(["fit", "--recipe", "resnet20", "--data", root, "--workers", "0"], capsys)
    assert code == 2 and f"class folder {root / 'train' / 'owl'} is empty" in err


def test_bad_requests_exit_2_with_one_line(tmp_path, capsys):
    lenet = tmp_path / "lenet"
    assert run_cli([*LENET, "--epochs", "1", "--out", lenet], capsys)[0] == 0
    folder = write_image_folder(tmp_path / "folder")
    other = write_image_folder(tmp_path / "other", classes=("ant", "bee", "cow"))
    assert run_cli(["fit", "--recipe", "resnet20", "--data", folder, "--epochs", "1", "--batch-size", "6",
                    "--workers", "0", "--no-progress", "--out", tmp_path / "r20"], capsys)[0] == 0
    cases = [
        (["fit", "--recipe", "lenet5", "--set", "model.arch=lenet7"], 'unknown model "lenet7"'),
        (["fit", "--recipe", "lenet5", "--set", "schedule.name=cosinus"], 'did you mean "cosine"'),
        (["fit", "--recipe", "lenet5", "--set", "optim.lr"], "malformed --set"),
        (["fit", "--recipe", "lenet5", "--set", "model.arch=resnet20", "--out", lenet, "--resume", "auto"],
         "cannot resume from"),
        (["eval", tmp_path / "r20/best.pt", "--data", other], "was trained on 3 classes"),
        (["eval", lenet / "best.pt", "--crops", "5"], "--crops 5"),
        (["fit", "--recipe", "lenet5", "--set", "train.save_every_steps=-5"], "train.save_every_steps must not be negative"),
        (["fit", "--recipe", "lenet5", "--set", "train.keep_checkpoints=0"], "train.keep_checkpoints must be at least 1"),
        (["fit", "--recipe", "lenet5", "--set", "train.watchdog=-1"], "train.watchdog must not be negative"),
        (["fit", "--recipe", "lenet5", "--set", "data.max_pixels=-1"], "data.max_pixels must be at least 1"),
        (["fit", "--recipe", "lenet5", "--set", "data.max_bad_fraction=2"], "data.max_bad_fraction must be in [0, 1]"),
    ]
    for args, fragment in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert fragment in err, (fragment, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_run_cut_short_by_iterations_extends_with_more_iterations(tmp_path, capsys):
    """train.iterations = 3 ends inside epoch 1; resuming with 6 finishes steps 4-6 of the
    same epoch (not "the run is complete"), bitwise equal to 6 steps in one go."""
    base = ["fit", "--recipe", "lenet5", "--workers", "0", "--no-progress", "--set", "schedule.name=step",
            "--set", "schedule.step_size=2"]
    code, out, err = run_cli([*base, "--out", tmp_path / "cut", "--set", "train.iterations=3"], capsys)
    assert code == 0, err
    code, out, err = run_cli([*base, "--out", tmp_path / "cut", "--set", "train.iterations=6", "--resume", "auto"],
                             capsys)
    assert code == 0, err + out
    assert "is complete" not in out and "(3 into epoch 1)" in out
    code, out, err = run_cli([*base, "--out", tmp_path / "whole", "--set", "train.iterations=6"], capsys)
    assert code == 0, err
    cut, whole = (load_checkpoint(tmp_path / run / "last.pt") for run in ("cut", "whole"))
    assert (cut["step"], cut["epoch"], cut["epoch_step"]) == (6, 0, 6)
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, cut["model"][name]), name
    records = [line for line in (tmp_path / "cut/metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(records) == 1 and '"epoch_steps": 6' in records[0]  # the 3-step record replaced
