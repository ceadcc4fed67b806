"""DFlash: a drafter that proposes a whole block of tokens in one pass (block diffusion drafting, arXiv 2602.06036),
as vLLM serves it (`method = "dflash"`, vllm/model_executor/models/qwen3_dflash.py).

At a verify step whose last verified position is p, the block is [x_{p+1}, MASK x K] at positions p+1 .. p+1+K
(x_{p+1}: the token the base model just produced). It runs through Qwen3 decoder layers (q/k norms) whose queries
attend to
- the context: every verified position <= p, whose keys and values each layer projects from
  c = hidden_norm(fc(aux hidden states of the base model)) (no input norm on c), and
- the whole block, in both directions (no causal mask inside the block);
then the final norm and the LM head (the draft vocabulary's rows, `d2t` maps them back) give one proposal per mask
slot: x_{p+2} .. x_{p+1+K}, greedy. The context's aux states are the inputs of layers `aux_layer_ids` (HF's
`hidden_states[k]`, the same features EAGLE-3 reads; vLLM's `dflash_config.target_layer_ids` counts layer
outputs: k - 1).

Training (the reference trainers' objective): anchors a sampled in each sequence, the block [x_a, MASK ...] at
positions a .. a+B-1 seeing the context at positions < a; slot k (1 .. B-1) learns the base model's distribution
for x_{a+k} (its logits at a+k-1), weighted exp(-(k-1)/gamma). One forward covers every anchor of a sequence;
`block_forward` with one anchor and the context cut at the anchor is the same computation one block at a time,
which is how the reference decoder drafts (the oracle test compares the two).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.layers import MLP, RMSNorm, _rotary


class DFlashAttention(nn.Module):
    def __init__(self, config: DraftConfig):
        super().__init__()
        hidden = config.hidden_size
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def _heads(self, projection: nn.Linear, x: torch.Tensor, count: int, norm: RMSNorm | None) -> torch.Tensor:
        shaped = projection(x).view(*x.shape[:-1], count, self.head_dim)
        return (norm(shaped) if norm is not None else shaped).transpose(-3, -2)  # [..., heads, T, d]

    def forward(self, x: torch.Tensor, block_rotary, context: torch.Tensor, context_rotary,
                visible: torch.Tensor) -> torch.Tensor:
        """x [N, B, H] the blocks (normed), context [T, H] (c), visible [N, T] which context each block sees."""
        q = self._heads(self.q_proj, x, self.heads, self.q_norm)  # [N, heads, B, d]
        k = self._heads(self.k_proj, x, self.kv_heads, self.k_norm)
        v = self._heads(self.v_proj, x, self.kv_heads, None)
        q, k = apply_rotary_pos_emb(q, k, *block_rotary)
        context_k = self._heads(self.k_proj, context, self.kv_heads, self.k_norm)[None]  # [1, kv, T, d]
        context_v = self._heads(self.v_proj, context, self.kv_heads, None)[None]
        context_k, _ = apply_rotary_pos_emb(context_k, context_k, *context_rotary)
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
        context_k, context_v = context_k.repeat_interleave(repeat, 1), context_v.repeat_interleave(repeat, 1)
        scale = 1.0 / math.sqrt(self.head_dim)
        context_scores = torch.matmul(q, context_k.transpose(2, 3)) * scale  # [N, heads, B, T]
        context_scores = context_scores.masked_fill(~visible[:, None, None, :], torch.finfo(context_scores.dtype).min)
        block_scores = torch.matmul(q, k.transpose(2, 3)) * scale  # [N, heads, B, B]: both directions
        weights = torch.softmax(torch.cat([context_scores, block_scores], -1).float(), -1).to(q.dtype)
        length = context_k.shape[2]
        out = torch.matmul(weights[..., :length], context_v) + torch.matmul(weights[..., length:], v)
        return self.o_proj(out.transpose(1, 2).reshape(*x.shape[:2], -1))


class DFlashLayer(nn.Module):
    def __init__(self, config: DraftConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DFlashAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)

    def forward(self, hidden, block_rotary, context, context_rotary, visible):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), block_rotary, context, context_rotary, visible)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DFlashDraft(nn.Module):
    def __init__(self, config: DraftConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.fc = nn.Linear(len(config.aux_layer_ids) * hidden, hidden, bias=False)
        self.hidden_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.layers = nn.ModuleList(DFlashLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(hidden, config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False)
        self.rotary = _rotary(config)

    def decoder_layers(self) -> list[DFlashLayer]:
        return list(self.layers)

    def context(self, aux_hidden: torch.Tensor) -> torch.Tensor:
        """c = hidden_norm(fc(aux states)) of every context position: [T, n_aux H] -> [T, H]."""
        return self.hidden_norm(self.fc(aux_hidden))

    def block_forward(self, context: torch.Tensor, block_embeds: torch.Tensor, block_positions: torch.Tensor,
                      visible: torch.Tensor) -> torch.Tensor:
        """Logits [N, B, K] of N blocks (embeds [N, B, H] at positions [N, B]) over the context c [T, H] (at
        positions 0 .. T-1), block n seeing the context where visible[n] is true."""
        block_rotary = self.rotary(block_embeds, block_positions)
        context_positions = torch.arange(context.shape[0], device=context.device)[None]
        context_rotary = self.rotary(context[None], context_positions)
        hidden = block_embeds
        for layer in self.layers:
            hidden = layer(hidden, block_rotary, context, context_rotary, visible)
        return self.lm_head(self.norm(hidden))


# ---------------------------------------------------------------- blocks at anchors (training and simulation)
def anchor_blocks(anchors: torch.Tensor, block_size: int) -> torch.Tensor:
    """[N, B] positions of the blocks: anchor a's block runs over a .. a+B-1."""
    return anchors[:, None] + torch.arange(block_size, device=anchors.device)[None]


def context_visibility(anchors: torch.Tensor, length: int) -> torch.Tensor:
    """[N, T]: the block at anchor a sees the context strictly before a (position a's own state does not exist
    yet when its token is drafted from)."""
    return torch.arange(length, device=anchors.device)[None] < anchors[:, None]


def blocks_at(draft: DFlashDraft, aux_hidden: torch.Tensor, input_ids: torch.Tensor, anchors: torch.Tensor,
              embed: nn.Embedding) -> torch.Tensor:
    """Logits [N, B, K] of the blocks [x_a, MASK ...] at every anchor of one sequence (aux [T, F], ids [T])."""
    block_size, length = draft.config.block_size, input_ids.shape[0]
    tokens = torch.full((anchors.shape[0], block_size), draft.config.mask_token_id, dtype=torch.long,
                        device=input_ids.device)
    tokens[:, 0] = input_ids[anchors]
    with torch.no_grad():
        embeds = embed(tokens)
    return draft.block_forward(draft.context(aux_hidden), embeds.to(aux_hidden.dtype),
                               anchor_blocks(anchors, block_size), context_visibility(anchors, length))


def sample_anchors(loss_mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Up to `count` anchors of one sequence, uniformly without replacement among the positions whose next token is
    a label, sorted."""
    candidates = torch.nonzero(loss_mask[1:].bool()).squeeze(-1)
    chosen = torch.randperm(candidates.numel(), generator=generator)[:count]
    return candidates[chosen.to(candidates.device)].sort().values


# ---------------------------------------------------------------- the reference drafter
@torch.no_grad()
def draft_block(draft: DFlashDraft, aux_hidden: torch.Tensor, bonus: int, k: int, embed: nn.Embedding) -> list[int]:
    """k proposals (draft-vocabulary ids) after verified tokens whose aux states are `aux_hidden` [n, F]: the block
    [bonus, MASK x k] at positions n .. n+k over the whole context, one block, as the engine drafts."""
    n = aux_hidden.shape[0]
    block = torch.tensor([[bonus] + [draft.config.mask_token_id] * k])
    positions = torch.arange(n, n + k + 1)[None]
    logits = draft.block_forward(draft.context(aux_hidden), embed(block).to(aux_hidden.dtype), positions,
                                 torch.ones(1, n, dtype=torch.bool))
    return logits[0, 1:].argmax(-1).tolist()


def block_loss_weights(block_size: int, gamma: float) -> torch.Tensor:
    """Weights of slots 1 .. B-1: exp(-(k-1)/gamma) (later slots are accepted only after earlier ones)."""
    return torch.exp(-torch.arange(block_size - 1, dtype=torch.float32) / gamma)



# ---------------------------------------------------------------- the training objective
def dflash_loss(draft: DFlashDraft, target, embed: nn.Embedding, anchors_per_sequence: int, gamma: float,
                loss_kind: str, generator: torch.Generator):
    """(loss, [StepStats] per mask slot) of one batch: every sequence's blocks at up to `anchors_per_sequence`
    anchors. Slot k's label is the base model's distribution at a+k-1 (for x_{a+k}); it counts where x_{a+k} is a
    label inside the sequence, and carries loss only where the base model's top token is a draft token (as for
    EAGLE-3). The loss is the exp(-(k-1)/gamma)-weighted mean of the slots' losses."""
    from eagle_recipes.draft.losses import StepStats, position_losses

    slots = draft.config.block_size - 1
    loss_sums = torch.zeros(slots, device=target.hidden.device)
    trainable_counts = torch.zeros(slots, device=target.hidden.device)
    correct, counted = torch.zeros(slots, dtype=torch.long), torch.zeros(slots, dtype=torch.long)
    for row in range(target.input_ids.shape[0]):
        length = int(target.padding[row].sum())
        ids, mask = target.input_ids[row, :length], target.loss_mask[row, :length]
        anchors = sample_anchors(mask, anchors_per_sequence, generator)
        if anchors.numel() == 0:
            continue
        logits = blocks_at(draft, target.hidden[row, :length], ids, anchors, embed)[:, 1:]
        predicted = anchors[:, None] + torch.arange(1, slots + 1, device=anchors.device)[None]  # x_{a+k}
        inside = predicted < length
        clipped = predicted.clamp(max=length - 1)
        labels = target.draft_logits[row, clipped - 1]
        is_counted = inside & mask[clipped].bool()
        is_trainable = is_counted & target.top_in_draft[row, clipped - 1]
        per_position = position_losses(logits, labels, loss_kind)
        loss_sums = loss_sums + (per_position * is_trainable).sum(0)
        trainable_counts = trainable_counts + is_trainable.sum(0)
        correct += ((logits.argmax(-1) == labels.argmax(-1)) & is_trainable).sum(0).cpu()
        counted += is_counted.sum(0).cpu()
    slot_losses = loss_sums / trainable_counts.clamp(min=1)
    weights = block_loss_weights(draft.config.block_size, gamma).to(slot_losses.device)
    total = (weights * slot_losses).sum() / weights.sum()
    stats = [StepStats(float(slot_losses[k].detach()), int(correct[k]), int(counted[k])) for k in range(slots)]
    return total, stats


class DFlashObjective(nn.Module):
    """The block objective as one forward (DDP/FSDP see one forward per backward). `draw` seeds the anchors: a
    function of the step, so a resumed run samples the same anchors."""

    def __init__(self, draft: DFlashDraft, anchors_per_sequence: int, gamma: float, loss_kind: str, seed: int):
        super().__init__()
        self.draft, self.anchors_per_sequence, self.gamma = draft, anchors_per_sequence, gamma
        self.loss_kind, self.seed = loss_kind, seed

    def forward(self, target, embed: nn.Embedding, lm_head=None, draw: int = 0):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
        return dflash_loss(self.draft, target, embed, self.anchors_per_sequence, self.gamma, self.loss_kind,
                           generator)


@torch.no_grad()
def dflash_correctness(draft: DFlashDraft, target, embed: nn.Embedding, k: int) -> torch.Tensor:
    """[k, 1, T] bool, as draft/ttt.py's `step_correctness`: after verified position t, the block [x_{t+1}, MASK x
    k] proposes x_{t+2+j} in slot j+1: is it the base model's own top token (teacher forced; with the base model's
    greedy continuation as the sequence this is what greedy speculative decoding checks)."""
    length = int(target.padding[0].sum())
    ids = target.input_ids[0, :length]
    anchors = torch.arange(1, length, device=ids.device)  # anchor t+1 for every verified position t
    tokens = torch.full((anchors.shape[0], k + 1), draft.config.mask_token_id, dtype=torch.long, device=ids.device)
    tokens[:, 0] = ids[anchors]
    embeds = embed(tokens).to(target.hidden.dtype)
    logits = draft.block_forward(draft.context(target.hidden[0, :length]), embeds, anchor_blocks(anchors, k + 1),
                                 context_visibility(anchors, length))[:, 1:]  # [T-1, k, K]
    correct = torch.zeros(k, 1, target.input_ids.shape[1], dtype=torch.bool)
    for j in range(k):
        label_positions = anchors + j  # the base model's logits at a+j predict x_{a+j+1}
        inside = label_positions < length - 1
        clipped = label_positions.clamp(max=length - 1)
        labels = target.draft_logits[0, clipped]
        hit = (logits[:, j].argmax(-1) == labels.argmax(-1)) & target.top_in_draft[0, clipped] & inside
        correct[j, 0, : length - 1] = hit.cpu()
    return correct
