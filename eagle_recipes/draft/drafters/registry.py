"""The drafters by name: every part of the code asks this registry what a `draft.algorithm` reads, needs and is
served as, instead of comparing names. A new drafter is a module in this folder, a line below and the schema's
enum."""

from __future__ import annotations

from eagle_recipes.draft.drafters.base import Drafter
from eagle_recipes.draft.drafters.dflash import DFLASH
from eagle_recipes.draft.drafters.eagle1 import EAGLE1
from eagle_recipes.draft.drafters.eagle3 import EAGLE3
from eagle_recipes.draft.drafters.peagle import PEAGLE

DRAFTERS: dict[str, Drafter] = {d.name: d for d in (EAGLE3, EAGLE1, DFLASH, PEAGLE)}
DEFAULT_DRAFTER = EAGLE3.name  # the schema's default draft.algorithm


def drafter(name: str) -> Drafter:
    """The drafter a recipe's draft.algorithm names (the schema's enum keeps names to these)."""
    return DRAFTERS[name]


def reads_aux_states(algorithm: str) -> bool:
    """Whether the drafter reads the base model's aux hidden states (else its final state only)."""
    return drafter(algorithm).reads_aux_states


def build_draft(config):
    """The draft's nn.Module for a DraftConfig, built by its drafter."""
    return drafter(config.algorithm).build_model(config)
