"""The layout of a run's output folder, named here and nowhere else: one folder per stage, named by the stage, each
with its manifest; inside them the artifacts at the names below. Stages, the runner, the plan, the card, publish and
the tests all ask a `RunFolder` where a thing is; modules that write one of these files import its name from here.

`RunFolder(Path())` gives the same paths relative to the run's root: what `plan` shows as a stage's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYNTHESIZE, TOKENIZE, CALIBRATE, CAPTURE, TRAIN, EXPORT, EVALUATE = (
    "synthesize", "tokenize", "calibrate", "capture", "train", "export", "evaluate")

RUN_SUMMARY = "run.json"  # <root>/run.json: what the last `run` did
CONVERSATION_SHARDS = "shards"  # synthesize/shards/*.jsonl: the conversations
PROMPT_STORE = "prompts"  # synthesize/prompts/: the prompt rows as read, which a shard names by offset (removed when done)
D2T_FILE, T2D_FILE = "d2t.pt", "t2d.pt"  # the draft vocabulary (calibrate's, the train stage's, the trained draft's)
TOKEN_COUNTS = "counts.npy"  # calibrate: token frequencies of the training split
SEQUENCES_FOLDER = "tokenized"  # tokenize/tokenized/NNNNN/: sequence shards: ids, loss mask, offsets (.npy)
FEATURE_SHARDS = "shards"  # capture/shards/*.safetensors: the base model's features per sequence shard
HEAD_FILE = "head.safetensors"  # capture: the base model's embeddings, final norm and draft-vocabulary LM head
HELD_OUT_FOLDER = "holdout"  # the held-out split's sequences (tokenize/holdout) and features (capture/holdout)
TRAINED_FOLDER = "trained"  # train/trained: the draft's weights, config and vocabulary, as training left them
CHECKPOINTS = "checkpoints"  # train/checkpoints/step-NNNNNNN
CHECKPOINT_PREFIX = "step-"
METRICS_FILE = "metrics.jsonl"  # train: one row per optimizer step
LOSS_PLOT, ACCURACY_PLOT, SIMULATED_TAU_PLOT = "loss.png", "accuracy.png", "simulated_tau.png"  # train
TRAIN_PLOTS = (LOSS_PLOT, ACCURACY_PLOT)
DRAFT_FOLDER = "draft"  # export/draft: what engines load
REPORT_FILE = "report.json"  # evaluate: tau per prompt set, losslessness, the speed sweep
REPORT_PLOT = "per_position.png"
CARD_FOLDER = "card"  # evaluate/card: README.md and per_position.png, ready to publish
# `eagle-recipes tune` (outside the graph): tune/trials/<NN-key>/ per trial, what it found beside them
TUNE, TUNE_TRIALS, TUNE_DATA, TUNE_RAY = "tune", "trials", "data", "ray"
TRIAL_REPORTS, TRIAL_STARTED, TRIAL_DONE = "reports.jsonl", "trial.json", "done.json"
BEST_RECIPE, TUNE_TABLE, TUNE_RESULTS, TUNE_PLOT = "best.toml", "trials.md", "trials.jsonl", "tune.png"


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def stage(self, name: str) -> Path:
        return self.root / name

    def manifest_file(self, name: str) -> Path:
        from eagle_recipes.manifest import MANIFEST

        return self.stage(name) / MANIFEST

    @property
    def summary_file(self) -> Path:
        return self.root / RUN_SUMMARY

    # ------------------------------------------------------------ what each stage leaves
    @property
    def conversations(self) -> Path:
        return self.stage(SYNTHESIZE) / CONVERSATION_SHARDS

    @property
    def sequences(self) -> Path:
        return self.stage(TOKENIZE)

    @property
    def token_counts(self) -> Path:
        return self.stage(CALIBRATE) / TOKEN_COUNTS

    @property
    def features(self) -> Path:
        return self.stage(CAPTURE)

    @property
    def trained(self) -> Path:
        return self.stage(TRAIN) / TRAINED_FOLDER

    @property
    def metrics(self) -> Path:
        return self.stage(TRAIN) / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.stage(TRAIN) / CHECKPOINTS

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    @property
    def draft(self) -> Path:
        return self.stage(EXPORT) / DRAFT_FOLDER

    @property
    def report(self) -> Path:
        return self.stage(EVALUATE) / REPORT_FILE

    @property
    def report_plot(self) -> Path:
        return self.stage(EVALUATE) / REPORT_PLOT

    @property
    def card(self) -> Path:
        return self.stage(EVALUATE) / CARD_FOLDER

    # ------------------------------------------------------------ what a tune leaves
    @property
    def tune(self) -> Path:
        return self.root / TUNE

    def trial(self, name: str) -> Path:
        return self.tune / TUNE_TRIALS / name

    @staticmethod
    def trial_training_files(trial: Path) -> tuple[Path, Path]:
        """(checkpoint folder, metrics file) of a trial's worker (a trial writes no checkpoint)."""
        return trial / CHECKPOINTS, trial / METRICS_FILE

    @staticmethod
    def mapping_files(folder: Path) -> tuple[Path, Path]:
        """(d2t, t2d) in a folder that holds a draft vocabulary."""
        return folder / D2T_FILE, folder / T2D_FILE

    # ------------------------------------------------------------ reading a run
    def manifests(self, names: tuple[str, ...] = (SYNTHESIZE, TOKENIZE, CALIBRATE, CAPTURE, TRAIN)) -> dict[str, dict]:
        """{stage: {"counts", "metrics", "wall_s"}} of the finished stages among `names`."""
        from eagle_recipes.manifest import read_manifest

        found = {}
        for name in names:
            manifest = read_manifest(self.stage(name))
            if manifest:
                found[name] = {"counts": manifest.counts, "metrics": manifest.metrics, "wall_s": manifest.wall_s}
        return found

    def sequences_folder(self) -> Path | None:
        """The folder holding the run's tokenized training sequences, once the tokenize stage has written them."""
        return self.sequences if (self.sequences / SEQUENCES_FOLDER).exists() else None

    @classmethod
    def of_draft(cls, draft: Path) -> "RunFolder | None":
        """The run whose export wrote `draft`, when it is one's `export/draft`."""
        draft = draft.resolve()
        if draft.name == DRAFT_FOLDER and draft.parent.name == EXPORT:
            return cls(draft.parent.parent)
        return None


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:07d}"


RELATIVE = RunFolder(Path())  # paths inside any run, relative to its root
