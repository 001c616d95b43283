"""Recipe -> model: the recipe's ``[model]`` section passed to the registry."""
from __future__ import annotations

from torch import nn

from cnntrain.models import build_model
from cnntrain.recipe import Recipe


def model_from_recipe(recipe: Recipe, num_classes: int, in_channels: int) -> nn.Module:
    options = dict(recipe.model.options)
    if recipe.model.dropout is not None:
        options["dropout"] = recipe.model.dropout
    return build_model(recipe.model.arch, num_classes=num_classes, in_channels=in_channels, **options)
