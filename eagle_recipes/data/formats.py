"""Read prompt data in the formats people have, and write conversations in the "conversations" format.

In: ShareGPT (`conversations: [{from, value}]`), OpenAI chat (`messages: [{role, content}]`), conversations
(`conversations: [{role, content}]`, optional `conversation_id`), prompt-only rows (`prompt` or `text`);
JSONL or Parquet. Out: `{"conversation_id", "conversations": [{"role", "content"}], ...}`.
Bad rows are skipped and counted by reason, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import random
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from eagle_recipes.data.conversation_store import ConversationStore, StoreWriter
from eagle_recipes.errors import UserError

ROLE_NAMES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system",
}
DETECT_LINES = 50


class DataFormatError(UserError):
    pass


@dataclass
class LoadedData:
    conversations: ConversationStore | list[dict]  # on disk, read on demand (data/conversation_store.py)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    by_source: Counter = field(default_factory=Counter)  # (source, reason) -> count
    first_skipped: dict[tuple[str, str], str] = field(default_factory=dict)  # (source, reason) -> where the first was
    formats: dict[str, str] = field(default_factory=dict)  # source label -> detected format
    used: dict[str, int] = field(default_factory=dict)  # source -> conversations taken from it

    def skip(self, reason: str, source: str, where: str) -> None:
        """A row of `source` (a file name or a dataset's label) at `where` ("line 3", "row 12") is unusable."""
        self.skipped[reason] += 1
        self.by_source[source, reason] += 1
        self.first_skipped.setdefault((source, reason), where)

    def skipped_lines(self) -> list[str]:
        """One line per source and reason: how many rows, and where the first one is."""
        return [f"skipped {count} rows of {source}: {reason} (first: {source} {self.first_skipped[source, reason]})"
                for (source, reason), count in self.by_source.items()]


def detect_format(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    turns = record.get("conversations")
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        if "from" in turns[0]:
            return "sharegpt"
        if "role" in turns[0]:
            return "conversations"
    if isinstance(record.get("messages"), list):
        return "openai"
    if isinstance(record.get("prompt"), str) or isinstance(record.get("text"), str):
        return "prompt"
    return None


def conversation_id(turns: list[dict], given: Any = None) -> str:
    if given not in (None, ""):
        return str(given)
    text = json.dumps(turns, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def normalize(record: dict, fmt: str) -> tuple[dict | None, str]:
    """One input row -> a conversation in the conversations format, or (None, reason it was skipped)."""
    if fmt == "prompt":
        text = record.get("prompt") if isinstance(record.get("prompt"), str) else record.get("text")
        if not isinstance(text, str) or not text.strip():
            return None, "empty conversation"
        turns = [{"role": "user", "content": text}]
    else:
        raw = record.get("messages" if fmt == "openai" else "conversations")
        if not isinstance(raw, list):
            return None, f"no {'messages' if fmt == 'openai' else 'conversations'} list"
        role_key, content_key = ("from", "value") if fmt == "sharegpt" else ("role", "content")
        turns = []
        for turn in raw:
            if not isinstance(turn, dict):
                return None, "turn is not an object"
            role = ROLE_NAMES.get(str(turn.get(role_key, "")).lower())
            if role is None:
                return None, "unknown role"
            content = turn.get(content_key)
            if isinstance(content, list):  # OpenAI content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                return None, "content is not text"
            turns.append({"role": role, "content": content})
    turns = merge_consecutive(turns)
    if not any(t["role"] == "user" and t["content"].strip() for t in turns):
        return None, "empty conversation"
    given = record.get("conversation_id", record.get("id"))
    return {"conversation_id": conversation_id(turns, given), "conversations": turns}, ""


def merge_consecutive(turns: list[dict]) -> list[dict]:
    """Consecutive turns of one role are merged (blank line between) rather than dropped."""
    merged: list[dict] = []
    for turn in turns:
        if merged and merged[-1]["role"] == turn["role"]:
            merged[-1] = {"role": turn["role"], "content": merged[-1]["content"] + "\n\n" + turn["content"]}
        else:
            merged.append(dict(turn))
    return merged


def _detected_format(name: str, rows: Iterator[tuple[int, Any]], fmt: str, unit: str) -> str:
    """The format of a source from its first rows (or `fmt` when the recipe names one)."""
    if fmt != "auto":
        return fmt
    rows = list(_take(rows, DETECT_LINES))
    if not rows:
        raise DataFormatError(f"{name}: the source has no rows")
    for _, row in rows:
        found = detect_format(row)
        if found:
            return found
    broken = next((number for number, row in rows if isinstance(row, Exception)), None)
    if broken is not None:
        raise DataFormatError(f"{name}: {unit} {broken} is not valid JSON, and no row before {unit} "
                              f"{rows[-1][0] + 1} is in a known format; each line must be one whole JSON object")
    missing = next((row["__missing_column__"] for _, row in rows if isinstance(row, dict)
                    and "__missing_column__" in row), None)
    if missing:
        raise DataFormatError(f"{name}: no column {missing!r}; set `column` to the one holding the conversation")
    raise DataFormatError(
        f"{name}: no known conversation format in its first {DETECT_LINES} rows; expected rows "
        "with 'conversations' [{from, value}] (ShareGPT) or [{role, content}] (conversations), 'messages' [{role, "
        "content}] (OpenAI), or a 'prompt'/'text' string; or set data.format (or the entry's `column`)")


def _take(iterator: Iterator, count: int) -> Iterator:
    for index, item in enumerate(iterator):
        if index >= count:
            return
        yield item


def load_conversations(sources: list, fmt: str = "auto", max_samples: int = 0, seed: int = 0,
                       folder: Path | None = None) -> LoadedData:
    """Read every source (data/sources.py: a file, a dataset), normalize, skip what cannot be used,
    de-duplicate by id and by content across sources, shuffle deterministically and cut to max_samples (shared by
    the sources' weights when they give any).

    Rows stream from the sources into a `ConversationStore` on disk (in `folder`, or a private temporary one), so
    memory holds an id and a content digest per row, not the conversations."""
    data = LoadedData(conversations=[])
    seen_ids: set[str] = set()
    seen_content: set[bytes] = set()
    ids: list[str] = []  # of each row written, in writing order
    row_sources = array("I")  # index of each written row's source
    writer = StoreWriter(folder)
    for index, source in enumerate(sources):
        name, unit = source.label, source.row_unit
        source_format = _detected_format(source.location, source.rows(), fmt, unit)
        data.formats[name] = source_format
        for number, row in source.rows():
            conversation, reason = _conversation_of(row, source_format, fmt)
            if conversation is None:
                data.skip(reason, name, f"{unit} {number}")
                continue
            content = hashlib.sha1(json.dumps(conversation["conversations"], sort_keys=True).encode()).digest()
            if conversation["conversation_id"] in seen_ids:
                data.skip("duplicate id", name, f"{unit} {number}")
                continue
            if content in seen_content:
                data.skip("duplicate conversation", name, f"{unit} {number}")
                continue
            seen_ids.add(conversation["conversation_id"])
            seen_content.add(content)
            conversation["source"] = name
            writer.append(conversation)
            ids.append(conversation["conversation_id"])
            row_sources.append(index)
    order = _mixed_order([source.weight for source in sources], ids, row_sources, max_samples, seed)
    data.conversations = writer.close(order)
    data.used = dict(Counter(sources[row_sources[row]].label for row in order))
    return data


def _conversation_of(row: Any, source_format: str, fmt: str) -> tuple[dict | None, str]:
    if isinstance(row, Exception):
        return None, "malformed JSON"
    if not isinstance(row, dict):
        return None, "not an object"
    if "__missing_column__" in row:
        return None, f"no column {row['__missing_column__']!r}"
    row_format = detect_format(row)
    if fmt == "auto" and row_format not in (source_format, None):
        return normalize(row, row_format)  # mixed sources: trust each row's shape
    return normalize(row, source_format)


def _mixed_order(weights: list[float | None], ids: list[str], row_sources: array, max_samples: int,
                 seed: int) -> list[int]:
    """The rows (indices) in one deterministic order: by id, then a seeded shuffle, cut to max_samples; with
    weights, each source gives its share of max_samples (its rows by id, seeded shuffle), the rest of what it has
    unused. Ids alone decide it: input order must not change the shuffle."""
    rows: list[int] = list(range(len(ids)))
    if max_samples and any(w is not None for w in weights):
        total = sum(w or 0.0 for w in weights)
        chosen: list[int] = []
        for index, weight in enumerate(weights):
            own = sorted((row for row in rows if row_sources[row] == index), key=ids.__getitem__)
            random.Random(seed).shuffle(own)
            chosen += own[: round(max_samples * (weight or 0.0) / total)] if total else []
        rows = chosen
    order = sorted(rows, key=ids.__getitem__)
    random.Random(seed).shuffle(order)
    return order[:max_samples] if max_samples else order


TRAIN_SPLIT, HELD_OUT_SPLIT = "train", "holdout"  # the only two splits; "holdout" is also its eval prompt set
SELF_PROMPTS_SOURCE = "self_prompts"  # the `source` of conversations whose prompt the base model wrote itself
HELD_OUT_RULE = "user-prompts"  # in stage fingerprints: the split below holds out the user's conversations alone


def split_of(row: dict, fraction: float) -> str:
    """The split a conversation row belongs to: the one place that decides it (calibrate, capture, train,
    evaluate). Self-prompted conversations (synthesis.self_prompts) always train: they augment the user's data, and
    the held-out split measures the user's own prompts, the same ones however many self prompts a recipe asks for."""
    if row.get("source") == SELF_PROMPTS_SOURCE:
        return TRAIN_SPLIT
    return HELD_OUT_SPLIT if is_holdout(row["conversation_id"], fraction) else TRAIN_SPLIT


def is_holdout(conversation_id_: str, fraction: float) -> bool:
    """Deterministic split by id: the same conversation is held out whatever the sharding or order."""
    if fraction <= 0:
        return False
    bucket = int(hashlib.sha256(conversation_id_.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction


def read_conversation_rows(sources: list) -> Iterator[dict]:
    """Rows of sources in the conversations format, checked (raises DataFormatError naming the file and line)."""
    for source in sources:
        for number, row in source.rows():
            problem = _conversation_row_problem(row)
            if problem:
                raise DataFormatError(f"{source.location}: {source.row_unit} {number}: {problem}; each row must be a "
                                      "JSON object with 'conversation_id' and 'conversations' [{role, content}]")
            yield row


def _conversation_row_problem(row: Any) -> str:
    if isinstance(row, Exception):
        return f"not valid JSON ({row})"
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("conversation_id"), str):
        return "no 'conversation_id' string"
    turns = row.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(t.get("role"), str)
                                              and isinstance(t.get("content"), str) for t in turns):
        return "'conversations' is not a list of {role, content} objects"
    return ""


def check_source(source, fmt: str, conversations_format: bool) -> str:
    """A cheap look at a source's first rows (for validate): '' when it looks usable, else what is wrong."""
    try:
        if conversations_format:
            for _ in _take(read_conversation_rows([source]), DETECT_LINES):
                pass
        else:
            _detected_format(source.location, source.rows(), fmt, source.row_unit)
    except DataFormatError as error:
        return str(error)
    return ""
