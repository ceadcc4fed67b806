"""Acceptance-length measurement: prompt sets, the two ways to measure (real vLLM, or the pure-PyTorch reference
decoder of draft/reference.py) and the one report type both return. `evaluate_draft` is the one way a draft is
evaluated: the evaluate stage and `eagle-recipes eval` both call it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from eagle_recipes.evaluation.report import EvalReport
from eagle_recipes.evaluation.speed import SpeedSettings, SpeedTable


def no_progress(done: int, total: int | None, unit: str) -> None:
    pass


def no_log(message: str) -> None:
    pass


def measure(base: str, draft: Path, speculative: dict, k: int, sets: list, max_tokens: int, engine: str,
            dtype: str = "auto", log: Callable[[str], None] = print, progress=no_progress,
            thinking: bool | None = None, verbose: bool = False,
            speed: SpeedSettings | None = None) -> tuple[dict, SpeedTable | None]:
    """({prompt set name: SetReport}, the speed sweep or None) by the chosen engine ("vllm" or "reference"; the
    reference decoder measures no speed); `progress(done, total, unit)` counts prompts per prompt set and phase;
    `thinking` sets the chat template's reasoning switch."""
    if engine == "reference":
        from eagle_recipes.evaluation.reference_path import evaluate_reference

        return evaluate_reference(base, draft, k, sets, max_tokens, log, progress, thinking), None
    from eagle_recipes.evaluation.prompt_sets import speed_prompts
    from eagle_recipes.evaluation.vllm_path import evaluate_vllm

    prompts = speed_prompts(sets, speed.prompts) if speed else None
    return evaluate_vllm(base, str(draft), speculative, k, sets, max_tokens, dtype, log, progress, thinking, verbose,
                         speed, prompts)


def evaluate_draft(base: str, draft: Path, speculative: dict, k: int, sets: list, max_tokens: int, engine: str,
                   out: Path, settings: dict[str, Any], dtype: str = "auto", log: Callable[[str], None] = no_log,
                   progress=no_progress, thinking: bool | None = None, verbose: bool = False,
                   speed: SpeedSettings | None = None) -> EvalReport:
    """Measure a draft on the prompt sets (and, with `speed`, its serving speed at every k and load) and write
    `out`/report.json and the chart."""
    measured, table = measure(base, draft, speculative, k, sets, max_tokens, engine, dtype, log, progress, thinking,
                              verbose, speed)
    report = EvalReport(measured, settings, table)
    report.write(out)
    return report
