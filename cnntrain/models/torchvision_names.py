"""Which cnntrain architectures share their state-dict layout with a torchvision model,
and that model's builder name (``torchvision.models.get_model(name)``).

Only layouts checked key-for-key and shape-for-shape in tests/test_zoo_*.py are listed:
they are what ``--init torchvision:WEIGHTS`` can start from and what ``cnntrain export
--format torchvision`` can write. The paper variants that differ (AlexNet's two-GPU
layout, VGG-11 with LRN, GoogLeNet with the paper's auxiliary heads) are not here.
"""
from __future__ import annotations

from cnntrain.errors import CnnTrainError

TORCHVISION_NAMES: dict[str, str] = {
    "alexnet-tv": "alexnet",
    "googlenet-tv": "googlenet",
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "resnet152": "resnet152",
    "resnet152-stochastic-depth": "resnet152",
    "resnext50-32x4d": "resnext50_32x4d",
    "resnext101-32x8d": "resnext101_32x8d",
    "wrn-50-2": "wide_resnet50_2",
    "densenet121": "densenet121",
    "densenet161": "densenet161",
    "densenet169": "densenet169",
    "densenet201": "densenet201",
    "squeezenet1.0": "squeezenet1_0",
    "squeezenet1.1": "squeezenet1_1",
    **{f"vgg{d}{bn}": f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")},
}


def torchvision_name(arch: str, what: str) -> str:
    """torchvision's builder name for ``arch``; an error naming ``what`` needed it otherwise."""
    if arch not in TORCHVISION_NAMES:
        raise CnnTrainError(
            f"{what}: torchvision has no model with {arch}'s layout; the architectures it shares: "
            f"{', '.join(sorted(TORCHVISION_NAMES))}"
        )
    return TORCHVISION_NAMES[arch]
