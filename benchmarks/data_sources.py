"""Reading a large dataset by name: peak memory of the process that reads it, against reading the same rows
from one JSONL file, in the same run.

Builds a synthetic dataset in the Hub's layout (Parquet shards and a README.md card, `--rows` multi-turn
conversations of the OpenAI messages format) and the same rows as one JSONL file, then in a fresh process each
reads them with the synthesize stage's reader (`load_conversations`: normalize, de-duplicate, shuffle) and prints
its peak RSS (the interpreter and the libraries included) and the rows it kept. The reader keeps the rows on disk
(data/conversation_store.py) and an id and a digest per row in memory, so the peak should not grow with the rows
beyond that.

    .venv/bin/python benchmarks/data_sources.py [--rows 200000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT, conversations, hardware  # noqa: E402

# The peak is VmHWM, this address space's own high-water mark: ru_maxrss survives exec on Linux, so a child's
# would start at the RSS its parent had when it forked (here, the parent that built the data)
READ = """
import sys, time
from pathlib import Path
sys.path.insert(0, {project!r})
from eagle_recipes.data.formats import load_conversations
from eagle_recipes.data.sources import DatasetSource, FileSource
source = {source}
started = time.perf_counter()
loaded = load_conversations([source])
seconds = time.perf_counter() - started
with open("/proc/self/status") as status:
    peak_mib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) // 1024
print(len(loaded.conversations), peak_mib, round(seconds, 1))
"""


def build(folder: Path, rows: int) -> tuple[Path, Path]:
    """The dataset folder (shards of 20,000 rows) and the same rows as one JSONL file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset, jsonl = folder / "dataset", folder / "rows.jsonl"
    (dataset / "data").mkdir(parents=True)
    (dataset / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                       "    path: data/train-*.parquet\n---\n")
    shard_rows, shards = 20_000, (rows + 19_999) // 20_000
    with open(jsonl, "w", encoding="utf-8") as handle:
        for shard in range(shards):
            chunk = conversations(min(shard_rows, rows - shard * shard_rows), seed=shard)
            records = [{"messages": c["conversations"], "id": f"{shard}-{i}"} for i, c in enumerate(chunk)]
            pq.write_table(pa.Table.from_pylist(records), dataset / "data" / f"train-{shard:05d}-of-{shards:05d}.parquet")
            handle.writelines(json.dumps(r) + "\n" for r in records)
    return dataset, jsonl


def peak(source: str) -> tuple[int, int, float]:
    """(rows kept, peak RSS in MiB, seconds) of a fresh process reading `source` (Python source of the object)."""
    out = subprocess.run([sys.executable, "-c", READ.format(project=str(PROJECT), source=source)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[-3]), int(out[-2]), float(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="2,000 rows: checks that the benchmark runs")
    args = parser.parse_args()
    rows = 2_000 if args.quick else args.rows
    with tempfile.TemporaryDirectory() as folder:
        started = time.time()
        dataset, jsonl = build(Path(folder), rows)
        print(f"built {rows:,} conversations ({sum(p.stat().st_size for p in dataset.rglob('*.parquet')) >> 20} MiB "
              f"Parquet, {jsonl.stat().st_size >> 20} MiB JSONL) in {time.time() - started:.0f} s", flush=True)
        by_name = peak(f"DatasetSource({str(dataset)!r}, 'data.prompts.0')")
        by_file = peak(f"FileSource(Path({str(jsonl)!r}), 'data.prompts.0')")
    for label, (kept, rss, seconds) in (("dataset folder (Parquet, by name)", by_name),
                                        ("one JSONL file", by_file)):
        print(f"{label:38s} {kept:,} conversations kept, peak RSS {rss:,} MiB, {seconds:.1f} s")
    print(f"measured on {hardware()}")
    print(f"peak RSS ratio (dataset / file): {by_name[1] / by_file[1]:.2f}x")


if __name__ == "__main__":
    main()
