"""Precision on every kind of device. Muon's Newton-Schulz iteration never multiplies bfloat16 matrices where the
CPU emulates them (AVX2 only: ~20x float32's cost, 25 s a quickstart step), and stays torch's own bfloat16
optimizer where bfloat16 is native. A CPU without native bfloat16 is made real on any x86 machine by restricting
torch's kernels and oneDNN to AVX2 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA): oneDNN then reports no bfloat16
support, as it does on an AVX2-only CPU. And one precision policy: train.precision decides the features' dtype too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

# One Muon step of a real EAGLE-3 draft, built by the training code's own `build_optimizer`; every matmul's dtype
# is recorded below torch's dispatcher, where no code path can hide a cast.
MUON_STEP = textwrap.dedent("""
    import json, torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from eagle_recipes.devices import native_bfloat16
    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft, build_draft_config
    from eagle_recipes.training.optimizers import build_optimizer

    MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
               torch.ops.aten.baddbmm.default}

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in MATMULS:
                self.seen.add(str(args[1].dtype if func is torch.ops.aten.addmm.default else args[0].dtype))
            return func(*args, **(kwargs or {}))

    facts = BaseModelFacts.from_config(dict(model_type="llama", num_hidden_layers=8, hidden_size=64,
                                            intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                                            vocab_size=60, rms_norm_eps=1e-6, rope_theta=10000.0))
    torch.manual_seed(0)
    draft = build_draft(build_draft_config("eagle3", {}, facts, 30))
    optimizer = build_optimizer(draft, "muon", lr=1e-3, weight_decay=0.0)
    for parameter in draft.parameters():
        parameter.grad = torch.randn_like(parameter)
    with MatmulDtypes() as mode:
        optimizer.step()
    print(json.dumps({"native": native_bfloat16(torch.device("cpu")), "matmuls": sorted(mode.seen),
                      "optimizer": type(optimizer.muon).__name__}))
""")


def muon_step(env: dict[str, str]) -> dict:
    import json

    result = subprocess.run([sys.executable, "-c", MUON_STEP], env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_muon_never_multiplies_bfloat16_on_a_cpu_without_native_bfloat16():
    step = muon_step(AVX2_ONLY)
    assert step["native"] is False  # the restriction took effect: this process is an AVX2-only CPU to torch
    assert step["matmuls"] == ["torch.float32"], step
    assert step["optimizer"] == "Float32Muon"


@pytest.mark.slow
def test_muon_keeps_torchs_bfloat16_iteration_where_bfloat16_is_native():
    """The other side, so the recorder above is known to see bfloat16 when it happens: torch's own Muon."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bfloat16 (AVX2 only): the float32 path is the one tested above")
    step = muon_step({})
    assert step["native"] is True and step["optimizer"] == "Muon"
    assert "torch.bfloat16" in step["matmuls"], step


def test_float32_muon_steps_as_torchs_muon_does():
    """The float32 iteration is torch's update (to bfloat16's precision), on the same state and hyperparameters."""
    from eagle_recipes.training.optimizers import Float32Muon

    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(48, 96)), torch.nn.Parameter(torch.randn(96, 32))]
    twins = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    ours = Float32Muon(weights, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    theirs = torch.optim.Muon(twins, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        gradients = [torch.randn_like(w) for w in weights]
        for mine, twin, gradient in zip(weights, twins, gradients):
            mine.grad, twin.grad = gradient.clone(), gradient.clone()
        ours.step()
        theirs.step()
    for mine, twin in zip(weights, twins):
        torch.testing.assert_close(mine, twin, atol=2e-3, rtol=1e-2)
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()  # checkpoints interchange


def test_a_float32_run_on_a_gpu_gets_float32_features_too():
    """One precision policy: train.precision decides the draft's autocast and the base model's (and the features')
    dtype alike. Before, a GPU run asking for float32 still got bfloat16 features. No GPU is needed to ask the
    policy what a GPU worker would use (the training loop asks it with the worker's own device)."""
    from eagle_recipes.devices import compute_dtype, training_precision

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert training_precision("auto", use_gpu=True) == "bfloat16" and training_precision("auto", use_gpu=False) == "float32"
    assert compute_dtype(gpu, training_precision("float32", use_gpu=True)) == torch.float32
    assert compute_dtype(gpu, training_precision("auto", use_gpu=True)) == torch.bfloat16
    assert compute_dtype(cpu, training_precision("bfloat16", use_gpu=False)) == torch.float32  # CPUs: always float32
