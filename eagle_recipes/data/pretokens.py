"""Count tokens without tokenizing every word: split text into pre-tokens exactly as the fast tokenizer does, and
tokenize each distinct pre-token once.

A byte-level BPE tokenizer (GPT-2, SmolLM2, Llama 3, Qwen) first cuts out its added tokens, then splits the rest
with one regular expression, then runs BPE inside each piece; no merge crosses a piece. So the token counts of a
text are the sum, over its pieces, of (times the piece occurs) x (tokens of the piece), and natural text repeats
its pieces a lot: a few thousand conversations have a few thousand distinct pieces but a million tokens.

Only tokenizer pipelines whose split we reproduce exactly are handled (no normalizer; a ByteLevel pre-tokenizer
with its GPT-2 expression, or a Split expression followed by ByteLevel without one; BPE without dropout; added
tokens without strip flags); `PreTokenizer.for_tokenizer` returns None for anything else and callers tokenize the
ordinary way. Tests compare both ways on adversarial text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np

# GPT-2's expression, as the `tokenizers` ByteLevel pre-tokenizer applies it when use_regex is true
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# the same expression for pure-ASCII text, which the standard library's faster `re` can run (\p{L} and \p{N}
# restricted to ASCII; \s spelled out because `re` also counts \x1c-\x1f as space and Unicode does not)
_ASCII_SPACE = r" \t\n\x0b\x0c\r"
GPT2_ASCII_PATTERN = (rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_ASCII_SPACE}A-Za-z0-9]+"""
                      rf"""|[{_ASCII_SPACE}]+(?![^{_ASCII_SPACE}])|[{_ASCII_SPACE}]+""")


def bincount(token_ids: np.ndarray, vocab_size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Counts per token id over the model's vocabulary; ids the model cannot produce (a tokenizer's added tokens
    beyond its embedding table) are not counted."""
    inside = token_ids < vocab_size
    kept_weights = None if weights is None else weights[inside]
    return np.bincount(token_ids[inside], weights=kept_weights, minlength=vocab_size).astype(np.int64)


@dataclass
class PreTokenizer:
    """Splits text into the pieces the tokenizer runs BPE on; added tokens stay whole pieces."""

    pattern: str
    added_tokens: list[str]
    ascii_pattern: str | None = None
    gapless: bool = False  # every character matches the expression (so no text lies between two matches)
    _compiled: object = field(init=False, repr=False)
    _compiled_ascii: object = field(init=False, repr=False)
    _added: re.Pattern | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import regex

        self._compiled = regex.compile(self.pattern)
        self._compiled_ascii = re.compile(self.ascii_pattern) if self.ascii_pattern else None
        longest_first = sorted(self.added_tokens, key=len, reverse=True)
        self._added = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if longest_first else None

    @classmethod
    def for_tokenizer(cls, tokenizer) -> PreTokenizer | None:
        """The splitter of a fast tokenizer, or None when its pipeline is not one this module reproduces."""
        from tokenizers.models import BPE

        backend = tokenizer.backend_tokenizer
        # each component's own state: serializing the whole tokenizer would copy its vocabulary and merges
        if backend.normalizer is not None or not isinstance(backend.model, BPE) or backend.model.dropout:
            return None
        added = list(backend.get_added_tokens_decoder().values())
        if any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added):
            return None
        contents = [t.content for t in added]
        pre = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer is not None else {}
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
            return cls(GPT2_PATTERN, contents, GPT2_ASCII_PATTERN, gapless=True)
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
        if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[0].get("behavior") == "Isolated"
                and not steps[0].get("invert") and "Regex" in steps[0].get("pattern", {})
                and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True)
                and not steps[1].get("add_prefix_space")):
            # a Split keeps the text between matches as pieces too; a final catch-all alternative means there is none
            return cls(steps[0]["pattern"]["Regex"], contents)
        return None

    def _regex_for(self, text: str):
        return self._compiled_ascii if self._compiled_ascii is not None and text.isascii() else self._compiled

    def _split(self, part: str, offset: int) -> list[tuple[str, int, int]]:
        """Pieces of text without added tokens; like a `Split`, text between two matches is a piece too."""
        result, position = [], 0
        for match in self._regex_for(part).finditer(part):
            if match.start() > position:
                result.append((part[position:match.start()], offset + position, offset + match.start()))
            result.append((match.group(), offset + match.start(), offset + match.end()))
            position = match.end()
        if position < len(part):
            result.append((part[position:], offset + position, offset + len(part)))
        return result

    def _parts(self, text: str) -> list[tuple[str, int, bool]]:
        """`text` cut at its added tokens: (part, start, is_added_token)."""
        if self._added is None:
            return [(text, 0, False)]
        parts, position = [], 0
        for index, part in enumerate(self._added.split(text)):
            if part:
                parts.append((part, position, bool(index % 2)))
            position += len(part)
        return parts

    def pieces(self, text: str) -> list[str]:
        """Every piece of `text` (in no particular order: counting does not need one)."""
        if self._added is None:
            parts, result = [text], []
        else:
            parts = self._added.split(text)  # text, added token, text, ...
            result = parts[1::2]
            parts = parts[0::2]
        find = self._regex_for(text).findall
        for part in parts:
            found = find(part)
            if not self.gapless and sum(map(len, found)) != len(part):  # text between matches is a piece too
                found = [piece for piece, _, _ in self._split(part, 0)]
            result += found
        return result

    def pieces_with_spans(self, text: str) -> list[tuple[str, int, int]]:
        """Every piece of `text` with its character start and end."""
        result: list[tuple[str, int, int]] = []
        for part, start, is_added in self._parts(text):
            result += [(part, start, start + len(part))] if is_added else self._split(part, start)
        return result


@dataclass
class PieceVocabulary:
    """Token ids of each distinct piece seen so far (the BPE work, done once per distinct piece)."""

    tokenizer: object
    ids: dict[str, np.ndarray] = field(default_factory=dict)

    def learn(self, pieces) -> None:
        new = [p for p in set(pieces) if p not in self.ids]
        if new:
            encodings = self.tokenizer.backend_tokenizer.encode_batch(new, add_special_tokens=False)
            self.ids.update((piece, np.asarray(e.ids, dtype=np.int64)) for piece, e in zip(new, encodings))

    def count_tokens(self, piece_counts: dict[str, int], vocab_size: int) -> np.ndarray:
        """Token counts, given how often each piece occurs."""
        if not piece_counts:
            return np.zeros(vocab_size, dtype=np.int64)
        token_ids = [self.ids[p] for p in piece_counts]
        repeats = np.repeat(np.fromiter(piece_counts.values(), dtype=np.int64, count=len(piece_counts)),
                            [len(t) for t in token_ids])
        return bincount(np.concatenate(token_ids), vocab_size, weights=repeats)
