"""Reasoning models: the chat template's own switch (`enable_thinking`) reaches every rendering, and <think>
blocks are kept or stripped in what synthesis stores. The template is written here in Qwen3's manner (the Hub is
not reachable), on SmolLM2's real tokenizer."""

from __future__ import annotations

import pytest

from eagle_recipes.data.chat import load_tokenizer, render_batch, strip_thinking
from eagle_recipes.engines.generation import Reply, Sampling
from eagle_recipes.graph.plan import compile_plan
from eagle_recipes.recipe import load_recipe
from eagle_recipes.stages.synthesize import regenerate
from tests.helpers import recipe_head, write_recipe

# Qwen3's switch: with thinking off, the generation prompt carries an empty think block the model never writes
SWITCH_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}")
CONVERSATION = [{"role": "user", "content": "What is two plus two?"},
                {"role": "assistant", "content": "Four."}]


@pytest.fixture(scope="module")
def template_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "switch.jinja"
    path.write_text(SWITCH_TEMPLATE)
    return str(path)


def test_the_switch_reaches_the_template_when_set_and_only_then(smollm2_path, template_file):
    default = load_tokenizer(smollm2_path, template_file)
    off = load_tokenizer(smollm2_path, template_file, thinking=False)
    prompt = CONVERSATION[:1]
    assert "<think>" not in default.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert off.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # a caller's own kwarg cannot undo the recipe's switch: every rendering sees the same one
    assert "<think>" in off.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True,
                                                enable_thinking=True)


def test_with_thinking_off_the_loss_mask_covers_the_answer_not_the_injected_think_block(smollm2_path,
                                                                                         template_file):
    off = load_tokenizer(smollm2_path, template_file, thinking=False)
    rendered = render_batch(off, [CONVERSATION])[0]
    masked = off.decode([t for t, m in zip(rendered.input_ids, rendered.loss_mask) if m])
    assert masked == "Four.<|im_end|>"  # what the model generates at serving; the empty block is the template's
    assert "<think>" in off.decode(rendered.input_ids)


@pytest.mark.parametrize("text,expected", [
    ("<think>\nadd them\n</think>\n\nFour.", "Four."),
    ("Four.", "Four."),
    ("<think>a</think>Four. <think>b</think>Really.", "Four. Really."),
    ("<think>cut off while thinki", ""),  # the answer never came
])
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


class ThinkingEngine:
    """Stands in for a reasoning model (none runs on this CPU in test time): answers every prompt with a think
    block, and records the prompts it was given."""

    def __init__(self):
        self.prompts: list[list[int]] = []

    def generate(self, prompt_token_ids, sampling):
        self.prompts += prompt_token_ids
        return [Reply("<think>\nadd them\n</think>\n\nFour.", False, 9) for _ in prompt_token_ids]


@pytest.mark.parametrize("drop,stored", [(False, "<think>\nadd them\n</think>\n\nFour."), (True, "Four.")])
def test_synthesis_keeps_or_strips_the_thinking(smollm2_path, template_file, drop, stored):
    tokenizer = load_tokenizer(smollm2_path, template_file)
    engine = ThinkingEngine()
    conversation = {"conversation_id": "c", "conversations": CONVERSATION + [
        {"role": "user", "content": "And three plus three?"}]}
    rows = regenerate(engine, tokenizer, [conversation], Sampling(0.0, 1.0, 16, 0), "", drop_thinking=drop)
    replies = [t["content"] for t in rows[0]["conversations"] if t["role"] == "assistant"]
    assert replies == [stored, stored]
    # the second round's prompt shows the first answer as stored
    assert (tokenizer.decode(engine.prompts[1]).count("add them") == 1) == (not drop)


def test_the_disable_switch_refingerprints_exactly_what_renders_or_generates(tmp_path, smollm2_config):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    head = recipe_head("reasoning", "some/model", config="config.json") + '[train]\nfeatures = "cached"\n'
    keep = compile_plan(load_recipe(write_recipe(tmp_path, head)))
    disable = compile_plan(load_recipe(write_recipe(tmp_path, head + '[synthesis]\nreasoning = "disable"\n',
                                                    name="disable.toml")))
    changed = {s.name for s in keep.stages if s.fingerprint != disable.stage(s.name).fingerprint}
    assert changed == {"synthesize", "tokenize", "calibrate", "capture", "train", "export", "evaluate"}
    explicit = compile_plan(load_recipe(write_recipe(tmp_path, head + '[synthesis]\nreasoning = "keep"\n',
                                                     name="keep.toml")))
    assert [s.fingerprint for s in explicit.stages] == [s.fingerprint for s in keep.stages]  # the default
