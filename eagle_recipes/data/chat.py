"""Render conversations with the base model's own chat template, and find the assistant tokens.

Training and calibration both use `render_batch`, so calibration counts exactly the tokens training sees.
The assistant span of turn i is what the template adds after the generation prompt of turns[:i]: the reply and
its end-of-turn token (the draft must learn to stop too). This needs only that the template renders a prefix of
a conversation as a prefix of its text, which holds for the chat templates of the families in the catalog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass
class Rendered:
    input_ids: list[int]
    loss_mask: list[int]  # 1 on assistant tokens


def load_tokenizer(model_path: str, chat_template_file: str = "", trust_remote_code: bool = False,
                   thinking: bool | None = None):
    """The base model's fast tokenizer and chat template (or the recipe's template file).

    thinking: the template's own reasoning switch (`enable_thinking`, as Qwen3's reads it) fixed for every
    rendering; None leaves the template's default. Templates without the switch render the same either way.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if chat_template_file:
        with open(chat_template_file, encoding="utf-8") as handle:
            tokenizer.chat_template = handle.read()
    if thinking is not None and isinstance(tokenizer.chat_template, str):
        # a template-level `set` wins over what a caller passes: every rendering (synthesis, calibrate, capture,
        # training) then sees the same switch
        switch = "true" if thinking else "false"
        tokenizer.chat_template = f"{{%- set enable_thinking = {switch} %}}" + tokenizer.chat_template
    if not tokenizer.is_fast:
        raise ValueError(f"{model_path}: a fast tokenizer is needed (offsets for the assistant loss mask)")
    return tokenizer


THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.S)


def strip_thinking(text: str) -> str:
    """A reply without its reasoning: closed <think>...</think> blocks removed; an unclosed one (the reply was cut
    while thinking) removed with everything after it."""
    text = THINK_BLOCK.sub("", text)
    return text.split("<think>", 1)[0]


def _template(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def render_text(tokenizer, messages: list[dict], with_spans: bool = True) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text, and the character spans of its assistant replies (with end-of-turn)."""
    text = _template(tokenizer, messages, False)
    if not with_spans:
        return text, []
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_template(tokenizer, messages[:index], True))
        end = len(_template(tokenizer, messages[: index + 1], False))
        end = start + len(text[start:end].rstrip())  # the newline after end-of-turn is the template's, not the model's
        spans.append((start, end))
    return text, spans


def render_texts(tokenizer, conversations: list[list[dict]],
                 with_spans: bool = True) -> list[tuple[str, list[tuple[int, int]]]]:
    """`render_text` for many conversations (one template call when no spans are needed)."""
    if not conversations:
        return []
    if with_spans:
        return [render_text(tokenizer, messages) for messages in conversations]
    return [(text, []) for text in tokenizer.apply_chat_template(conversations, tokenize=False)]


def render_batch(tokenizer, conversations: list[list[dict]], max_len: int | None = None,
                 with_mask: bool = True) -> list[Rendered]:
    """Render and tokenize many conversations in one fast-tokenizer call."""
    if not conversations:
        return []
    texts, all_spans = zip(*render_texts(tokenizer, conversations, with_mask))
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=with_mask,
                        truncation=max_len is not None, max_length=max_len)
    rendered = []
    for index, input_ids in enumerate(encoded["input_ids"]):
        if not with_mask:
            rendered.append(Rendered(list(input_ids), [1] * len(input_ids)))
            continue
        starts = np.array([offset[0] for offset in encoded["offset_mapping"][index]], dtype=np.int64)
        mask = np.zeros(len(input_ids), dtype=np.int64)
        for start, end in all_spans[index]:
            mask |= (starts >= start) & (starts < end)
        rendered.append(Rendered(list(input_ids), mask.tolist()))
    return rendered


def mask_token_id(tokenizer) -> int:
    """A token to fill DFlash's mask slots with: the tokenizer's mask token, else its last added special token that
    chats do not use (SmolLM2: <empty_output>), else its last token."""
    if tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    in_use = set(tokenizer.all_special_ids)
    spare = [i for i, token in tokenizer.added_tokens_decoder.items() if token.special and i not in in_use]
    return max(spare) if spare else len(tokenizer) - 1
