"""The training configuration: everything a worker needs, built once by the train stage and recorded in its
manifest. Plain values only, so it travels to Ray Train workers as a dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    model_path: str
    draft_config: dict  # DraftConfig.to_dict()
    vocab_file: str  # d2t.pt of the draft vocabulary
    data_folder: str  # holds data.npz, the training sequences
    checkpoint_dir: str
    metrics_file: str
    features: str  # "online" | "cached": where the base model's outputs come from
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
    loss: str = "kl"  # draft/losses.py
    optimizer: str = "adamw"  # "adamw" | "muon"
    muon_lr_scale: float = 1.0  # Muon's lr = lr x this
    feature_noise: float = 0.0  # uniform noise of this amplitude on the aux states, training only
    simulate_every: int = 0  # steps between simulated-acceptance measurements (0: never)
    simulate_k: int = 5  # draft tokens per verify step in the simulation
    holdout_folder: str = ""  # the held-out sequences (data.npz) the simulation replays
    holdout_capture_dir: str = ""  # their captured features (cached training)
    keep_best: bool = False  # the trained draft is the checkpoint of the best simulated tau
    anchors: int = 64  # DFlash: blocks per sequence
    block_loss_decay: float = 4.0  # DFlash: slot k weighs exp(-(k-1)/this)

    @property
    def block_size(self) -> int:
        return int(self.draft_config.get("block_size") or 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
