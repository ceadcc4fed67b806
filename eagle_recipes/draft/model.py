"""The EAGLE-3 and EAGLE-1 drafts as plain nn.Modules, with the training-time-test (TTT) unroll.

Parameter names: EAGLE-3 `fc`, `midlayer.*` (first decoder layer), `layers.{i}.*` (extra layers, from 0),
`norm`, `lm_head`; EAGLE-1 `fc`, `layers.{i}.*`. Serving layouts number EAGLE-3's extra layers from 1:
draft/layouts/ renames in both directions (`to_layout`, `from_layout`).

TTT attention: at unroll step j the query of column t attends to the step-0 keys at positions <= t (causal) and
to its own keys from steps 1..j (the diagonal), as the draft sees at inference; the caller rotates step j at
position t + j (see draft/ttt.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.layers import MLP, RMSNorm, _rotary


class TTTCache:
    """Keys and values of earlier unroll steps: step 0 (attended causally) and steps 1.. (diagonal only)."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []


class Attention(nn.Module):
    def __init__(self, config: DraftConfig, input_size: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.q_proj = nn.Linear(input_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(input_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(input_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)
        if config.qk_norm:  # Qwen3: each head's query and key RMS-normed before the rotary embedding
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: TTTCache,
                padding: torch.Tensor | None, query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """`query_positions`: the original positions of x's columns when later unroll steps run on a subset
        of positions (None: x holds every position)."""
        batch, seq_len, _ = x.shape
        q = self.q_proj(x).view(batch, seq_len, self.heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq_len, self.kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(batch, seq_len, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        cache.keys.append(k)
        cache.values.append(v)
        scale = 1.0 / math.sqrt(self.head_dim)
        # step-0 keys, causal (and not padding)
        scores = torch.matmul(q, cache.keys[0].transpose(2, 3)) * scale
        key_len = cache.keys[0].shape[2]
        key_positions = torch.arange(key_len, device=x.device)
        rows = key_positions[:seq_len] if query_positions is None else query_positions
        mask = key_positions[None, :] <= rows[:, None]  # causal over the step-0 keys
        if padding is not None:
            mask = mask & padding[:, None, None, :].bool()
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        # keys of later steps at the same position: one extra score per step
        diagonal = [(q * key).sum(-1, keepdim=True) * scale for key in cache.keys[1:]]
        weights = torch.softmax(torch.cat([scores, *diagonal], dim=-1).float(), dim=-1).to(q.dtype)
        out = torch.matmul(weights[..., :key_len], cache.values[0])
        for i, value in enumerate(cache.values[1:]):
            out = out + weights[..., key_len + i: key_len + i + 1] * value
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq_len, -1))


class DecoderLayer(nn.Module):
    """A Llama decoder layer. The first EAGLE-3 layer reads cat(norm(embedding), norm(hidden)) (2H wide);
    the first EAGLE-1 layer has no input norm (its input is the fc output)."""

    def __init__(self, config: DraftConfig, kind: str):
        super().__init__()
        self.kind = kind  # "eagle3-first" | "eagle1-first" | "plain"
        eps = config.rms_norm_eps
        width = 2 * config.hidden_size if kind == "eagle3-first" else config.hidden_size
        if kind != "eagle1-first":
            self.input_layernorm = RMSNorm(config.hidden_size, eps)
        if kind == "eagle3-first":
            self.hidden_norm = RMSNorm(config.hidden_size, eps)
        self.norm_before_residual = config.norm_before_residual
        self.self_attn = Attention(config, width)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor, embeds: torch.Tensor | None, cos, sin, cache: TTTCache,
                padding: torch.Tensor | None, query_positions: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "eagle3-first":
            normed = self.hidden_norm(hidden)
            residual = normed if self.norm_before_residual else hidden
            x = torch.cat([self.input_layernorm(embeds), normed], dim=-1)
        elif self.kind == "eagle1-first":
            residual, x = hidden, hidden
        else:
            residual, x = hidden, self.input_layernorm(hidden)
        hidden = residual + self.self_attn(x, cos, sin, cache, padding, query_positions)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class EagleDraft(nn.Module):
    """Shared unroll: `step` runs the decoder stack once on (token embedding, hidden) for every position."""

    config: DraftConfig
    regresses_features = False  # the training loss also regresses the base model's next feature (EAGLE-1)

    def __init__(self, config: DraftConfig):
        super().__init__()
        self.config = config
        self.rotary = _rotary(config)

    def decoder_layers(self) -> list[DecoderLayer]:
        raise NotImplementedError

    def next_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the next draft step reads of this step's output (the output itself, unless norm_output)."""
        return hidden

    def first_hidden(self, features: torch.Tensor) -> torch.Tensor:
        """What the first draft step reads of the base model's features."""
        return features

    def later_inputs(self, embeds: torch.Tensor, hidden: torch.Tensor,
                     embed: nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """What draft step j >= 1 reads, given the next tokens' embeddings and step j - 1's output: in a chain
        (EAGLE-1, EAGLE-3) both; a parallel draft (draft/peagle.py) its mask slot's instead."""
        return embeds, self.next_hidden(hidden)

    def head(self, hidden: torch.Tensor, base_head: nn.Linear | None) -> torch.Tensor:
        """A step's output -> logits (over the draft vocabulary, or through the base model's head)."""
        raise NotImplementedError

    def step(self, embeds: torch.Tensor, hidden: torch.Tensor, position_ids: torch.Tensor,
             caches: list[TTTCache], padding: torch.Tensor | None,
             query_positions: torch.Tensor | None = None) -> torch.Tensor:
        cos, sin = self.rotary(hidden, position_ids)
        for layer, cache in zip(self.decoder_layers(), caches):
            hidden = layer(hidden, embeds, cos, sin, cache, padding, query_positions)
        return hidden


class Eagle3Draft(EagleDraft):
    def __init__(self, config: DraftConfig):
        super().__init__(config)
        hidden, aux = config.hidden_size, len(config.aux_layer_ids)
        if config.norm_before_fc:  # vLLM's `input_norm`: one RMSNorm over the concatenated aux states
            self.input_norm = RMSNorm(aux * hidden, config.rms_norm_eps)
        if config.fc_norm:  # one RMSNorm per aux state
            self.fc_norm = nn.ModuleList(RMSNorm(hidden, config.rms_norm_eps) for _ in range(aux))
        self.fc = nn.Linear(aux * hidden, hidden, bias=False)
        self.midlayer = DecoderLayer(config, "eagle3-first")
        self.layers = nn.ModuleList(DecoderLayer(config, "plain") for _ in range(config.num_hidden_layers - 1))
        self.norm = RMSNorm(hidden, config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False)

    def decoder_layers(self) -> list[DecoderLayer]:
        return [self.midlayer, *self.layers]

    def fuse(self, aux_hidden: torch.Tensor) -> torch.Tensor:
        """The target's aux hidden states, concatenated in ascending layer order (3H) -> H (normed first as
        EAGLE-3.1 configures it: the whole concatenation, then each state, as vLLM applies them)."""
        if self.config.norm_before_fc:
            aux_hidden = self.input_norm(aux_hidden)
        if self.config.fc_norm:
            chunks = aux_hidden.chunk(len(self.fc_norm), dim=-1)
            aux_hidden = torch.cat([norm(chunk) for norm, chunk in zip(self.fc_norm, chunks)], dim=-1)
        return self.fc(aux_hidden)

    def next_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden) if self.config.norm_output else hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))

    def first_hidden(self, features: torch.Tensor) -> torch.Tensor:
        return self.fuse(features)

    def head(self, hidden: torch.Tensor, base_head: nn.Linear | None) -> torch.Tensor:
        return self.logits(hidden)


class Eagle1Draft(EagleDraft):
    """EAGLE-1: fc(cat(embedding, target feature)) -> decoder layers -> the next feature; the target's own
    LM head turns features into tokens (it is not part of the draft)."""

    regresses_features = True

    def __init__(self, config: DraftConfig):
        super().__init__(config)
        hidden = config.hidden_size
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        self.layers = nn.ModuleList(DecoderLayer(config, "eagle1-first" if i == 0 else "plain")
                                    for i in range(config.num_hidden_layers))

    def decoder_layers(self) -> list[DecoderLayer]:
        return list(self.layers)

    def head(self, hidden: torch.Tensor, base_head: nn.Linear | None) -> torch.Tensor:
        return base_head(hidden)

    def step(self, embeds, hidden, position_ids, caches, padding, query_positions=None):
        return super().step(embeds, self.fc(torch.cat([embeds, hidden], dim=-1)), position_ids, caches, padding,
                            query_positions)
