"""The worker: `setup` (draft, target source, optimizer, resume), `train_step` (one optimizer step), `save`
(checkpoint), driven by `train_loop`, all reading one frozen TrainConfig (torchtune's split: the recipe tells the
story; checkpoints, schedule, batches and metrics live beside it)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from eagle_recipes.data.sequences import Sequences
from eagle_recipes.devices import compute_dtype, worker_device
from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.drafters import build_draft, drafter
from eagle_recipes.draft.target_outputs import TargetOutputs
from eagle_recipes.draft.vocab import draft_target_ids
from eagle_recipes.trackers import TrackingSpec, step_scalars
from eagle_recipes.training.batches import collate, micro_batch_indices, planned_micro_batches, steps_per_epoch
from eagle_recipes.training.checkpoints import Checkpointer, checkpointer_for
from eagle_recipes.training.config import TrainConfig
from eagle_recipes.training.metrics import MetricsLog
from eagle_recipes.training.optimizers import MuonWithAdamW, build_optimizer, set_learning_rate
from eagle_recipes.training.parallel import clip_gradients, wrap_objective
from eagle_recipes.training.schedule import learning_rate
from eagle_recipes.training.simulation import HeldOut, simulated_acceptance
from eagle_recipes.training.step_cost import PHASES
from eagle_recipes.training.features import feature_mode
from eagle_recipes.training.target_source import TargetSource


@dataclass
class Training:
    """A worker's whole training state."""

    config: TrainConfig
    draft: torch.nn.Module  # the drafter's model (draft/drafters/: build_draft)
    objective: torch.nn.Module  # the TTT objective, wrapped for DDP / FSDP when it is
    optimizer: torch.optim.Optimizer | MuonWithAdamW
    target: TargetSource
    sequences: Sequences
    checkpointer: Checkpointer
    device: torch.device
    rank: int
    world: int
    step: int
    total: int
    per_epoch: int
    held_out: HeldOut | None = None  # what the simulated acceptance replays
    best_tau: float = 0.0


def setup(config: TrainConfig, rank: int, world: int, local_rank: int, feature_servers: list | None = None) -> Training:
    """`feature_servers` (streamed features): the servers' handles this worker asks for its batches' features."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = worker_device(config.use_gpu, local_rank)
    draft_config = DraftConfig.from_dict(config.draft_config)
    draft = build_draft(draft_config).to(device)
    draft_ids = draft_target_ids(config.vocab_file, draft_config.vocab_size).to(device)
    target = feature_mode(config.features).target_source(
        config, draft_config, draft_ids, device, compute_dtype(device, config.precision), feature_servers, rank)
    if config.init_from_target and drafter(draft_config.algorithm).starts_from_base_head:
        init_from_target(draft, target.draft_head.weight, target.final_norm)
    checkpointer = checkpointer_for(config.strategy, Path(config.checkpoint_dir), config.keep_checkpoints)
    state = checkpointer.load_latest(device)
    step = 0
    if state is not None:  # weights go in before any wrapper reshapes the parameters
        draft.load_state_dict(state["draft"])
        step = state["step"]
    objective = wrap_objective(make_objective(draft, config), config.strategy, world, device)
    optimizer = build_optimizer(objective, config.optimizer, config.lr, config.weight_decay, config.muon_lr_scale,
                                device)
    if state is not None:
        checkpointer.restore_optimizer(objective, optimizer, state["optimizer"])
    sequences = Sequences.load(Path(config.data_folder))
    if config.max_sequences:
        sequences = sequences.head(config.max_sequences)
    per_epoch = steps_per_epoch(sequences.count, world, config.grad_accum, config.batch_size)
    total = per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    target.expect(planned_micro_batches(sequences.count, config.seed, per_epoch, step, total, rank, world,
                                        config.grad_accum, config.batch_size))
    best = checkpointer.best()
    return Training(config, draft, objective, optimizer, target, sequences, checkpointer, device, rank, world, step,
                    total, per_epoch, held_out_of(config, target), best["tau"] if best else 0.0)


def make_objective(draft, config: TrainConfig) -> torch.nn.Module:
    """What one forward trains, as the drafter defines it (the training-time-test unroll, DFlash's blocks)."""
    return drafter(training_algorithm(config)).objective(draft, config)


def held_out_of(config: TrainConfig, target: TargetSource) -> HeldOut | None:
    """The held-out sequences and the training source serving their base-model outputs (the online base model
    serves any sequence; cached training reads the capture stage's held-out cache; streamed asks the servers)."""
    if not config.simulate_every or not config.holdout_folder:
        return None
    return HeldOut(Sequences.load(Path(config.holdout_folder)),
                   target.for_split(config.holdout_folder, config.holdout_capture_dir))


def init_from_target(draft: torch.nn.Module, draft_head: torch.Tensor, final_norm: torch.nn.Module | None) -> None:
    """The draft's last norm and LM head read the same hidden space as the target's: start from them."""
    with torch.no_grad():
        draft.lm_head.weight.copy_(draft_head)
        if final_norm is not None and final_norm.weight.shape == draft.norm.weight.shape:
            draft.norm.weight.copy_(final_norm.weight)


def train_step(training: Training) -> dict[str, Any]:
    """One optimizer step over one global batch; returns its metrics (over every worker's share)."""
    config, started = training.config, time.time()
    epoch, step_in_epoch = divmod(training.step, training.per_epoch)
    lr = learning_rate(training.step, training.total, config.lr, config.warmup_ratio, config.schedule)
    set_learning_rate(training.optimizer, lr)
    training.optimizer.zero_grad(set_to_none=True)
    sums = np.zeros((unroll_positions(config), 3))
    tokens, padded, length = 0, 0, 0
    seconds = dict.fromkeys(PHASES, 0.0)
    clock = time.perf_counter()
    lm_head = training.target.draft_head  # EAGLE-1 predicts through it; drafters with a head of their own ignore it
    for micro in range(config.grad_accum):
        indices = micro_batch_indices(training.sequences.count, config.seed, epoch, step_in_epoch, training.rank,
                                      training.world, config.grad_accum, config.batch_size, micro)
        input_ids, loss_mask, padding = (t.to(training.device) for t in collate(training.sequences, indices,
                                                                                  config.loss_on))
        tokens += int(padding.sum())
        padded, length = padded + input_ids.numel(), max(length, input_ids.shape[1])
        outputs = training.target.outputs(input_ids, loss_mask, padding, indices)
        draw = (training.step * config.grad_accum + micro) * training.world + training.rank  # seeds what is random
        if config.feature_noise and drafter(training_algorithm(config)).reads_aux_states:
            outputs = with_feature_noise(outputs, config.feature_noise, config.seed, draw)
        with torch.autocast(training.device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16"):
            loss, stats = training.objective(outputs, training.target.embed, lm_head, draw)
        clock = _lap(seconds, "forward", clock)
        (loss / config.grad_accum).backward()
        clock = _lap(seconds, "backward", clock)
        for j, s in enumerate(stats):
            sums[j] += (s.loss, s.correct, s.counted)
    grad_norm = 0.0
    if config.grad_clip:
        grad_norm = clip_gradients(training.draft, config.grad_clip)
    training.optimizer.step()
    _lap(seconds, "optimizer", clock)
    training.step += 1
    if training.world > 1:  # metrics over the whole global batch, not rank 0's share
        totals = torch.tensor(sums, dtype=torch.float64, device=training.device)
        torch.distributed.all_reduce(totals)
        sums = totals.cpu().numpy()
    micro_batches = config.grad_accum * training.world
    return {"step": training.step, "epoch": epoch, "lr": lr, "grad_norm": grad_norm,
            "loss": [round(float(l / micro_batches), 5) for l in sums[:, 0]],
            "accuracy": [round(float(c / max(1, n)), 5) for _, c, n in sums],
            "tokens_per_s": tokens * training.world / max(1e-9, time.time() - started),
            "seconds": {phase: round(value, 4) for phase, value in seconds.items()},
            "padded_tokens": padded, "sequence_length": length}


def _lap(seconds: dict[str, float], phase: str, since: float) -> float:
    """Add the time since `since` to `phase`; the new mark."""
    now = time.perf_counter()
    seconds[phase] += now - since
    return now


DIAGNOSED_STEP = 3  # the first steps pay for warm-up; the third step of a run is the one compared


def check_step_cost(training: Training, metrics: dict[str, Any], log: Callable[[str], None]) -> None:
    """Compare a step's measured phases with what its arithmetic costs on this CPU; say which part is slow."""
    from eagle_recipes.devices import describe_hardware, native_bfloat16
    from eagle_recipes.training.step_cost import StepContext, diagnose, estimate_seconds, measure_rates, step_work

    config = training.config
    unroll = config.ttt_steps if drafter(training_algorithm(config)).trains_by_unroll else 1
    work = step_work(training.draft, metrics["padded_tokens"], metrics["sequence_length"], unroll, config.optimizer)
    estimated = estimate_seconds(work, measure_rates(training.device))
    context = StepContext(config.optimizer, config.features, config.precision, describe_hardware(training.device),
                          native_bfloat16(training.device))
    message = diagnose(metrics["seconds"], estimated, context)
    if message:
        log(message)


def with_feature_noise(outputs: TargetOutputs, amplitude: float, seed: int, draw: int) -> TargetOutputs:
    """The aux states with uniform noise in [-amplitude, amplitude] added (speculators' default 0.05), from a
    generator seeded by (seed, draw), one draw per micro-batch: a resumed run draws the same noise."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + draw)
    noise = torch.rand(outputs.hidden.shape, generator=generator).to(outputs.hidden.device, outputs.hidden.dtype)
    return replace(outputs, hidden=outputs.hidden + (2 * noise - 1) * amplitude)


def training_algorithm(config: TrainConfig) -> str:
    return config.draft_config["algorithm"]


def unroll_positions(config: TrainConfig) -> int:
    """Positions one training forward scores, as its drafter counts them."""
    draft_config = DraftConfig.from_dict(config.draft_config)
    return drafter(draft_config.algorithm).unroll_positions(draft_config, config.ttt_steps)


def simulate(training: Training) -> dict[str, Any]:
    """Simulated tau of the draft as it is now (every rank runs it: FSDP gathers the weights collectively)."""
    config = training.config
    lm_head = training.target.draft_head
    unsharded = hasattr(training.objective, "unshard")  # FSDP2: the root's parameters gathered for plain calls
    if unsharded:
        training.objective.unshard()
    acceptance = simulated_acceptance(training.draft, training.held_out, config.simulate_k, training.target.embed,
                                      training.device, lm_head)
    if unsharded:
        training.objective.reshard()
    return {"simulated_tau": round(acceptance.acceptance_length, 5),
            "simulated_per_position": [round(p, 4) for p in acceptance.per_position]}


def save(training: Training) -> None:
    """A checkpoint of the draft and the optimizer (every rank takes part under FSDP; rank 0 writes)."""
    training.checkpointer.save(training.step, training.rank, training.objective, training.draft,
                               training.optimizer)


def run_steps(training: Training, progress: Callable | None, tracking: TrackingSpec | None,
              on_checkpoint: Callable[[dict], None] = lambda metrics: None,
              log: Callable[[str], None] | None = None) -> None:
    """Train to the last step: metrics per step from rank 0, a checkpoint every `checkpoint_every` steps and at
    the end (then `on_checkpoint(metrics)`); on a CPU, the run's third step checked against its estimate."""
    config = training.config
    metrics_log = MetricsLog(Path(config.metrics_file))
    first = training.step
    with open_trackers(tracking, training) as trackers:
        while training.step < training.total:
            metrics = train_step(training)
            if (log and training.rank == 0 and training.device.type == "cpu"
                    and training.step - first == DIAGNOSED_STEP):
                check_step_cost(training, metrics, log)
            if training.held_out and (training.step % config.simulate_every == 0 or training.step == training.total):
                metrics.update(simulate(training))
                keep_if_best(training, metrics["simulated_tau"])
            if training.rank == 0:
                metrics_log.append(metrics)
                trackers.log(training.step, step_scalars(metrics))
                if progress:
                    progress(training.step, training.total, "steps")
            if training.step % config.checkpoint_every == 0 or training.step == training.total:
                save(training)
                on_checkpoint(metrics)


def keep_if_best(training: Training, tau: float) -> None:
    if training.config.keep_best and tau > training.best_tau:
        training.best_tau = tau
        training.checkpointer.save_best(training.step, tau, training.rank, training.objective, training.draft,
                                        training.optimizer)


def train_loop(loop_config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train

    context = ray.train.get_context()
    config = TrainConfig(**loop_config["config"])
    training = setup(config, context.get_world_rank(), context.get_world_size(), context.get_local_rank(),
                     loop_config.get("feature_servers"))

    def report(metrics: dict) -> None:
        # only at checkpoints: a report waits on the controller (~1.3 s each measured on this CPU, 3x a small step);
        # per-step metrics go to metrics.jsonl, the trackers and the progress display instead
        ray.train.report({"step": training.step, "loss0": metrics["loss"][0], "accuracy0": metrics["accuracy"][0]})

    run_steps(training, loop_config.get("progress"), loop_config.get("tracking"), report, loop_config.get("log"))


def open_trackers(tracking: TrackingSpec | None, training: Training):
    """The recipe's trackers on rank 0 (resuming the run's own, past its last checkpoint); nothing elsewhere."""
    if not tracking or not tracking.names or training.rank != 0:
        return nullcontext(_NoTrackers())
    return tracking.open(purge_after=training.step)


class _NoTrackers:
    def log(self, step: int, scalars: dict, final: bool = False) -> None:
        pass
