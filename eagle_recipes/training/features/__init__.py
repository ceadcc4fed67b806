"""The feature modes (`train.features`): one module per mode (online.py, cached.py, streamed.py) declaring what
it is (base.py's `FeatureMode`: whether the capture stage runs, what a worker holds, the servers it starts, its
target source, whether a tune can use it), and the registry that finds one by name (registry.py). The rest of the
code imports from here."""

from eagle_recipes.training.features.base import CoreSplit, FeatureMode, WorkerMemory, WorkerParts
from eagle_recipes.training.features.registry import FEATURE_MODES, feature_mode

__all__ = ["FEATURE_MODES", "CoreSplit", "FeatureMode", "WorkerMemory", "WorkerParts", "feature_mode"]
