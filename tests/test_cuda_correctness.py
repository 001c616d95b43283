"""The CUDA and multi-process defects of issue #11, checked where a CPU can show them;
the rest are ``cuda``-marked and run by scripts/gpu-check on a GPU machine."""
from __future__ import annotations

import os
import threading

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cnntrain.data import BatchPrep
from cnntrain.engine import distributed
from cnntrain.engine.dataparallel import AutocastForward
from cnntrain.engine.device import Precision, auto_amp_dtype, choose_precision
from cnntrain.engine.ema import WeightAverage
from cnntrain.engine.evaluate import load_member, evaluate, fp32_head
from cnntrain.engine.factory import GlobalMeanPool, deterministic_pools
from cnntrain.engine.options import FitOptions
from cnntrain.engine.runstate import load_scaler_state
from cnntrain.engine.train import Trainer
from cnntrain.models import build_model, drops
from cnntrain.models.fractalnet import FractalNet
from cnntrain.models.stochastic_depth import stochastic_blocks
from cnntrain.recipe import load_recipe
from tests.test_distributed import cli, free_port

TINY = ["--data", "synthetic", "--device", "cpu", "--batch-size", "4", "--lr", "0.001", "--no-progress",
        "--workers", "0", "--set", "data.synthetic_train_samples=16", "--set", "data.synthetic_val_samples=4",
        "--set", "data.train_size=16", "--set", "train.iterations=4", "--set", "data.num_classes=4"]


# ------------------------------------------------------------------ 1: DDP and drop decisions


@pytest.mark.parametrize("recipe", [["resnet110-stochastic-depth"], ["fractalnet", "--set", "model.arch=fractalnet-20"]])
def test_ddp_trains_models_that_skip_blocks(tmp_path, recipe):
    """Step 2 used to fail: "Expected to have finished reduction in the prior iteration"."""
    done = cli("fit", "--recipe", *recipe, "--nproc", "2", "--out", str(tmp_path / "run"), *TINY, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "last.pt").is_file()


def _units(model: nn.Module) -> list[nn.Module]:
    """The layers whose running tells which blocks (stochastic depth) or paths (FractalNet's
    conv units) a step kept."""
    if isinstance(model, FractalNet):
        return [unit for block in model.blocks for column in block.columns for unit in column]
    return [block.conv1 for block in stochastic_blocks(model)]


def _drop_rank(rank: int, world: int, port: int, out: str, arch: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    env, _ = distributed.setup("cpu", timeout_s=60)
    distributed.reseed_rank(env, 0, 0)  # the ranks' global RNGs differ, as in training
    model = build_model(arch, num_classes=4).train()
    ran: list[int] = []
    for i, unit in enumerate(_units(model)):
        unit.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    patterns = []
    for step in range(4):
        ran.clear()
        drops.reseed(7, step, model)
        with torch.no_grad():
            model(torch.randn(2, 3, 8, 8))
        patterns.append(list(ran))
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, patterns)
    if rank == 0:
        torch.save({"patterns": gathered}, out)
    distributed.teardown()


@pytest.mark.parametrize("arch", ["resnet110-stochastic-depth", "fractalnet-20"])
def test_ranks_drop_the_same_blocks(tmp_path, arch):
    out = tmp_path / "patterns.pt"
    mp.spawn(_drop_rank, args=(2, free_port(), str(out), arch), nprocs=2, join=True)
    first, second = torch.load(out, weights_only=True)["patterns"]
    assert first == second
    units = len(_units(build_model(arch, num_classes=4)))
    assert any(len(p) < units for p in first) and len(set(map(tuple, first))) > 1  # skipped, per step


def test_skipping_models_are_wrapped_to_find_unused_parameters():
    assert drops.skips_parameters(build_model("fractalnet-20"))
    assert drops.skips_parameters(build_model("resnet110-stochastic-depth"))
    assert not drops.skips_parameters(build_model("resnet20"))


# ------------------------------------------------------------------ 2, 3: precision


def test_dataparallel_replica_threads_autocast_with_the_runs_dtype():
    model = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    seen = {}

    def replica(name: str, module: nn.Module) -> None:  # DataParallel runs each replica in a thread
        seen[name] = module(x).dtype

    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name, module in (("bare", model), ("wrapped", AutocastForward(model, torch.bfloat16))):
            t = threading.Thread(target=replica, args=(name, module))
            t.start()
            t.join()
    assert seen == {"bare": torch.float32, "wrapped": torch.bfloat16}  # the bare replica lost autocast


def test_auto_amp_is_bf16_only_where_the_gpu_computes_it():
    assert auto_amp_dtype((7, 0)) == torch.float16  # V100
    assert auto_amp_dtype((7, 5)) == torch.float16  # T4
    assert auto_amp_dtype((8, 0)) == torch.bfloat16  # A100
    assert auto_amp_dtype((9, 0)) == torch.bfloat16  # H100


# ------------------------------------------------------------------ 4: resume into an fp16 run


def test_an_enabled_scaler_resumes_from_a_checkpoint_without_one(capsys):
    saved = torch.amp.GradScaler("cpu", enabled=False).state_dict()  # a CPU / bf16 run's
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # the fp16 run's, built where it cannot run on CUDA
    with pytest.raises(RuntimeError):
        scaler.load_state_dict(saved)  # what resume did before
    load_scaler_state(scaler, saved)
    assert scaler.get_scale() == 65536.0 and "initial scale" in capsys.readouterr().out
    other = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
    load_scaler_state(scaler, other.state_dict())
    assert scaler.get_scale() == 1024.0


def test_an_fp16_run_resumes_a_cpu_checkpoint_through_runstate(tmp_path, capsys):
    """The whole resume path (RunState.resume), with the fp16 run's enabled scaler built
    where it cannot run on CUDA: the CPU run's checkpoint holds an empty scaler state."""
    recipe = load_recipe("lenet5", ["optim.batch_size=8", "train.iterations=2", "train.eval_every=100"])
    Trainer(recipe, FitOptions(out=tmp_path, device="cpu", progress=False, workers=0)).run()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["scaler"] == {}
    again = Trainer(recipe, FitOptions(out=tmp_path, device="cpu", progress=False, workers=0))
    again.state.scaler = torch.amp.GradScaler("cpu", enabled=True)  # what train.amp = "fp16" builds
    again.state.resume("auto")
    assert again.progress.step == 2 and again.state.scaler.is_enabled()
    assert again.state.scaler.get_scale() == 65536.0 and "initial scale" in capsys.readouterr().out


# ------------------------------------------------------------------ 6, 13: host reads


@pytest.fixture
def host_reads(monkeypatch):
    """Counts every read of a tensor's value into Python."""
    count = {"n": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *a, real=real, **k):
            count["n"] += 1
            return real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counting)
    return count


def test_a_training_step_reads_the_device_once(tmp_path, host_reads):
    recipe = load_recipe("lenet5", ["optim.batch_size=8", "train.iterations=12", "train.eval_every=100"])
    trainer = Trainer(recipe, FitOptions(out=tmp_path, device="cpu", progress=False, workers=0))
    images, target = next(iter(trainer.train_loader))[:2]
    for step in range(4):
        before = host_reads["n"]
        trainer._train_step(images, target, 0.01)
        assert trainer._stop_requested(images) is False
        assert host_reads["n"] - before == 1, f"step {step}: the loss's read only"
    meter = trainer.progress.meter
    assert meter.host_reads == 0 and meter.samples == 32  # counts stayed on the device
    assert meter.result()["samples"] == 32 and meter.host_reads == 1


def test_evaluation_reads_nothing_per_batch(host_reads):
    model = build_model("lenet5", num_classes=10, in_channels=1).eval()
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8, generator=g), torch.tensor([0, 1, 2, 3]), [])
              for _ in range(5)]
    prep = BatchPrep((0.5,), (0.25,), torch.device("cpu"))
    before = host_reads["n"]
    (meter,), _ = evaluate([model], loader, [prep], torch.device("cpu"), Precision(None, False), (1, 5))
    assert host_reads["n"] - before <= 5  # one emptiness check per batch at most, no per-K reads
    assert meter.host_reads == 0 and meter.samples == 20


# ------------------------------------------------------------------ 10: EMA


def test_fused_ema_equals_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    avg = WeightAverage(model, 0.9)
    expected = {k: v.clone() for k, v in avg.module.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked.add_(1)
        current = model.state_dict()
        for k, v in expected.items():
            expected[k] = v * 0.9 + current[k] * 0.1 if v.dtype.is_floating_point else current[k].clone()
        avg.update(model)
    for k, v in avg.module.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6)
    assert avg.updates == 3


# ------------------------------------------------------------------ 11, 12: evaluation


def test_eval_follows_the_recipes_memory_format_and_computes_logits_in_fp32(tmp_path):
    for fmt in ("off", "on"):
        out = tmp_path / fmt
        code = cli("fit", "--recipe", "lenet5", "--out", str(out), "--device", "cpu", "--no-progress",
                   "--set", "train.iterations=1", "--set", f"train.channels_last={fmt}").returncode
        assert code == 0
        model, _, _, precision = load_member(str(out / "best.pt"), torch.device("cpu"))
        conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1]  # C > 1: formats differ
        assert precision.channels_last == (fmt == "on")
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == (fmt == "on")
        assert conv.weight.is_contiguous() == (fmt == "off")


def test_fp32_head_keeps_logits_out_of_autocast():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert body(x).dtype == torch.bfloat16
        head = fp32_head(body, 5)
        out = head(x)
    assert out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = body[1](body[0](x))
    torch.testing.assert_close(out, nn.functional.linear(hidden.float(), body[2].weight, body[2].bias))


# ------------------------------------------------------------------ 8: deterministic pooling


def test_deterministic_pools_keep_outputs_and_state_dict():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    keys = list(model.state_dict())
    expected = model(x)
    deterministic_pools(model)
    assert any(isinstance(m, GlobalMeanPool) for m in model.modules())
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), expected)


# ------------------------------------------------------------------ GPU only (scripts/gpu-check)

cuda = pytest.mark.cuda


@cuda
def test_cuda_dataparallel_bf16_fit(tmp_path):
    """--strategy dp: DataParallel over the visible GPUs in one process (one GPU is enough),
    with bf16 autocast inside each replica's forward."""
    done = cli("fit", "--recipe", "resnet20", "--data", "synthetic", "--strategy", "dp", "--device", "cuda",
               "--out", str(tmp_path / "run"), "--no-progress", "--set", "train.amp=bf16", "--set", "train.iterations=4",
               "--set", "data.synthetic_train_samples=64", "--set", "data.synthetic_val_samples=32", "--batch-size", "16")
    assert done.returncode == 0, done.stderr[-2000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not any(k.startswith("module.") for k in state["model"])  # saved unwrapped, loadable without DP


@cuda
def test_cuda_bf16_step_has_one_sync_and_tunes_cudnn(tmp_path):
    recipe = load_recipe("resnet20", ["optim.batch_size=32", "train.iterations=4", "train.amp=bf16"])
    trainer = Trainer(recipe, FitOptions(out=tmp_path, data="synthetic", device="cuda", progress=False, workers=0))
    assert torch.backends.cudnn.benchmark
    images, target = next(iter(trainer.train_loader))[:2]
    trainer._train_step(images, target, 0.1)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as caught:
            trainer._train_step(images, target, 0.1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 2, [str(w.message) for w in syncs]  # the loss read (+ the H2D copy of pinned input)


@cuda
def test_cuda_deterministic_runs_are_bitwise_equal(tmp_path):
    states = []
    for name in ("a", "b"):
        recipe = load_recipe("resnet20", ["optim.batch_size=16", "train.iterations=3", "train.deterministic=true",
                                          "data.synthetic_train_samples=48"])
        Trainer(recipe, FitOptions(out=tmp_path / name, data="synthetic", device="cuda", progress=False,
                                   workers=0)).run()
        states.append(torch.load(tmp_path / name / "last.pt", weights_only=True)["model"])
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


@cuda
def test_cuda_eval_precision_policy():
    dev = torch.device("cuda", 0)
    p = choose_precision(dev, "auto", "auto")
    assert p.amp_dtype == auto_amp_dtype(torch.cuda.get_device_capability(dev))


@cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm across GPUs needs two")
def test_cuda_syncbn_channels_last_bf16_two_gpus(tmp_path):
    done = cli("fit", "--recipe", "resnet20", "--data", "synthetic", "--nproc", "2", "--device", "cuda",
               "--out", str(tmp_path / "run"), "--no-progress", "--set", "train.sync_bn=true",
               "--set", "train.amp=bf16", "--set", "train.channels_last=on", "--set", "train.iterations=4",
               "--batch-size", "32", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_gpu_check_script_runs_its_steps_on_cpu(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(root / "scripts" / "gpu-check"), "--cpu"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    steps = report["steps"]
    assert report["mode"] == "cpu" and {"cuda-tests", "bench-train", "bench-data-jpeg", "bench-data-cifar",
                                        "fit-resnet20"} <= set(steps)
    assert steps["bench-train"]["result"]["cnntrain_images_per_s"] > 0
    assert steps["bench-data-cifar"]["result"]["pipeline"] == "device-resident"
    assert steps["bench-data-jpeg"]["result"]["baseline_images_per_s"] > 0
    assert steps["fit-resnet20"]["result"]["epoch"] == 1 and "held on cpu" in steps["fit-resnet20"]["tail"]
    assert "bench-data-cifar" in done.stdout and "torchvision" in done.stdout
    assert {step["status"] for step in steps.values() if "tail" in step} == {"pass"}


def test_gpu_check_names_a_missing_dependency_before_any_step(tmp_path):
    """A package pyproject.toml needs but the GPU's python lacks is named at once (exit 2),
    instead of every step failing: a shim package makes `import matplotlib` fail."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "shim" / "matplotlib").mkdir(parents=True)
    (tmp_path / "shim" / "matplotlib" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "shim")}
    done = subprocess.run(["bash", str(root / "scripts" / "gpu-check"), "--cpu"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "missing Python packages: matplotlib>=3.7" in done.stderr and "WHEELS" in done.stderr
    assert not list((tmp_path / "out").glob("*.log"))  # no step ran
