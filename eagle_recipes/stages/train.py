"""Train: an EAGLE-3, EAGLE-1 or DFlash draft on Ray Train.

The base model's outputs come from one of two sources (`train.features`): `online`, the frozen base model
inside each worker, run forward at every step; or `cached`, the capture stage's feature cache, read back by
sequence (workers then hold the draft, the embedding table and the LM head's draft rows, no base model).
What a worker does lives in eagle_recipes/training/; this stage decides what it trains on, starts it, and leaves
the trained draft in `train/trained/` (draft/trained.py) for export.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eagle_recipes.draft.trained import TRAINED_FOLDER, write_trained
from eagle_recipes.recipe import Recipe
from eagle_recipes.run_folder import CALIBRATE, CAPTURE, SYNTHESIZE, TRAIN
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.stages.common import (
    HOLDOUT,
    base_model_path,
    conversation_input_files,
    draft_config_for,
    rendering_settings,
    tokenize_training_data,
    tracking_spec,
    vocab_file,
)

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


def train_config(recipe: Recipe, **paths: Any):
    """The TrainConfig of this recipe, with the run's paths."""
    from eagle_recipes.devices import torch_threads, training_precision
    from eagle_recipes.training.config import TrainConfig

    train = recipe.train
    return TrainConfig(**paths, features=train.features, threads=torch_threads(train.cpus_per_worker),
                       use_gpu=train.use_gpu, strategy=train.strategy,
                       precision=training_precision(train.precision, train.use_gpu),
                       epochs=train.epochs, max_steps=train.max_steps, batch_size=train.batch_size, grad_accum=train.grad_accum, lr=train.lr,
                       weight_decay=train.weight_decay, warmup_ratio=train.warmup_ratio, schedule=train.schedule,
                       grad_clip=train.grad_clip, ttt_steps=train.ttt_steps, ttt_decay=train.ttt_decay,
                       loss_on=train.loss_on, checkpoint_every=train.checkpoint_every,
                       keep_checkpoints=train.keep_checkpoints, seed=train.seed,
                       init_from_target=train.init_from_target, loss=train.loss, optimizer=train.optimizer,
                       muon_lr_scale=train.muon_lr_scale, feature_noise=train.feature_noise,
                       simulate_every=train.simulate_every, simulate_k=recipe.eval.num_speculative_tokens,
                       keep_best=train.keep_best and bool(train.simulate_every), anchors=train.anchors,
                       block_loss_decay=train.block_loss_decay)


def warn_emulated_bfloat16(config, log) -> None:
    """bfloat16 autocast asked for on a CPU that emulates it (AVX2 only): each matmul ~20x float32's."""
    import torch

    from eagle_recipes.devices import describe_hardware, native_bfloat16

    cpu = torch.device("cpu")
    if not config.use_gpu and config.precision == "bfloat16" and not native_bfloat16(cpu):
        log(f'train.precision = "bfloat16" on a CPU that emulates it ({describe_hardware(cpu)}): each matmul costs '
            'about 20x its float32 twin; "float32" (or "auto") trains faster here')


def vocab_mapping(recipe: Recipe, upstream: dict[str, Path], model_path: str):
    """The draft vocabulary: calibrate's (or the recipe's cache) for EAGLE-3 and DFlash, the whole vocabulary for
    EAGLE-1."""
    from eagle_recipes.draft.vocab import identity_mapping, load_d2t
    from eagle_recipes.models import base_model_facts

    vocab_size = base_model_facts(model_path).vocab_size
    if recipe.draft.algorithm != "eagle1":
        return load_d2t(vocab_file(recipe, upstream), vocab_size)
    return identity_mapping(vocab_size)


class TrainStage(Stage):
    name = TRAIN
    description = "train the draft on Ray Train (base model features online in each worker, or cached)"
    headline_metric = "final_loss"

    @staticmethod
    def depends_on(recipe: Recipe, enabled: set[str]) -> list[str]:
        return [s for s in (SYNTHESIZE, CALIBRATE, CAPTURE) if s in enabled]

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        # how conversations are rendered (online training renders them), then what is trained and how
        return {**rendering_settings(recipe), "train": recipe.data["train"], "draft": recipe.data["draft"]}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        files = conversation_input_files(recipe)
        if recipe.vocab.draft_vocab_cache:
            files.append(recipe.resolve(recipe.vocab.draft_vocab_cache))
        return files

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return [f"train/{TRAINED_FOLDER}/", f"train/{METRICS}", "train/loss.png", "train/accuracy.png"]

    @staticmethod
    def describe_resources(recipe: Recipe) -> list[str]:
        from eagle_recipes.sizes import gib, training_sizes

        train = recipe.train
        per_worker = "1 GPU" if train.use_gpu else f"{train.cpus_per_worker} CPU"
        lines = [f"workers: {train.num_workers} x {per_worker} ({train.strategy}, features {train.features})"]
        sizes = training_sizes(recipe)
        if sizes:
            online, cached = sizes["online"], sizes["cached"]
            lines.append(
                f"memory per worker: online {gib(online.total)} (base {gib(online.base)}, "
                f"draft state {gib(online.draft)}, "
                f"activations {gib(online.activations)}), cached {gib(cached.total)} (embeddings and LM head "
                f"{gib(cached.base)}, draft state {gib(cached.draft)}, activations {gib(cached.activations)})")
        return lines

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        from eagle_recipes.data.sequences import has_sequences, sequence_count
        from eagle_recipes.draft.vocab import save_mapping
        from eagle_recipes.training.batches import steps_per_epoch
        from eagle_recipes.training.checkpoints import Checkpointer
        from eagle_recipes.training.metrics import MetricsLog
        from eagle_recipes.training.trainer import fit

        recipe, train = ctx.recipe, ctx.recipe.train
        model_path = base_model_path(recipe)
        mapping = vocab_mapping(recipe, ctx.upstream, model_path)
        draft_config = draft_config_for(recipe, model_path, mapping.draft_vocab_size)
        holdout = {}
        if train.features == "cached":  # capture tokenized them (and captured the held-out split's features)
            data_folder = ctx.upstream[CAPTURE]
            count = sequence_count(data_folder)
            if train.simulate_every and has_sequences(data_folder / HOLDOUT):
                holdout = {"holdout_folder": str(data_folder / HOLDOUT),
                           "holdout_capture_dir": str(data_folder / HOLDOUT)}
        else:
            data_folder = ctx.out
            count = tokenize_training_data(recipe, ctx.upstream, model_path, data_folder)
            if train.simulate_every and tokenize_training_data(recipe, ctx.upstream, model_path, ctx.out / HOLDOUT,
                                                               split="holdout"):
                holdout = {"holdout_folder": str(ctx.out / HOLDOUT)}
        if train.simulate_every and not holdout:
            ctx.log("train.simulate_every: the held-out split is empty (data.holdout_fraction leaves no "
                    "conversation out): no simulated acceptance")
        if steps_per_epoch(count, train.num_workers, train.grad_accum, train.batch_size) == 0:
            raise ValueError(f"{count} training sequences are fewer than one global batch "
                             f"({train.num_workers} workers x {train.grad_accum} x {train.batch_size}); add data")
        save_mapping(mapping, ctx.out)
        checkpointer, metrics = Checkpointer(ctx.out / CHECKPOINTS), MetricsLog(ctx.out / METRICS)
        checkpointer.discard_damaged(ctx.log)
        resumed_step = checkpointer.latest_step()
        metrics.truncate_after(resumed_step)
        if resumed_step:
            ctx.log(f"resuming from checkpoint {checkpointer.latest().name}")
        config = train_config(
            recipe, model_path=model_path, draft_config=draft_config.to_dict(), vocab_file=str(ctx.out / "d2t.pt"),
            data_folder=str(data_folder), checkpoint_dir=str(checkpointer.folder), metrics_file=str(metrics.path),
            capture_dir=str(ctx.upstream.get(CAPTURE, "")), **holdout)
        warn_emulated_bfloat16(config, ctx.log)
        started = time.time()
        fit(config, train.num_workers, train.cpus_per_worker, ctx.out / "ray", ctx.progress, tracking_spec(recipe),
            ctx.log)
        wall = time.time() - started
        state = checkpointer.load_latest()
        best = checkpointer.load_best() if config.keep_best else None
        if best:
            ctx.log(f"keeping the draft of step {best['step']} (best simulated tau {best['tau']:.3f})")
        write_trained(ctx.out / TRAINED_FOLDER, (best or state)["draft"], draft_config, mapping)
        summary = metrics.summarize(state["step"], count, resumed_step)
        summary["metrics"].update(wall_s=wall, plots=metrics.plot(ctx.out), exported_step=(best or state)["step"],
                                  draft_vocab_size=mapping.draft_vocab_size, draft_config=asdict(draft_config),
                                  train_config=config.to_dict())
        return summary
