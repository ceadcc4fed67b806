"""Models the tests build with known behaviour.

`build_permutation_target`: a Llama whose next token depends only on the current one (next = perm[current]).
Every block's output projection is zero, so the residual stream stays the one-hot token embedding, and the LM
head is the permutation matrix.

`build_copy_draft`: an EAGLE-3 draft that predicts perm[input token] at every draft step, so every draft is
accepted (tau = k + 1). Its attention must look only at the current position: queries and keys are a large
constant on the slowest rotary pair, so q.k = c^2 cos((t - s) theta) peaks sharply at s = t. `wrong` lists
tokens whose prediction is deliberately wrong, for a draft with partial acceptance.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 64  # tokens t0..t63; one more id (64) is <eos>, never predicted
HIDDEN = 64


def zero_but_norms(module: torch.nn.Module) -> None:
    """Every weight zero, every norm weight one: a module that computes nothing until its weights are set."""
    for parameter in module.parameters():
        parameter.zero_()
    for name, parameter in module.named_parameters():
        if name.endswith("norm.weight"):
            parameter.fill_(1.0)


def permutation(seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(VOCAB, generator=generator).tolist()


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)} | {"<eos>": VOCAB}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>",
                                        unk_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(folder)


def greedy_continuation(perm: list[int], prompt: list[int], tokens: int) -> list[int]:
    """The permutation target's greedy output after `prompt` (next = perm[current]), prompt included."""
    ids = list(prompt)
    for _ in range(tokens):
        ids.append(perm[ids[-1]])
    return ids


def build_permutation_target(folder: Path, perm: list[int], layers: int = 8) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB + 1, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=HIDDEN, max_position_embeddings=1024,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=VOCAB, pad_token_id=VOCAB,
                         bos_token_id=VOCAB)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        zero_but_norms(model)
        model.model.embed_tokens.weight[:VOCAB] = torch.eye(HIDDEN)
        for token, following in enumerate(perm):
            model.lm_head.weight[following, token] = 1.0
    model.generation_config.eos_token_id = VOCAB
    model.save_pretrained(folder)
    _tokenizer(folder)
    return folder


def build_copy_draft(target_folder: Path, perm: list[int], wrong: set[int] = frozenset(), sharpness: float = 1000.0,
                     qk_norm: bool = False, algorithm: str = "eagle3"):
    """(draft module, DraftConfig, d2t) for the permutation target; draft vocabulary = the 64 real tokens.

    qk_norm: a Qwen3-style layer whose projections alone give blunt queries and keys (sharpness 1) and whose q/k
    norms make them sharp again: the draft copies only where the engine applies those norms.
    algorithm "peagle": the same weights as a P-EAGLE draft whose mask token is <eos> (a zero embedding): its first
    position copies as EAGLE-3's does, its mask slots see no token and propose id 0 (all logits zero)."""
    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft, build_draft_config

    facts = BaseModelFacts.from_config(json.loads((target_folder / "config.json").read_text()))
    # slowest rotary pair turns ~0.02 rad per position: theta^(-(d-2)/d) = 0.02
    rope_theta = 0.02 ** (-HIDDEN / (HIDDEN - 2))
    mask = {"mask_token_id": VOCAB} if algorithm == "peagle" else {}
    config = build_draft_config(algorithm, {"intermediate_size": 64, "norm_before_residual": True,
                                            "rope_theta": rope_theta, "qk_norm": qk_norm, **mask}, facts, VOCAB)
    norm_gain = sharpness / 8  # RMS-normed, a one-hot head vector is 8 (sqrt(64)) at its slot
    sharpness = 1.0 if qk_norm else sharpness
    draft = build_draft(config)
    slow = HIDDEN // 2 - 1  # the rotary pair (slow, slow + d/2) with the lowest frequency
    with torch.no_grad():
        zero_but_norms(draft)
        attention = draft.midlayer.self_attn
        # input = cat(norm(embed) = 8 * onehot, norm(hidden)); the sum over the embed half is 8 for every token
        if qk_norm:
            attention.q_norm.weight.fill_(norm_gain)
            attention.k_norm.weight.fill_(norm_gain)
        attention.q_proj.weight[slow, :HIDDEN] = sharpness / 8
        attention.k_proj.weight[slow, :HIDDEN] = sharpness / 8
        attention.v_proj.weight[:, :HIDDEN] = 10 * torch.eye(HIDDEN)  # value = 80 * onehot(current token)
        attention.o_proj.weight.copy_(torch.eye(HIDDEN))
        for token, following in enumerate(perm):
            predicted = perm[(token + 1) % VOCAB] if token in wrong and perm[(token + 1) % VOCAB] != following \
                else following
            draft.lm_head.weight[predicted, token] = 1.0
    d2t = torch.zeros(VOCAB, dtype=torch.int64)  # draft id i is target id i
    return draft, config, d2t


def export_copy_draft(folder: Path, target_folder: Path, perm: list[int], wrong: set[int] = frozenset(),
                      qk_norm: bool = False, algorithm: str = "eagle3") -> Path:
    from eagle_recipes.draft.export import export_layout, write_draft
    from eagle_recipes.draft.vocab import mapping_from_ids

    draft, config, _ = build_copy_draft(target_folder, perm, wrong, qk_norm=qk_norm, algorithm=algorithm)
    mapping = mapping_from_ids(list(range(VOCAB)), VOCAB + 1)
    report = write_draft(folder, draft.state_dict(), config, export_layout(algorithm, "flat"), "float32",
                         str(target_folder), 3, mapping.d2t, mapping.t2d)
    assert report.ok, report.lines()
    return folder


def prompts_file(path: Path, count: int = 6, length: int = 5, seed: int = 1) -> Path:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        tokens = torch.randint(0, VOCAB, (length,), generator=generator).tolist()
        rows.append({"prompt": " ".join(f"t{t}" for t in tokens)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_dflash_copy_draft(target_folder: Path, perm: list[int], wrong: set[int] = frozenset(), block_size: int = 4):
    """(DFlash draft, DraftConfig, d2t) for the permutation target whose every mask slot proposes perm[bonus token]:
    right in slot 1 (unless the bonus token is in `wrong`), wrong in the later slots (their truth is perm applied
    twice or more). Its queries are zero, so attention is uniform; only the bonus slot has a value (the mask token
    is <eos>, whose embedding is zero; the context's values are zero), and the LM head maps it through perm."""
    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft, build_draft_config

    facts = BaseModelFacts.from_config(json.loads((target_folder / "config.json").read_text()))
    config = build_draft_config("dflash", {"intermediate_size": 64, "num_hidden_layers": 1, "block_size": block_size,
                                           "mask_token_id": VOCAB}, facts, VOCAB)
    draft = build_draft(config)
    with torch.no_grad():
        zero_but_norms(draft)
        attention = draft.layers[0].self_attn
        attention.v_proj.weight.copy_(10 * torch.eye(HIDDEN))  # value = 80 * onehot(bonus token)
        attention.o_proj.weight.copy_(torch.eye(HIDDEN))
        for token, following in enumerate(perm):
            draft.lm_head.weight[perm[(token + 1) % VOCAB] if token in wrong else following, token] = 1.0
    return draft, config, torch.zeros(VOCAB, dtype=torch.int64)


def build_eagle1_copy_draft(target_folder: Path, perm: list[int], wrong: set[int] = frozenset()):
    """(EAGLE-1 draft, DraftConfig, d2t) for the permutation target whose every step predicts perm[input token]
    (perm[input token + 1] for a token in `wrong`): its fc copies the token's one-hot embedding (the feature half
    is zero), attention and MLP add nothing, and the base model's LM head (the permutation) maps that to the next
    token. A chain step reads its own proposal, so every draft is accepted but where a `wrong` token is drafted
    from. EAGLE-1 drafts over the whole vocabulary: d2t is zero for its 65 ids."""
    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft, build_draft_config

    facts = BaseModelFacts.from_config(json.loads((target_folder / "config.json").read_text()))
    config = build_draft_config("eagle1", {"intermediate_size": 64}, facts, VOCAB + 1)
    draft = build_draft(config)
    with torch.no_grad():
        zero_but_norms(draft)
        for token in range(VOCAB):
            draft.fc.weight[(token + 1) % VOCAB if token in wrong else token, token] = 1.0
    return draft, config, torch.zeros(config.draft_vocab_size, dtype=torch.int64)


def simulated_and_reference_acceptance(folder: Path, perm: list[int], draft, config, d2t, correctness):
    """(simulated, reference) acceptance of a draft on the permutation target: the reference decoder drafting and
    verifying, against `correctness(draft, outputs, embed, k, lm_head)` over the target's greedy continuation
    replayed as chain drafting (what learning_curve.py's `simulated` engine and train.simulate_every compute)."""
    from transformers import LlamaForCausalLM

    from eagle_recipes.draft.reference import reference_generate, simulate_greedy_chain
    from eagle_recipes.training.target_source import target_outputs

    target = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    k, max_tokens, prompt = 3, 40, [5, 9, 17]
    _, expected = reference_generate(target, draft, config, d2t, prompt, k, max_tokens, eos_ids={VOCAB})
    ids = torch.tensor([greedy_continuation(perm, prompt, max_tokens + k + 1)])
    outputs = target_outputs(target, ids, torch.ones_like(ids), torch.ones_like(ids), config.aux_layer_ids,
                             torch.arange(config.draft_vocab_size) + d2t, config.algorithm)
    correct = correctness(draft, outputs, target.get_input_embeddings(), k, target.get_output_embeddings())[:, 0]
    simulated = simulate_greedy_chain(correct, len(prompt) - 1, ids.shape[1], stop=len(prompt) + max_tokens)
    return simulated, expected

