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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

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
    conversations: list[dict]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    first_skipped: dict[str, str] = field(default_factory=dict)  # reason -> "file line N" of its first row
    formats: dict[str, str] = field(default_factory=dict)  # file -> detected format

    def skip(self, reason: str, path: Path, line: int) -> None:
        self.skipped[reason] += 1
        self.first_skipped.setdefault(reason, f"{path.name} line {line}")

    def skipped_lines(self) -> list[str]:
        """One line per reason: how many rows, and where the first one is."""
        return [f"skipped {count} input rows: {reason} (first: {self.first_skipped[reason]})"
                for reason, count in self.skipped.items()]


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


def _read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row or the JSON error) for JSONL; (row number, row) for Parquet."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataFormatError(f"{path}: not a readable Parquet file ({str(error)[:200]})") from None
        yield from enumerate(rows, start=1)
        return
    number = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    yield number, error
    except UnicodeDecodeError:
        raise DataFormatError(f"{path}: not UTF-8 text (after line {number}); data files are JSONL (one JSON object "
                              "per line) or Parquet") from None
    except IsADirectoryError:
        raise DataFormatError(f"{path}: a directory, expected a JSONL or Parquet file") from None
    except OSError as error:
        raise DataFormatError(f"{path}: cannot read it ({error.strerror or error})") from None


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


def _file_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    rows = list(_take(_read_rows(path), DETECT_LINES))
    if not rows:
        raise DataFormatError(f"{path}: the file has no rows")
    for _, row in rows:
        found = detect_format(row)
        if found:
            return found
    broken = next((number for number, row in rows if isinstance(row, Exception)), None)
    if broken is not None:
        raise DataFormatError(f"{path}: line {broken} is not valid JSON, and no row before line {rows[-1][0] + 1} "
                              "is in a known format; each line must be one whole JSON object")
    raise DataFormatError(
        f"{path}: no known conversation format in its first {DETECT_LINES} rows; expected JSONL or Parquet rows "
        "with 'conversations' [{from, value}] (ShareGPT) or [{role, content}] (conversations), 'messages' [{role, "
        "content}] (OpenAI), or a 'prompt'/'text' string; or set data.format")


def _take(iterator: Iterator, count: int) -> Iterator:
    for index, item in enumerate(iterator):
        if index >= count:
            return
        yield item


def load_conversations(paths: list[Path], fmt: str = "auto", max_samples: int = 0, seed: int = 0) -> LoadedData:
    """Read every file, normalize, de-duplicate ids, shuffle deterministically and cut to max_samples."""
    data = LoadedData(conversations=[])
    seen: set[str] = set()
    for path in paths:
        if not path.exists():
            raise DataFormatError(f"{path}: file not found")
        file_format = _file_format(path, fmt)
        data.formats[str(path)] = file_format
        for number, row in _read_rows(path):
            if isinstance(row, Exception):
                data.skip("malformed JSON", path, number)
                continue
            if detect_format(row) not in (file_format, None) and fmt == "auto":
                file_row_format = detect_format(row)
                conversation, reason = normalize(row, file_row_format)  # mixed files: trust each row's shape
            else:
                conversation, reason = normalize(row, file_format) if isinstance(row, dict) else (None, "not an object")
            if conversation is None:
                data.skip(reason, path, number)
                continue
            if conversation["conversation_id"] in seen:
                data.skip("duplicate id", path, number)
                continue
            seen.add(conversation["conversation_id"])
            conversation["source"] = path.name
            data.conversations.append(conversation)
    data.conversations.sort(key=lambda c: c["conversation_id"])  # input order must not change the shuffle
    random.Random(seed).shuffle(data.conversations)
    if max_samples:
        data.conversations = data.conversations[:max_samples]
    return data


def is_holdout(conversation_id_: str, fraction: float) -> bool:
    """Deterministic split by id: the same conversation is held out whatever the sharding or order."""
    if fraction <= 0:
        return False
    bucket = int(hashlib.sha256(conversation_id_.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction


def read_conversation_jsonl(paths: list[Path]) -> Iterator[dict]:
    """Rows of files in the conversations format, checked (raises DataFormatError naming the file and line)."""
    for path in paths:
        for number, row in _read_rows(path):
            problem = _conversation_row_problem(row)
            if problem:
                raise DataFormatError(f"{path}: line {number}: {problem}; each line must be a JSON object with "
                                      "'conversation_id' and 'conversations' [{role, content}]")
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


def check_data_file(path: Path, fmt: str, conversations_format: bool) -> str:
    """A cheap look at a data file's first rows (for validate): '' when it looks usable, else what is wrong."""
    try:
        if conversations_format:
            for _ in _take(read_conversation_jsonl([path]), DETECT_LINES):
                pass
        else:
            _file_format(path, fmt)
    except DataFormatError as error:
        return str(error)
    return ""
