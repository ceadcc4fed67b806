"""The training configuration: everything a worker needs, built once by the train stage and recorded in its
manifest. Plain values only, so it travels to Ray Train workers as a dict.

The fields named like a key of the recipe's [train] table take that key's value (`from_train_table`): the schema
is the only place their defaults are written. The rest are the run's paths and what the train stage derives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    model_path: str
    draft_config: dict  # DraftConfig.to_dict()
    vocab_file: str  # the draft vocabulary's d2t file; empty: the base model's whole vocabulary
    data_folder: str  # holds tokenized/, the training sequences (the tokenize stage's folder)
    checkpoint_dir: str
    metrics_file: str
    features: str  # the feature mode (training/features/): where the base model's outputs come from
    capture_dir: str  # the capture stage's folder ("" when online)
    threads: int
    use_gpu: bool
    strategy: str  # "ddp" | "fsdp"
    precision: str  # "bfloat16" (autocast) | "float32"
    epochs: int
    max_steps: int
    batch_size: int
    grad_accum: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    schedule: str
    grad_clip: float
    ttt_steps: int
    ttt_decay: float
    loss_on: str  # "assistant" | "all"
    checkpoint_every: int
    keep_checkpoints: int
    seed: int
    init_from_target: bool
    loss: str  # draft/losses.py
    optimizer: str  # "adamw" | "muon"
    muon_lr_scale: float  # Muon's lr = lr x this
    feature_noise: float  # uniform noise of this amplitude on the aux states, training only
    simulate_every: int  # steps between simulated-acceptance measurements (0: never)
    simulate_k: int  # draft tokens per verify step in the simulation (the recipe's eval.num_speculative_tokens)
    keep_best: bool  # the trained draft is the checkpoint of the best simulated tau
    holdout_folder: str = ""  # the held-out sequences the simulation replays
    holdout_capture_dir: str = ""  # their captured features (cached training)
    max_sequences: int = 0  # train on the first this many sequences only (0: all; a tune's trials on a subset)
    # the [train.<name>] tables: a drafter's own settings ([train.dflash]) and a feature mode's ([train.streamed])
    tables: dict = field(default_factory=dict)
    feature_servers: dict = field(default_factory=dict)  # streamed: {"spec": CaptureSpec dict, "replicas": n}

    @classmethod
    def from_train_table(cls, train: dict[str, Any], **run: Any) -> "TrainConfig":
        """A recipe's [train] table (the schema's defaults applied) under its own names, and the run's fields
        (paths, derived values), which win where both name one."""
        names = {field.name for field in fields(cls)}
        tables = {key: value for key, value in train.items() if isinstance(value, dict)}
        return cls(**{**{key: value for key, value in train.items() if key in names}, "tables": tables, **run})

    @property
    def drafter_settings(self) -> dict[str, Any]:
        """The trained drafter's own settings: the recipe's [train.<draft.algorithm>] table (DFlash: anchors,
        block_loss_decay)."""
        return self.tables.get(self.draft_config.get("algorithm", ""), {})

    @property
    def feature_settings(self) -> dict[str, Any]:
        """The feature mode's own settings: the recipe's [train.<features>] table (streamed: in_flight, cache_gib,
        server_cpus)."""
        return self.tables.get(self.features, {})

    @property
    def block_size(self) -> int:
        return int(self.draft_config.get("block_size") or 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
