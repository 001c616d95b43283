"""The CUDA set-up policy each command asks for (autotuning, TF32), and precision in
evaluation: fp32 classifier heads in validation, each ensemble member under its own
recipe's autocast. Checked on CPU through the pure policy and recorded calls; the
``cuda``-marked test shows the head's arithmetic on a GPU."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cnntrain.data import BatchPrep
from cnntrain.engine import distributed, protocols
from cnntrain.engine.device import CudaTuning, Precision, cuda_tuning
from cnntrain.engine.evaluate import evaluate, fp32_head, fp32_head_during
from cnntrain.engine.options import EvalOptions, FitOptions
from cnntrain.engine.train import Trainer
from cnntrain.recipe import load_recipe


def test_autotuning_only_for_fixed_shapes_and_tf32_only_for_training():
    ampere, volta = (8, 0), (7, 0)
    assert cuda_tuning(ampere, False, fixed_shapes=True, training=True) == CudaTuning(True, True)
    assert cuda_tuning(ampere, False, fixed_shapes=True, training=False) == CudaTuning(True, False)  # eval
    assert cuda_tuning(ampere, False, fixed_shapes=False, training=False) == CudaTuning(False, False)  # dense
    assert cuda_tuning(ampere, True, fixed_shapes=True, training=True) == CudaTuning(False, True)  # deterministic
    assert cuda_tuning(volta, False, fixed_shapes=True, training=True) == CudaTuning(True, False)


class _Asked(Exception):
    pass


@pytest.fixture
def asked(monkeypatch):
    """What the commands pass to distributed.setup (stops the command there)."""
    calls: list[dict] = []

    def setup(device="auto", timeout_s=0, deterministic=False, **kw):
        calls.append(kw)
        raise _Asked

    monkeypatch.setattr(distributed, "setup", setup)
    return calls


def test_fit_and_dense_evaluation_ask_for_their_tuning(tmp_path, asked):
    with pytest.raises(_Asked):
        Trainer(load_recipe("lenet5"), FitOptions(out=tmp_path, device="cpu", progress=False))
    for name in ("vgg-dense", "10crop"):
        with pytest.raises(_Asked):
            protocols.eval_protocol(EvalOptions(checkpoint="x.pt", protocol=name, device="cpu"))
    assert asked == [{"fixed_shapes": True, "training": True}, {"fixed_shapes": False}, {"fixed_shapes": True}]


def test_fp32_head_turns_tf32_off_around_the_classifier_only():
    seen = []
    head = nn.Linear(4, 3)
    plain = head.forward

    def recording(x):  # the head's own computation, inside what fp32_head wraps around it
        seen.append((torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32))
        return plain(x)
    head.forward = recording
    model = nn.Sequential(nn.Linear(4, 4), head)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # what training sets on Ampere
    try:
        fp32_head(model, 3)(torch.randn(2, 4))
        after = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    finally:
        torch.set_float32_matmul_precision(before)
    assert seen == [("highest", False)] and after == ("high", True)


def test_validation_computes_the_head_in_fp32_and_training_keeps_autocast(tmp_path):
    recipe = load_recipe("lenet5", ["train.amp=bf16", "train.iterations=1", "optim.batch_size=8"])
    trainer = Trainer(recipe, FitOptions(out=tmp_path, device="cpu", progress=False, workers=0))
    head = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)][-1]
    outputs = []
    head.register_forward_hook(lambda m, a, o: outputs.append(o.dtype))
    trainer.watchdog = SimpleNamespace(beat=lambda: None)  # the loop's, started by run()
    trainer.validate()
    assert set(outputs) == {torch.float32}
    outputs.clear()
    images, target = next(iter(trainer.train_loader))[:2]
    trainer._train_step(images, target, 0.01)
    assert outputs == [torch.bfloat16]  # the head went back to the run's autocast


def test_ensemble_members_run_under_their_own_autocast():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return self.fc(x.flatten(1))

    loader = [(torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8), torch.tensor([0, 2]), [])]
    prep = BatchPrep((0.5,), (0.25,), torch.device("cpu"))
    policies = [Precision(torch.bfloat16, False), Precision(None, False)]
    evaluate([Probe(), Probe()], loader, [prep, prep], torch.device("cpu"), policies, (1,), combine="prob")
    assert seen == [torch.bfloat16, None]


def test_fp32_head_during_puts_the_head_back():
    model = nn.Sequential(nn.Linear(4, 3))
    with fp32_head_during(model, 3):
        assert "forward" in model[0].__dict__
    assert "forward" not in model[0].__dict__


@pytest.mark.cuda
def test_cuda_fp32_head_is_not_tf32_after_training_set_up():
    torch.manual_seed(0)
    dev = torch.device("cuda", 0)
    head = nn.Linear(4096, 1000).to(dev)
    x = torch.randn(64, 4096, device=dev)
    exact = torch.nn.functional.linear(x.double(), head.weight.double(), head.bias.double())
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        out = fp32_head(nn.Sequential(head), 1000)(x)
    finally:
        torch.set_float32_matmul_precision(before)
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)  # TF32 is off by ~1e-3


def test_bench_train_sets_the_process_up_as_fit_does(monkeypatch):
    from cnntrain.engine import bench
    from cnntrain.engine.options import BenchTrainOptions

    calls = []

    def prepare(dev, deterministic=False, **kw):
        calls.append(kw)
        raise _Asked

    monkeypatch.setattr(bench, "prepare_process", prepare)
    with pytest.raises(_Asked):
        bench.bench_train(BenchTrainOptions(recipe="lenet5", device="cpu"))
    assert calls == [{"fixed_shapes": True, "training": True}]


def test_the_bare_bench_step_reads_its_loss_like_the_engine(monkeypatch):
    from cnntrain.data import synthetic_spec
    from cnntrain.engine.bench import _bare_step, _fixed_batch

    recipe = load_recipe("lenet5")
    spec = synthetic_spec(recipe)
    dev = torch.device("cpu")
    images, target = _fixed_batch(4, spec, dev)
    step = _bare_step(recipe, dev, images, target, spec, False, None, False)
    reads = []
    real = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: reads.append(t.shape) or real(t))
    step()
    step()
    assert reads == [torch.Size([]), torch.Size([])]


def test_one_process_batch_that_accumulate_cannot_cut_is_named_as_such():
    from cnntrain.engine.distributed import SINGLE, DistEnv, per_process_batch
    from cnntrain.errors import CnnTrainError

    with pytest.raises(CnnTrainError) as one:
        per_process_batch(7, SINGLE, 2)
    assert "processes" not in str(one.value) and "optim.batch_size 7" in str(one.value)
    with pytest.raises(CnnTrainError, match="each of the 2 processes reads 7 samples"):
        per_process_batch(14, DistEnv(0, 2, 0, 2), 2)


@pytest.mark.parametrize("progress", [False, True])
def test_progress_figures_are_read_once_and_only_with_a_bar(tmp_path, monkeypatch, progress):
    from cnntrain.engine import train

    reads = []
    real = Trainer._show

    def show(self, *a):
        before = self.progress.meter.host_reads
        real(self, *a)
        reads.append(self.progress.meter.host_reads - before)
    monkeypatch.setattr(Trainer, "_show", show)
    recipe = load_recipe("lenet5", [f"train.iterations={train.POSTFIX_EVERY}", "optim.batch_size=8",
                                    "train.eval_every=100"])
    Trainer(recipe, FitOptions(out=tmp_path, device="cpu", progress=progress, workers=0)).run()
    assert reads == ([1] if progress else [])
