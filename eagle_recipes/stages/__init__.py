"""The pipeline's stages, in order. Each module says what it reads, what it writes and how it runs."""

from eagle_recipes.stages.base import Stage
from eagle_recipes.stages.calibrate import CalibrateStage
from eagle_recipes.stages.capture import CaptureStage
from eagle_recipes.stages.evaluate import EvaluateStage
from eagle_recipes.stages.export import ExportStage
from eagle_recipes.stages.synthesize import SynthesizeStage
from eagle_recipes.stages.tokenize import TokenizeStage
from eagle_recipes.stages.train import TrainStage

STAGES: list[type[Stage]] = [SynthesizeStage, TokenizeStage, CalibrateStage, CaptureStage, TrainStage, ExportStage, EvaluateStage]
STAGE_NAMES = [stage.name for stage in STAGES]
