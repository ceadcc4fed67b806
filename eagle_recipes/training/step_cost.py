"""What one training step should cost on this machine, and which part of it is slow when it costs far more.

The estimate is the step's work at this machine's own measured rates (a roofline, measured in ~0.1 s): the draft's
matmul FLOPs forward and backward and Muon's Newton-Schulz FLOPs at the float32 matmul rate, AdamW's per-parameter
update at the memory rate. Real steps run a few times slower than a roofline (small matmuls, softmax, the unroll's
bookkeeping); a phase many times slower than its estimate has a cause worth naming, such as a bfloat16 matmul
that this CPU emulates (Muon as torch ships it on an AVX2 CPU: 25 s a step against an estimate under 1 s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.optim import _muon

from eagle_recipes.training.features import feature_mode

PHASES = ("forward", "backward", "optimizer")
SLOW_FACTOR = 8.0  # a phase this many times its estimate (and the step 4x the whole estimate) is named
ADAMW_BYTES_PER_PARAMETER = 64  # weight, gradient and two moments read and written, a few passes


@dataclass(frozen=True)
class StepWork:
    """The arithmetic of one optimizer step."""

    forward_flops: float
    backward_flops: float
    newton_schulz_flops: float  # Muon's orthogonalisation (0 with AdamW)
    elementwise_bytes: float  # the optimizer's per-parameter update


@dataclass(frozen=True)
class MachineRates:
    matmul_flops_per_s: float  # float32, this process's threads
    bytes_per_s: float  # an elementwise update's memory traffic


def step_work(draft: torch.nn.Module, tokens: int, sequence_length: int, unroll: int, optimizer: str) -> StepWork:
    """`tokens` a step (padding included) through `unroll` passes of the draft (TTT steps, or DFlash's one)."""
    matrices = [p for n, p in draft.named_parameters() if p.ndim == 2 and "embed" not in n]
    matmul_parameters = sum(p.numel() for p in matrices)
    hidden = max(p.shape[-1] for p in matrices)
    attention = 2 * tokens * sequence_length * hidden  # causal scores and values, half of the square
    forward = unroll * (2 * matmul_parameters * tokens + attention)
    newton_schulz = 0.0
    if optimizer == "muon":
        from eagle_recipes.training.optimizers import muon_parameter

        for name, parameter in draft.named_parameters():
            if muon_parameter(name, parameter):
                small, large = sorted(parameter.shape)
                newton_schulz += _muon.DEFAULT_NS_STEPS * (4 * small * small * large + 2 * small ** 3)
    parameters = sum(p.numel() for p in draft.parameters() if p.requires_grad)
    return StepWork(forward, 2 * forward, newton_schulz, parameters * ADAMW_BYTES_PER_PARAMETER)


def measure_rates(device: torch.device) -> MachineRates:
    """This process's float32 matmul rate and elementwise memory rate (CPU; GPUs are not diagnosed)."""
    size = 384
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    big = torch.randn(4_000_000, device=device)
    a @ b, big.add_(1.0)  # warm-up
    started = time.perf_counter()
    for _ in range(8):
        a @ b
    matmul = 8 * 2 * size ** 3 / max(1e-9, time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(4):
        big.add_(1.0)
    elementwise = 4 * 2 * big.numel() * 4 / max(1e-9, time.perf_counter() - started)
    return MachineRates(matmul, elementwise)


def estimate_seconds(work: StepWork, rates: MachineRates) -> dict[str, float]:
    return {"forward": work.forward_flops / rates.matmul_flops_per_s,
            "backward": work.backward_flops / rates.matmul_flops_per_s,
            "optimizer": work.newton_schulz_flops / rates.matmul_flops_per_s
            + work.elementwise_bytes / rates.bytes_per_s}


@dataclass(frozen=True)
class StepContext:
    """What the advice depends on."""

    optimizer: str
    features: str
    precision: str
    hardware: str  # devices.describe_hardware
    native_bfloat16: bool


def diagnose(measured: dict[str, float], estimated: dict[str, float], context: StepContext) -> str | None:
    """A sentence naming the slow part of the step and what to change, or None when the step is as expected."""
    if sum(measured.values()) < max(0.5, 4 * sum(estimated.values())):
        return None
    ratios = {phase: measured[phase] / max(1e-6, estimated[phase]) for phase in PHASES}
    slow = max(PHASES, key=lambda phase: measured[phase] - SLOW_FACTOR * estimated[phase])
    if ratios[slow] < SLOW_FACTOR:
        return None
    breakdown = ", ".join(f"{phase} {measured[phase]:.2f} s" for phase in PHASES)
    return (f"a step takes {sum(measured.values()):.2f} s ({breakdown}) where its arithmetic takes about "
            f"{sum(estimated.values()):.2f} s on this CPU ({context.hardware}): the {slow} is "
            f"{ratios[slow]:.0f}x its estimate. {advice(slow, context)}")


def advice(phase: str, context: StepContext) -> str:
    emulated = not context.native_bfloat16
    if emulated and context.precision == "bfloat16" and phase in ("forward", "backward"):
        return 'This CPU emulates bfloat16: set train.precision = "float32".'
    if phase == "optimizer" and context.optimizer == "muon":
        return ('Muon orthogonalises every matrix each step; set train.optimizer = "adamw" (on a 2-core AVX2 CPU '
                'an AdamW step of the quickstart costs a third of a float32 Muon step).')
    forward_advice = feature_mode(context.features).forward_advice
    if phase == "forward" and forward_advice:
        return forward_advice
    return ("Check that no other process uses these cores, and that train.cpus_per_worker matches the cores each "
            "worker may use.")
