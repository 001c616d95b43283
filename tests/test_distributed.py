"""Several processes on CPU (Gloo): one DDP step equals one big-batch step, ``fit
--nproc 2`` trains like one process, evaluation counts every sample once, checkpoints
move between process counts, and a failing rank ends the job with its error."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cnntrain.data import BatchPrep
from cnntrain.engine import distributed
from cnntrain.engine.checkpoint import unwrap
from cnntrain.engine.launch import check_launch, failure_error
from cnntrain.engine.device import Precision
from cnntrain.engine.step import FitStep
from cnntrain.errors import CnnTrainError
from cnntrain.models import build_model

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.5,), (0.25,)


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cnntrain", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return (torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (8,), generator=g))


def one_step(env: distributed.DistEnv, images, target, accumulate: int):
    """A LeNet-5 (same init everywhere) after one FitStep on this process's images."""
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=10, in_channels=1)
    model = distributed.wrap_model(model, env, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = FitStep(model, opt, torch.amp.GradScaler("cpu", enabled=False), BatchPrep(MEAN, STD, torch.device("cpu")),
                   Precision(None, False), torch.device("cpu"), accumulate=accumulate, env=env)
    _, _, loss = step(images, target)
    bare = unwrap(model)
    return loss, {n: p.grad.clone() for n, p in bare.named_parameters()}, bare.state_dict()


def _rank_main(rank: int, world: int, port: int, out: str, accumulate: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    env, device = distributed.setup("cpu", timeout_s=60)
    assert env.world == world and device.type == "cpu"
    images, target = global_batch()
    per = distributed.per_process_batch(8, env, accumulate)
    # this process's share of the global batch, as the sharded sampler would hand it
    loss, grads, state = one_step(env, images[rank::world][:per], target[rank::world][:per], accumulate)
    if rank == 0:
        torch.save({"loss": loss, "grads": grads, "state": state}, out)
    distributed.teardown()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_two_process_step_equals_one_process_step(tmp_path, accumulate):
    images, target = global_batch()
    order = torch.cat([torch.arange(0, 8, 2), torch.arange(1, 8, 2)])  # the same samples, one process
    loss1, grads1, state1 = one_step(distributed.SINGLE, images[order], target[order], 1)
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_main, args=(2, free_port(), str(out), accumulate), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    assert got["loss"] == pytest.approx(loss1, rel=1e-5)
    for name, g in grads1.items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6)
    for name, v in state1.items():
        torch.testing.assert_close(got["state"][name], v, rtol=1e-4, atol=1e-6)


def test_accumulation_matches_the_whole_batch():
    images, target = global_batch()
    loss1, grads1, _ = one_step(distributed.SINGLE, images, target, 1)
    loss4, grads4, _ = one_step(distributed.SINGLE, images, target, 4)
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    for name, g in grads1.items():
        torch.testing.assert_close(grads4[name], g, rtol=1e-4, atol=1e-6)


def test_launch_checks_and_batch_split(monkeypatch):
    with pytest.raises(CnnTrainError, match="not divisible by the 3 processes"):
        distributed.per_process_batch(32, distributed.DistEnv(world=3))
    with pytest.raises(CnnTrainError, match="equal micro-batches"):
        distributed.per_process_batch(32, distributed.DistEnv(world=2), accumulate=3)
    assert distributed.per_process_batch(32, distributed.DistEnv(world=2), accumulate=4) == 16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(CnnTrainError, match="--nproc 4 needs 4 GPUs .* 2 are visible"):
        check_launch(4, "cuda", "ddp")
    check_launch(2, "auto", "ddp")
    check_launch(4, "cpu", "ddp")
    with pytest.raises(CnnTrainError, match="--strategy dp runs one process"):
        check_launch(2, "cuda", "dp")
    with pytest.raises(CnnTrainError, match="sync_bn needs CUDA"):
        distributed.wrap_model(build_model("resnet20"), distributed.DistEnv(world=2), torch.device("cpu"),
                               sync_bn=True)


def test_failure_report_names_the_rank():
    class Failure:
        def __init__(self, message, exitcode=1, timestamp=0):
            self.message, self.exitcode, self.timestamp = message, exitcode, timestamp

    class Failed:
        def __init__(self, failures):
            self.failures = failures

        def get_first_failure(self):
            return min(self.failures.items(), key=lambda kv: kv[1].timestamp)

    peer = Failure({"message": "RuntimeError: Connection closed by peer", "extraInfo": {"py_callstack": "tb"}}, 1, 1)
    user = Failure({"message": "UserError: unreadable image x.jpg", "extraInfo": {}}, 1, 2)
    err = failure_error(Failed({0: peer, 1: user}))
    assert str(err) == "rank 1: unreadable image x.jpg" and err.exit_code == 2
    recorded = {1: {"message": "UserError: rank 1 read garbage", "extraInfo": {}}}
    assert str(failure_error(Failed({0: peer}), recorded)) == "rank 1: rank 1 read garbage"
    cause = {1: {"message": "ValueError: bad shape", "extraInfo": {"py_callstack": "tb1", "timestamp": "5"}}}
    assert str(failure_error(Failed({0: peer}), cause)).startswith("rank 1 failed (exit code 1): "
                                                                              "ValueError: bad shape\ntb1")
    bug = failure_error(Failed({0: peer}))
    assert "rank 0 failed (exit code 1): RuntimeError: Connection closed by peer\ntb" == str(bug)
    killed = failure_error(Failed({3: Failure("", -9)}))
    assert "rank 3 was killed by signal SIGKILL" in str(killed) and killed.exit_code == 1


# ------------------------------------------------------------------ the CLI, end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    common = ["--recipe", "lenet5", "--epochs", "3", "--device", "cpu", "--no-progress"]
    one = cli("fit", *common, "--out", str(base / "one"))
    two = cli("fit", *common, "--out", str(base / "two"), "--nproc", "2")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    return base, one, two


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one(runs):
    base, one, two = runs
    m1, m2 = metrics(base / "one"), metrics(base / "two")
    assert len(m1) == len(m2) == 3
    assert all(r["val_samples"] == 360 for r in m1 + m2)  # every digit counted once
    assert abs(m1[-1]["val_top1"] - m2[-1]["val_top1"]) < 5.0
    assert "2 processes (gloo)" in two.stdout
    assert two.stdout.count("epoch 3/3") == 1  # rank 0 alone prints
    for name in ("best.pt", "last.pt", "recipe.toml"):
        assert (base / "two" / name).is_file()


def test_checkpoint_moves_between_process_counts(runs, tmp_path):
    base, _, _ = runs
    best = max(r["val_top1"] for r in metrics(base / "two"))
    single = cli("eval", str(base / "two" / "best.pt"), "--device", "cpu", "--json", str(tmp_path / "1.json"))
    assert single.returncode == 0, single.stderr
    r1 = json.loads((tmp_path / "1.json").read_text())
    assert r1["samples"] == 360 and r1["top1"] == pytest.approx(best, abs=1e-9)
    double = cli("eval", str(base / "two" / "best.pt"), "--device", "cpu", "--nproc", "2",
                 "--json", str(tmp_path / "2.json"))
    assert double.returncode == 0, double.stderr
    r2 = json.loads((tmp_path / "2.json").read_text())
    assert r2["samples"] == 360 and r2["processes"] == 2
    assert r2["top1"] == r1["top1"] and r2["top5"] == r1["top5"]
    assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)


def test_compile_under_ddp_on_cpu(tmp_path):
    """train.compile=on with two gloo processes: torch compiles the DDP-wrapped model per
    bucket; the checkpoint holds the plain model's keys. (About 30 s: inductor on CPU.)"""
    done = cli("fit", "--recipe", "lenet5", "--nproc", "2", "--device", "cpu", "--set", "train.compile=on",
               "--set", "train.iterations=4", "--set", "schedule.name=constant", "--workers", "0", "--no-progress",
               "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes (gloo)" in done.stdout and "compiled" in done.stdout and "Traceback" not in done.stderr
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 4 and not any("_orig_mod" in k or k.startswith("module.") for k in state["model"])


def test_a_failing_rank_ends_the_job(tmp_path):
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((20, 24, 3), 40 * i + 60, np.uint8)).save(folder / f"{i}.jpg")
    bad = tmp_path / "data" / "train" / "b" / "1.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    start = time.monotonic()
    res = cli("fit", "--recipe", "lenet5", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
              "--epochs", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--nproc", "2",
              "--no-progress", "--set", "data.strict=true", "--set", "train.dist_timeout=60")
    elapsed = time.monotonic() - start
    assert res.returncode == 2
    assert "unreadable image" in res.stderr and str(bad) in res.stderr
    # the last error line names the rank (multiprocessing's resource tracker may still
    # warn about the killed peer's semaphores after it, at interpreter exit)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert errors and errors[-1].startswith("error: rank ")
    assert elapsed < 60  # the launcher stops the peer at once; no wait for the collective timeout


def run_main(capsys, *args: str) -> tuple[int, str]:
    from cnntrain.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


def test_cli_one_line_errors(capsys):
    code, err = run_main(capsys, "fit", "--recipe", "lenet5", "--nproc", "2", "--device", "cuda")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs 2 GPUs" in err or "CUDA is not available" in err
    code, err = run_main(capsys, "fit", "--recipe", "lenet5", "--nproc", "2", "--device", "cpu", "--batch-size", "33")
    assert code == 2 and "not divisible by the 2 processes" in err
    if not torch.cuda.is_available():
        code, err = run_main(capsys, "fit", "--recipe", "lenet5", "--strategy", "dp")
        assert code == 2 and "needs CUDA" in err
