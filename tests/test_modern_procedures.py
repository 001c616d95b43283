"""The later papers' procedures (issue 13): each one's mechanics on known inputs, and
exact resume with mixing, RandAugment and repeated augmentation on."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnntrain
import cnntrain.engine.step as step_module
from cnntrain.data.sampler import EpochSampler
from cnntrain.data.transforms import EvalTransform
from cnntrain.data.views import TrainTransform, progressive_size
from cnntrain.engine.checkpoint import load_checkpoint
from cnntrain.engine.large_batch import LAMB, LARS
from cnntrain.engine.losses import Teachers, class_loss, distill_loss
from cnntrain.engine.mixing import BatchMix, dominant
from cnntrain.engine.optim import LRSchedule, param_groups
from cnntrain.engine.step import StepExtras
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import AugmentSection, DataSection, ScheduleSection, load_recipe
from tests.conftest import run_cli

DIGITS = ["fit", "--recipe", "lenet5", "--workers", "0", "--no-progress", "--device", "cpu"]


# --------------------------------------------------------------------------- mixing


def test_mixup_with_a_fixed_lambda_gives_the_expected_images_and_targets(monkeypatch):
    mix = BatchMix(AugmentSection(mixup=0.2), num_classes=4)
    monkeypatch.setattr(mix.mixup._dist, "sample", lambda shape=(): torch.tensor(0.7))
    x, y = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).view(4, 3, 2, 2), torch.tensor([0, 1, 2, 3])
    images, target = mix(x.clone(), y, step=5)
    assert torch.allclose(images, 0.7 * x + 0.3 * x.roll(1, 0))
    expected = 0.7 * F.one_hot(y, 4).float() + 0.3 * F.one_hot(y.roll(1, 0), 4).float()
    assert torch.allclose(target, expected)
    assert dominant(target).tolist() == [0, 1, 2, 3]  # accuracy counts the larger share


def test_cutmix_pastes_the_neighbours_box_and_weighs_targets_by_its_area():
    mix = BatchMix(AugmentSection(cutmix=1.0), num_classes=3)
    x = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(3)])
    images, target = mix(x.clone(), torch.tensor([0, 1, 2]), step=3)
    for i in range(3):
        own = (images[i] == i).float().mean()
        from_neighbour = (images[i] == (i - 1) % 3).float().mean()
        assert own + from_neighbour == 1
        assert target[i, i] == pytest.approx(float(own)) and target[i, (i - 1) % 3] == pytest.approx(float(from_neighbour))


def test_mix_draws_are_a_function_of_the_step_and_leave_global_rng_alone():
    mix = BatchMix(AugmentSection(mixup=1.0, cutmix=1.0, mix_prob=0.5), num_classes=5, seed=3)
    x, y = torch.randn(6, 3, 4, 4), torch.arange(6) % 5
    before = torch.get_rng_state()
    first = [mix(x.clone(), y, step=s)[1] for s in range(12)]
    assert torch.equal(torch.get_rng_state(), before)
    again = [mix(x.clone(), y, step=s)[1] for s in range(12)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    mixed = sum(t.ndim == 2 for t in first)
    assert 0 < mixed < 12  # mix_prob 0.5: some batches are left alone
    other_rank = BatchMix(AugmentSection(mixup=1.0), num_classes=5, seed=3, rank=1)
    assert not torch.equal(other_rank(x.clone(), y, step=0)[0], BatchMix(AugmentSection(mixup=1.0), 5, 3)(x.clone(), y, 0)[0])


# --------------------------------------------------------------------------- losses


def test_bce_with_label_smoothing_equals_its_formula():
    logits, y, eps = torch.randn(4, 5), torch.tensor([0, 3, 1, 4]), 0.1
    targets = F.one_hot(y, 5).float() * (1 - eps) + eps / 5
    manual = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits)).mean()
    assert class_loss(logits, y, eps, "bce") == pytest.approx(float(manual), rel=1e-6)
    soft = torch.softmax(torch.randn(4, 5), 1)  # mixed targets are smoothed the same way
    soft_t = soft * (1 - eps) + eps / 5
    manual = -(soft_t * F.logsigmoid(logits) + (1 - soft_t) * F.logsigmoid(-logits)).mean()
    assert class_loss(logits, soft, eps, "bce") == pytest.approx(float(manual), rel=1e-6)


def test_cross_entropy_on_mixed_targets_with_smoothing():
    logits, soft, eps = torch.randn(3, 4), torch.softmax(torch.randn(3, 4), 1), 0.2
    manual = -((soft * (1 - eps) + eps / 4) * F.log_softmax(logits, 1)).sum(1).mean()
    assert class_loss(logits, soft, eps, "ce") == pytest.approx(float(manual), rel=1e-6)


def test_distillation_loss_equals_its_formula_and_averages_teachers(tmp_path, capsys):
    code, _, err = run_cli([*DIGITS, "--out", tmp_path / "t", "--set", "train.iterations=2"], capsys)
    assert code == 0, err
    ckpt = str(tmp_path / "t" / "last.pt")
    meta = load_checkpoint(ckpt)["meta"]
    spec = {"teachers": [ckpt], "weight": 0.5, "temperature": 4.0}
    one = Teachers(spec, meta["classes"], tuple(meta["mean"]), tuple(meta["std"]), torch.device("cpu"))
    two = Teachers({**spec, "teachers": [ckpt, ckpt]}, meta["classes"], tuple(meta["mean"]), tuple(meta["std"]),
                   torch.device("cpu"))
    x, student = torch.randn(3, 1, 32, 32), torch.randn(3, 10)
    r = one.models[0](x)
    p_t = F.softmax(r / 4.0, 1)
    formula = 0.5 * 16.0 * -(p_t * F.log_softmax(student / 4.0, 1)).sum(1).mean()
    assert one.loss(student, x) == pytest.approx(float(formula), rel=1e-5)
    assert torch.allclose(two.probs(x), one.probs(x), atol=1e-6)
    assert distill_loss(student, p_t, 1.0) == pytest.approx(float(-(p_t * F.log_softmax(student, 1)).sum(1).mean()))
    code, out, err = run_cli([*DIGITS, "--out", tmp_path / "s", "--set", "train.iterations=2",
                              "--set", f'train.distill={{teachers=["{ckpt}"], temperature=2.0}}'], capsys)
    assert code == 0, err
    code, _, err = run_cli([*DIGITS, "--out", tmp_path / "bad", "--set", "train.iterations=2",
                            "--set", "train.distill={teachers=[], tempreature=2.0}"], capsys)
    assert code == 2 and "train.distill.tempreature" in err and "temperature" in err


@pytest.mark.parametrize("spec, blame", [
    ('{teachers=["a.pt"], temperature=0.0}', "train.distill.temperature must be > 0, got 0.0"),
    ('{teachers=["a.pt"], weight=-1.0}', "train.distill.weight must be >= 0, got -1.0"),
])
def test_distill_settings_name_the_bad_key_and_value(spec, blame):
    with pytest.raises(CnnTrainError, match=blame):
        load_recipe("lenet5", [f"train.distill={spec}"])


def test_a_missing_teacher_names_train_distill_teachers(tmp_path, capsys):
    code, _, err = run_cli([*DIGITS, "--out", tmp_path / "s", "--set", "train.iterations=1",
                            "--set", f'train.distill={{teachers=["{tmp_path}/nope.pt"]}}'], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"train.distill.teachers: checkpoint {tmp_path}/nope.pt does not exist" in err


# --------------------------------------------------------------------------- optimisation


def test_clipping_bounds_the_gradient_norm():
    model = nn.Linear(4, 3)
    model(torch.randn(8, 4)).pow(2).sum().mul(1e3).backward()
    before = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    StepExtras(clip_grad_norm=0.5).clip(model, torch.optim.SGD(model.parameters(), lr=1.0), scaler)
    after = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert before > 0.5 and after == pytest.approx(0.5, rel=1e-4)


def test_no_decay_reaches_norm_and_bias_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 5, 5))
    groups = param_groups(model, 0.1, norm_decay=0.0, bias_decay=0.0)
    decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    opt = torch.optim.SGD(groups, lr=1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    snapshot = [p.detach().clone() for p in model.parameters()]
    opt.step()
    for p, old in zip(model.parameters(), snapshot):
        assert torch.equal(p, old) == (id(p) not in decayed)
    assert len(param_groups(model, 0.1)) == 1  # one group when nothing is exempt


def test_norm_decay_covers_beta_and_bias_decay_only_other_biases():
    # torchvision's --norm-weight-decay exempts gamma and beta; fc.bias stays a plain bias
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 2))
    decay_of = {id(p): g["weight_decay"] for g in param_groups(model, 2e-5, norm_decay=0.0) for p in g["params"]}
    assert decay_of[id(model[1].weight)] == 0.0 and decay_of[id(model[1].bias)] == 0.0
    assert decay_of[id(model[3].bias)] == 2e-5 and decay_of[id(model[0].bias)] == 2e-5
    decay_of = {id(p): g["weight_decay"] for g in param_groups(model, 2e-5, bias_decay=0.0) for p in g["params"]}
    assert decay_of[id(model[1].bias)] == 2e-5 and decay_of[id(model[3].bias)] == 0.0


@pytest.mark.parametrize("key", ["optim.norm_weight_decay", "optim.bias_weight_decay"])
def test_negative_group_decay_is_refused(key):
    with pytest.raises(CnnTrainError, match=f"{key} must not be negative, got -0.5"):
        load_recipe("lenet5", [f"{key}=-0.5"])


def test_lamb_step_matches_algorithm_2():
    w0, g = torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.tensor([[0.1, 0.2], [-0.3, 0.4]])
    p = nn.Parameter(w0.clone())
    p.grad = g.clone()
    LAMB([p], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01).step()
    m, v = 0.1 * g / (1 - 0.9), 0.001 * g * g / (1 - 0.999)
    r = m / (v.sqrt() + 1e-6) + 0.01 * w0
    assert torch.allclose(p.detach(), w0 - 0.1 * w0.norm() / r.norm() * r, atol=1e-6)


def test_lars_step_matches_algorithm_1():
    w0, g = torch.tensor([3.0, -4.0]), torch.tensor([0.3, 0.1])
    p = nn.Parameter(w0.clone())
    p.grad = g.clone()
    LARS([p], lr=0.5, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.001).step()
    local = 0.001 * w0.norm() / (g.norm() + 1e-4 * w0.norm())
    assert torch.allclose(p.detach(), w0 - 0.5 * local * (g + 1e-4 * w0), atol=1e-7)


def test_triangle_schedule_peaks_then_falls_to_zero():
    sched = LRSchedule(ScheduleSection(name="triangle", warmup=2, warmup_factor=1e-4), 1.7, 10, 160)
    assert sched.lr_at(0) == pytest.approx(1.7e-4)
    assert sched.lr_at(20) == pytest.approx(1.7)
    assert sched.lr_at(90) == pytest.approx(1.7 * 70 / 140)
    assert sched.lr_at(160) == 0


# --------------------------------------------------------------------------- data


def test_repeated_augmentation_gives_k_draws_on_k_processes_without_overlap():
    n, k = 12, 3
    ranks = [EpochSampler(n, seed=1, rank=r, world=3, repeats=k) for r in range(3)]
    shares = [list(s) for s in ranks]
    assert all(len(share) == ranks[0].per_rank == 4 for share in shares)
    keys = [key for share in shares for key in share]
    assert len(set(keys)) == len(keys)  # no (index, seed) draw is served twice
    for i in {index for index, _ in keys}:
        draws = [(r, seed) for r, share in enumerate(shares) for index, seed in share if index == i]
        assert len(draws) == k and {r for r, _ in draws} == {0, 1, 2} and len({s for _, s in draws}) == k
    one = EpochSampler(n, seed=1, repeats=k)
    order = [index for index, _ in one]
    assert order == [i for i in order[::k] for _ in range(k)]  # K copies in a row on one process
    one.set_epoch(0, start=5)  # resuming mid-epoch serves the rest of the same sequence
    assert list(one) == list(EpochSampler(n, seed=1, repeats=k))[5:]


def test_progressive_resizing_changes_the_crop_at_the_set_epochs():
    data = DataSection(train_size=160, progressive=[160, 192], progressive_epochs=[11, 13])
    # epoch 12: 176 px, rounded to a multiple of 32 as FFCV does (np.round(5.5) = 6): 192
    assert [progressive_size(data, e) for e in (0, 11, 12, 13, 15)] == [160, 160, 192, 192, 192]
    wide = DataSection(progressive=[128, 256], progressive_epochs=[0, 4])
    assert [progressive_size(wide, e) for e in range(6)] == [128, 160, 192, 224, 256, 256]
    tf = TrainTransform(DataSection(train_size=8), AugmentSection(crop="resized"))
    tf.set_size(16)
    assert tf(torch.randint(0, 255, (3, 20, 20), dtype=torch.uint8)).shape[-2:] == (16, 16)


def test_progressive_resizing_in_a_run(tmp_path, capsys, monkeypatch):
    seen: list[int] = []
    real = TrainTransform.set_size
    monkeypatch.setattr(TrainTransform, "set_size", lambda self, size: (seen.append(size), real(self, size))[1])
    code, _, err = run_cli(["fit", "--recipe", "resnet20", "--data", "synthetic", "--workers", "0", "--no-progress",
                            "--device", "cpu", "--out", tmp_path, "--epochs", "3",
                            "--set", "data.synthetic_train_samples=8", "--set", "data.synthetic_val_samples=4",
                            "--set", "optim.batch_size=4", "--set", "data.progressive=[16, 32]",
                            "--set", "data.progressive_epochs=[0, 2]", "--set", "data.progressive_multiple=8"], capsys)
    assert code == 0, err
    assert seen == [16, 24, 32]


def test_auto_augment_and_erasing_are_drawn_per_sample_from_its_seed():
    aug = AugmentSection(crop="none", auto="randaugment", auto_ops=2, auto_magnitude=9, random_erasing=1.0)
    tf = TrainTransform(DataSection(train_size=16, eval_resize=16), aug, fill=(10, 20, 30))
    img = torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)
    a = tf(img, torch.Generator().manual_seed(1))
    assert torch.equal(a, tf(img, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, tf(img, torch.Generator().manual_seed(2)))
    erased = TrainTransform(DataSection(train_size=16, eval_resize=16), AugmentSection(crop="none", random_erasing=1.0),
                            fill=(10, 20, 30))(img, torch.Generator().manual_seed(3))
    changed = (erased != img).any(0)
    assert changed.any() and all((erased[c][changed] == v).all() for c, v in enumerate((10, 20, 30)))


def test_eval_size_and_test_time_flip():
    tf = EvalTransform(DataSection(train_size=8, eval_resize=14, eval_size=12), flip=True)
    img = torch.randint(0, 255, (3, 20, 28), dtype=torch.uint8)
    views = tf(img)
    assert views.shape == (2, 3, 12, 12) and torch.equal(views[1], views[0].flip(-1))


# --------------------------------------------------------------------------- models


def test_resnet50d_parameter_count_and_tweaks():
    r50, r50c, r50d = (cnntrain.build_model(n) for n in ("resnet50", "resnet50c", "resnet50d"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # The deep stem replaces the 7x7x3x64 convolution by 3x3 convolutions 3->32->32->64
    # with two BNs (32 channels each); the average-pool shortcut adds no parameters.
    stem = 9 * (3 * 32 + 32 * 32 + 32 * 64) + 2 * 2 * 32 - 7 * 7 * 3 * 64
    assert count(r50c) == count(r50d) == count(r50) + stem
    assert round(count(r50d) / 1e6, 2) == 25.58  # mmpretrain's resnetv1c50 (its README's table): 25.58M
    assert isinstance(r50d.layer2[0].downsample[0], nn.AvgPool2d)
    assert r50d(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_drop_path_and_zero_init_residual():
    model = cnntrain.build_model("resnet18", num_classes=3, drop_path=0.2, zero_init_residual=True)
    rates = [b.drop_path.p for b in (*model.layer1, *model.layer2, *model.layer3, *model.layer4)]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in model.layer1)
    assert set(model.state_dict()) == set(cnntrain.build_model("resnet18", num_classes=3).state_dict())
    drop = model.layer4[1].drop_path.train()
    x = torch.ones(2000, 2)
    out = drop(x)
    zeroed = (out[:, 0] == 0).float().mean()
    assert abs(float(zeroed) - 0.2) < 0.05 and torch.allclose(out[out[:, 0] > 0], torch.full((1,), 1 / 0.8))
    assert torch.equal(drop.eval()(x), x)


def test_bad_procedure_keys_are_one_line_errors():
    for sets, fragment in ((["augment.mix_prob=1.5"], "augment.mix_prob"),
                           (["data.progressive=[160]"], "data.progressive"),
                           (["schedule.name=triangle"], "triangle"),
                           (["train.loss=focal"], "train.loss"),
                           (["train.repeated_aug=0"], "train.repeated_aug")):
        with pytest.raises(CnnTrainError, match=fragment):
            load_recipe("lenet5", sets)


def test_training_accuracy_under_mixing_says_it_counts_the_dominant_label(tmp_path, capsys):
    tiny = [*DIGITS, "--data", "synthetic", "--set", "train.iterations=2", "--set", "data.synthetic_train_samples=16",
            "--set", "data.synthetic_val_samples=8", "--set", "optim.batch_size=8"]
    for mixing, out in ((["--set", "augment.mixup=0.2"], tmp_path / "mixed"), ([], tmp_path / "plain")):
        code, stdout, err = run_cli([*tiny, *mixing, "--out", out], capsys)
        assert code == 0, err
        (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert (record.get("train_top1_target") == "dominant") == bool(mixing)
        assert ("train top1 (dominant label)" in stdout) == bool(mixing)
        assert "train top1" in stdout


# --------------------------------------------------------------------------- exact resume


class Killed(Exception):
    """A kill between two checkpoints."""


def test_kill_and_resume_with_mixup_randaugment_and_repeated_aug_is_bitwise_exact(tmp_path, capsys, monkeypatch):
    # 96 synthetic digits-shaped images, batch 16: 6 steps an epoch, 3 epochs; last.pt every
    # 4 steps; the kill comes at step 9, so the resume starts mid-epoch 2 from step 8.
    sets = ["--data", "synthetic", "--epochs", "3", "--set", "data.synthetic_train_samples=96",
            "--set", "data.synthetic_val_samples=8", "--set", "optim.batch_size=16",
            "--set", "augment.mixup=0.4", "--set", "augment.cutmix=1.0", "--set", "augment.mix_prob=0.8",
            "--set", "augment.auto=randaugment", "--set", "train.repeated_aug=3", "--set", "train.loss=bce",
            "--set", "train.clip_grad_norm=5.0", "--set", "train.save_every_steps=4"]
    code, _, err = run_cli([*DIGITS, "--out", tmp_path / "ref", *sets], capsys)
    assert code == 0, err
    real_call = step_module.FitStep.__call__

    def dies_at_step_9(self, images, target, check=None, step=None, stop=False):
        if step == 9:
            raise Killed
        return real_call(self, images, target, check, step, stop)

    monkeypatch.setattr(step_module.FitStep, "__call__", dies_at_step_9)
    with pytest.raises(Killed):
        run_cli([*DIGITS, "--out", tmp_path / "cut", *sets], capsys)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 8
    monkeypatch.setattr(step_module.FitStep, "__call__", real_call)
    code, _, err = run_cli([*DIGITS, "--out", tmp_path / "cut", *sets, "--resume", "auto"], capsys)
    assert code == 0, err
    ref, cut = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("ref", "cut"))
    assert ref.keys() == cut.keys() and all(torch.equal(ref[k], cut[k]) for k in ref)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 18


@pytest.mark.cuda
def test_cuda_fp16_mixing_clipping_and_repeated_aug_run(tmp_path, capsys):
    """On a GPU: mixing on the device, clipping after the fp16 scaler's unscale, BCE."""
    code, out, err = run_cli(["fit", "--recipe", "lenet5", "--workers", "0", "--no-progress", "--device", "cuda",
                              "--out", tmp_path, "--set", "train.iterations=4", "--set", "train.amp=fp16",
                              "--set", "augment.mixup=0.2", "--set", "augment.cutmix=1.0",
                              "--set", "train.loss=bce", "--set", "train.clip_grad_norm=1.0",
                              "--set", "train.repeated_aug=2", "--set", "optim.name=lamb",
                              "--set", "optim.lr=0.001", "--set", "optim.norm_weight_decay=0.0"], capsys)
    assert code == 0, err
    weights = load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
