"""The classic model zoo: AlexNet, ZFNet, VGG, NiN, GoogLeNet, Inception-v4 /
Inception-ResNet-v2, SqueezeNet.

Parameter counts against the papers, output shapes at the paper's input size and at
32x32, a training step, and state-dict interchange with torchvision. Big networks are
built on the meta device (no memory, no compute) to count parameters and check shapes;
real forward/backward passes use batch 2 at small inputs so the file stays fast.
"""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from cnntrain.engine.train import training_loss
from cnntrain.models import build_model, list_models, model_info
from cnntrain.models.alexnet import SafeMaxPool2d
from cnntrain.models.googlenet import TABLE1, Inception, InceptionNaive

CLASSIC = [
    "alexnet", "alexnet-2gpu", "alexnet-tv", "zfnet",
    "vgg11", "vgg11-lrn", "vgg13", "vgg16-c", "vgg16", "vgg19",
    "vgg11_bn", "vgg13_bn", "vgg16-c_bn", "vgg16_bn", "vgg19_bn",
    "nin-cifar", "nin-imagenet", "googlenet", "googlenet-tv",
    "inception-v4", "inception-resnet-v2", "squeezenet1.0", "squeezenet1.1",
]


def meta_model(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, **options)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_all_registered() -> None:
    assert set(CLASSIC) <= set(list_models())
    for name in CLASSIC:
        info = model_info(name)
        assert info.paper and info.year >= 2012
        assert info.input_size == (299 if name.startswith("inception") else 32 if name == "nin-cifar" else 224)


# ------------------------------------------------------------------- parameter counts

# The papers' figures for 1000 classes (AlexNet's single tower as built here: the paper's
# 60.97M is its two-tower network).
PAPER_PARAMS = {
    "alexnet": 62.4e6, "alexnet-2gpu": 60.97e6,
    "vgg11": 133e6, "vgg11-lrn": 133e6, "vgg13": 133e6, "vgg16-c": 134e6, "vgg16": 138e6, "vgg19": 144e6,
    "vgg11_bn": 133e6, "vgg13_bn": 133e6, "vgg16-c_bn": 134e6, "vgg16_bn": 138e6, "vgg19_bn": 144e6,
    "squeezenet1.0": 1.25e6, "squeezenet1.1": 1.24e6,
    "inception-v4": 42.7e6, "inception-resnet-v2": 55.8e6,
}
# Exact counts where the paper prints none, derived from the layouts in the docstrings
# (and equal to torchvision's where it has the model).
EXACT_PARAMS = {
    "alexnet-tv": 61_100_840, "zfnet": 107_627_624, "nin-imagenet": 7_595_176,
    "googlenet-tv": 13_004_888, "squeezenet1.0": 1_248_424, "squeezenet1.1": 1_235_496,
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_count_matches_paper(name: str) -> None:
    count = n_params(meta_model(name))
    assert abs(count - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.01, count


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_parameter_count_exact(name: str) -> None:
    assert n_params(meta_model(name)) == EXACT_PARAMS[name]


def test_nin_cifar_count() -> None:
    assert n_params(meta_model("nin-cifar", num_classes=10)) == 966_986  # ~0.97M


def test_squeezenet_is_fifty_times_smaller_than_alexnet() -> None:
    # The paper's "50x" is 240MB / 4.8MB, both rounded. Exactly, v1.0 is 49.97x smaller
    # than the single-tower AlexNet (48.9x than the two-tower 60.97M), v1.1 50.5x.
    alex = n_params(meta_model("alexnet"))
    assert alex / n_params(meta_model("squeezenet1.0")) > 49.9
    assert alex / n_params(meta_model("squeezenet1.1")) >= 50
    assert n_params(meta_model("alexnet-2gpu")) / n_params(meta_model("squeezenet1.0")) > 48.5


def test_googlenet_matches_table1() -> None:
    """Table 1's "params" column counts weights only, in units of K = 1024 (112K for the
    conv2/conv3 pair is exactly 114,688); it sums to the paper's "6.8M" (6797.7K)."""
    model = meta_model("googlenet", aux_logits=False)
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    assert abs(weights / 1024 - 6797.7) / 6797.7 < 0.01
    assert sum(p.numel() for p in model.conv2.parameters() if p.dim() > 1) \
        + sum(p.numel() for p in model.conv3.parameters() if p.dim() > 1) == 112 * 1024
    assert model.fc.weight.numel() == 1000 * 1024
    assert 6.9e6 < n_params(model) < 7.0e6  # 6,998,552 with biases
    # the auxiliary heads add 2 x (conv 128 + FC 2048x1024 + FC 1024x1000)
    assert n_params(meta_model("googlenet")) == 13_378_280


def test_googlenet_map_sizes_follow_table1() -> None:
    model = meta_model("googlenet").eval()
    sizes: dict[str, tuple[int, ...]] = {}
    for name in ("conv1", "maxpool1", "conv3", "maxpool2", "maxpool3", "maxpool4",
                 *[f"inception{k}" for k in TABLE1]):
        getattr(model, name).register_forward_hook(
            lambda mod, inp, out, name=name: sizes.__setitem__(name, tuple(out.shape[1:])))
    model(torch.zeros(1, 3, 224, 224, device="meta"))
    assert sizes["conv1"] == (64, 112, 112) and sizes["maxpool1"] == (64, 56, 56)
    assert sizes["conv3"] == (192, 56, 56) and sizes["maxpool2"] == (192, 28, 28)
    expected = {"3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832,
                "5a": 832, "5b": 1024}
    side = {"3": 28, "4": 14, "5": 7}
    for key, width in expected.items():
        assert sizes[f"inception{key}"] == (width, side[key[0]], side[key[0]])
    assert sizes["maxpool3"] == (480, 14, 14) and sizes["maxpool4"] == (832, 7, 7)


def test_alexnet_2gpu_connects_within_towers() -> None:
    convs = [m for m in meta_model("alexnet-2gpu").features if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]  # conv3 sees both towers


@pytest.mark.parametrize("name, layers, one_by_one", [
    ("vgg11", 11, 0), ("vgg11-lrn", 11, 0), ("vgg13", 13, 0), ("vgg16-c", 16, 3),
    ("vgg16", 16, 0), ("vgg19", 19, 0), ("vgg16-c_bn", 16, 3),
])
def test_vgg_depths(name: str, layers: int, one_by_one: int) -> None:
    model = meta_model(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(fcs) == layers
    assert sum(c.kernel_size == (1, 1) for c in convs) == one_by_one
    assert any(isinstance(m, nn.LocalResponseNorm) for m in model.modules()) == (name == "vgg11-lrn")
    drops = [m.p for m in model.classifier if isinstance(m, nn.Dropout)]
    assert drops == [0.5, 0.5]


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", CLASSIC)
def test_output_shape_at_paper_size(name: str) -> None:
    size = model_info(name).input_size
    model = meta_model(name, num_classes=7).eval()
    assert model(torch.zeros(2, 3, size, size, device="meta")).shape == (2, 7)


@pytest.mark.parametrize("name", [n for n in CLASSIC if not n.startswith("inception")])
def test_output_shape_at_32(name: str) -> None:
    model = meta_model(name, num_classes=7).eval()
    assert model(torch.zeros(2, 3, 32, 32, device="meta")).shape == (2, 7)


@pytest.mark.parametrize("name", ["inception-v4", "inception-resnet-v2"])
def test_inception_min_size(name: str) -> None:
    model = meta_model(name, num_classes=7).eval()
    assert model(torch.zeros(1, 3, 75, 75, device="meta")).shape == (1, 7)
    with pytest.raises(Exception, match="at least 75x75"):
        model(torch.zeros(1, 3, 32, 32, device="meta"))


def test_in_channels() -> None:
    for name in ("alexnet-2gpu", "vgg11_bn", "nin-cifar", "googlenet", "squeezenet1.1", "inception-v4"):
        size = 75 if name.startswith("inception") else 32
        model = meta_model(name, num_classes=5, in_channels=1).eval()
        assert model(torch.zeros(1, 1, size, size, device="meta")).shape == (1, 5)


# ------------------------------------------------------------------ a training step

STEP = ["alexnet", "alexnet-2gpu", "alexnet-tv", "zfnet", "vgg11-lrn", "vgg16-c_bn",
        "nin-cifar", "nin-imagenet", "googlenet", "googlenet-tv", "inception-v4",
        "inception-resnet-v2", "squeezenet1.0", "squeezenet1.1"]


@pytest.mark.parametrize("name", STEP)
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    size = 75 if name.startswith("inception") else 32
    model = build_model(name, num_classes=10).train()
    out = model(torch.randn(2, 3, size, size))
    loss = training_loss(out, torch.tensor([1, 7]), 0.0)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_googlenet_aux_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("googlenet", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert isinstance(out, tuple) and len(out) == 3
    assert all(o.shape == (2, 10) for o in out)
    assert model.eval()(x).shape == (2, 10)
    no_aux = build_model("googlenet", num_classes=10, aux_logits=False).train()
    assert isinstance(no_aux(x), torch.Tensor)
    assert n_params(no_aux) < n_params(model)


def test_googlenet_aux_head_pools_as_the_paper() -> None:
    torch.manual_seed(0)
    head = build_model("googlenet", num_classes=3).aux1.eval()
    x = torch.randn(1, 512, 14, 14)
    pooled = nn.functional.avg_pool2d(x, 5, stride=3)  # §5: 5x5/3 -> 4x4x512
    expected = head.fc2(torch.relu(head.fc1(torch.flatten(head.conv(pooled), 1))))
    torch.testing.assert_close(head(x), expected)


def test_inception_blocks() -> None:
    naive = InceptionNaive(32, 8, 16, 4)
    assert naive(torch.randn(1, 32, 9, 9)).shape == (1, 8 + 16 + 4 + 32, 9, 9)
    block = Inception(192, *TABLE1["3a"])
    assert block(torch.randn(1, 192, 9, 9)).shape == (1, 256, 9, 9)
    assert block.branch3[1].conv.kernel_size == (5, 5)


def test_safe_max_pool() -> None:
    torch.manual_seed(0)
    for size in (13, 27, 55):
        x = torch.randn(2, 4, size, size)
        torch.testing.assert_close(SafeMaxPool2d(3, 2)(x), nn.MaxPool2d(3, 2)(x))
    x = torch.randn(2, 4, 2, 2)
    assert torch.equal(SafeMaxPool2d(3, 2)(x), x.amax(dim=(2, 3), keepdim=True))


# ------------------------------------------------------------ torchvision interchange


def randomize_(model: nn.Module, seed: int, skip_above: int | None = None) -> nn.Module:
    """Fill every parameter and buffer with fresh random values (BN statistics too, so a
    misplaced normalisation would show in eval outputs); tensors over ``skip_above``
    elements keep theirs (refilling VGG's 100M-weight first FC layer costs seconds)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if skip_above is not None and t.numel() > skip_above:
                continue
            if not t.is_floating_point():
                t.zero_()
            elif t.dim() > 1:  # He-uniform keeps deep nets' activations in range
                bound = math.sqrt(6.0 / t[0].numel())
                t.uniform_(-bound, bound, generator=gen)
            elif name.endswith(("running_var", "weight")):
                t.uniform_(0.5, 1.5, generator=gen)
            else:
                t.uniform_(-0.1, 0.1, generator=gen)
    return model


def empty(factory) -> nn.Module:
    """Build on the meta device, then allocate without initialising (fast for VGG)."""
    with torch.device("meta"):
        model = factory()
    return model.to_empty(device="cpu").eval()


tvm = torchvision.models
TORCHVISION = {
    "alexnet-tv": (lambda: tvm.alexnet(num_classes=10), 224),
    "vgg11": (lambda: tvm.vgg11(num_classes=10), 64),
    "vgg13": (lambda: tvm.vgg13(num_classes=10), 64),
    "vgg16": (lambda: tvm.vgg16(num_classes=10), 64),
    "vgg19": (lambda: tvm.vgg19(num_classes=10), 64),
    "vgg11_bn": (lambda: tvm.vgg11_bn(num_classes=10), 64),
    "vgg13_bn": (lambda: tvm.vgg13_bn(num_classes=10), 64),
    "vgg16_bn": (lambda: tvm.vgg16_bn(num_classes=10), 64),
    "vgg19_bn": (lambda: tvm.vgg19_bn(num_classes=10), 64),
    "googlenet-tv": (lambda: tvm.googlenet(num_classes=10, aux_logits=True, init_weights=True,
                                           transform_input=False), 224),
    "squeezenet1.0": (lambda: tvm.squeezenet1_0(num_classes=10), 224),
    "squeezenet1.1": (lambda: tvm.squeezenet1_1(num_classes=10), 224),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_interchange(name: str) -> None:
    factory, size = TORCHVISION[name]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    ours = randomize_(empty(lambda: build_model(name, num_classes=10)), seed=2)
    theirs = empty(factory)
    with torch.no_grad():
        theirs.load_state_dict(ours.state_dict(), strict=True)  # ours -> torchvision
        expected = ours(x)
        assert expected.std() > 1e-3  # a real signal, not a collapsed output
        torch.testing.assert_close(theirs(x), expected)
        randomize_(theirs, seed=3, skip_above=10_000_000)
        ours.load_state_dict(theirs.state_dict(), strict=True)  # torchvision -> ours
        torch.testing.assert_close(ours(x), theirs(x))


def test_googlenet_tv_train_mode_matches_torchvision() -> None:
    ours = randomize_(build_model("googlenet-tv", num_classes=10), seed=4)
    theirs = tvm.googlenet(num_classes=10, aux_logits=True, init_weights=False, transform_input=False)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96)
    torch.manual_seed(5)  # the same dropout masks: both draw them in the same order
    main, aux1, aux2 = ours.train()(x)
    torch.manual_seed(5)
    tv = theirs.train()(x)  # torchvision orders them (main, aux2, aux1)
    torch.testing.assert_close(main, tv.logits)
    torch.testing.assert_close(aux1, tv.aux_logits1)
    torch.testing.assert_close(aux2, tv.aux_logits2)


def test_googlenet_tv_transform_input() -> None:
    ours = randomize_(empty(lambda: build_model("googlenet-tv", num_classes=10, transform_input=True)), 6)
    theirs = empty(lambda: tvm.googlenet(num_classes=10, aux_logits=True, init_weights=False,
                                         transform_input=True))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
