"""Measure with real vLLM: the base engine first (reference outputs and tokens/s), then the speculative engine on
the same prompts; tau and per-position acceptance from vLLM's own spec-decode statistics of each request, summed per
prompt category (a prompt set is served as one batch: categories in separate batches cost a tail each). With speed
settings, every engine also measures tokens/s at each load on the speed prompts (evaluation/speed.py)."""

from __future__ import annotations

import gc
import io
import time
from collections import defaultdict
from typing import Any

from eagle_recipes.draft.reference import Acceptance
from eagle_recipes.evaluation.prompt_sets import PromptSet
from eagle_recipes.evaluation.report import SetReport
from eagle_recipes.evaluation.speed import SpeedRow, SpeedSettings, SpeedTable


def _counters(llm) -> tuple[int, list[int]]:
    drafts, per_position = 0, []
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_drafts":
            drafts = int(metric.value)
        elif metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            per_position = [int(v) for v in metric.values]
    return drafts, per_position


def engine(base: str, draft: str | None, speculative: dict, k: int, dtype: str):
    """A vLLM engine for the base model, speculative when a draft folder is given (`speculative`: the method and
    its options, draft/export.py's `speculative_config`)."""
    from vllm import LLM

    from eagle_recipes.engines.placement import cpu_max_model_len, vllm_engine_kwargs

    # a context of at most 4,096 tokens on GPUs too: evaluation prompts are short, the KV cache stays small
    kwargs: dict[str, Any] = dict(model=base, seed=0, disable_log_stats=False,
                                  **{**vllm_engine_kwargs(base, dtype), "max_model_len": cpu_max_model_len(base)})
    if draft:
        kwargs["speculative_config"] = {**speculative, "model": draft, "num_speculative_tokens": k}
        kwargs["per_request_spec_decode_metrics"] = "summary"  # each request's accepted-length histogram
    return LLM(**kwargs)


def generate(llm, prompts: list[list[dict]], max_tokens: int, thinking: bool | None = None,
             on_finished=None) -> tuple[list[list[int]], list[str], float]:
    """Greedy replies to chat prompts: (token ids, texts, wall seconds); `thinking` sets the chat template's
    reasoning switch (None: its default)."""
    outputs, wall = _chat(llm, prompts, max_tokens, thinking, on_finished)
    return [list(o.outputs[0].token_ids) for o in outputs], [o.outputs[0].text for o in outputs], wall


def _chat(llm, prompts: list[list[dict]], max_tokens: int, thinking: bool | None,
          on_finished=None) -> tuple[list, float]:
    """vLLM's request outputs of one greedy batch and its wall seconds; `on_finished(n)` hears each finished one."""
    from vllm import SamplingParams

    switch = None if thinking is None else {"enable_thinking": thinking}
    started = time.time()
    outputs = llm.chat(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens),
                       use_tqdm=_reporting_bar(on_finished) if on_finished else False, chat_template_kwargs=switch)
    return outputs, time.time() - started


def _reporting_bar(on_finished):
    """A tqdm class for vLLM's `use_tqdm` that reports finished requests to `on_finished` and prints nothing."""
    from tqdm import tqdm

    class ReportingBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "file": io.StringIO()})

        def update(self, n=1):
            shown = super().update(n)
            on_finished(self.n)
            return shown

    return ReportingBar


def request_acceptance(output, k: int) -> Acceptance:
    """One request's drafts and accepted tokens per position, from vLLM's histogram of accepted lengths (entry j:
    verify steps that accepted exactly j draft tokens; position i is accepted in every step that took more than i)."""
    histogram = list(output.outputs[0].spec_decode_metrics.histogram)
    return Acceptance(sum(histogram), [sum(histogram[i + 1:]) for i in range(k)])


def _fill_second_turns(llm, prompt_set: PromptSet, max_tokens: int, thinking: bool | None) -> None:
    pending = [p for p in prompt_set.prompts if any(m.get("content") is None for m in p)]
    _, texts, _ = generate(llm, [p[:1] for p in pending], max_tokens, thinking)
    for prompt, text in zip(pending, texts):
        prompt[1]["content"] = text


def _baseline(llm, prompt_set: PromptSet, max_tokens: int, progress,
              thinking: bool | None) -> tuple[list[list[int]], float]:
    """The target's own greedy outputs (the losslessness reference) and their wall time."""
    unit, count = f"prompts ({prompt_set.name}, target alone)", len(prompt_set.prompts)
    progress(0, count, unit)
    ids, _, wall = generate(llm, prompt_set.prompts, max_tokens, thinking, lambda done: progress(done, count, unit))
    return ids, wall


def _measure_set(llm, prompt_set: PromptSet, k: int, max_tokens: int, base_ids: list[list[int]],
                 base_wall: float, progress, thinking: bool | None) -> SetReport:
    unit, count = f"prompts ({prompt_set.name}, with the draft)", len(prompt_set.prompts)
    progress(0, count, unit)
    outputs, spec_wall = _chat(llm, prompt_set.prompts, max_tokens, thinking, lambda done: progress(done, count, unit))
    total = Acceptance(accepted_per_position=[0] * k)
    by_category: dict[str, Acceptance] = defaultdict(lambda: Acceptance(accepted_per_position=[0] * k))
    for category, output in zip(prompt_set.categories, outputs):
        acceptance = request_acceptance(output, k)
        by_category[category].add(acceptance)
        total.add(acceptance)
    spec_ids = [list(o.outputs[0].token_ids) for o in outputs]
    base_tokens, spec_tokens = sum(map(len, base_ids)), sum(map(len, spec_ids))
    return SetReport.from_acceptance(
        count, total, sum(a == b for a, b in zip(base_ids, spec_ids)),
        by_category={c: {"acceptance_length": a.acceptance_length, "per_position": a.per_position}
                     for c, a in sorted(by_category.items())},
        tokens_per_s_target_alone=base_tokens / base_wall if base_wall else 0.0,
        tokens_per_s_with_draft=spec_tokens / spec_wall if spec_wall else 0.0)


def _speed_rows(llm, k: int, prompts: list[list[dict]], speed: SpeedSettings, thinking: bool | None,
                progress) -> list[SpeedRow]:
    """Tokens/s of this engine at each load on the speed prompts (groups of `load` requests served at once), with
    tau and per-position acceptance of exactly these runs."""
    rows = []
    for load in speed.concurrency:
        chosen = prompts[: speed.prompts_at(load)]
        unit = f"prompts (speed, k = {k}, load {load})"
        progress(0, speed.repeats * len(chosen), unit)
        generate(llm, chosen[:load], speed.max_tokens, thinking)  # this load's batch shapes warmed up, not timed
        drafts0, per_position0 = _counters(llm)
        samples, tokens = [], 0
        for repeat in range(speed.repeats):  # the same work each time: greedy, so the same tokens
            tokens, wall = 0, 0.0
            for start in range(0, len(chosen), load):
                ids, _, seconds = generate(llm, chosen[start: start + load], speed.max_tokens, thinking)
                tokens, wall = tokens + sum(map(len, ids)), wall + seconds
                progress(repeat * len(chosen) + min(start + load, len(chosen)), speed.repeats * len(chosen), unit)
            samples.append(tokens / wall if wall else 0.0)
        drafts1, per_position1 = _counters(llm)
        per_position0 = per_position0 or [0] * len(per_position1)
        acceptance = Acceptance(drafts1 - drafts0, [b - a for a, b in zip(per_position0, per_position1)])
        rows.append(SpeedRow.from_samples(k, load, samples,
                                          acceptance_length=acceptance.acceptance_length if k else 1.0,
                                          per_position=acceptance.per_position if k else [], prompts=len(chosen),
                                          tokens=tokens))
    return rows


def evaluate_vllm(base: str, draft: str, speculative: dict, k: int, sets: list[PromptSet], max_tokens: int,
                  dtype: str = "auto", log=print, progress=lambda done, total, unit: None,
                  thinking: bool | None = None, verbose: bool = False, speed: SpeedSettings | None = None,
                  speed_prompts: list[list[dict]] | None = None) -> tuple[dict[str, SetReport], SpeedTable | None]:
    """tau per prompt set at k (with losslessness and tokens/s), and with `speed` the sweep: the base alone and
    every k from 1 to `k` at each load, one engine per k (an engine's k is fixed when it starts)."""
    from eagle_recipes.devices import available_device, describe_hardware
    from eagle_recipes.engines.placement import apply_engine_env

    apply_engine_env(verbose)
    rows: list[SpeedRow] = []
    llm = engine(base, None, speculative, k, dtype)
    baseline: dict[str, tuple] = {}
    for prompt_set in sets:
        if any(m.get("content") is None for p in prompt_set.prompts for m in p):
            _fill_second_turns(llm, prompt_set, max_tokens, thinking)
        baseline[prompt_set.name] = _baseline(llm, prompt_set, max_tokens, progress, thinking)
    if speed:
        rows += _speed_rows(llm, 0, speed_prompts, speed, thinking, progress)
    del llm
    gc.collect()
    report: dict[str, SetReport] = {}
    swept = speed.ks(k) if speed else []
    for draft_tokens in sorted(set(swept) | {k}):
        llm = engine(base, draft, speculative, draft_tokens, dtype)
        if draft_tokens in swept:
            rows += _speed_rows(llm, draft_tokens, speed_prompts, speed, thinking, progress)
            log(f"speed at k = {draft_tokens}: " + ", ".join(f"load {r.concurrency} {r.tokens_per_s:.1f} tokens/s"
                                                            for r in rows[-len(speed.concurrency):]))
        if draft_tokens == k:
            for prompt_set in sets:
                base_ids, base_wall = baseline[prompt_set.name]
                report[prompt_set.name] = _measure_set(llm, prompt_set, k, max_tokens, base_ids, base_wall,
                                                       progress, thinking)
                log(report[prompt_set.name].summary(prompt_set.name))
        del llm
        gc.collect()
    table = SpeedTable(rows, {"hardware": describe_hardware(available_device()),
                              "concurrency": list(speed.concurrency), "prompts": len(speed_prompts),
                              "max_tokens": speed.max_tokens, "repeats": speed.repeats, "draft_tokens": swept,
                              "prompts_per_load": {
                                  str(load): speed.prompts_at(load) for load in speed.concurrency}}) if speed else None
    return report, table
