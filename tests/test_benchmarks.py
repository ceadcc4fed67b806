"""Every benchmark in its quick mode: a signature change fails here instead of at the next measurement. On the
tiny target where nothing runs it in vLLM; on SmolLM2 where vLLM does (the CPU build's attention has no kernel for
the tiny target's 16-wide heads). The figures of a quick run mean nothing; each test checks that the script ran to
its comparable line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from eagle_recipes.data.formats import HELD_OUT_SPLIT
from tests.helpers import PROJECT, cli, small_recipe

BENCHMARKS = PROJECT / "benchmarks"


def bench(script: str, *args: str, timeout: int = 600) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, cwd=PROJECT)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


def test_calibrate_benchmark_quick(tiny_llama):
    out = bench("calibrate.py", "--quick", "--model", tiny_llama)
    assert re.search(r"speed ratio \(eagle-recipes / seed\): steady state \d+\.\d+x, end to end \d+\.\d+x", out), out


def test_train_benchmark_quick(tiny_llama):
    out = bench("train.py", "--quick", "--model", tiny_llama)
    assert re.search(r"cached / online \(tokens/s\):\s+\d+\.\d+x", out), out
    assert re.search(r"online step / base forward:\s+\d+\.\d+x", out), out


def test_synthesis_benchmark_quick(smollm2_path):
    out = bench("synthesis.py", "--quick", "--model", smollm2_path)
    assert re.search(r"ratio \(in-process / seed\): generation \d+\.\d+x, end to end \d+\.\d+x", out), out


def test_learning_curve_benchmark_quick(tmp_path, smollm2_path):
    recipe = small_recipe(tmp_path, smollm2_path)
    for stage in ("synthesize", "calibrate"):
        cli("run", recipe, "--only", stage)
    out = tmp_path / "curve"
    printed = bench("learning_curve.py", "--quick", "--recipe", recipe, "--out", out)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["steps"] == 10
    for name in ("mt-bench", HELD_OUT_SPLIT):
        assert 1.0 <= rows[0]["tau"][name]["acceptance_length"] <= 6.0, rows[0]["tau"]
    assert re.search(r"\| recipe \| the recipe \| \d+ \| 10 \|", printed), printed
    assert (out / "learning_curve.md").exists()


def test_data_sources_benchmark_quick():
    out = bench("data_sources.py", "--quick")
    assert re.search(r"peak RSS ratio \(dataset / file\): \d+\.\d+x", out), out
    assert "2,000 conversations kept" in out


def test_optimizer_step_benchmark_quick():
    out = bench("optimizer_step.py", "--quick")
    lines = out.strip().splitlines()
    assert re.match(r"native \(CPU \w+, bfloat16 (native|emulated), 2 threads\): optimizer step adamw \d\.\d+ s, "
                    r"muon \d\.\d+ s \((Muon|Float32Muon), ", lines[0]), out
    # restricted to AVX2, torch has no native bfloat16: Muon's iteration runs in float32
    assert re.match(r"avx2 \(CPU AVX2, bfloat16 emulated, 2 threads\): .* \(Float32Muon, ", lines[1]), out
    assert re.match(r"recipe's optimizer step within AdamW's \+ 0\.25 s on every kind measured: (yes|NO)$", lines[2]), out
