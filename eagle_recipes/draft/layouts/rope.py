"""Long context: the rope scaling a draft is served with, and the checks behind `validate` and `inspect`."""

from __future__ import annotations

from eagle_recipes.draft.config import DraftConfig


def with_long_context(config: DraftConfig, rope_scaling: dict) -> DraftConfig:
    """The config to serve beyond the training length: the rope scaling written, max_position_embeddings raised
    to factor x the original length (the weights stay as trained)."""
    if not rope_scaling:
        return config
    from dataclasses import replace

    original = rope_scaling.get("original_max_position_embeddings", config.max_position_embeddings)
    return replace(config, rope_scaling=dict(rope_scaling),
                   max_position_embeddings=int(rope_scaling["factor"] * original))


ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3", "longrope")  # the rope scalings vLLM and SGLang build
ROPE_TYPES_NEEDING_LENGTH = ("yarn", "llama3")  # they scale relative to original_max_position_embeddings


def rope_scaling_problems(kind, factor, original) -> list[tuple[str, str]]:
    """(field, what is wrong) for a rope scaling engines would not build as meant; field "" is the whole table.
    The one check behind `validate` (a recipe's export.rope_scaling) and `inspect` (a config.json's)."""
    problems = []
    if kind not in ROPE_TYPES:
        problems.append(("rope_type", f"rope_type is {kind!r}; engines build {', '.join(ROPE_TYPES)}"))
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        problems.append(("factor", f"factor is {factor!r}, expected a number >= 1"))
    if kind in ROPE_TYPES_NEEDING_LENGTH and (isinstance(original, bool) or not isinstance(original, int)):
        problems.append(("", f"{kind} rope scaling lacks original_max_position_embeddings"))
    return problems


def rope_problems(facts: dict) -> list[str]:
    """What an engine would misread in a config's rope scaling (empty when there is none or it is sound)."""
    rope = facts.get("rope_scaling")
    if not rope:
        return []
    if not isinstance(rope, dict):
        return [f"config.json: rope_scaling is {type(rope).__name__}, expected a table"]
    kind = rope.get("rope_type", rope.get("type"))  # transformers still reads the older `type`
    if kind == "default":  # no scaling
        return []
    return [f"config.json: rope_scaling.{text}" if field else f"config.json: {text}"
            for field, text in rope_scaling_problems(kind, rope.get("factor"),
                                                     rope.get("original_max_position_embeddings"))]
