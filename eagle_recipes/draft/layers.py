"""Building blocks every drafter shares: RMSNorm, the gated MLP, and the draft's rotary embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from eagle_recipes.draft.config import DraftConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _rotary(config: DraftConfig) -> LlamaRotaryEmbedding:
    """The draft's rotary embedding. `rope_theta` and `rope_scaling` are the keywords both transformers 4.x and
    5.x read (5.x folds them into `rope_parameters`); tests check the frequencies against the config."""
    scaling = None
    if config.rope_scaling:
        scaling = dict(config.rope_scaling)
        scaling["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    llama = LlamaConfig(hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
                        head_dim=config.head_dim, max_position_embeddings=config.max_position_embeddings,
                        rope_theta=config.rope_theta, rope_scaling=scaling)
    return LlamaRotaryEmbedding(llama)
