"""Train: an EAGLE-3, EAGLE-1 or DFlash draft on Ray Train.

The base model's outputs come from one of three sources (`train.features`): `online`, the frozen base model
inside each worker, run forward at every step; `cached`, the capture stage's feature cache, read back by
sequence; or `streamed`, feature servers (the capture engines, `capture.replicas` of them) computing each batch's
features when a worker asks, every epoch, nothing on disk. Cached and streamed workers hold the draft, the
embedding table and the LM head's draft rows, no base model.
What a worker does lives in eagle_recipes/training/; this stage decides what it trains on, starts it, and leaves
the trained draft in `train/trained/` (draft/trained.py) for export.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from eagle_recipes.draft.drafters import drafter
from eagle_recipes.recipe.draft_config import draft_config_for, vocab_file
from eagle_recipes.draft.trained import write_trained
from eagle_recipes.recipe import Recipe
from eagle_recipes.recipe.base_model import base_model_path, rendering_settings
from eagle_recipes.run_folder import CALIBRATE, CAPTURE, HELD_OUT_FOLDER, RELATIVE, TOKENIZE, TRAIN, TRAIN_PLOTS
from eagle_recipes.stages.base import Stage, StageContext



def train_config(recipe: Recipe, worker_cpus: float | None = None, **paths: Any):
    """The TrainConfig of this recipe, with the run's paths; `worker_cpus`: each worker's cores, when it shares
    train.cpus_per_worker with feature servers."""
    from eagle_recipes.devices import torch_threads, training_precision
    from eagle_recipes.training.config import TrainConfig

    train = recipe.train
    return TrainConfig.from_train_table(
        train.to_dict(), **paths, threads=torch_threads(worker_cpus or train.cpus_per_worker),
        precision=training_precision(train.precision, train.use_gpu), simulate_k=recipe.eval.num_speculative_tokens,
        keep_best=train.keep_best and bool(train.simulate_every))


def warn_emulated_bfloat16(config, log) -> None:
    """bfloat16 autocast asked for on a CPU that emulates it (AVX2 only): each matmul ~20x float32's."""
    import torch

    from eagle_recipes.devices import describe_hardware, native_bfloat16

    cpu = torch.device("cpu")
    if not config.use_gpu and config.precision == "bfloat16" and not native_bfloat16(cpu):
        log(f'train.precision = "bfloat16" on a CPU that emulates it ({describe_hardware(cpu)}): each matmul costs '
            'about 20x its float32 twin; "float32" (or "auto") trains faster here')


def mapping_file(recipe: Recipe, upstream: dict[str, Path]) -> Path | None:
    """The draft vocabulary's d2t file: calibrate's (or the recipe's cache) for EAGLE-3 and DFlash; none for EAGLE-1,
    which drafts over the whole vocabulary."""
    return vocab_file(recipe, upstream) if drafter(recipe.draft.algorithm).calibrated_vocab else None


def vocab_mapping(recipe: Recipe, upstream: dict[str, Path], model_path: str):
    """The draft vocabulary the trained draft carries (read where it is made: the workers read the same file)."""
    from eagle_recipes.draft.vocab import identity_mapping, load_d2t
    from eagle_recipes.models import base_model_facts

    vocab_size = base_model_facts(model_path).vocab_size
    source = mapping_file(recipe, upstream)
    return load_d2t(source, vocab_size) if source else identity_mapping(vocab_size)


class TrainStage(Stage):
    name = TRAIN
    description = "train the draft on Ray Train (base model features online in each worker, cached or streamed)"
    headline_metric = "final_loss"
    reads_from = (TOKENIZE, CALIBRATE, CAPTURE)


    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        # the base model (online: it runs in the workers), then what is trained and how; the sequences come with
        # the tokenize stage's fingerprint
        from eagle_recipes.training.features import feature_mode

        return {**rendering_settings(recipe), "train": recipe.data["train"], "draft": recipe.data["draft"],
                **feature_mode(recipe.train.features).fingerprint(recipe.data)}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        return [recipe.resolve(recipe.vocab.draft_vocab_cache)] if recipe.vocab.draft_vocab_cache else []

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return [f"{RELATIVE.trained}/", str(RELATIVE.metrics), *(str(RELATIVE.stage(TRAIN) / plot) for plot in TRAIN_PLOTS)]

    @staticmethod
    def describe_resources(recipe: Recipe) -> list[str]:
        from eagle_recipes.sizes import feature_modes, training_sizes
        from eagle_recipes.training.features import feature_mode

        train = recipe.train
        per_worker = "1 GPU" if train.use_gpu else f"{train.cpus_per_worker} CPU"
        lines = [f"workers: {train.num_workers} x {per_worker} ({train.strategy}, features {train.features})"]
        lines += feature_mode(train.features).resources(recipe)
        sizes = training_sizes(recipe)
        if sizes:
            lines += feature_modes(recipe, sizes)
        return lines

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        from eagle_recipes.training.checkpoints import Checkpointer
        from eagle_recipes.training.metrics import MetricsLog
        from eagle_recipes.training.trainer import fit

        recipe, train = ctx.recipe, ctx.recipe.train
        checkpointer, metrics = Checkpointer(ctx.run.checkpoints), MetricsLog(ctx.run.metrics)
        prepared = prepare_training(recipe, ctx.upstream, ctx.out, checkpointer.folder, metrics.path,
                                    bool(train.simulate_every), ctx.log)
        checkpointer.discard_damaged(ctx.log)
        resumed_step = checkpointer.latest_step()
        metrics.truncate_after(resumed_step)
        if resumed_step:
            ctx.log(f"resuming from checkpoint {checkpointer.latest().name}")
        config = prepared.config
        warn_emulated_bfloat16(config, ctx.log)
        started = time.time()
        served = fit(config, train.num_workers, prepared.worker_cpus, ctx.out / "ray", ctx.progress,
                     recipe.tracking(), ctx.log)
        wall = time.time() - started
        state = checkpointer.load_latest()
        best = checkpointer.load_best() if config.keep_best else None
        if best:
            ctx.log(f"keeping the draft of step {best['step']} (best simulated tau {best['tau']:.3f})")
        write_trained(ctx.run.trained, (best or state)["draft"], prepared.draft_config, prepared.mapping)
        summary = metrics.summarize(state["step"], prepared.count, resumed_step)
        plots = metrics.plot(ctx.out, drafter(recipe.draft.algorithm).step_label)
        if served.get("restarted"):
            ctx.log(f"feature servers restarted after dying: {served['restarted']} (Ray asked them again for the "
                    f"requests they held; the batches and their order are unchanged)")
        if served:  # streamed: what the feature servers computed (nothing of it was written)
            summary["counts"].update({f"streamed_{name}": value for name, value in served.items()})
        summary["metrics"].update(wall_s=wall, plots=plots, exported_step=(best or state)["step"],
                                  draft_vocab_size=prepared.mapping.draft_vocab_size,
                                  draft_config=asdict(prepared.draft_config), train_config=config.to_dict())
        return summary


@dataclass
class PreparedTraining:
    config: Any  # TrainConfig
    count: int  # training sequences
    mapping: Any  # the draft vocabulary (draft/vocab.py)
    draft_config: Any  # DraftConfig
    worker_cpus: float  # each training worker's cores (train.cpus_per_worker, less the feature servers' share)


def prepare_training(recipe: Recipe, upstream: dict[str, Path], out: Path, checkpoint_dir: Path, metrics_file: Path,
                     simulate: bool, log) -> PreparedTraining:
    """What the workers train on and how: the tokenize stage's sequences, the held-out split's when `simulate`,
    the draft's architecture and vocabulary, and the TrainConfig. The train stage and every trial of a tune
    (eagle_recipes/tuning/) start from here."""
    from eagle_recipes.data.sequences import sequence_count
    from eagle_recipes.training.batches import steps_per_epoch
    from eagle_recipes.training.features import feature_mode

    train = recipe.train
    model_path = base_model_path(recipe)
    mapping = vocab_mapping(recipe, upstream, model_path)
    draft_config = draft_config_for(recipe, model_path, mapping.draft_vocab_size)
    holdout = {}
    data_folder = upstream[TOKENIZE]
    count = sequence_count(data_folder)
    if simulate and sequence_count(data_folder / HELD_OUT_FOLDER):
        holdout = {"holdout_folder": str(data_folder / HELD_OUT_FOLDER)}
        if CAPTURE in upstream:  # capture captured the held-out split's features too
            holdout["holdout_capture_dir"] = str(upstream[CAPTURE] / HELD_OUT_FOLDER)
    if simulate and not holdout:
        log("simulated acceptance: the held-out split is empty (data.holdout_fraction leaves no conversation "
            "out)")
    if steps_per_epoch(count, train.num_workers, train.grad_accum, train.batch_size) == 0:
        raise ValueError(f"{count} training sequences are fewer than one global batch "
                         f"({train.num_workers} workers x {train.grad_accum} x {train.batch_size}); add data")
    mode = feature_mode(train.features)
    split = mode.core_split(recipe.data["train"], recipe.data["capture"])
    servers, worker_cpus = {}, split.worker_cpus if split else train.cpus_per_worker
    if mode.feature_servers:
        from eagle_recipes.recipe.draft_config import capture_spec

        spec = replace(capture_spec(recipe, model_path, data_folder), threads=split.server_cpus if split else 0)
        servers = {"feature_servers": {"spec": spec.to_dict(), "replicas": recipe.capture.replicas}}
    config = train_config(
        recipe, worker_cpus, model_path=model_path, draft_config=draft_config.to_dict(),
        vocab_file=str(mapping_file(recipe, upstream) or ""), data_folder=str(data_folder),
        checkpoint_dir=str(checkpoint_dir), metrics_file=str(metrics_file), capture_dir=str(upstream.get(CAPTURE, "")),
        **holdout, **servers)
    return PreparedTraining(config, count, mapping, draft_config, worker_cpus)
