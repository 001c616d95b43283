import pytest
import torch
import torchvision

import cnntrain
from cnntrain.errors import CnnTrainError
from cnntrain.models import build_model, list_models


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_count(name: str, **kw) -> int:
    with torch.device("meta"):
        return count(build_model(name, **kw))


def test_python_api():
    assert "resnet50" in cnntrain.list_models()
    assert isinstance(cnntrain.build_model("lenet5", num_classes=10), torch.nn.Module)
    assert cnntrain.load_recipe("lenet5").model.arch == "lenet5"


def test_lenet5_is_the_papers():
    net = build_model("lenet5", num_classes=10)
    assert count(net) == 61_706
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name, expected, tol", [
    ("resnet20", 0.27e6, 0.01), ("resnet110", 1.7e6, 0.02), ("resnet1202", 19.4e6, 0.01),
])
def test_cifar_resnet_sizes(name, expected, tol):
    assert abs(meta_count(name, num_classes=10) - expected) / expected < tol


def test_cifar_resnet_forward_backward():
    net = build_model("resnet20", num_classes=10)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("name, params", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
    ("resnet101", 44_549_160), ("resnet152", 60_192_808),
])
def test_imagenet_resnet_counts(name, params):
    assert meta_count(name) == params


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_state_dict_interchange_with_torchvision(name):
    ours = build_model(name, num_classes=1000).eval()
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    fresh = getattr(torchvision.models, name)(weights=None).eval()
    ours.load_state_dict(fresh.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(ours(x), fresh(x), atol=1e-5)


def test_paper_stride_placement_shares_the_layout():
    v1 = build_model("resnet50", stride_in_1x1=True)
    v15 = build_model("resnet50")
    assert v1.state_dict().keys() == v15.state_dict().keys()
    assert v1.layer2[0].conv1.stride == (2, 2) and v15.layer2[0].conv2.stride == (2, 2)


def test_alexnet_is_the_papers():
    net = build_model("alexnet").eval()
    conv1 = net.features[0]
    assert conv1.weight.numel() == 34_848  # 11*11*3*96, the lecture's "35K"
    with torch.no_grad():
        x = torch.zeros(1, 3, 224, 224)
        assert net.features[:3](x).shape == (1, 96, 55, 55)
        assert net.features[:4](x).shape == (1, 96, 27, 27)
        assert net(x).shape == (1, 1000)
    assert sum(isinstance(m, torch.nn.LocalResponseNorm) for m in net.modules()) == 2
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert torch.all(net.features[3 + 1].bias == 1.0)  # conv2 bias, as the paper set it
    assert torch.all(net.features[0].bias == 0.0)


def test_any_class_count():
    assert build_model("resnet18", num_classes=7).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    assert build_model("alexnet", num_classes=3)(torch.zeros(1, 3, 96, 96)).shape == (1, 3)


def test_unknown_model_and_option():
    with pytest.raises(CnnTrainError, match='did you mean "resnet50"'):
        build_model("resnet_50")
    with pytest.raises(CnnTrainError, match="has no option 'dropuot'.*did you mean \"dropout\""):
        build_model("alexnet", dropuot=0.3)
    assert "lenet5" in list_models()
