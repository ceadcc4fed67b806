"""The GPU check (see gpu_check.sh): runs each GPU path of the graph on SmolLM2-135M-Instruct, one after another,
and prints one line per path with its tokens/s and the peak GPU memory in use while it ran (sampled every 0.1 s
across every process on the GPU, so vLLM's engines count too)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT, SMOLLM2  # noqa: E402

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
engine = "vllm"
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
checkpoint_every = 100
[capture]
engine = "{capture}"
[eval]
prompts = ["mt-bench"]
max_prompts = 40
max_tokens = 96
"""


class PeakMemory:
    """Peak used GPU memory (all processes) while the block runs."""

    def __enter__(self):
        import torch

        self.peak, self.running = 0, True
        free, total = torch.cuda.mem_get_info()
        self.baseline = total - free

        def sample():
            while self.running:
                free, total = torch.cuda.mem_get_info()
                self.peak = max(self.peak, total - free)
                time.sleep(0.1)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def run(recipe: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "eagle_recipes.cli", "run", str(recipe), *args], check=True,
                   stdout=subprocess.DEVNULL)


def manifest(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "stage.json").read_text())


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu-check").resolve()
    out.mkdir(parents=True, exist_ok=True)
    prompts = PROJECT / "recipes" / "data" / "quickstart_prompts.jsonl"
    lines = []

    def recipe(name: str, **fields: str) -> Path:
        settings = {"features": "online", "strategy": "ddp", "capture": "hf", **fields}
        path = out / f"{name}.toml"
        path.write_text(RECIPE.format(out=out / "run", model=SMOLLM2, prompts=prompts, **settings))
        return path

    def measure(label: str, path: Path, stage: str, rate_key: str, *args: str) -> dict:
        started = time.time()
        with PeakMemory() as memory:
            run(path, *args)
        result = manifest(out / "run", stage)
        rate = result["metrics"].get(rate_key, 0.0)
        line = f"{label:34s} {rate:10.0f} tokens/s   peak GPU memory {memory.peak / 2 ** 30:6.1f} GiB   {time.time() - started:5.0f} s"
        print(line, flush=True)
        lines.append(line)
        return result

    measure("synthesize (vLLM, 128 prompts)", recipe("base"), "synthesize", "tokens_per_s", "--only", "synthesize")
    run(recipe("base"), "--only", "calibrate")
    from safetensors.torch import load_file

    captures = {}
    for engine in ("hf", "vllm"):
        path = recipe(f"capture-{engine}", features="cached", capture=engine)
        measure(f"capture ({engine})", path, "capture", "tokens_per_s", "--only", "capture", "--force", "capture")
        captures[engine] = [load_file(str(p)) for p in sorted((out / "run" / "capture" / "shards").glob("*"))]
    for name in ("hidden", "final"):
        worst = max(float((a[name].float() - b[name].float()).abs().max() / b[name].float().abs().max())
                    for a, b in zip(captures["vllm"], captures["hf"]))
        print(f"capture vllm vs hf: largest |difference| in {name} = {worst:.4f} of the largest value")
    agreement = sum(int((a["top"] == b["top"]).sum()) for a, b in zip(captures["vllm"], captures["hf"])) / \
        sum(a["top"].numel() for a in captures["hf"])
    print(f"capture vllm vs hf: top token agrees on {agreement:.4f} of tokens")
    for features in ("online", "cached"):
        for strategy in ("ddp", "fsdp"):
            path = recipe(f"train-{features}-{strategy}", features=features, strategy=strategy)
            measure(f"train bf16 ({features}, {strategy})", path, "train", "tokens_per_s", "--only", "train",
                    "--force", "train")
    path = recipe("train-cached-ddp", features="cached", strategy="ddp")
    measure("export", path, "export", "none", "--only", "export")
    result = measure("evaluate (vLLM, 40 MT-bench prompts)", path, "evaluate", "none", "--only", "evaluate")
    print(f"evaluate: tau {result['metrics']['acceptance_length']:.3f}, lossless {result['metrics']['lossless']}")


if __name__ == "__main__":
    main()
