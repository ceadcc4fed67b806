"""The feature modes by name: every part of the code asks this registry what a `train.features` value needs,
starts and costs, instead of comparing names. A new mode is a module in this folder, a line below and the schema's
enum."""

from __future__ import annotations

from eagle_recipes.training.features.base import FeatureMode
from eagle_recipes.training.features.cached import CACHED
from eagle_recipes.training.features.online import ONLINE
from eagle_recipes.training.features.streamed import STREAMED

FEATURE_MODES: dict[str, FeatureMode] = {mode.name: mode for mode in (ONLINE, CACHED, STREAMED)}


def feature_mode(name: str) -> FeatureMode:
    """The mode a recipe's train.features names (the schema's enum keeps names to these)."""
    return FEATURE_MODES[name]
