"""The GPU check runs on any machine: without a GPU every tier says why it is skipped and the check exits 0; its
torch tier (the training code without Ray) runs on the CPU here on a tiny random model, so it cannot rot between
GPU runs."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import PROJECT


def test_gpu_check_without_a_gpu_skips_every_tier_and_exits_0(tmp_path):
    result = subprocess.run(["bash", str(PROJECT / "benchmarks" / "gpu_check.sh"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    for tier in ("torch", "ray", "vllm"):
        assert f"{tier}: skipped: no GPU" in result.stdout, result.stdout


def test_gpu_check_torch_tier_runs_on_the_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(PROJECT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                             "--size", "tiny", "--tiers", "torch", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = result.stdout
    for path in ("capture (transformers, cpu)", "train float32 (online, ddp)", "train float32 (online, fsdp)",
                 "train float32 (cached, ddp)", "train float32 (cached, fsdp)", "train float32 (cached, the DDP wrapper)",
                 "export + inspect", "reference decoder (CPU, 3 prompts)"):
        line = next((l for l in out.splitlines() if path in l), None)
        assert line is not None, (path, out)
        assert "peak GPU memory n/a (CPU)" in line
    assert "weights identical to the uninterrupted run's" in out
    assert "export + inspect" in out and out.split("export + inspect")[1].splitlines()[0].rstrip().endswith("OK")
