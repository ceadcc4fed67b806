"""Train: an EAGLE-3 (or EAGLE-1) draft on Ray Train.

The base model's features come from one of two sources (`train.features`): `online`, the frozen base model
inside each worker, run forward at every step; or `cached`, the capture stage's shards, read back by sequence
(workers then hold the draft, the embedding table and the LM head's draft rows, no base model).

Data order is a pure function of (seed, epoch, step, rank), so a run killed at any point resumes from its last
checkpoint to the same result, N workers see exactly the sequences one worker sees with N-fold gradient
accumulation, and online and cached training see the same batches. Checkpoints are written by rank 0,
atomically, every `checkpoint_every` steps; the last `keep_checkpoints` are kept.

The worker is split the way torchtune's recipes are: `setup` (model, features, optimizer, resume), `train_step`
(one optimizer step), `save` (checkpoint), driven by `train_loop`, all reading one frozen `TrainConfig`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from eagle_recipes.atomic import atomic_path, write_json
from eagle_recipes.recipe import Recipe
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.stages.common import (
    base_model_path,
    conversation_files,
    conversation_input_files,
    load_recipe_tokenizer,
    read_conversations,
    reasoning_setting,
    thinking_when_rendered,
    torch_threads,
    vocab_file,
)
from eagle_recipes.trackers import step_scalars

CHECKPOINTS = "checkpoints"
FINAL = "final"
DATA = "data.npz"


# ---------------------------------------------------------------- data: tokenized once, indexed by step
def tokenize_training_data(recipe: Recipe, files: list[Path], model_path: str, out: Path) -> int:
    """Render every training conversation with the chat template; store ids and masks as flat arrays.
    Train (online) and capture (cached) both call this, so both see the same sequences in the same order."""
    from eagle_recipes.data.chat import render_batch

    if (out / DATA).exists():
        return int(np.load(out / DATA)["offsets"].shape[0] - 1)
    tokenizer = load_recipe_tokenizer(recipe, model_path, thinking_when_rendered(recipe))
    conversations = read_conversations(files, recipe, split="train")
    rendered = []
    for start in range(0, len(conversations), 256):
        chunk = [c["conversations"] for c in conversations[start: start + 256]]
        rendered += [r for r in render_batch(tokenizer, chunk, recipe.train.max_seq_len) if sum(r.loss_mask)]
    lengths = np.array([len(r.input_ids) for r in rendered], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.concatenate([r.input_ids for r in rendered]).astype(np.int32) if rendered else np.zeros(0, np.int32)
    mask = np.concatenate([r.loss_mask for r in rendered]).astype(np.int8) if rendered else np.zeros(0, np.int8)
    with atomic_path(out / DATA) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, ids=ids, mask=mask, offsets=offsets, pad_id=np.int64(tokenizer.pad_token_id or 0))
    return len(rendered)


def micro_batch_indices(count: int, seed: int, epoch: int, step_in_epoch: int, rank: int, world: int,
                        accumulation: int, batch_size: int, micro: int) -> list[int]:
    """Sequence indices of one micro-batch. A global batch is world * accumulation * batch_size sequences;
    micro-batch `micro` of `rank` takes slot (micro * world + rank), so the union over ranks and micro-steps
    is the same whatever the split between workers and accumulation."""
    order = np.random.default_rng(seed + epoch).permutation(count)
    global_size = world * accumulation * batch_size
    start = step_in_epoch * global_size + (micro * world + rank) * batch_size
    return order[start: start + batch_size].tolist()


def steps_per_epoch(count: int, world: int, accumulation: int, batch_size: int) -> int:
    return count // (world * accumulation * batch_size)


def learning_rate(step: int, total: int, peak: float, warmup_ratio: float, schedule: str) -> float:
    warmup = max(1, int(round(total * warmup_ratio))) if warmup_ratio > 0 else 0
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress)


# ---------------------------------------------------------------- the training configuration
@dataclass(frozen=True)
class TrainConfig:
    """Everything a worker needs, built once by the stage and recorded in its manifest."""

    model_path: str
    draft_config: dict
    vocab_file: str
    data_file: str
    checkpoint_dir: str
    metrics_file: str
    features: str  # "online" | "cached"
    capture_dir: str  # the capture stage's folder ("" when online)
    threads: int
    use_gpu: bool
    strategy: str
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

    @classmethod
    def from_recipe(cls, recipe: Recipe, **paths: Any) -> "TrainConfig":
        train = recipe.train
        return cls(**paths, features=train.features, threads=torch_threads(train.cpus_per_worker),
                   use_gpu=train.use_gpu, strategy=train.strategy, epochs=train.epochs, max_steps=train.max_steps,
                   batch_size=train.batch_size, grad_accum=train.grad_accum, lr=train.lr,
                   weight_decay=train.weight_decay, warmup_ratio=train.warmup_ratio, schedule=train.schedule,
                   grad_clip=train.grad_clip, ttt_steps=train.ttt_steps, ttt_decay=train.ttt_decay,
                   loss_on=train.loss_on, checkpoint_every=train.checkpoint_every,
                   keep_checkpoints=train.keep_checkpoints, seed=train.seed, init_from_target=train.init_from_target)


# ---------------------------------------------------------------- where the base model's features come from
def collate(data: dict, indices: list[int], loss_on: str):
    """(input_ids, loss_mask, padding) [B, T] for these sequences, right-padded."""
    import torch

    rows = [(data["ids"][data["offsets"][i]: data["offsets"][i + 1]],
             data["mask"][data["offsets"][i]: data["offsets"][i + 1]]) for i in indices]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), int(data.get("pad_id", 0)), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), length), dtype=torch.long)
    padding = torch.zeros((len(rows), length), dtype=torch.long)
    for row, (ids, mask) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
        loss_mask[row, : len(ids)] = 1 if loss_on == "all" else torch.from_numpy(mask.astype(np.int64))
        padding[row, : len(ids)] = 1
    return input_ids, loss_mask, padding


def target_outputs(target, input_ids, loss_mask, padding, aux_ids, draft_ids, algorithm: str):
    """One frozen forward of the base model: the features the draft reads, the target's next-token logits over
    the draft vocabulary (`draft_ids`: the target ids of the draft tokens), and whether the target's top token
    over its whole vocabulary is a draft token (where it is not, the draft cannot be right: no loss there)."""
    import torch

    from eagle_recipes.draft.reference import target_features
    from eagle_recipes.draft.ttt import TargetOutputs

    with torch.no_grad():
        out = target.base_model(input_ids=input_ids, attention_mask=padding, output_hidden_states=True)
        # hidden_states[0] = embeddings, [k] = input of layer k, [-1] = final normed
        full_logits = target.get_output_embeddings()(out.last_hidden_state)
        in_draft = torch.zeros(full_logits.shape[-1], dtype=torch.bool, device=full_logits.device)
        in_draft[draft_ids] = True
        hidden = target_features(out.hidden_states, algorithm, aux_ids)
        return TargetOutputs(input_ids=input_ids, loss_mask=loss_mask, padding=padding,
                             draft_logits=full_logits.index_select(-1, draft_ids),
                             top_in_draft=in_draft[full_logits.argmax(-1)], hidden=hidden)


class OnlineFeatures:
    """The frozen base model in this worker, run forward for every batch."""

    def __init__(self, config: TrainConfig, draft_config, draft_ids, device, dtype):
        import torch
        from transformers import AutoModelForCausalLM

        self.target = AutoModelForCausalLM.from_pretrained(config.model_path, dtype=dtype).to(device).eval()
        self.target.requires_grad_(False)
        self.draft_config, self.draft_ids = draft_config, draft_ids
        self.embed = self.target.get_input_embeddings()
        head = self.target.get_output_embeddings().weight.index_select(0, draft_ids)
        self.draft_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False, device=device, dtype=head.dtype)
        self.draft_head.weight.data.copy_(head)
        self.draft_head.requires_grad_(False)
        self.final_norm = getattr(self.target.base_model, "norm", None)

    def outputs(self, input_ids, loss_mask, padding, indices: list[int]):
        return target_outputs(self.target, input_ids, loss_mask, padding, self.draft_config.aux_layer_ids,
                              self.draft_ids, self.draft_config.algorithm)


class CachedFeatures:
    """The capture stage's shards: features read back by sequence index; no base model in this worker."""

    def __init__(self, config: TrainConfig, draft_config, draft_ids, device, dtype):
        from eagle_recipes.data.features import FeatureStore

        self.store = FeatureStore(Path(config.capture_dir))
        self.embed, self.draft_head, self.final_norm = self.store.head_modules(draft_ids, device, dtype)
        self.in_draft = self.store.draft_mask(draft_ids, device)
        self.device, self.dtype = device, dtype

    def outputs(self, input_ids, loss_mask, padding, indices: list[int]):
        import torch

        from eagle_recipes.draft.ttt import TargetOutputs

        hidden, final, top = self.store.batch(indices, input_ids.shape[1], self.device, self.dtype)
        with torch.no_grad():
            return TargetOutputs(input_ids=input_ids, loss_mask=loss_mask, padding=padding,
                                 draft_logits=self.draft_head(final), top_in_draft=self.in_draft[top], hidden=hidden)


# ---------------------------------------------------------------- the worker: setup, step, save
@dataclass
class Training:
    config: TrainConfig
    draft: Any
    objective: Any
    optimizer: Any
    features: Any
    data: dict
    device: Any
    rank: int
    world: int
    fsdp: bool
    step: int
    total: int
    per_epoch: int


def setup(config: TrainConfig, rank: int, world: int, local_rank: int) -> Training:
    import torch

    from eagle_recipes.draft.config import DraftConfig
    from eagle_recipes.draft.model import build_draft
    from eagle_recipes.draft.ttt import TTTObjective

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = torch.device("cuda", local_rank) if config.use_gpu else torch.device("cpu")
    dtype = torch.bfloat16 if config.use_gpu else torch.float32
    draft_config = DraftConfig.from_dict(config.draft_config)
    draft = build_draft(draft_config).to(device)
    d2t = torch.load(config.vocab_file, weights_only=True).to(torch.int64)
    draft_ids = (torch.arange(d2t.numel()) + d2t).to(device)
    source = CachedFeatures if config.features == "cached" else OnlineFeatures
    features = source(config, draft_config, draft_ids, device, dtype)
    if config.init_from_target and draft_config.algorithm == "eagle3":
        init_from_target(draft, features.draft_head.weight, features.final_norm)
    step = 0
    latest = latest_checkpoint(Path(config.checkpoint_dir))
    state = torch.load(latest / "state.pt", weights_only=False, map_location=device) if latest else None
    if state is not None:  # weights go in before any wrapper reshapes the parameters
        draft.load_state_dict(state["draft"])
        step = state["step"]
    objective = TTTObjective(draft, config.ttt_steps, config.ttt_decay)
    fsdp = config.strategy == "fsdp"  # GPUs only (validated): torch's FSDP does not run on CPU/gloo
    if fsdp:  # one GPU runs it too (the GPU check does)
        from torch.distributed.fsdp import FullyShardedDataParallel

        objective = FullyShardedDataParallel(objective, use_orig_params=True, device_id=device)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(objective, device_ids=[device.index] if config.use_gpu else None)
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    if state is not None:
        load_optimizer_state(objective, optimizer, state["optimizer"], fsdp)
    data = dict(np.load(config.data_file))
    count = int(data["offsets"].shape[0] - 1)
    per_epoch = steps_per_epoch(count, world, config.grad_accum, config.batch_size)
    total = per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    return Training(config, draft, objective, optimizer, features, data, device, rank, world, fsdp, step, total,
                    per_epoch)


def init_from_target(draft, draft_head, final_norm) -> None:
    """The draft's last norm and LM head read the same hidden space as the target's: start from them."""
    import torch

    with torch.no_grad():
        draft.lm_head.weight.copy_(draft_head)
        if final_norm is not None and final_norm.weight.shape == draft.norm.weight.shape:
            draft.norm.weight.copy_(final_norm.weight)


def train_step(training: Training) -> dict[str, Any]:
    """One optimizer step over one global batch; returns its metrics (over every worker's share)."""
    import torch

    config, started = training.config, time.time()
    epoch, step_in_epoch = divmod(training.step, training.per_epoch)
    lr = learning_rate(training.step, training.total, config.lr, config.warmup_ratio, config.schedule)
    for group in training.optimizer.param_groups:
        group["lr"] = lr
    training.optimizer.zero_grad(set_to_none=True)
    sums = np.zeros((config.ttt_steps, 3))
    tokens = 0
    lm_head = training.features.draft_head if training.draft.config.algorithm == "eagle1" else None
    for micro in range(config.grad_accum):
        indices = micro_batch_indices(int(training.data["offsets"].shape[0] - 1), config.seed, epoch, step_in_epoch,
                                      training.rank, training.world, config.grad_accum, config.batch_size, micro)
        input_ids, loss_mask, padding = (t.to(training.device) for t in collate(training.data, indices,
                                                                                  config.loss_on))
        tokens += int(padding.sum())
        outputs = training.features.outputs(input_ids, loss_mask, padding, indices)
        with torch.autocast(training.device.type, dtype=torch.bfloat16, enabled=config.use_gpu):
            loss, stats = training.objective(outputs, training.features.embed, lm_head)
        (loss / config.grad_accum).backward()
        for j, s in enumerate(stats):
            sums[j] += (s.loss, s.correct, s.counted)
    grad_norm = 0.0
    if config.grad_clip:  # FSDP shards the gradients: only its own method sees the whole norm
        if training.fsdp:
            grad_norm = float(training.objective.clip_grad_norm_(config.grad_clip))
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(training.draft.parameters(), config.grad_clip))
    training.optimizer.step()
    training.step += 1
    if training.world > 1:  # metrics over the whole global batch, not rank 0's share
        totals = torch.tensor(sums, dtype=torch.float64, device=training.device)
        torch.distributed.all_reduce(totals)
        sums = totals.cpu().numpy()
    micro_batches = config.grad_accum * training.world
    return {"step": training.step, "epoch": epoch, "lr": lr, "grad_norm": grad_norm,
            "loss": [round(float(l / micro_batches), 5) for l in sums[:, 0]],
            "accuracy": [round(float(c / max(1, n)), 5) for _, c, n in sums],
            "tokens_per_s": tokens * training.world / max(1e-9, time.time() - started)}


def save(training: Training) -> None:
    """A checkpoint of the draft and the optimizer (every rank takes part under FSDP; rank 0 writes)."""
    draft_state, optimizer_state = full_state(training.objective, training.draft, training.optimizer, training.fsdp)
    if training.rank == 0:
        save_checkpoint(Path(training.config.checkpoint_dir), training.step, draft_state, optimizer_state,
                        training.config.keep_checkpoints)


def train_loop(loop_config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train

    context = ray.train.get_context()
    config = TrainConfig(**loop_config["config"])
    progress: Callable | None = loop_config.get("progress")
    training = setup(config, context.get_world_rank(), context.get_world_size(), context.get_local_rank())
    with open_trackers(loop_config.get("tracking"), training) as trackers:
        while training.step < training.total:
            metrics = train_step(training)
            if training.rank == 0:
                with open(config.metrics_file, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(metrics) + "\n")
                trackers.log(training.step, step_scalars(metrics))
                if progress:
                    progress(training.step, training.total, "steps")
            if training.step % config.checkpoint_every == 0 or training.step == training.total:
                save(training)
                # only here: a report waits on the controller (~1.3 s each measured on this CPU, 3x a small step);
                # per-step metrics go to metrics.jsonl, the trackers and the progress display instead
                ray.train.report({"step": training.step, "loss0": metrics["loss"][0],
                                  "accuracy0": metrics["accuracy"][0]})


def open_trackers(tracking: dict | None, training: Training):
    """The recipe's trackers on rank 0 (resuming the run's own, past its last checkpoint); nothing elsewhere."""
    from contextlib import nullcontext

    from eagle_recipes.trackers import Trackers

    if not tracking or not tracking["names"] or training.rank != 0:
        return nullcontext(_NoTrackers())
    return Trackers(tracking["names"], Path(tracking["folder"]), tracking["run_name"], tracking["config"],
                    purge_after=training.step)


class _NoTrackers:
    def log(self, step: int, scalars: dict, final: bool = False) -> None:
        pass


# ---------------------------------------------------------------- checkpoints
CHECKPOINT_RECORD = "complete.json"  # written last inside a checkpoint: the size its state file must have


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if folder.exists() else []
    return found[-1] if found else None


def checkpoint_is_whole(path: Path) -> bool:
    try:
        record = json.loads((path / CHECKPOINT_RECORD).read_text(encoding="utf-8"))
        return (path / "state.pt").stat().st_size == record["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def discard_damaged_checkpoints(folder: Path, log: Callable[[str], None]) -> None:
    """A checkpoint whose state file is cut short (or lacks its record) is removed, so training resumes from the
    last whole one (or from the start) rather than failing on, or reading, a damaged file."""
    for path in sorted(folder.glob("step-*")) if folder.exists() else []:
        if not checkpoint_is_whole(path):
            log(f"checkpoint {path.name} is damaged: removed, resuming from an earlier one")
            shutil.rmtree(path, ignore_errors=True)


def full_state(objective, draft, optimizer, fsdp: bool) -> tuple[dict, dict]:
    """(draft weights, optimizer state), unsharded. Under FSDP every rank must call this (it gathers)."""
    if not fsdp:
        return draft.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optimizer_state = get_state_dict(objective, optimizer,
                                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix("draft."): v for k, v in model_state.items()}, optimizer_state


def load_optimizer_state(objective, optimizer, optimizer_state: dict, fsdp: bool) -> None:
    if not fsdp:
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(objective, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))


def save_checkpoint(folder: Path, step: int, draft_state: dict, optimizer_state: dict, keep: int) -> None:
    import torch

    with atomic_path(folder / f"step-{step:07d}") as tmp:
        tmp.mkdir()
        torch.save({"draft": draft_state, "optimizer": optimizer_state, "step": step}, tmp / "state.pt")
        write_json(tmp / CHECKPOINT_RECORD, {"step": step, "bytes": (tmp / "state.pt").stat().st_size})
    for old in sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _metrics_step(line: str) -> float:
    """The step of a metrics line; a line cut by a kill (or blank) counts as after every step: dropped."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def truncate_metrics(path: Path, last_step: int) -> None:
    """After a resume, drop metric lines of steps that will be trained again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _metrics_step(line) <= last_step]
    from eagle_recipes.atomic import write_text

    write_text(path, "".join(line + "\n" for line in kept))


def plot_metrics(metrics_file: Path, out: Path) -> list[str]:
    """loss.png and accuracy.png: per TTT step over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return []
    steps = [r["step"] for r in rows]
    written = []
    for key, title in (("loss", "loss per TTT step"), ("accuracy", "top-1 accuracy per TTT step")):
        figure, axis = plt.subplots(figsize=(7, 4))
        series = np.array([r[key] for r in rows])
        window = max(1, len(rows) // 50)
        for j in range(series.shape[1]):
            smooth = np.convolve(series[:, j], np.ones(window) / window, mode="valid")
            axis.plot(steps[window - 1:], smooth, label=f"step {j}")
        axis.set_xlabel("optimizer step")
        axis.set_title(title)
        axis.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        path = out / f"{key}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        plt.close(figure)
        written.append(str(path))
    return written


# ---------------------------------------------------------------- the stage
def draft_config_for(recipe: Recipe, model_path: str, draft_vocab_size: int):
    from eagle_recipes.draft.config import build_draft_config
    from eagle_recipes.models import base_model_facts

    facts = base_model_facts(model_path)
    return build_draft_config(recipe.draft.algorithm, recipe.draft.overrides, facts, draft_vocab_size)


def vocab_mapping(recipe: Recipe, upstream: dict[str, Path], model_path: str):
    """The draft vocabulary: calibrate's (or the recipe's cache) for EAGLE-3, the whole vocabulary for EAGLE-1."""
    from eagle_recipes.draft.vocab import identity_mapping, load_d2t
    from eagle_recipes.models import base_model_facts

    vocab_size = base_model_facts(model_path).vocab_size
    if recipe.draft.algorithm == "eagle3":
        return load_d2t(vocab_file(recipe, upstream), vocab_size)
    return identity_mapping(vocab_size)


def summarize(metrics_file: Path, final_step: int, count: int, resumed_step: int) -> dict[str, Any]:
    rows = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    tail = rows[-max(1, len(rows) // 10):]
    return {"counts": {"steps": final_step, "sequences": count, "resumed_from_step": resumed_step,
                       "steps_this_run": final_step - resumed_step},
            "metrics": {"final_loss": float(np.mean([r["loss"][0] for r in tail])),
                        "accuracy_per_step": np.mean([r["accuracy"] for r in tail], axis=0).round(4).tolist(),
                        "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in rows]))}}


class TrainStage(Stage):
    name = "train"
    description = "train the draft on Ray Train (base model features online in each worker, or cached)"
    headline_metric = "final_loss"

    @staticmethod
    def depends_on(recipe: Recipe, enabled: set[str]) -> list[str]:
        return [s for s in ("synthesize", "calibrate", "capture") if s in enabled]

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        return {"train": recipe.data["train"], "draft": recipe.data["draft"], "model": recipe.data["model"],
                "holdout_fraction": recipe.dataset.holdout_fraction,
                **reasoning_setting(recipe)}  # how conversations are rendered (online training renders them)

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        files = conversation_input_files(recipe)
        if recipe.vocab.draft_vocab_cache:
            files.append(recipe.resolve(recipe.vocab.draft_vocab_cache))
        return files

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return ["train/final/", "train/metrics.jsonl", "train/loss.png", "train/accuracy.png"]

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
        import torch

        recipe, train = ctx.recipe, ctx.recipe.train
        model_path = base_model_path(recipe)
        mapping = vocab_mapping(recipe, ctx.upstream, model_path)
        draft_config = draft_config_for(recipe, model_path, mapping.draft_vocab_size)
        with atomic_path(ctx.out / "d2t.pt") as tmp:
            torch.save(mapping.d2t, tmp)
        if train.features == "cached":
            data_folder = ctx.upstream["capture"]
            count = int(np.load(data_folder / DATA)["offsets"].shape[0] - 1)
        else:
            data_folder = ctx.out
            count = tokenize_training_data(recipe, conversation_files(recipe, ctx.upstream), model_path, ctx.out)
        if steps_per_epoch(count, train.num_workers, train.grad_accum, train.batch_size) == 0:
            raise ValueError(f"{count} training sequences are fewer than one global batch "
                             f"({train.num_workers} workers x {train.grad_accum} x {train.batch_size}); add data")
        checkpoint_dir, metrics_file = ctx.out / CHECKPOINTS, ctx.out / "metrics.jsonl"
        discard_damaged_checkpoints(checkpoint_dir, ctx.log)
        latest = latest_checkpoint(checkpoint_dir)
        resumed_step = int(latest.name.split("-")[1]) if latest else 0
        truncate_metrics(metrics_file, resumed_step)
        if latest:
            ctx.log(f"resuming from checkpoint {latest.name}")
        config = TrainConfig.from_recipe(
            recipe, model_path=model_path, draft_config=draft_config.to_dict(), vocab_file=str(ctx.out / "d2t.pt"),
            data_file=str(data_folder / DATA), checkpoint_dir=str(checkpoint_dir), metrics_file=str(metrics_file),
            capture_dir=str(ctx.upstream.get("capture", "")))
        started = time.time()
        fit(config, train.num_workers, ctx)
        wall = time.time() - started
        state = torch.load(latest_checkpoint(checkpoint_dir) / "state.pt", weights_only=False, map_location="cpu")
        write_final(ctx.out / FINAL, state["draft"], draft_config, mapping)
        summary = summarize(metrics_file, state["step"], count, resumed_step)
        summary["metrics"].update(wall_s=wall, plots=plot_metrics(metrics_file, ctx.out),
                                  draft_vocab_size=mapping.draft_vocab_size, draft_config=asdict(draft_config),
                                  train_config=asdict(config))
        return summary


def tracking_spec(recipe: Recipe) -> dict:
    """What the trackers of this run need (the evaluate stage opens the same run)."""
    return {"names": list(recipe.train.report_to), "folder": str(recipe.output_dir), "run_name": recipe.name,
            "config": recipe.data}


def fit(config: TrainConfig, num_workers: int, ctx: StageContext) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cpus = ctx.recipe.train.cpus_per_worker
    resources = {"GPU": 1, "CPU": 1} if config.use_gpu else {"CPU": cpus}
    trainer = TorchTrainer(
        train_loop, train_loop_config={"config": asdict(config), "progress": ctx.progress,
                                       "tracking": tracking_spec(ctx.recipe)},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=config.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(storage_path=str(ctx.out / "ray"), name="train",
                             failure_config=FailureConfig(max_failures=2)))
    trainer.fit()


def write_final(folder: Path, draft_state: dict, draft_config, mapping) -> None:
    """The trained draft in our own names, with its config and vocabulary mapping: what export reads."""
    import torch
    from safetensors.torch import save_file

    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in draft_state.items()}, tmp / "model.safetensors")
        write_json(tmp / "draft_config.json", draft_config.to_dict())
        torch.save(mapping.d2t, tmp / "d2t.pt")
        torch.save(mapping.t2d, tmp / "t2d.pt")
