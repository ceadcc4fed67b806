"""Where a training worker gets the base model's outputs for a batch (`train.features`):

- `OnlineTarget`: the frozen base model in this worker, run forward for every batch;
- `CachedTarget`: the capture stage's feature cache (data/feature_cache.py), read back by sequence index; no base
  model in this worker, only its embeddings and the LM head's draft rows;
- `StreamedTarget` (training/streamed.py): the feature servers compute each batch's features when the worker asks,
  ahead of need; no base model in this worker and nothing on disk.

All give the same `TargetOutputs` (draft/target_outputs.py) for the same batch (tested), plus the embedding the draft
reads its tokens with and the LM head's draft rows (`draft_head`). Training and the held-out simulation read
through the same interface: `for_split(folder)` is the same source serving another split's sequences, and
`expect(micro_batches)` tells a source which batches come next (the streamed one asks for them ahead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol

import torch

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.target import base_forward
from eagle_recipes.draft.target_outputs import TargetOutputs
from eagle_recipes.training.config import TrainConfig


class TargetSource(Protocol):
    embed: torch.nn.Embedding
    draft_head: torch.nn.Linear  # the base LM head's rows of the draft vocabulary
    final_norm: torch.nn.Module | None  # holds the base model's final norm weight

    def outputs(self, input_ids: torch.Tensor, loss_mask: torch.Tensor, padding: torch.Tensor,
                indices: list[int]) -> TargetOutputs: ...

    def expect(self, upcoming: Iterable[list[int]]) -> None: ...

    def for_split(self, sequences_folder: str, features_folder: str) -> "TargetSource": ...


def target_outputs(target, input_ids, loss_mask, padding, aux_ids, draft_ids, algorithm: str) -> TargetOutputs:
    """One frozen forward of the base model: the features the draft reads, the target's next-token logits over
    the draft vocabulary (`draft_ids`: the target ids of the draft tokens), and whether the target's top token
    over its whole vocabulary is a draft token (where it is not, the draft cannot be right: no loss there)."""
    forward = base_forward(target, input_ids, padding, algorithm, aux_ids)
    with torch.no_grad():
        full_logits = target.get_output_embeddings()(forward.final)
        in_draft = torch.zeros(full_logits.shape[-1], dtype=torch.bool, device=full_logits.device)
        in_draft[draft_ids] = True
        return TargetOutputs(input_ids=input_ids, loss_mask=loss_mask, padding=padding,
                             draft_logits=full_logits.index_select(-1, draft_ids),
                             top_in_draft=in_draft[full_logits.argmax(-1)], hidden=forward.hidden)


class OnlineTarget:
    """The frozen base model in this worker, run forward for every batch."""

    def __init__(self, config: TrainConfig, draft_config: DraftConfig, draft_ids: torch.Tensor,
                 device: torch.device, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM

        self.target = AutoModelForCausalLM.from_pretrained(config.model_path, dtype=dtype).to(device).eval()
        self.target.requires_grad_(False)
        self.draft_config, self.draft_ids = draft_config, draft_ids
        self.embed = self.target.get_input_embeddings()
        head = self.target.get_output_embeddings().weight.index_select(0, draft_ids)
        self.draft_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False, device=device, dtype=head.dtype)
        self.draft_head.weight.data.copy_(head)
        self.draft_head.requires_grad_(False)
        self.final_norm = getattr(self.target.base_model, "norm", None)

    def outputs(self, input_ids, loss_mask, padding, indices: list[int]) -> TargetOutputs:
        return target_outputs(self.target, input_ids, loss_mask, padding, self.draft_config.aux_layer_ids,
                              self.draft_ids, self.draft_config.algorithm)

    def expect(self, upcoming: Iterable[list[int]]) -> None:
        pass  # each batch is computed when it is asked for

    def for_split(self, sequences_folder: str, features_folder: str) -> "OnlineTarget":
        return self  # the base model in this worker serves any sequence


class CachedTarget:
    """The capture stage's feature cache: features read back by sequence index; no base model in this worker."""

    def __init__(self, config: TrainConfig, draft_config: DraftConfig, draft_ids: torch.Tensor,
                 device: torch.device, dtype: torch.dtype, sequences_folder: str = "", features_folder: str = ""):
        """`sequences_folder`, `features_folder`: another split's sequences and cache (default: the training
        split's, config.data_folder and config.capture_dir)."""
        from eagle_recipes.data.feature_cache import FeatureStore

        self.store = FeatureStore(Path(features_folder or config.capture_dir), Path(sequences_folder or config.data_folder),
                                  Path(config.capture_dir))
        self.embed, self.draft_head, self.final_norm = self.store.head_modules(draft_ids, device, dtype)
        self.in_draft = self.store.draft_mask(draft_ids, device)
        self.config, self.draft_ids, self.device, self.dtype = config, draft_ids, device, dtype

    def outputs(self, input_ids, loss_mask, padding, indices: list[int]) -> TargetOutputs:
        hidden, final, top = self.store.batch(indices, input_ids.shape[1], self.device, self.dtype)
        with torch.no_grad():
            return TargetOutputs(input_ids=input_ids, loss_mask=loss_mask, padding=padding,
                                 draft_logits=self.draft_head(final), top_in_draft=self.in_draft[top], hidden=hidden)

    def expect(self, upcoming: Iterable[list[int]]) -> None:
        pass  # each batch is read when it is asked for

    def for_split(self, sequences_folder: str, features_folder: str) -> "CachedTarget":
        """The cache the capture stage wrote for another split (the held-out one's)."""
        return CachedTarget(self.config, None, self.draft_ids, self.device, self.dtype, sequences_folder,
                            features_folder)
