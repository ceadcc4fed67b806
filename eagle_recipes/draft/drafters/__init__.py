"""The drafters: one module per drafter (eagle3.py, eagle1.py, dflash.py, peagle.py) declaring what it is (base.py's
`Drafter`), the registry that finds one by name (registry.py), and a draft's architecture for a recipe
(architecture.py). The rest of the code imports from here."""

from eagle_recipes.draft.drafters.architecture import DEFAULTS, build_draft_config, valid_fields
from eagle_recipes.draft.drafters.base import Drafter
from eagle_recipes.draft.drafters.registry import DEFAULT_DRAFTER, DRAFTERS, build_draft, drafter, reads_aux_states

__all__ = ["DEFAULTS", "DEFAULT_DRAFTER", "DRAFTERS", "Drafter", "build_draft", "build_draft_config", "drafter",
           "reads_aux_states", "valid_fields"]
