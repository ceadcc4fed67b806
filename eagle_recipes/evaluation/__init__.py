"""Acceptance-length measurement: prompt sets, the two ways to measure (real vLLM, or the pure-PyTorch reference
decoder of draft/reference.py) and the one report type both return."""

from __future__ import annotations

from pathlib import Path


def no_progress(done: int, total: int | None, unit: str) -> None:
    pass


def measure(base: str, draft: Path, method: str, k: int, sets: list, max_tokens: int, engine: str,
            dtype: str = "auto", log=print, progress=no_progress, thinking: bool | None = None) -> dict:
    """{prompt set name: SetReport} by the chosen engine ("vllm" or "reference"); `progress(done, total, unit)`
    counts prompts per prompt set and phase; `thinking` sets the chat template's reasoning switch."""
    if engine == "reference":
        from eagle_recipes.evaluation.reference_path import evaluate_reference

        return evaluate_reference(base, draft, k, sets, max_tokens, log, progress, thinking)
    from eagle_recipes.evaluation.vllm_path import evaluate_vllm

    return evaluate_vllm(base, str(draft), method, k, sets, max_tokens, dtype, log, progress, thinking)
