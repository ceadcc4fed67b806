"""The learning rate at each optimizer step: linear warmup, then constant, cosine or linear decay."""

from __future__ import annotations

import math


def learning_rate(step: int, total: int, peak: float, warmup_ratio: float, schedule: str) -> float:
    warmup = max(1, int(round(total * warmup_ratio))) if warmup_ratio > 0 else 0
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress)
