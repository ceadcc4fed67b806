"""A trained draft in our own names: what the train stage leaves and export reads (`train/trained/`).

`model.safetensors` (our module's parameter names, draft/model.py), `draft_config.json` (the DraftConfig) and the
vocabulary mapping `d2t.pt` / `t2d.pt` (draft/vocab.py). Written as one atomic folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.vocab import VocabMapping, load_mapping, save_mapping
WEIGHTS = "model.safetensors"
CONFIG = "draft_config.json"


@dataclass
class TrainedDraft:
    state: dict[str, torch.Tensor]
    config: DraftConfig
    mapping: VocabMapping


def write_trained(folder: Path, state: dict[str, torch.Tensor], config: DraftConfig, mapping: VocabMapping) -> None:
    from safetensors.torch import save_file

    from eagle_recipes.atomic import atomic_path, write_json

    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / WEIGHTS)
        write_json(tmp / CONFIG, config.to_dict())
        save_mapping(mapping, tmp)


def read_trained(folder: Path) -> TrainedDraft:
    from safetensors.torch import load_file

    config = DraftConfig.from_dict(json.loads((folder / CONFIG).read_text(encoding="utf-8")))
    return TrainedDraft(load_file(str(folder / WEIGHTS)), config, load_mapping(folder))
