"""Trust at scale (issue 17): verified checkpoints, resume checks, a run's folder and data,
bad data with limits, dying loader workers, the watchdog, SLURM requeue, elastic restarts,
and every command's answer to a bad path."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from cnntrain.data.folder import TooLarge, check_pixels
from cnntrain.engine import train as train_module
from cnntrain.engine.checkpoint import load_checkpoint
from cnntrain.engine.runfolder import RunLock
from tests.conftest import run_cli, write_image_folder

REPO = Path(__file__).resolve().parent.parent
HOOKS = Path(__file__).resolve().parent / "hooks"  # sitecustomize.py: faults injected into CLI subprocesses
LENET = ["fit", "--recipe", "lenet5", "--workers", "0", "--no-progress"]
SHORT = [*LENET, "--set", "train.iterations=6", "--set", "schedule.name=step"]


def cli_process(args: list, **env: str) -> subprocess.Popen:
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(HOOKS), str(REPO), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.Popen([sys.executable, "-m", "cnntrain", *map(str, args)], cwd=REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    assert fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def equal_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --------------------------------------------------------------------------- checkpoints


def test_damaged_checkpoints_are_passed_over_and_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*SHORT, "--out", out, "--set", "train.save_every_steps=2"], capsys)[0] == 0
    assert (out / "last.pt.sha256").is_file() and (out / "prev.pt").is_file()
    prev_step = load_checkpoint(out / "prev.pt")["step"]
    data = bytearray((out / "last.pt").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit: still a valid zip archive
    (out / "last.pt").write_bytes(bytes(data))
    for args in (["eval", out / "last.pt"], ["predict", out / "last.pt", tmp_path],
                 ["export", out / "last.pt", "--format", "safetensors", "--out", tmp_path / "x.st"]):
        one_line_error(*run_cli(args, capsys)[::2], "is damaged: its SHA-256 differs")
    code, text, err = run_cli([*SHORT, "--out", out, "--resume", "auto", "--set", "train.save_every_steps=2"], capsys)
    assert code == 0, err
    assert f"passing over damaged {out / 'last.pt'}" in text and f"prev.pt at epoch 0, step {prev_step}" in text
    (out / "best.pt").write_bytes((out / "best.pt").read_bytes()[:500])  # a truncated copy
    one_line_error(*run_cli(["eval", out / "best.pt"], capsys)[::2], "is damaged")


def test_keep_checkpoints_keeps_that_many(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*SHORT, "--out", out, "--set", "train.save_every_steps=1",
                    "--set", "train.keep_checkpoints=3"], capsys)[0] == 0
    steps = [load_checkpoint(out / name)["step"] for name in ("last.pt", "prev.pt", "prev2.pt")]
    assert steps == [6, 5, 4] and not (out / "prev3.pt").exists()


# --------------------------------------------------------------------------- resume and folders


def test_changed_recipe_refuses_to_resume_unless_forced(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*SHORT, "--out", out], capsys)[0] == 0
    code, _, err = run_cli([*SHORT, "--out", out, "--resume", "auto", "--lr", "0.1"], capsys)
    one_line_error(code, err, "the recipe differs in optim.lr 0.05 -> 0.1")
    # what the dying-worker error advises: lower data.max_pixels, then --resume auto
    code, _, err = run_cli([*SHORT, "--out", out, "--resume", "auto", "--set", "data.max_pixels=1000000"], capsys)
    assert code == 0, err
    code, text, err = run_cli([*SHORT, "--out", out, "--resume", "auto", "--lr", "0.1", "--resume-force",
                               "--workers", "1", "--set", "train.save_every_steps=3"], capsys)
    assert code == 0 and "--resume-force" in text, err  # workers and save interval may differ freely


def test_a_used_folder_is_refused_overwritten_aside_and_locked(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*SHORT, "--out", out], capsys)[0] == 0
    one_line_error(*run_cli([*SHORT, "--out", out], capsys)[::2], "already holds a run; continue it with --resume auto")
    code, text, err = run_cli([*SHORT, "--out", out, "--overwrite"], capsys)
    assert code == 0, err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "best.pt").is_file()
    (tmp_path / "busy").mkdir()
    lock = RunLock(tmp_path / "busy").acquire()
    try:  # a concurrent fit: the lock is held, as by another process
        one_line_error(*run_cli([*SHORT, "--out", tmp_path / "busy"], capsys)[::2], f"in use by a running fit (pid {os.getpid()}")
    finally:
        lock.release()
    (tmp_path / "busy" / ".lock").write_text("pid 999999 on elsewhere\n")  # stale: nobody holds the flock
    assert run_cli([*SHORT, "--out", tmp_path / "busy"], capsys)[0] == 0


def test_data_is_recorded_exactly_and_its_recipe_repeats_the_run(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    write_image_folder(work / "digits", size=(12, 12), per_class=3, val_per_class=1)
    monkeypatch.chdir(work)
    one_line_error(*run_cli([*SHORT, "--data", "digits", "--out", tmp_path / "x"], capsys)[::2],
                   "names both the bundled digits set and the folder ./digits")
    assert run_cli([*SHORT, "--data", "./digits", "--out", tmp_path / "a"], capsys)[0] == 0
    monkeypatch.chdir(tmp_path)
    code, text, err = run_cli(["eval", tmp_path / "a" / "best.pt"], capsys)
    assert code == 0 and "6 images" not in err and "3 images" in text, (text, err)  # the folder's val, not sklearn's
    assert str(work / "digits") in (tmp_path / "a" / "recipe.toml").read_text()
    code, _, err = run_cli(["fit", "--recipe", tmp_path / "a" / "recipe.toml", "--workers", "0", "--no-progress",
                            "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    assert equal_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")


# --------------------------------------------------------------------------- bad data


def png_bomb(path: Path, side: int = 40_000) -> None:
    """A PNG whose header declares side x side RGB pixels, followed by a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_skipped_from_its_header(tmp_path, capsys):
    png_bomb(tmp_path / "bomb.png")
    with pytest.raises(TooLarge, match="40000 x 40000"):
        check_pixels((tmp_path / "bomb.png").read_bytes(), 89_478_485)
    root = write_image_folder(tmp_path / "data", size=(12, 12))
    png_bomb(root / "train" / "cat" / "bomb.png")
    out = tmp_path / "run"
    code, text, err = run_cli([*SHORT, "--data", root, "--workers", "1", "--out", out,
                               "--set", "data.max_bad_fraction=0.2"], capsys)
    assert code == 0, err
    assert "skipped 1 unreadable" in text and "over data.max_pixels" in (out / "skipped.txt").read_text()


def test_mostly_unreadable_data_stops_the_run(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", size=(12, 12))
    for i in range(10):
        (root / "train" / "dog" / f"broken{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code, _, err = run_cli([*SHORT, "--data", root, "--out", tmp_path / "run"], capsys)
    one_line_error(code, err, "more than data.max_bad_fraction = 0.01")
    assert str(tmp_path / "run" / "skipped.txt") in err


@pytest.mark.parametrize("sig", ["SIGSEGV", "SIGKILL"])
def test_a_dying_loader_worker_ends_the_run_naming_its_file(tmp_path, capsys, sig):
    root = write_image_folder(tmp_path / "data", size=(12, 12))
    assert run_cli([*SHORT, "--data", root, "--out", tmp_path / "run"], capsys)[0] == 0  # a checkpoint to keep
    (root / "train" / "cat" / "poison.png").write_bytes((root / "train" / "cat" / "img1.png").read_bytes())
    start = time.monotonic()
    proc = cli_process([*SHORT, "--data", root, "--workers", "2", "--out", tmp_path / "run", "--resume", "auto",
                        "--set", "train.iterations=12"], CNNTRAIN_TEST_POISON=sig)
    _, err = proc.communicate(timeout=120)
    assert time.monotonic() - start < 100  # exits: no worker left to join at interpreter exit
    one_line_error(proc.returncode, err.strip().splitlines()[-1] if err.strip() else "", "a data-loading process died")
    assert f"killed by {sig}) while decoding {root / 'train' / 'cat' / 'poison.png'}" in err
    assert "then continue with --resume auto" in err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] >= 6  # the latest checkpoint is intact (verified)


def test_a_dying_loader_worker_ends_eval_and_predict_too(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", size=(12, 12))
    assert run_cli([*SHORT, "--data", root, "--out", tmp_path / "run"], capsys)[0] == 0
    poison = root / "val" / "cat" / "poison.png"
    poison.write_bytes((root / "val" / "cat" / "img1.png").read_bytes())
    for args in (["eval", tmp_path / "run" / "best.pt", "--data", root],
                 ["predict", tmp_path / "run" / "best.pt", root / "val"]):
        start = time.monotonic()
        proc = cli_process([*args, "--workers", "2", "--batch-size", "1"], CNNTRAIN_TEST_POISON="SIGSEGV")
        _, err = proc.communicate(timeout=120)
        assert time.monotonic() - start < 100, args  # no worker left behind to hold the exit
        one_line_error(proc.returncode, err.strip().splitlines()[-1] if err.strip() else "", "a data-loading process died")
        assert f"killed by SIGSEGV) while decoding {poison}" in err and "run again" in err, err


# --------------------------------------------------------------------------- hangs and schedulers


def test_the_watchdog_dumps_every_stack_and_exits_124(tmp_path):
    proc = cli_process([*SHORT, "--out", tmp_path / "run", "--set", "train.watchdog=1"], CNNTRAIN_TEST_SLEEP_AT="3")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 124, err
    assert "watchdog: no training step finished" in err and "Thread" in err and "_sleeping" in err
    assert "Thread" in (tmp_path / "run" / "watchdog.log").read_text()


def test_sigusr1_under_slurm_saves_and_requeues(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    original = train_module.Trainer._train_step

    def signalled(self, images, target, lr):
        if self.progress.step == 2:
            signal.raise_signal(signal.SIGUSR1)  # what SLURM sends before the time limit
        return original(self, images, target, lr)

    monkeypatch.setattr(train_module.Trainer, "_train_step", signalled)
    code, text, err = run_cli([*SHORT, "--out", tmp_path / "run", "--set", "train.requeue=true"], capsys)
    assert code == 75, err
    assert calls.read_text().split() == ["requeue", "4242"] and "requeued SLURM job 4242" in text
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3


# --------------------------------------------------------------------------- elastic restarts

# ResNet-20 at 8 px on synthetic data, with PCA lighting drawn from each process's global
# RNG: a mid-epoch resume that reseeded the ranks instead of restoring each one's saved
# RNG state does not end bitwise equal (checked: the weights then differ).
ELASTIC = ["fit", "--recipe", "resnet20", "--data", "synthetic", "--set", "data.train_size=8",
           "--set", "data.eval_resize=8", "--set", "augment.pca_lighting=0.1", "--set", "data.synthetic_train_samples=64",
           "--set", "data.synthetic_val_samples=16", "--batch-size", "16", "--epochs", "2",
           "--set", "train.save_every_steps=2", "--nproc", "2", "--device", "cpu", "--workers", "0", "--no-progress"]


def test_a_rank_killed_mid_epoch_restarts_and_ends_bitwise_equal(tmp_path):
    plain = cli_process([*ELASTIC, "--out", tmp_path / "plain"])
    # killed before step 8: the newest checkpoint is step 6, mid-epoch (4 steps an epoch)
    killed = cli_process([*ELASTIC, "--out", tmp_path / "killed", "--max-restarts", "1"], CNNTRAIN_TEST_KILL_AT="7")
    for proc in (plain, killed):
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    assert "last.pt at epoch 1, step 6 (2 into epoch 2)" in out  # the restarted group resumed by itself
    assert equal_weights(tmp_path / "plain" / "last.pt", tmp_path / "killed" / "last.pt")


def test_torchrun_max_restarts_resumes_the_restarted_group(tmp_path):
    """torchrun's own agent (not fit --nproc): the restarted processes see
    TORCHELASTIC_RESTART_COUNT > 0 and resume by themselves."""
    tiny = [*ELASTIC[1:ELASTIC.index("--epochs")], "--epochs", "1", "--set", "train.save_every_steps=2",
            "--device", "cpu", "--workers", "0", "--no-progress", "--out", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "CNNTRAIN_TEST_KILL_AT": "3",
           "PYTHONPATH": os.pathsep.join([str(HOOKS), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "--max-restarts", "1", "--monitor-interval", "0.1", "-m", "cnntrain", "fit", *tiny],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "last.pt at epoch 0, step 2 (2 into epoch 1)" in done.stdout  # rank 1 died before step 4
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4


def test_a_two_process_checkpoint_resumes_in_one_process_with_a_note(tmp_path, capsys):
    tiny = [*ELASTIC[:ELASTIC.index("--epochs")], "--device", "cpu", "--workers", "0", "--no-progress"]  # 4 steps an epoch
    out = tmp_path / "run"
    proc = cli_process([*tiny, "--epochs", "1", "--nproc", "2", "--out", out])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert load_checkpoint(out / "last.pt")["world"] == 2
    code, text, err = run_cli([*tiny, "--epochs", "2", "--out", out, "--resume", "auto"], capsys)
    assert code == 0, err
    assert "written by 2 process(es), this run has 1" in text and "no longer bitwise comparable" in text
    assert load_checkpoint(out / "last.pt")["step"] == 8


# --------------------------------------------------------------------------- bad paths


def test_every_command_answers_a_bad_path_with_one_line(tmp_path, capsys):
    a_file, a_dir = tmp_path / "file.txt", tmp_path / "dir"
    a_file.write_text("not a checkpoint")
    a_dir.mkdir()
    missing, unwritable = tmp_path / "missing", a_file / "sub"  # a path under a file can never be created
    assert run_cli([*SHORT, "--out", tmp_path / "run"], capsys)[0] == 0
    ck, image = tmp_path / "run" / "best.pt", write_image_folder(tmp_path / "images", per_class=1) / "train" / "cat" / "img0.jpg"
    cases = [
        (["fit", "--recipe", missing / "r.toml"], "does not exist"),
        (["fit", "--recipe", "lenet5", "--data", missing], "no such file or folder"),
        (["fit", "--recipe", "lenet5", "--data", a_file], "is a file, not a folder"),
        (["fit", "--recipe", "lenet5", "--out", a_file], "is a file"),
        (["fit", "--recipe", "lenet5", "--out", unwritable / "run"], "cannot create the run folder"),
        (["fit", "--recipe", "lenet5", "--workers", "-1"], "--workers -1"),
        (["eval", missing], "does not exist"),
        (["eval", a_dir], "is a folder"),
        (["eval", a_file], "not a cnntrain checkpoint"),
        (["ensemble", a_file, missing], "not a cnntrain checkpoint"),
        (["recipes", missing / "r.toml"], "does not exist"),
        (["summary", "lenet5", "--json", a_dir], str(a_dir)),
        (["summary", "lenet5", "--json", unwritable / "s.json"], str(unwritable)),
        (["compare", "lenet5", "--plot", unwritable / "c.png"], str(unwritable)),
        (["bench", "data", "--data", missing], str(missing)),
        (["bench", "decode", "--data", a_file], str(a_file)),
        (["bench", "make-jpegs", unwritable, "--count", "1"], str(unwritable)),
        (["bench", "make-cifar", a_file, "--count", "5", "--test", "1"], "is a file, not a folder"),
        (["bench", "make-cifar", unwritable, "--count", "5", "--test", "1"], f"{a_file} is a file, not a folder"),
        (["bench", "train", "--recipe", "lenet5", "--device", "cpu", "--steps", "1", "--repeats", "1", "--warmup", "0",
          "--batch-size", "4", "--json", unwritable / "b.json"], f"{a_file} is a file, not a folder"),
        (["predict", missing, a_file], "does not exist"),
        (["predict", ck, missing], "no such file or folder"),
        (["predict", ck, image, "--csv", a_dir], "is a folder; give a file path"),
        (["predict", ck, image, "--json", unwritable / "p.json"], f"{a_file} is a file, not a folder"),
        (["eval", ck, "--json", unwritable / "e.json"], f"{a_file} is a file, not a folder"),
        (["export", missing, "--format", "safetensors", "--out", tmp_path / "x.st"], "does not exist"),
        (["export", ck, "--format", "safetensors", "--out", a_dir], "is a folder; give a file path"),
        (["export", ck, "--format", "safetensors", "--out", unwritable / "x.st"], f"{a_file} is a file, not a folder"),
        (["plot", missing], str(missing)),
        (["plot", tmp_path / "run", "--out", a_dir], "is a folder; give a file path"),
        (["runs", missing], "is not a folder"),
        (["runs", a_file], "is not a folder"),
        (["data", "check", a_file], "is a file, not a folder"),
        (["data", "check", missing], "no such folder"),
        (["data", "imagenet-val", missing, "--labels", missing / "l.csv"], "no such file"),
        (["data", "imagenet-val", a_dir, "--labels", a_file, "--out", a_file], "is a file, not a folder"),
    ]
    wrong = []
    for args, fragment in cases:
        code, _, err = run_cli(args, capsys)
        # one error line (the --data errors then list the accepted layouts), never a traceback
        if code != 2 or not err.startswith("error: ") or fragment not in err.splitlines()[0] or "Traceback" in err:
            wrong.append((args, code, err[-300:]))
    assert not wrong, wrong
