"""The GPU check runs on any machine: without a GPU every tier says why it is skipped and the check exits 0; its
torch tier (the training code without Ray) runs on the CPU here on a tiny random model, with the packages a bare GPU
machine lacks made unimportable, so it cannot rot between GPU runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eagle_recipes.draft.drafters import DEFAULT_DRAFTER, DRAFTERS
from tests.helpers import PROJECT

# What a bare GPU machine has not (it has PyTorch, transformers, safetensors, numpy and rich): the torch tier
# imports none of these. The H200 check of 2026-12-04 first stopped on jsonschema, imported with the recipe package.
ABSENT_ON_A_BARE_GPU_MACHINE = ("ray", "vllm", "jsonschema", "datasets")
AS_ON_A_BARE_MACHINE = f"""
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {ABSENT_ON_A_BARE_GPU_MACHINE!r}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Absent())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_gpu_check_without_a_gpu_skips_every_tier_and_exits_0(tmp_path):
    result = subprocess.run(["bash", str(PROJECT / "benchmarks" / "gpu_check.sh"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    for tier in ("torch", "ray", "vllm"):
        assert f"{tier}: skipped: no GPU" in result.stdout, result.stdout


@pytest.mark.slow
def test_gpu_check_torch_tier_runs_on_the_cpu(tmp_path):
    result = subprocess.run([sys.executable, "-c", AS_ON_A_BARE_MACHINE, str(PROJECT / "benchmarks" / "gpu_check.py"),
                             "--device", "cpu",
                             "--size", "tiny", "--tiers", "torch", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = result.stdout
    for path in ("capture (transformers, cpu)", "train float32 (online, ddp)", "train float32 (online, fsdp)",
                 "train float32 (cached, ddp)", "train float32 (cached, fsdp)", "train float32 (cached, the DDP wrapper)",
                 "train float32 (streamed, ddp, a feature server on this device)",
                 "train float32 (online, ddp, muon)", "export + inspect", "reference decoder (CPU, 3 prompts)",
                 *(f"train float32 (online, {name})" for name in DRAFTERS if name != DEFAULT_DRAFTER)):
        line = next((l for l in out.splitlines() if path in l), None)
        assert line is not None, (path, out)
        assert "peak GPU memory n/a (CPU)" in line
    assert "weights identical to the uninterrupted run's" in out
    assert "export + inspect" in out and out.split("export + inspect")[1].splitlines()[0].rstrip().endswith("OK")
