"""Measure with the pure-PyTorch greedy chain-drafting loop (draft/reference.py): the base model from
transformers, the draft folder read in any layout. Slow; used in tests and as a cross-check of vLLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eagle_recipes.draft.layouts import load_draft_module
from eagle_recipes.draft.reference import Acceptance, reference_generate
from eagle_recipes.evaluation.prompt_sets import PromptSet
from eagle_recipes.evaluation.report import SetReport


def evaluate_reference(base: str, draft_folder: Path, k: int, sets: list[PromptSet], max_tokens: int,
                       log=print, progress=lambda done, total, unit: None,
                       thinking: bool | None = None) -> dict[str, SetReport]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    target = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    draft, config, d2t = load_draft_module(draft_folder)
    eos = {tokenizer.eos_token_id} | set(np.atleast_1d(target.generation_config.eos_token_id or []).tolist())
    switch = {} if thinking is None else {"enable_thinking": thinking}
    report = {}
    for prompt_set in sets:
        total = Acceptance(accepted_per_position=[0] * k)
        identical = 0
        unit = f"prompts ({prompt_set.name}, reference decoder)"
        for index, messages in enumerate(prompt_set.prompts):
            progress(index, len(prompt_set.prompts), unit)
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **switch)
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            tokens, stats = reference_generate(target, draft, config, d2t, prompt, k, max_tokens, eos)
            total.add(stats)
            greedy = target.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                                     eos_token_id=list(eos), pad_token_id=tokenizer.pad_token_id)[0, len(prompt):]
            identical += tokens == greedy.tolist()
        progress(len(prompt_set.prompts), len(prompt_set.prompts), unit)
        report[prompt_set.name] = SetReport.from_acceptance(len(prompt_set.prompts), total, identical)
        log(report[prompt_set.name].summary(f"{prompt_set.name} (reference)"))
    return report
