"""The ResNet-successor zoo: parameter counts against the papers and torchvision, shapes,
forward/backward, torchvision state-dict interchange, stochastic depth and FractalNet
drop-path. Big models are built on the meta device; real passes use small inputs."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cnntrain.models import build_model, list_models, model_info
from cnntrain.models.densenet import DenseNet
from cnntrain.models import drops
from cnntrain.models.fractalnet import FractalBlock, FractalNet
from cnntrain.models.preact_resnet import PreActBasicBlock
from cnntrain.models.senet import SEBottleneck
from cnntrain.models.stochastic_depth import (
    StochasticBottleneck,
    StochasticCifarBlock,
    linear_decay,
    stochastic_blocks,
)

ZOO = [
    "preact-resnet110", "preact-resnet164", "preact-resnet1001",
    "wrn-28-10", "wrn-50-2",
    "resnext50-32x4d", "resnext101-32x8d", "resnext29-8x64d",
    "resnet110-stochastic-depth", "resnet152-stochastic-depth",
    "se-resnet50", "se-resnext50-32x4d",
    "densenet121", "densenet169", "densenet201", "densenet161", "densenet-bc-100",
    "fractalnet", "fractalnet-20",
]

# name: (classes, the paper's or torchvision's figure, our exact count). A figure the paper
# rounds ("1.7M") is met within half its last digit when that is looser than 1%: ResNet-110
# has 1.73M parameters in He et al.'s own architecture too. He et al. 2016's "10.2M" for
# ResNet-1001 leaves out BN's scale and shift (149k; 10.18M without, 10.33M with), so it
# is compared without them. DenseNet-BC's "0.8M" is the CIFAR-100 count (0.77M for 10).
PARAMS = {
    "preact-resnet110": (10, "1.7M", 1_727_962),
    "preact-resnet164": (10, "1.7M", 1_703_258),
    "preact-resnet1001": (10, "10.2M", 10_327_706),
    "wrn-28-10": (10, "36.5M", 36_479_194),
    "wrn-50-2": (1000, "68883240", 68_883_240),
    "resnext50-32x4d": (1000, "25028904", 25_028_904),
    "resnext101-32x8d": (1000, "88791336", 88_791_336),
    "resnext29-8x64d": (10, "34.4M", 34_426_698),
    "resnet110-stochastic-depth": (10, "1.7M", 1_727_962),
    "resnet152-stochastic-depth": (1000, "60192808", 60_192_808),
    "se-resnet50": (1000, "28.1M", 28_088_024),
    "se-resnext50-32x4d": (1000, "27.6M", 27_559_896),
    "densenet121": (1000, "7978856", 7_978_856),
    "densenet169": (1000, "14149480", 14_149_480),
    "densenet201": (1000, "20013928", 20_013_928),
    "densenet161": (1000, "28681000", 28_681_000),
    "densenet-bc-100": (100, "0.8M", 800_032),
    # The paper's 38.6M for its 20-layer net is not reachable with 64..512 channels (see
    # fractalnet.py); these are what the stated architecture gives.
    "fractalnet-20": (10, None, 33_724_618),
    "fractalnet": (10, None, 76_106_634),
}
WITHOUT_BN = {"preact-resnet1001"}


def figure_and_tolerance(text: str) -> tuple[float, float]:
    if not text.endswith("M"):
        return float(text), 0.01 * float(text)
    digits = text[:-1]
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    value = float(digits) * 1e6
    return value, max(0.01 * value, 0.5 * 10 ** (6 - decimals))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared machine, spinning OpenMP workers that wait for a
    busy core make small CPU passes many times slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def count(model: nn.Module, with_bn: bool = True) -> int:
    bn = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if with_bn or id(p) not in bn)


def test_all_registered():
    assert set(ZOO) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_paper(name):
    classes, text, exact = PARAMS[name]
    with torch.device("meta"):
        model = build_model(name, num_classes=classes)
    assert count(model) == exact
    if text is not None:
        figure, tolerance = figure_and_tolerance(text)
        assert abs(count(model, name not in WITHOUT_BN) - figure) <= tolerance


@pytest.mark.parametrize("name", ZOO)
def test_output_shape_at_paper_size_and_at_32(name):
    size = model_info(name).input_size
    with torch.device("meta"):
        model = build_model(name, num_classes=7).eval()
        assert model(torch.empty(2, 3, size, size)).shape == (2, 7)
        assert model(torch.empty(2, 3, 32, 32)).shape == (2, 7)  # ImageNet nets too
        model = build_model(name, num_classes=3, in_channels=1).eval()
        assert model(torch.empty(1, 1, size, size)).shape == (1, 3)


@pytest.mark.parametrize("name", ZOO)
def test_forward_backward(name):
    torch.manual_seed(0)
    drops.reseed(0, 0)  # drop decisions: their own generator
    model = build_model(name, num_classes=5).train()
    size = 16 if model_info(name).input_size == 32 else 32  # small inputs keep CPU time down
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    head = model.fc if hasattr(model, "fc") else model.classifier
    assert head.weight.grad is not None


def test_preact_units_are_bn_relu_conv_with_pure_identity():
    torch.manual_seed(0)
    drops.reseed(0, 0)  # drop decisions: their own generator
    unit = PreActBasicBlock(4, 4).eval()
    _perturb_bn(unit)
    x = torch.randn(2, 4, 5, 5)  # negative values survive an identity shortcut (no ReLU after +)
    with torch.no_grad():
        branch = unit.conv2(torch.relu(unit.bn2(unit.conv1(torch.relu(unit.bn1(x))))))
        torch.testing.assert_close(unit(x), branch + x)
        unit.first = True  # after the stem: the activation comes before the split
        torch.testing.assert_close(unit(x), branch + torch.relu(unit.bn1(x)))
    with torch.device("meta"):
        model = build_model("preact-resnet164")
    assert model.layer1[0].first and not model.layer1[1].first and not model.layer2[0].first


def test_se_recalibrates_the_branch_before_the_addition():
    torch.manual_seed(0)
    drops.reseed(0, 0)  # drop decisions: their own generator
    block = SEBottleneck(16, 4).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        block.se.fc2.bias.fill_(-1e4)  # excitation ~0: the block passes ReLU(x) only
        torch.testing.assert_close(block(x), torch.relu(x))
        block.se.fc2.bias.fill_(1e4)  # excitation ~1: a plain bottleneck
        branch = block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))))
        torch.testing.assert_close(block(x), torch.relu(branch + x))
    assert block.se.fc1.out_features == 16 // 16


# ----------------------------------------------------------------------- torchvision interchange

TORCHVISION = {
    "wrn-50-2": torchvision.models.wide_resnet50_2,
    "resnext50-32x4d": torchvision.models.resnext50_32x4d,
    "resnext101-32x8d": torchvision.models.resnext101_32x8d,
    "resnet152-stochastic-depth": torchvision.models.resnet152,
    "densenet121": torchvision.models.densenet121,
    "densenet169": torchvision.models.densenet169,
    "densenet201": torchvision.models.densenet201,
    "densenet161": torchvision.models.densenet161,
}


def _perturb_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine terms, so a mismatch would show in outputs."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_state_dict_interchange_with_torchvision(name):
    torch.manual_seed(0)
    drops.reseed(0, 0)  # drop decisions: their own generator
    # Stochastic depth scales each branch by its survival probability at test time; with
    # p_last = 1 every block always survives and it computes exactly torchvision's ResNet.
    options = {"p_last": 1.0} if "stochastic" in name else {}
    ours = build_model(name, num_classes=1000, **options).eval()
    _perturb_bn(ours)
    with torch.device("meta"):  # no second initialisation: weights come from the state dict
        theirs = TORCHVISION[name]()
        back = build_model(name, num_classes=1000, **options)
    theirs.load_state_dict(ours.state_dict(), strict=True, assign=True)
    back.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    theirs.eval(), back.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected)
        torch.testing.assert_close(back(x), expected)


def test_densenet_loads_legacy_dotted_keys():
    model = DenseNet(8, (2, 2), num_classes=3).eval()
    _perturb_bn(model)
    legacy = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2.").replace("norm2.", "norm.2.")
              .replace("conv1.", "conv.1."): v for k, v in model.state_dict().items()}
    assert any(".norm.1." in k for k in legacy) and "features.conv0.weight" in legacy
    other = DenseNet(8, (2, 2), num_classes=3).eval()
    other.load_state_dict(legacy, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x))


# ----------------------------------------------------------------------- stochastic depth


def _freeze_bn(model: nn.Module) -> nn.Module:
    """Training mode for the blocks, eval-mode BN: differences come from depth alone."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


def test_survival_probabilities_decay_linearly_to_p_last():
    for name, blocks in (("resnet110-stochastic-depth", 54), ("resnet152-stochastic-depth", 50)):
        with torch.device("meta"):
            model = build_model(name)
        p = [b.survival for b in stochastic_blocks(model)]
        assert len(p) == blocks and p == pytest.approx(linear_decay(blocks, 0.5))
        assert p[-1] == pytest.approx(0.5) and p[0] == pytest.approx(1 - 0.5 / blocks)
        steps = [a - b for a, b in zip(p, p[1:])]
        assert steps == pytest.approx([0.5 / blocks] * (blocks - 1))
    with torch.device("meta"):
        shallow = build_model("resnet110-stochastic-depth", p_last=0.2)
    assert stochastic_blocks(shallow)[-1].survival == pytest.approx(0.2)


def test_stochastic_depth_skips_blocks_in_training_only():
    torch.manual_seed(0)
    drops.reseed(0, 0)  # drop decisions: their own generator
    model = build_model("resnet110-stochastic-depth", p_last=0.05)
    ran: list[int] = []
    for i, block in enumerate(stochastic_blocks(model)):
        block.conv1.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.eval()
        y_eval = model(x)
        assert torch.equal(model(x), y_eval) and len(ran) == 2 * 54  # deterministic, nothing skipped
        ran.clear()
        _freeze_bn(model)
        torch.manual_seed(123)
        drops.reseed(123, 0)  # drop decisions: their own generator
        y_train = model(x)
        skipped = 54 - len(ran)
        assert 0 < skipped < 54
        assert not torch.allclose(y_train, y_eval)
        first = list(ran)
        ran.clear()
        torch.manual_seed(123)
        drops.reseed(123, 0)  # drop decisions: their own generator
        assert torch.equal(model(x), y_train) and ran == first  # a seed fixes the draws


def test_stochastic_depth_scales_branch_at_test_and_skips_to_identity():
    torch.manual_seed(0)
    drops.reseed(0, 0)  # drop decisions: their own generator
    block = StochasticCifarBlock(4, 4).eval()
    _perturb_bn(block)
    block.survival = 0.3
    x = torch.relu(torch.randn(2, 4, 6, 6))
    with torch.no_grad():
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        torch.testing.assert_close(block(x), torch.relu(0.3 * branch + x))
        block.train()
        block.survival = 1e-12  # always skipped
        assert torch.equal(block(x), x)
        down = nn.Sequential(nn.Conv2d(4, 16, 1, bias=False), nn.BatchNorm2d(16))
        neck = StochasticBottleneck(4, 4, downsample=down).train()
        neck.survival = 1e-12
        torch.testing.assert_close(neck(x), torch.relu(down(x)))


# ----------------------------------------------------------------------- FractalNet drop-path


def _units_that_ran(model: nn.Module) -> list[tuple[int, int, int]]:
    """Hooks every conv unit; returns the shared list of (block, column, unit) that ran."""
    ran: list[tuple[int, int, int]] = []
    blocks = [m for m in model.modules() if isinstance(m, FractalBlock)]
    for b, block in enumerate(blocks):
        for c, column in enumerate(block.columns):
            for u, unit in enumerate(column):
                unit.register_forward_hook(lambda m, a, o, key=(b, c, u): ran.append(key))
    return ran


def test_fractal_block_structure():
    block = FractalBlock(3, 4, columns=4)
    assert [len(c) for c in block.columns] == [1, 2, 4, 8]
    assert [c[0][0].in_channels for c in block.columns] == [3, 3, 3, 3]  # each column reads the input


def test_fractalnet_global_drop_path_runs_one_column_everywhere():
    torch.manual_seed(0)
    drops.reseed(0, 0)  # drop decisions: their own generator
    model = _freeze_bn(FractalNet(columns=3, channels=(4, 8, 8), global_ratio=1.0))
    ran = _units_that_ran(model)
    x = torch.randn(2, 3, 16, 16)
    seen = set()
    with torch.no_grad():
        for _ in range(12):
            ran.clear()
            model(x)
            columns = {c for _, c, _ in ran}
            assert len(columns) == 1  # a single column ...
            (c,) = columns
            assert sorted(ran) == [(b, c, u) for b in range(3) for u in range(2**c)]  # ... in every block
            seen.add(c)
        assert seen == {0, 1, 2}
        model.eval()
        ran.clear()
        model.eval_column = 2  # the paper's "deepest" evaluation
        model(x)
        assert {c for _, c, _ in ran} == {2}


def test_fractal_block_local_drop_path_averages_surviving_inputs():
    torch.manual_seed(0)
    drops.reseed(0, 0)  # drop decisions: their own generator
    block = FractalBlock(3, 4, columns=2, p_local=0.5).eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        a = block.column_forward(x, 0)
        b = block.column_forward(x, 1)
        mean = (a + b) / 2
        torch.testing.assert_close(block(x), mean)  # eval: every path, joined by the mean
        _freeze_bn(block)
        outcomes = set()
        for _ in range(40):
            y = block(x)
            match = [k for k, ref in (("both", mean), ("shallow", a), ("deep", b)) if torch.allclose(y, ref)]
            assert len(match) == 1  # always a mean of a non-empty subset of the inputs
            outcomes.add(match[0])
        assert outcomes == {"both", "shallow", "deep"}


def test_fractalnet_local_drop_path_and_eval_determinism():
    torch.manual_seed(0)
    drops.reseed(0, 0)  # drop decisions: their own generator
    model = FractalNet(columns=3, channels=(4, 8), p_local=0.5, global_ratio=0.0, dropout=0.1)
    ran = _units_that_ran(model)
    x = torch.randn(2, 3, 8, 8)
    total = 2 * (1 + 2 + 4)
    with torch.no_grad():
        model.eval()
        y = model(x)
        assert torch.equal(model(x), y) and len(ran) == 2 * total
        _freeze_bn(model)
        counts = set()
        for _ in range(10):
            ran.clear()
            model(x)
            counts.add(len(ran))
            assert {(b, 2, 0) for b in range(2)} <= set(ran)  # a join with one input never drops it
        assert min(counts) < total  # some paths were dropped
    # the per-block dropout steps 0, 0.1, ...
    rates = [[m.p for m in blk.modules() if isinstance(m, nn.Dropout)] for blk in model.blocks]
    assert rates[0] == [] and set(rates[1]) == {0.1}
    with pytest.raises(ValueError):
        FractalNet(dropout=0.3)  # 0.3 per block would make the fifth block's rate 1.2
