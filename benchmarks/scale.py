"""Cost growth with the data's size: the graph at N = 1,000, 10,000 and 100,000 conversations, measured, not guessed.

For each N: a dataset folder in the Hub's layout (Parquet shards, a README.md card) of N multi-turn conversations
(1-3 rounds, answers of 40-160 words), the tiny target (a random 6-layer, 64-wide Llama with SmolLM2's tokenizer),
synthesis engine "none", then each stage run alone (`eagle-recipes run --only STAGE`): synthesize (read, normalize,
de-duplicate, shuffle, write shards), tokenize (render and tokenize every shard on Ray Data actors into sequence
shards), calibrate (count tokens from those shards), train (features streamed: two workers x 1 CPU run a fixed 4
steps, a feature server computing each micro-batch's features as they ask) and export. Per stage: its own wall seconds (the
stage manifest's), seconds per 1,000 conversations, bytes it wrote, and the peak RSS of every process by kind (the
`eagle-recipes` driver, the stage's Ray task, Ray Data actors, feature servers, training workers), sampled every
0.2 s from /proc (a spike shorter than that can be missed), except the stage task's: the kernel's count of its own
peak (VmHWM, reset when the task starts; the stage's manifest records it), which no sampling can miss.

Its last lines compare the largest N with the one before it: `<stage>: time per conversation 100k/10k = X.XXx,
peak RSS 100k/10k = Y.YYx` (RSS: of the stage's own largest process, the driver aside; every kind's ratio follows),
then the feature bytes streamed training wrote (feature files in the run folder) and what the feature servers'
processes wrote to storage at all (/proc's write_bytes: their logs).

    .venv/bin/python benchmarks/scale.py [--sizes 1000 10000 100000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT, build_tiny_target, hardware, prompts  # noqa: E402

from eagle_recipes.run_folder import RunFolder  # noqa: E402

STAGES = ("synthesize", "tokenize", "calibrate", "train", "export")
SHARD_ROWS = 20_000
KINDS = (("stage:", "stage task"), ("MapWorker", "Ray Data actor"), ("RayTrainWorker", "training worker"),
         ("FeatureServer", "feature server"))
RECIPE = """
name = "scale"
output_dir = "out"
[model]
path = "{model}"
[data]
prompts = [{{ dataset = "dataset" }}]
[synthesis]
engine = "none"
batch_size = 2000
[vocab]
draft_vocab_size = 1024
[train]
features = "streamed"
num_workers = 2
cpus_per_worker = 1
max_steps = {steps}
max_seq_len = 512
ttt_steps = 2
simulate_every = 0
[eval]
enabled = false
"""


def build_dataset(folder: Path, count: int) -> None:
    """N conversations in the Hub's layout, 20,000 to a Parquet shard, built shard by shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                      "    path: data/train-*.parquet\n---\n")
    questions = prompts(300)
    words = " ".join(questions).split()
    shards = (count + SHARD_ROWS - 1) // SHARD_ROWS
    for shard in range(shards):
        rng = random.Random(shard)
        rows = []
        for index in range(min(SHARD_ROWS, count - shard * SHARD_ROWS)):
            messages = []
            for _ in range(rng.randint(1, 3)):
                messages.append({"role": "user", "content": rng.choice(questions)})
                messages.append({"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(40, 160)))})
            rows.append({"id": f"{shard}-{index}", "messages": messages})
        pq.write_table(pa.Table.from_pylist(rows), folder / "data" / f"train-{shard:05d}-of-{shards:05d}.parquet")


class PeakSampler:
    """Peak RSS (MiB) of a process tree by kind, from /proc every 0.2 s; a Ray worker is named by the titles it
    showed (ray::stage:NAME, ray::MapWorker(...), ray::RayTrainWorker...)."""

    def __init__(self, root_pid: int):
        self.root_pid, self.peaks, self._stop = root_pid, {}, threading.Event()
        self.written: dict[int, int] = {}  # feature servers: bytes each process sent to storage (last seen)
        self._kind_of: dict[int, str] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                processes = [psutil.Process(self.root_pid)]
                processes += processes[0].children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    kind = self._kind(process)
                    rss = process.memory_info().rss / 2 ** 20
                except psutil.Error:
                    continue
                if kind:
                    self.peaks[kind] = max(self.peaks.get(kind, 0.0), rss)
                if kind == "feature server":
                    try:
                        self.written[process.pid] = process.io_counters().write_bytes
                    except psutil.Error:
                        pass
            time.sleep(0.2)

    def _kind(self, process) -> str | None:
        if process.pid == self.root_pid:
            return "driver"
        title = " ".join(process.cmdline())
        for marker, kind in KINDS:
            if marker in title:
                self._kind_of[process.pid] = kind
        return self._kind_of.get(process.pid)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


def feature_file_bytes(root: Path) -> int:
    """Bytes of feature files (shards, the head file) anywhere in the run folder."""
    from eagle_recipes.run_folder import FEATURE_SHARDS, HEAD_FILE

    files = [*root.rglob(f"{FEATURE_SHARDS}/*.safetensors"), *root.rglob(HEAD_FILE)]
    return sum(path.stat().st_size for path in files if path.is_file())


def measure(workdir: Path, count: int, model: Path, steps: int) -> dict[str, dict]:
    """Each stage of the graph at `count` conversations: wall seconds, bytes written, peak RSS by kind."""
    build_dataset(workdir / "dataset", count)
    recipe = workdir / "recipe.toml"
    recipe.write_text(RECIPE.format(model=model, steps=steps))
    results = {}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    for stage in STAGES:
        process = subprocess.Popen([sys.executable, "-m", "eagle_recipes.cli", "run", str(recipe), "--only", stage],
                                   cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = PeakSampler(process.pid)
        output, _ = process.communicate()
        peaks = sampler.stop()
        if process.returncode:
            raise SystemExit(f"{stage} at {count:,} conversations failed:\n{output[-3000:]}")
        run = RunFolder(workdir / "out")
        manifest = json.loads(run.manifest_file(stage).read_text())
        if manifest.get("peak_rss_mib"):  # the task's own peak, exact however short it ran: not a sample
            peaks["stage task"] = manifest["peak_rss_mib"]
        results[stage] = {"wall_s": manifest["wall_s"], "bytes": folder_bytes(run.stage(stage)), "peaks": peaks,
                          "feature_files": feature_file_bytes(run.root),
                          "server_writes": sum(sampler.written.values())}
        print(f"  {count:>9,} {stage:<10} {manifest['wall_s']:8.1f} s  "
              + ", ".join(f"{kind} {mib:,.0f} MiB" for kind, mib in sorted(peaks.items())), flush=True)
    return results


def report(sizes: list[int], measured: dict[int, dict]) -> None:
    print("\n| stage | N | wall s | s per 1k conversations | bytes written | peak RSS by process kind (MiB) |")
    print("|---|---|---|---|---|---|")
    for stage in STAGES:
        for count in sizes:
            row = measured[count][stage]
            peaks = ", ".join(f"{kind} {mib:,.0f}" for kind, mib in sorted(row["peaks"].items()))
            print(f"| {stage} | {count:,} | {row['wall_s']:.2f} | {row['wall_s'] / count * 1000:.3f} | "
                  f"{row['bytes']:,} | {peaks} |")
    print(f"measured on {hardware()}")
    large, small = sizes[-1], sizes[-2]
    name = f"{large // 1000}k/{small // 1000}k" if small >= 1000 else f"{large}/{small}"
    for stage in STAGES:
        big, little = measured[large][stage], measured[small][stage]
        time_ratio = (big["wall_s"] / large) / max(little["wall_s"] / small, 1e-9)
        rss = {kind: big["peaks"][kind] / little["peaks"][kind] for kind in big["peaks"] if kind in little["peaks"]}
        # the stage's own largest process (the driver is the same `eagle-recipes` process for every stage)
        own = [kind for kind in little["peaks"] if kind != "driver" and kind in big["peaks"]] or ["driver"]
        largest = max(own, key=little["peaks"].get)
        print(f"{stage}: time per conversation {name} = {time_ratio:.2f}x, peak RSS {name} = "
              f"{big['peaks'][largest] / little['peaks'][largest]:.2f}x ({largest}; by kind: "
              + ", ".join(f"{kind} {ratio:.2f}x" for kind, ratio in sorted(rss.items())) + ")")
    train = measured[large]["train"]
    print(f"streamed feature bytes written: {train['feature_files']:,} (feature files in the run folder after "
          f"streamed training at {large:,}); the feature servers' processes wrote {train['server_writes']:,} B to "
          "storage in all (logs)")


def plot(sizes: list[int], measured: dict[int, dict], path: Path) -> None:
    """Wall seconds per stage and peak RSS per process kind against N (log-log and log-linear)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (seconds, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        seconds.plot(sizes, [measured[n][stage]["wall_s"] for n in sizes], "-o", label=stage)
    kinds = sorted({kind for n in sizes for row in measured[n].values() for kind in row["peaks"]})
    for kind in kinds:
        peaks = [max((row["peaks"].get(kind, 0.0) for row in measured[n].values()), default=0.0) for n in sizes]
        shown = [(n, peak) for n, peak in zip(sizes, peaks) if peak]
        memory.plot([n for n, _ in shown], [peak for _, peak in shown], "-s", label=kind)
    seconds.plot(sizes, [measured[sizes[0]]["train"]["wall_s"] * n / sizes[0] for n in sizes], ":", color="grey",
                 label="linear in N (from train's first point)")
    seconds.set(xscale="log", yscale="log", xlabel="conversations", ylabel="stage wall seconds")
    memory.set(xscale="log", xlabel="conversations", ylabel="peak RSS (MiB), any stage", ylim=(0, None))
    for axis in (seconds, memory):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"cost growth with the data, tiny target ({hardware()})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--quick", action="store_true", help="100 and 400 conversations, 2 steps: that it runs")
    parser.add_argument("--plot", type=Path, help="also draw the figure here (PNG)")
    args = parser.parse_args()
    sizes, steps = ([100, 400], 2) if args.quick else (sorted(args.sizes), 4)
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_target(Path(folder) / "tiny-target")
        measured = {}
        for count in sizes:
            workdir = Path(folder) / f"n{count}"
            workdir.mkdir()
            measured[count] = measure(workdir, count, model, steps)
    report(sizes, measured)
    if args.plot:
        plot(sizes, measured, args.plot)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
