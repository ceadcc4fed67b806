"""What a feature mode (`train.features`) declares about itself: the one place the rest of the code asks instead of
comparing mode names. Plain facts and callables; whatever needs torch or Ray is imported when called, so that
validate and plan never import them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class WorkerMemory:
    """Bytes a training worker holds."""

    base: int  # what it holds of the base model: all of it (online) or its embeddings and LM head
    draft: int  # the draft with its gradients and optimizer state
    activations: int  # one micro-batch at max_seq_len (estimate), with what a mode keeps beside it

    @property
    def total(self) -> int:
        return self.base + self.draft + self.activations


@dataclass(frozen=True)
class WorkerParts:
    """The parts a worker's memory is made of at the recipe's size (eagle_recipes/sizes.py measures them); each
    mode adds up the ones it holds."""

    base_weights: int  # the whole base model
    head_weights: int  # its embeddings and LM head
    base_activations: int  # one base forward over a micro-batch (kept hidden states and logits)
    read_features: int  # one micro-batch's features, read back in float32
    batch_features: int  # one micro-batch's features as stored or served
    draft: int  # the draft with its gradients and optimizer state
    draft_activations: int  # the draft's logits, probabilities and gradients at every unroll position


@dataclass(frozen=True)
class CoreSplit:
    """How the cores given to training are shared between the training workers and the feature servers."""

    given: int  # train.num_workers x train.cpus_per_worker
    worker_cpus: int  # each training worker's (its torch threads)
    server_cpus: int  # each feature server's (its torch threads)


@dataclass(frozen=True)
class FeatureMode:
    """One `train.features` value: where a training worker gets the base model's outputs."""

    name: str  # the recipe's train.features
    capture_skip: str | None  # why the capture stage is not planned for it; None: the capture stage runs
    base_in_workers: bool  # every training worker holds the whole base model (its memory is checked per GPU)
    writes_features: bool  # the features are written to disk (their size is checked against the free disk)
    tune_refusal: str | None  # why a tune's trials cannot share its features; None: a tune can use it
    forward_advice: str | None  # what to change when the base model's forward dominates a training step
    # (WorkerParts, the recipe's [train] table) -> what a worker holds
    worker_memory: Callable[[WorkerParts, dict[str, Any]], WorkerMemory]
    # (recipe, TrainingSizes, free disk bytes) -> plan's line for it
    describe: Callable[[Any, Any, int], str]
    # (recipe, TrainingSizes, free disk bytes) -> why plan recommends it, or None; modes are asked in `preference`
    recommend: Callable[[Any, Any, int], str | None]
    preference: int  # plan asks the modes whether to recommend them in this order (lowest first)
    # (TrainConfig, DraftConfig, draft ids, device, dtype, feature servers (handles or routed), rank) -> TargetSource
    target_source: Callable[..., Any]
    feature_servers: bool = False  # runs the [capture] engine as feature servers beside the training workers
    start_servers: Callable[[Any], list] | None = None  # TrainConfig -> the servers' handles
    stop_servers: Callable[[list], dict[str, int]] | None = None  # handles -> what they served
    resources: Callable[[Any], list[str]] = lambda recipe: []  # plan's lines on what it runs beside the workers
    # (the recipe's [train] table, its [capture] table) -> how workers and servers share the CPUs; None: no sharing
    core_split: Callable[[dict[str, Any], dict[str, Any]], CoreSplit | None] = lambda train, capture: None

    def fingerprint(self, recipe_data: dict[str, Any]) -> dict[str, Any]:
        """What the train stage's fingerprint adds for it: the feature servers' engine and dtype count."""
        return {"capture": recipe_data["capture"]} if self.feature_servers else {}
