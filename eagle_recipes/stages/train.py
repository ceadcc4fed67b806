"""Train: an EAGLE-3 (or EAGLE-1) draft on Ray Train, the frozen base model running inside each worker.

Data order is a pure function of (seed, epoch, step, rank), so a run killed at any point resumes from its last
checkpoint to the same result, and N workers see exactly the sequences one worker sees with N-fold gradient
accumulation. Checkpoints are written by rank 0, atomically, every `checkpoint_every` steps; the last
`keep_checkpoints` are kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from eagle_recipes.atomic import atomic_path, write_json
from eagle_recipes.recipe import Recipe
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.stages.common import (base_model_path, chat_template_file, conversation_files,
                                         read_conversations, torch_threads, vocab_file)

CHECKPOINTS = "checkpoints"
FINAL = "final"


# ---------------------------------------------------------------- data: tokenized once, indexed by step
def tokenize_training_data(recipe: Recipe, files: list[Path], model_path: str, out: Path) -> int:
    """Render every training conversation with the chat template; store ids and masks as flat arrays."""
    from eagle_recipes.data.chat import load_tokenizer, render_batch

    if (out / "data.npz").exists():
        return int(np.load(out / "data.npz")["offsets"].shape[0] - 1)
    tokenizer = load_tokenizer(model_path, chat_template_file(recipe), recipe.model.trust_remote_code)
    conversations = read_conversations(files, recipe, split="train")
    rendered = []
    for start in range(0, len(conversations), 256):
        chunk = [c["conversations"] for c in conversations[start: start + 256]]
        rendered += [r for r in render_batch(tokenizer, chunk, recipe.train.max_seq_len) if sum(r.loss_mask)]
    lengths = np.array([len(r.input_ids) for r in rendered], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.concatenate([r.input_ids for r in rendered]).astype(np.int32) if rendered else np.zeros(0, np.int32)
    mask = np.concatenate([r.loss_mask for r in rendered]).astype(np.int8) if rendered else np.zeros(0, np.int8)
    with atomic_path(out / "data.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, ids=ids, mask=mask, offsets=offsets)
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


# ---------------------------------------------------------------- the worker loop
def _collate(data: dict, indices: list[int], pad_id: int):
    import torch

    rows = [(data["ids"][data["offsets"][i]: data["offsets"][i + 1]],
             data["mask"][data["offsets"][i]: data["offsets"][i + 1]]) for i in indices]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(rows), length), dtype=torch.long)
    padding = torch.zeros((len(rows), length), dtype=torch.long)
    for row, (ids, mask) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
        loss_mask[row, : len(ids)] = torch.from_numpy(mask.astype(np.int64))
        padding[row, : len(ids)] = 1
    return input_ids, loss_mask, padding


def target_outputs(target, input_ids, loss_mask, padding, aux_ids, draft_head, algorithm: str):
    """One frozen forward of the base model: hidden states for the draft and its next-token logits over the
    draft vocabulary only (`draft_head` = the LM head's rows of the draft tokens: K rows instead of the full
    vocabulary, which on a 135M model is a fifth of the forward)."""
    import torch

    from eagle_recipes.draft.ttt import TargetOutputs

    with torch.no_grad():
        out = target.base_model(input_ids=input_ids, attention_mask=padding, output_hidden_states=True)
        states = out.hidden_states  # [0] = embeddings, [k] = input of layer k, [-1] = final normed
        hidden = torch.cat([states[k] for k in aux_ids], dim=-1) if algorithm == "eagle3" else states[-1]
        logits = torch.nn.functional.linear(out.last_hidden_state, draft_head)
        # Positions whose top target token lies outside the draft vocabulary still train towards the target's
        # distribution restricted to the draft vocabulary (checking would need the full-vocabulary logits).
        return TargetOutputs(input_ids=input_ids, loss_mask=loss_mask, padding=padding,
                             draft_logits=logits, top_in_draft=torch.ones_like(padding, dtype=torch.bool),
                             hidden=hidden)


def init_from_target(draft, target, draft_head) -> None:
    """The draft's last norm and LM head read the same hidden space as the target's: start from them."""
    import torch

    with torch.no_grad():
        draft.lm_head.weight.copy_(draft_head)
        final_norm = getattr(target.base_model, "norm", None)
        if final_norm is not None and final_norm.weight.shape == draft.norm.weight.shape:
            draft.norm.weight.copy_(final_norm.weight)


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import torch

    from eagle_recipes.draft.config import DraftConfig
    from eagle_recipes.draft.model import build_draft
    from eagle_recipes.draft.ttt import TTTObjective
    from transformers import AutoModelForCausalLM

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    device = torch.device("cuda", context.get_local_rank()) if config["use_gpu"] else torch.device("cpu")
    dtype = torch.bfloat16 if config["use_gpu"] else torch.float32
    target = AutoModelForCausalLM.from_pretrained(config["model_path"], dtype=dtype).to(device).eval()
    target.requires_grad_(False)
    draft_config = DraftConfig.from_dict(config["draft_config"])
    draft = build_draft(draft_config).to(device)
    embed = target.get_input_embeddings()
    d2t = torch.load(config["vocab_file"], weights_only=True).to(torch.int64)
    draft_ids = (torch.arange(d2t.numel()) + d2t).to(device)
    draft_head = target.get_output_embeddings().weight.index_select(0, draft_ids).contiguous()
    if config["init_from_target"] and draft_config.algorithm == "eagle3":
        init_from_target(draft, target, draft_head)
    step = 0
    checkpoints = Path(config["checkpoint_dir"])
    latest = latest_checkpoint(checkpoints)
    state = torch.load(latest / "state.pt", weights_only=False, map_location=device) if latest else None
    if state is not None:  # weights go in before any wrapper reshapes the parameters
        draft.load_state_dict(state["draft"])
        step = state["step"]
    objective = TTTObjective(draft, config["ttt_steps"], config["ttt_decay"])
    fsdp = world > 1 and config["strategy"] == "fsdp"
    if fsdp:  # GPUs only (validated): torch's FSDP does not run on CPU/gloo
        from torch.distributed.fsdp import FullyShardedDataParallel

        objective = FullyShardedDataParallel(objective, use_orig_params=True, device_id=device)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(objective, device_ids=[device.index] if config["use_gpu"] else None)
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=config["lr"],
                                  weight_decay=config["weight_decay"])
    if state is not None:
        load_optimizer_state(objective, optimizer, state["optimizer"], fsdp)
    data = dict(np.load(config["data_file"]))
    count = int(data["offsets"].shape[0] - 1)
    per_epoch = steps_per_epoch(count, world, config["grad_accum"], config["batch_size"])
    total = per_epoch * config["epochs"]
    if config["max_steps"]:
        total = min(total, config["max_steps"])
    lm_head = target.get_output_embeddings() if draft_config.algorithm == "eagle1" else None
    pad_id = int(config["pad_id"])
    progress = config.get("progress")
    while step < total:
        started = time.time()
        epoch, step_in_epoch = divmod(step, per_epoch)
        lr = learning_rate(step, total, config["lr"], config["warmup_ratio"], config["schedule"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        sums = np.zeros((config["ttt_steps"], 3))
        tokens = 0
        for micro in range(config["grad_accum"]):
            indices = micro_batch_indices(count, config["seed"], epoch, step_in_epoch, rank, world,
                                          config["grad_accum"], config["batch_size"], micro)
            input_ids, loss_mask, padding = (t.to(device) for t in _collate(data, indices, pad_id))
            tokens += int(padding.sum())
            outputs = target_outputs(target, input_ids, loss_mask, padding, draft_config.aux_layer_ids,
                                     draft_head, draft_config.algorithm)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["use_gpu"]):
                loss, stats = objective(outputs, embed, lm_head)
            (loss / config["grad_accum"]).backward()
            for j, s in enumerate(stats):
                sums[j] += (s.loss, s.correct, s.counted)
        grad_norm = 0.0
        if config["grad_clip"]:  # FSDP shards the gradients: only its own method sees the whole norm
            clip = objective.clip_grad_norm_ if fsdp else lambda c: torch.nn.utils.clip_grad_norm_(draft.parameters(), c)
            grad_norm = float(clip(config["grad_clip"]))
        optimizer.step()
        step += 1
        if world > 1:  # metrics over the whole global batch, not rank 0's share
            totals = torch.tensor(sums, dtype=torch.float64, device=device)
            torch.distributed.all_reduce(totals)
            sums = totals.cpu().numpy()
        micro_batches = config["grad_accum"] * world
        metrics = {"step": step, "epoch": epoch, "lr": lr, "grad_norm": grad_norm,
                   "loss": [round(float(l / micro_batches), 5) for l in sums[:, 0]],
                   "accuracy": [round(float(c / max(1, n)), 5) for _, c, n in sums],
                   "tokens_per_s": tokens * world / max(1e-9, time.time() - started)}
        if rank == 0:
            with open(config["metrics_file"], "a", encoding="utf-8") as handle:
                handle.write(json.dumps(metrics) + "\n")
            if progress:
                progress(step, total, "steps")

        if step % config["checkpoint_every"] == 0 or step == total:
            draft_state, optimizer_state = full_state(objective, draft, optimizer, fsdp)  # every rank takes part
            if rank == 0:
                save_checkpoint(checkpoints, step, draft_state, optimizer_state, config["keep_checkpoints"])
            # only here: a report waits on the controller (~1.3 s each measured on this CPU, 3x a small step);
            # per-step metrics go to metrics.jsonl and the progress display instead
            ray.train.report({"step": step, "loss0": metrics["loss"][0], "accuracy0": metrics["accuracy"][0]})


# ---------------------------------------------------------------- checkpoints
def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if folder.exists() else []
    return found[-1] if found else None


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
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(objective, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))


def save_checkpoint(folder: Path, step: int, draft_state: dict, optimizer_state: dict, keep: int) -> None:
    import torch

    with atomic_path(folder / f"step-{step:07d}") as tmp:
        tmp.mkdir()
        torch.save({"draft": draft_state, "optimizer": optimizer_state, "step": step}, tmp / "state.pt")
    for old in sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def truncate_metrics(path: Path, last_step: int) -> None:
    """After a resume, drop metric lines of steps that will be trained again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
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
    from eagle_recipes.draft.config import BaseModelFacts, build_draft_config
    from eagle_recipes.models import load_base_config

    facts = BaseModelFacts.from_config(load_base_config(model_path))
    return build_draft_config(recipe.draft.algorithm, recipe.draft.overrides, facts, draft_vocab_size)


class TrainStage(Stage):
    name = "train"
    description = "train the draft on Ray Train (frozen base model online in each worker)"

    @staticmethod
    def depends_on(recipe: Recipe, enabled: set[str]) -> list[str]:
        return [s for s in ("synthesize", "calibrate") if s in enabled]

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        return {"train": recipe.data["train"], "draft": recipe.data["draft"], "model": recipe.data["model"],
                "holdout_fraction": recipe.inputs.holdout_fraction}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        files = [recipe.resolve(p) for p in recipe.inputs.conversations]
        if recipe.vocab.draft_vocab_cache:
            files.append(recipe.resolve(recipe.vocab.draft_vocab_cache))
        return files

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return ["train/final/", "train/metrics.jsonl", "train/loss.png", "train/accuracy.png"]

    @staticmethod
    def resources(recipe: Recipe) -> dict[str, Any]:
        train = recipe.train
        per_worker = "1 GPU" if train.use_gpu else f"{train.cpus_per_worker} CPU"
        return {"driver": {"num_cpus": 0.1}, "workers": f"{train.num_workers} x {per_worker} ({train.strategy})"}

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        import torch
        from ray.train import RunConfig, ScalingConfig, FailureConfig
        from ray.train.torch import TorchTrainer

        from eagle_recipes.draft.vocab import identity_mapping, load_d2t

        recipe, train = ctx.recipe, ctx.recipe.train
        model_path = base_model_path(recipe)
        from eagle_recipes.models import load_base_config

        vocab_size = load_base_config(model_path)["vocab_size"]
        mapping = load_d2t(vocab_file(recipe, ctx.inputs), vocab_size) \
            if recipe.draft.algorithm == "eagle3" else identity_mapping(vocab_size)
        draft_config = draft_config_for(recipe, model_path, mapping.draft_vocab_size)
        torch.save(mapping.d2t, ctx.out / "d2t.pt")
        count = tokenize_training_data(recipe, conversation_files(recipe, ctx.inputs), model_path, ctx.out)
        per_epoch = steps_per_epoch(count, train.num_workers, train.grad_accum, train.batch_size)
        if per_epoch == 0:
            raise ValueError(f"{count} training sequences are fewer than one global batch "
                             f"({train.num_workers} workers x {train.grad_accum} x {train.batch_size}); add data")
        checkpoint_dir = ctx.out / CHECKPOINTS
        latest = latest_checkpoint(checkpoint_dir)
        metrics_file = ctx.out / "metrics.jsonl"
        resumed_step = int(latest.name.split("-")[1]) if latest else 0
        truncate_metrics(metrics_file, resumed_step)
        if latest:
            ctx.log(f"resuming from checkpoint {latest.name}")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        loop_config = dict(
            model_path=model_path, draft_config=draft_config.to_dict(), vocab_file=str(ctx.out / "d2t.pt"),
            data_file=str(ctx.out / "data.npz"), checkpoint_dir=str(checkpoint_dir), metrics_file=str(metrics_file),
            pad_id=tokenizer.pad_token_id or 0, threads=torch_threads(train.cpus_per_worker),
            use_gpu=train.use_gpu, strategy=train.strategy, epochs=train.epochs, max_steps=train.max_steps,
            batch_size=train.batch_size, grad_accum=train.grad_accum, lr=train.lr, weight_decay=train.weight_decay,
            warmup_ratio=train.warmup_ratio, schedule=train.schedule, grad_clip=train.grad_clip,
            ttt_steps=train.ttt_steps, ttt_decay=train.ttt_decay, checkpoint_every=train.checkpoint_every,
            keep_checkpoints=train.keep_checkpoints, seed=train.seed, init_from_target=train.init_from_target,
            progress=ctx.progress)
        resources = {"CPU": train.cpus_per_worker} if not train.use_gpu else {"GPU": 1, "CPU": 1}
        trainer = TorchTrainer(
            train_loop, train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(storage_path=str(ctx.out / "ray"), name="train",
                                 failure_config=FailureConfig(max_failures=2)))
        started = time.time()
        trainer.fit()
        wall = time.time() - started
        final = latest_checkpoint(checkpoint_dir)
        state = torch.load(final / "state.pt", weights_only=False, map_location="cpu")
        from safetensors.torch import save_file

        with atomic_path(ctx.out / FINAL) as tmp:
            tmp.mkdir()
            save_file({k: v.contiguous() for k, v in state["draft"].items()}, tmp / "model.safetensors")
            write_json(tmp / "draft_config.json", draft_config.to_dict())
            torch.save(mapping.d2t, tmp / "d2t.pt")
            torch.save(mapping.t2d, tmp / "t2d.pt")
        plots = plot_metrics(metrics_file, ctx.out)
        rows = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        tail = rows[-max(1, len(rows) // 10):]
        return {"counts": {"steps": state["step"], "sequences": count, "resumed_from_step": resumed_step,
                           "steps_this_run": state["step"] - resumed_step},
                "metrics": {"final_loss": float(np.mean([r["loss"][0] for r in tail])),
                            "accuracy_per_step": np.mean([r["accuracy"] for r in tail], axis=0).round(4).tolist(),
                            "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in rows])),
                            "wall_s": wall, "plots": plots, "draft_vocab_size": mapping.draft_vocab_size,
                            "draft_config": asdict(draft_config)}}
