"""Every benchmark in its quick mode: a signature change fails here instead of at the next measurement. On the
tiny target where nothing runs it in vLLM; on SmolLM2 where vLLM does (the CPU build's attention has no kernel for
the tiny target's 16-wide heads). The figures of a quick run mean nothing; each test checks that the script ran to
its comparable line, names the hardware, and that its ratio is the one its own printed figures give (a ratio
computed from the wrong pair, or a correctness check that failed, fails here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from eagle_recipes.data.formats import HELD_OUT_SPLIT
from tests.helpers import PROJECT, small_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out

BENCHMARKS = PROJECT / "benchmarks"


def bench(script: str, *args: str, timeout: int = 600, hardware_line: bool = True) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, cwd=PROJECT)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert not hardware_line or re.search(r"^measured on CPU (AVX2|AVX512|DEFAULT|ZVECTOR|VSX)\w*, bfloat16 (native|emulated), \d+ threads$",
                     result.stdout, re.MULTILINE), result.stdout  # every figure names the CPU it ran on
    return result.stdout


def figure(pattern: str, out: str) -> str:
    """The number the pattern's group captures, as printed (commas dropped), from the output."""
    found = re.search(pattern, out)
    assert found, f"no {pattern!r} in:\n{out}"
    return found.group(1).replace(",", "")


def printed_range(text: str) -> tuple[float, float]:
    """The values a printed number stands for: itself, give or take half its last digit."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    half = 0.5 * 10 ** -decimals
    return float(text) - half, float(text) + half


def agrees(printed: str, numerator: str, denominator: str) -> bool:
    """Whether a printed ratio can be the ratio of its printed parts, each as exact as its digits say."""
    low, high = printed_range(printed)
    num_low, num_high = printed_range(numerator)
    den_low, den_high = printed_range(denominator)
    return num_low / den_high <= high and num_high / max(den_low, 1e-9) >= low


def test_calibrate_benchmark_quick(tiny_llama):
    out = bench("calibrate.py", "--quick", "--model", tiny_llama)
    # the same draft vocabulary as the seed's counter, but for the order of tokens tied at the K-th count
    assert "(tokens above the K-th count identical: True)" in out, out
    seed = figure(r"steady state\s+seed\s+([\d,]+) tokens/s", out)
    ours = figure(r"steady state\s+seed.*eagle-recipes\s+([\d,]+) tokens/s", out)
    seed_end, ours_end = (figure(rf"end to end\s+seed{skip}\s+([\d,]+) tokens/s", out) for skip in ("", ".*eagle-recipes"))
    assert agrees(figure(r"speed ratio \(eagle-recipes / seed\): steady state (\d+\.\d+)x", out), ours, seed), out
    assert agrees(figure(r"speed ratio .* end to end (\d+\.\d+)x", out), ours_end, seed_end), out


def test_train_benchmark_quick(tiny_llama):
    out = bench("train.py", "--quick", "--model", tiny_llama)
    rates = {name: figure(rf"(?m)^{name}:\s+(\d+\.\d+) tokens/s", out) for name in ("base forward", "online", "cached")}
    assert all(float(rate) > 0 for rate in rates.values()), out
    assert agrees(figure(r"cached / online \(tokens/s\):\s+(\d+\.\d+)x", out), rates["cached"], rates["online"]), out
    # time per token is the inverse of the rate: online step / base forward = base rate / online rate
    assert agrees(figure(r"online step / base forward:\s+(\d+\.\d+)x", out), rates["base forward"], rates["online"]), out


def test_synthesis_benchmark_quick(smollm2_path):
    out = bench("synthesis.py", "--quick", "--model", smollm2_path)
    paths = re.findall(r"^(seed path|in-process vLLM).*? (\d+) tokens: generation\s+(\d+\.\d+) tokens/s, "
                       r"end to end\s+(\d+\.\d+) tokens/s", out, re.MULTILINE)
    assert [name for name, *_ in paths] == ["seed path", "in-process vLLM"], out
    (_, seed_tokens, seed_rate, seed_end), (_, ours_tokens, ours_rate, ours_end) = paths
    assert int(seed_tokens) > 0 and int(ours_tokens) > 0, out
    assert agrees(figure(r"ratio \(in-process / seed\): generation (\d+\.\d+)x", out), ours_rate, seed_rate), out
    assert agrees(figure(r"ratio \(in-process / seed\): .* end to end (\d+\.\d+)x", out), ours_end, seed_end), out


def test_learning_curve_benchmark_quick(tmp_path, smollm2_path):
    recipe = small_recipe(tmp_path, smollm2_path)  # the benchmark runs the graph up to the features itself
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
    kept = re.findall(r"([\d,]+) conversations kept, peak RSS ([\d,]+) MiB", out)
    assert [count for count, _ in kept] == ["2,000", "2,000"], out  # both readers keep every conversation
    by_dataset, by_file = (rss.replace(",", "") for _, rss in kept)
    assert agrees(figure(r"peak RSS ratio \(dataset / file\): (\d+\.\d+)x", out), by_dataset, by_file), out


def test_optimizer_step_benchmark_quick():
    out = bench("optimizer_step.py", "--quick", hardware_line=False)  # each of its lines names the CPU
    lines = out.strip().splitlines()
    assert re.match(r"native \(CPU \w+, bfloat16 (native|emulated), 2 threads\): optimizer step adamw \d\.\d+ s, "
                    r"muon \d\.\d+ s \((Muon|Float32Muon), ", lines[0]), out
    # restricted to AVX2, torch has no native bfloat16: Muon's iteration runs in float32
    assert re.match(r"avx2 \(CPU AVX2, bfloat16 emulated, 2 threads\): .* \(Float32Muon, ", lines[1]), out
    verdict = re.match(r"recipe's optimizer step within AdamW's \+ 0\.25 s on every kind measured: (yes|NO)$", lines[2])
    assert verdict, out
    extras = [float(figure(r"the recipe's \(\w+\) ([+-]\d\.\d+) s over adamw", line)) for line in lines[:2]]
    assert verdict.group(1) == ("yes" if all(extra <= 0.25 for extra in extras) else "NO"), out


def test_scale_benchmark_quick():
    """The whole graph at 100 and 400 conversations (tiny target, stages one at a time): its last lines are one
    per stage with ratios its own table gives, and streamed training (a feature server beside the workers) writes
no feature."""
    out = bench("scale.py", "--quick", timeout=900)
    per_thousand = {(stage, count): seconds for stage, count, seconds in
                    re.findall(r"^\| (\w+) \| (\d+) \| [\d.]+ \| ([\d.]+) \|", out, re.MULTILINE)}
    for stage in ("synthesize", "tokenize", "calibrate", "train", "export"):
        ratio = figure(rf"(?m)^{stage}: time per conversation 400/100 = (\d+\.\d+)x, peak RSS 400/100 = \d+\.\d+x",
                       out)
        assert agrees(ratio, per_thousand[stage, "400"], per_thousand[stage, "100"]), (stage, ratio, out)
    assert re.search(r"\| train \| 400 \| .*feature server \d+.*training worker \d+", out), out
    assert re.search(r"(?m)^streamed feature bytes written: 0 \(feature files in the run folder", out), out


def test_streamed_benchmark_quick():
    out = bench("streamed.py", "--quick")
    rates = {int(n): r for n, r in re.findall(r"^  (\d) server\(s\): ([\d.]+) steps/s", out, re.MULTILINE)}
    assert set(rates) == {1, 2, 4}, out
    shares = re.search(r"^  4 server\(s\): [\d.]+ steps/s, requests per server \[([\d, ]+)\]", out, re.MULTILINE)
    counts = [int(c) for c in shares.group(1).split(",")]
    assert max(counts) - min(counts) <= 1, out  # every server served its share
    assert agrees(figure(r"4 servers / 1 server = ([\d.]+)x", out), rates[4], rates[1]), out


def test_streamed_steps_benchmark_quick():
    """Online and streamed training of the same steps on the tiny target: both rates, the split cores named, and
    the last line's ratio is the two rates' own."""
    out = bench("streamed_steps.py", "--quick", timeout=900)
    rates = dict(re.findall(r"(?m)^  (online|streamed): ([\d.]+) steps/s", out))
    assert set(rates) == {"online", "streamed"}, out
    assert re.search(r"(?m)^  streamed: .*worker \d+ thread\(s\), feature server \d+\)$", out), out
    assert agrees(figure(r"(?m)^streamed / online steps/s = ([\d.]+)x$", out), rates["streamed"], rates["online"]), out
