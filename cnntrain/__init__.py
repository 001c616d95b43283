"""cnntrain: train, evaluate and ensemble the classic convolutional networks the way
their papers did.

Python API: ``build_model(name, num_classes=...)``, ``list_models()``,
``load_recipe(name_or_path)``.
"""
__version__ = "0.1.0"

from cnntrain.models import build_model, list_models  # noqa: E402
from cnntrain.recipe import load_recipe  # noqa: E402

__all__ = ["__version__", "build_model", "list_models", "load_recipe"]
