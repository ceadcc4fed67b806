"""The drafter contract: what every drafter in the registry (eagle_recipes/draft/drafters/, `DRAFTERS`) must do,
one test per clause, each parametrized over every registered drafter. A drafter added to the registry is checked
here without a line of its own but one: its copy draft on the permutation target (tests/builders.py, named in
`COPY_DRAFTS`), which the acceptance tests fail without.

Every drafter builds from its defaults; its objective trains (a loss per unroll position, gradients on every draft
parameter and on nothing else, the same loss for the same draw, a loss that falls on a tiny batch); `propose` returns
k draft-vocabulary ids and `correctness` a [k, B, T] bool whose first slot says where `propose`'s first proposal is
the base model's top token; the simulation's acceptance equals the reference decoder's on the permutation target
(tests/builders.py); the export loads back as the same draft; `validate` refuses more draft tokens than it drafts.
Slow: a recipe trains and exports it through the graph, and real vLLM (the CPU build) serves its export with the
reference decoder's acceptance, losslessly.

What is one drafter's own stays in its file: the training forward against its engine's pass (tests/test_ttt.py for
the chains, tests/test_dflash.py, tests/test_peagle.py), its export's own fields, EAGLE-3's layouts and variants in
vLLM (tests/test_spec_decode.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pytest
import torch

from eagle_recipes.draft.config import BaseModelFacts, DraftConfig, default_aux_layer_ids
from eagle_recipes.draft.drafters import DRAFTERS, Drafter, build_draft, build_draft_config
from eagle_recipes.draft.target_outputs import TargetOutputs
from eagle_recipes.training.target_source import target_outputs
from tests.builders import (
    build_copy_draft,
    build_dflash_copy_draft,
    build_eagle1_copy_draft,
    build_permutation_target,
    permutation,
    prompts_file,
    simulated_and_reference_acceptance,
)
from tests.helpers import PROJECT, recipe_head, write_recipe
from tests.test_ttt import SEQ, VOCAB, _tiny_target

NAMES = list(DRAFTERS)
each_drafter = pytest.mark.parametrize("name", NAMES)

DRAFT_VOCAB = 48  # a calibrated drafter's vocabulary on the tiny target: every other token
MASK_TOKEN = 5
K = 3  # draft tokens per verify step, where a drafter drafts that many

# the copy draft of each drafter on the permutation target (tests/builders.py): (target folder, perm, wrong) ->
# (draft, DraftConfig, d2t), predicting the target's next token but after a `wrong` token
COPY_DRAFTS = {
    "eagle3": build_copy_draft,
    "eagle1": build_eagle1_copy_draft,
    "dflash": build_dflash_copy_draft,
    "peagle": partial(build_copy_draft, algorithm="peagle"),
}
WRONG = set(range(0, 64, 3))  # tokens after which a copy draft is made wrong: partial acceptance


def copy_draft(name: str, target_folder, perm):
    if name not in COPY_DRAFTS:
        pytest.fail(f"no copy draft of {name} on the permutation target: add one to tests/builders.py and "
                    "COPY_DRAFTS")
    return COPY_DRAFTS[name](target_folder, perm, wrong=WRONG)


@dataclass
class Tiny:
    """A drafter's random draft over the tiny random target, and one sequence's base-model outputs."""

    name: str
    target: torch.nn.Module  # frozen
    draft: torch.nn.Module
    config: DraftConfig
    outputs: TargetOutputs
    draft_ids: torch.Tensor  # the target ids of the draft vocabulary
    lm_head: torch.nn.Linear  # the base model's head over the draft vocabulary, as training passes it (EAGLE-1's)

    @property
    def spec(self) -> Drafter:
        return DRAFTERS[self.name]

    @property
    def embed(self) -> torch.nn.Embedding:
        return self.target.get_input_embeddings()


def tiny(name: str) -> Tiny:
    spec = DRAFTERS[name]
    target = _tiny_target().requires_grad_(False)
    draft_vocab = DRAFT_VOCAB if spec.calibrated_vocab else VOCAB
    mask = {"mask_token_id": MASK_TOKEN} if spec.needs_mask_token else {}
    config = build_draft_config(name, {"intermediate_size": 96, **mask}, BaseModelFacts.from_config(
        target.config.to_dict()), draft_vocab)
    torch.manual_seed(1)
    draft = spec.build_model(config)
    draft_ids = torch.arange(draft_vocab) * (VOCAB // draft_vocab)
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (1, SEQ))
    outputs = target_outputs(target, ids, torch.ones_like(ids), torch.ones_like(ids), config.aux_layer_ids,
                             draft_ids, name)
    lm_head = torch.nn.Linear(config.hidden_size, draft_vocab, bias=False).requires_grad_(False)
    lm_head.weight.copy_(target.get_output_embeddings().weight.index_select(0, draft_ids))
    return Tiny(name, target, draft, config, outputs, draft_ids, lm_head)


def k_for(case: Tiny, ttt_steps: int = K) -> int:
    """K, or fewer where the drafter drafts fewer (its max_draft_tokens)."""
    most = case.spec.max_draft_tokens(case.config, ttt_steps)
    return K if most is None else min(K, most)


# ---------------------------------------------------------------- what it declares, and what it builds
@each_drafter
def test_its_registry_entry_is_complete(name):
    spec = DRAFTERS[name]
    assert spec.name == name and spec.title and spec.vllm_method
    assert all((spec.build_model, spec.objective, spec.propose, spec.correctness)), spec
    # the fields the architecture reads of every drafter, and of one that reads aux states or a mask token
    assert {"num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings"} <= set(spec.defaults)
    assert ("aux_layer_ids" in spec.defaults) == spec.reads_aux_states
    assert ("mask_token_id" in spec.defaults) == spec.needs_mask_token
    if spec.layout is not None:
        from eagle_recipes.draft.layouts import algorithm_of

        assert algorithm_of(spec.layout) == name


@each_drafter
def test_it_builds_from_its_defaults(name):
    """No override: its defaults, what it forces and the base model's facts make a config it builds, at full size
    (SmolLM2-135M's facts, on the meta device) and small."""
    spec = DRAFTERS[name]
    smol = json.loads((PROJECT / "catalog/smollm2/configs/SmolLM2-135M-Instruct.json").read_text())
    for facts, draft_vocab, device in ((smol, 4096, "meta"),
                                      ({**smol, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                                        "head_dim": 16, "intermediate_size": 128, "vocab_size": 500}, 100, "cpu")):
        base = BaseModelFacts.from_config(facts)
        config = build_draft_config(name, {}, base, draft_vocab)
        assert config.algorithm == name and config.draft_vocab_size == draft_vocab
        assert config.hidden_size == base.hidden_size and config.vocab_size == base.vocab_size
        assert all(getattr(config, key) == value for key, value in spec.defaults.items()
                   if value is not None and key not in spec.forced and key != "aux_layer_ids"), config
        assert all(getattr(config, key) == value for key, value in spec.forced.items())
        if spec.reads_aux_states:
            assert config.aux_layer_ids == tuple(default_aux_layer_ids(base.num_hidden_layers))
        with torch.device(device):
            draft = spec.build_model(config)
        assert isinstance(draft, torch.nn.Module) and type(build_draft(config)) is type(draft)
        assert sum(p.numel() for p in draft.parameters()) > 0


# ---------------------------------------------------------------- training
def _train_config(tmp_path, case: Tiny):
    """The TrainConfig the train stage builds from a recipe's [train] table at the schema's defaults (but 3 TTT
    steps)."""
    import shutil

    from eagle_recipes.recipe import load_recipe
    from eagle_recipes.stages.train import train_config

    shutil.copy(PROJECT / "catalog/smollm2/configs/SmolLM2-135M-Instruct.json", tmp_path / "config.json")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    recipe = load_recipe(write_recipe(tmp_path, recipe_head("drafter", "some/model", config="config.json")
                                      + f'[draft]\nalgorithm = "{case.name}"\n[train]\nttt_steps = 3\n'
                                      + "[eval]\nnum_speculative_tokens = 3\n"))
    return train_config(recipe, model_path="", draft_config=case.config.to_dict(), vocab_file="", data_folder="",
                        checkpoint_dir="", metrics_file="", capture_dir="")


@each_drafter
def test_its_objective_trains_the_draft_and_nothing_else(name, tmp_path):
    """One forward of its objective: a loss per position of its unroll (each counting label positions, the first
    most), the same for the same draw (a resumed run recomputes it), gradients on every draft parameter and not on
    the base model's embeddings; a few optimizer steps on the batch lower it (the labels sharpened: the random
    target's own distributions are nearly flat, their entropy a floor close to the first loss)."""
    from eagle_recipes.training.loop import unroll_positions

    case = tiny(name)
    case.outputs.draft_logits = case.outputs.draft_logits * 10
    config = _train_config(tmp_path, case)
    draft = case.draft.train()
    objective = case.spec.objective(draft, config)
    assert isinstance(objective, torch.nn.Module)  # DDP and FSDP wrap it: one forward per backward
    loss, stats = objective(case.outputs, case.embed, case.lm_head, 0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert len(stats) == unroll_positions(config)
    assert all(s.counted > 0 for s in stats) and stats[0].counted > stats[-1].counted, stats
    again, _ = objective(case.outputs, case.embed, case.lm_head, 0)
    assert float(again.detach()) == pytest.approx(float(loss.detach()))
    loss.backward()
    assert case.embed.weight.grad is None
    unreached = [n for n, p in draft.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unreached, unreached
    optimizer = torch.optim.AdamW(draft.parameters(), lr=1e-2)
    first = float(loss.detach())
    for _ in range(10):
        optimizer.zero_grad()
        loss, _ = objective(case.outputs, case.embed, case.lm_head, 0)
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.8 * first, (first, float(loss.detach()))


# ---------------------------------------------------------------- drafting, and its teacher-forced twin
@each_drafter
def test_propose_returns_k_draft_vocabulary_ids(name):
    case = tiny(name)
    draft, outputs = case.draft.eval(), case.outputs
    draft_to_target = case.draft_ids if case.spec.calibrated_vocab else None  # as the reference decoder maps them
    most = case.spec.max_draft_tokens(case.config, 4)
    with torch.no_grad():
        for n in (1, 6, SEQ - 1):
            for k in sorted({1, k_for(case, 4), most or 5}):
                proposals = case.spec.propose(draft, case.embed, case.lm_head, outputs.hidden[:, :n],
                                              outputs.input_ids[0, 1: n + 1].tolist(), k, draft_to_target)
                assert len(proposals) == k and all(isinstance(p, int) for p in proposals), proposals
                assert all(0 <= p < case.config.draft_vocab_size for p in proposals), proposals
                assert proposals == case.spec.propose(draft, case.embed, case.lm_head, outputs.hidden[:, :n],
                                                      outputs.input_ids[0, 1: n + 1].tolist(), k, draft_to_target)


@each_drafter
def test_correctness_is_k_by_b_by_t_and_its_first_slot_is_what_propose_proposes_first(name):
    """After verified position t the first proposal reads the verified positions and the bonus token alone (no
    earlier proposal), so the teacher-forced correctness of slot 0 is exactly whether `propose`'s first proposal is
    the base model's top token there: labels are set to that proposal at even t and to another token at odd t."""
    case = tiny(name)
    draft, outputs = case.draft.eval(), case.outputs
    k = k_for(case)
    first = []
    with torch.no_grad():
        for t in range(SEQ - 2):
            first.append(case.spec.propose(draft, case.embed, case.lm_head, outputs.hidden[:, : t + 1],
                                           outputs.input_ids[0, 1: t + 2].tolist(), k)[0])
        outputs.draft_logits = torch.zeros_like(outputs.draft_logits)
        for t, proposal in enumerate(first):
            label = proposal if t % 2 == 0 else (proposal + 1) % case.config.draft_vocab_size
            outputs.draft_logits[0, t + 1, label] = 1.0
        outputs.top_in_draft = torch.ones_like(outputs.top_in_draft)
        correct = case.spec.correctness(draft, outputs, case.embed, k, case.lm_head)
    assert correct.dtype == torch.bool and tuple(correct.shape) == (k, 1, SEQ), correct.shape
    assert correct[0, 0, : SEQ - 2].tolist() == [t % 2 == 0 for t in range(SEQ - 2)]


@pytest.fixture(scope="module")
def permutation_target(tmp_path_factory):
    perm = permutation()
    return build_permutation_target(tmp_path_factory.mktemp("perm") / "target", perm), perm


@each_drafter
def test_simulated_acceptance_equals_the_reference_decoder(name, permutation_target):
    """Its teacher-forced correctness over the target's greedy continuation, replayed as greedy decoding, gives the
    reference decoder's acceptance counts exactly (what train.simulate_every and learning_curve.py's `simulated`
    engine rely on), on its copy draft made partly wrong."""
    folder, perm = permutation_target
    draft, config, d2t = copy_draft(name, folder, perm)
    simulated, expected = simulated_and_reference_acceptance(folder, perm, draft, config, d2t,
                                                             DRAFTERS[name].correctness)
    assert 0 < simulated.accepted_per_position[0] < simulated.drafts  # partial acceptance: not a trivial case
    assert simulated.accepted < len(simulated.accepted_per_position) * simulated.drafts
    assert (simulated.drafts, simulated.accepted_per_position) == (expected.drafts, expected.accepted_per_position)


# ---------------------------------------------------------------- export and validate
@each_drafter
def test_its_export_loads_back_as_the_same_draft(name, tmp_path):
    """Written in its own layout (EAGLE-3: the default flat one), checked by inspect, read back by
    load_draft_module: the same weights, architecture and draft vocabulary, drafting the same tokens; its card
    offers the serving commands of exactly the engines that serve it."""
    from eagle_recipes.draft.export import export_layout, speculative_config, write_draft
    from eagle_recipes.draft.layouts import load_draft_module
    from eagle_recipes.draft.vocab import mapping_from_ids

    case = tiny(name)
    spec, draft = case.spec, case.draft.eval()
    layout = export_layout(name, "flat")
    mapping = mapping_from_ids(case.draft_ids.tolist(), VOCAB)
    k = k_for(case)
    report = write_draft(tmp_path / "draft", draft.state_dict(), case.config, layout, "float32", "base", k,
                         mapping.d2t, mapping.t2d)
    assert report.ok and report.layout == layout, report.lines()
    assert "vllm" in report.engines and (spec.sglang_algorithm is not None or "sglang" not in report.engines)
    readme = (tmp_path / "draft" / "README.md").read_text()
    assert "vllm serve base --speculative-config" in readme
    assert json.dumps(speculative_config(name))[1:-1] in readme  # its method and the options vLLM needs for it
    assert ("sglang.launch_server" in readme) == ("sglang" in report.engines)
    loaded, loaded_config, d2t = load_draft_module(tmp_path / "draft")
    assert type(loaded) is type(draft)
    assert loaded_config == replace(case.config, target_num_layers=0)  # the base model's depth is not written
    original = draft.state_dict()
    assert set(loaded.state_dict()) == set(original)
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[key]), key
    if spec.calibrated_vocab:
        assert torch.equal(d2t, mapping.d2t)
    outputs = case.outputs
    with torch.no_grad():
        for n in (3, 9):
            args = (case.embed, case.lm_head, outputs.hidden[:, :n], outputs.input_ids[0, 1: n + 1].tolist(), k)
            assert spec.propose(loaded, *args) == spec.propose(draft, *args)


@each_drafter
def test_validate_refuses_more_draft_tokens_than_it_drafts(name, tmp_path, smollm2_config):
    """A drafter that drafts a bounded number of tokens in one pass (max_draft_tokens) has a recipe asking for more
    refused, naming what to raise; up to that bound, and for a chain any k, validates."""
    from eagle_recipes.recipe import RecipeError, load_recipe

    spec = DRAFTERS[name]
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    config = build_draft_config(name, {}, BaseModelFacts.from_config(json.loads(smollm2_config.read_text())), 4096)
    most = spec.max_draft_tokens(config, 2)

    def recipe(k: int):
        return write_recipe(tmp_path, recipe_head("drafter", "some/model", config="config.json")
                            + f'[draft]\nalgorithm = "{name}"\n[train]\nttt_steps = 2\n'
                            f"[eval]\nenabled = false\nnum_speculative_tokens = {k}\n")

    load_recipe(recipe(most or 16))
    if most is None:
        return
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe(most + 1))
    grows = "train.ttt_steps" if spec.trains_by_unroll else "draft.overrides.block_size"
    message = str(error.value)
    assert "eval.num_speculative_tokens" in message and f"use at most {most}, or raise {grows}" in message, message


# ---------------------------------------------------------------- slow: the graph, and real vLLM
# draft.overrides that keep a drafter's graph run small (none: its defaults)
SMALL_OVERRIDES = {"dflash": {"block_size": 4, "num_hidden_layers": 1}}


@pytest.fixture(scope="module")
def graph_folder(tmp_path_factory, tiny_llama, ray_session) -> Path:
    """One run folder every drafter's graph run shares: its synthesize and tokenize stages (and calibrate, for
    the drafters over a calibrated vocabulary) run once, for the first drafter, and are up to date for the rest;
    each drafter then trains and exports into it in turn (its own recipe file, the same output_dir)."""
    from tests.helpers import small_recipe

    folder = tmp_path_factory.mktemp("graph")
    small_recipe(folder, tiny_llama, steps=12, lr="0.003")
    return folder


@pytest.mark.slow
@each_drafter
def test_it_trains_and_exports_through_the_graph(name, graph_folder, tiny_llama):
    """The recipe's `draft.algorithm` through every stage of its plan (synthesize .. export): a loss per unroll
    position each step, the simulated tau every simulate_every steps, an export in its layout that inspect passes,
    with the recipe's overrides and (where it drafts from mask slots) the tokenizer's mask token, and a card
    serving it with its vLLM method."""
    from eagle_recipes.draft.export import export_layout, speculative_config
    from eagle_recipes.draft.inspect import inspect_draft
    from eagle_recipes.draft.layouts import load_draft_module
    from eagle_recipes.graph.plan import compile_plan
    from eagle_recipes.recipe import load_recipe
    from eagle_recipes.run_folder import RunFolder
    from tests.helpers import run_stage, write_recipe

    spec, overrides = DRAFTERS[name], SMALL_OVERRIDES.get(name, {})
    facts = BaseModelFacts.from_config(json.loads((Path(tiny_llama) / "config.json").read_text()))
    most = spec.max_draft_tokens(build_draft_config(name, overrides, facts, 300), 2)  # small_recipe: 2 TTT steps
    k = K if most is None else min(K, most)
    shared = graph_folder / "recipe.toml"
    recipe = write_recipe(graph_folder, shared.read_text(), f"{name}.toml", overrides=[
        f"draft.algorithm={name}", *(f"draft.overrides.{key}={value}" for key, value in overrides.items()),
        "train.simulate_every=6", "data.holdout_fraction=0.2", f"eval.num_speculative_tokens={k}"])
    for stage in compile_plan(load_recipe(recipe)).stages:
        if stage.status != "up to date":  # another drafter's run made it (same data, same settings)
            result = run_stage(recipe, stage.name)
    run = RunFolder(graph_folder / "out")
    _, exported, _ = load_draft_module(run.draft)
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    positions = spec.unroll_positions(exported, 2)  # one loss per unroll position
    assert len(rows) == 12 and all(len(r["loss"]) == positions for r in rows)
    assert [r["step"] for r in rows if "simulated_tau" in r] == [6, 12]
    layout = export_layout(name, "flat")
    report = inspect_draft(run.draft)
    assert report.ok and report.layout == layout and result["metrics"]["layout"] == layout, report.lines()
    assert exported.algorithm == name and all(getattr(exported, key) == value for key, value in overrides.items())
    if spec.needs_mask_token:
        assert exported.mask_token_id == 16  # SmolLM2's tokenizer: <empty_output>, its last unused special token
    assert json.dumps(speculative_config(name))[1:-1] in (run.draft / "README.md").read_text()


@pytest.fixture(scope="module")
def served_target(tmp_path_factory):
    import os

    from eagle_recipes.engines.placement import CPU_ENGINE_ENV
    from eagle_recipes.evaluation.prompt_sets import prompts_from_file

    os.environ.update(CPU_ENGINE_ENV)  # the settings every in-process CPU engine gets
    folder = tmp_path_factory.mktemp("served")
    perm = permutation()
    return build_permutation_target(folder / "target", perm), perm, prompts_from_file(prompts_file(
        folder / "prompts.jsonl"))


@pytest.mark.slow
@each_drafter
def test_vllm_serves_its_export_as_the_reference_decoder_drafts(name, served_target, tmp_path):
    """Its copy draft made partly wrong, exported in its layout and served by real vLLM with its speculative config:
    acceptance per position within rounding of the reference decoder's (none where the reference accepts none),
    tau within 0.15, and decoding lossless in both."""
    from eagle_recipes.draft.export import export_layout, speculative_config, write_draft
    from eagle_recipes.draft.vocab import mapping_from_ids
    from eagle_recipes.evaluation.reference_path import evaluate_reference
    from eagle_recipes.evaluation.vllm_path import evaluate_vllm
    from tests.builders import VOCAB as PERM_VOCAB

    target, perm, prompts = served_target
    spec = DRAFTERS[name]
    draft, config, _ = copy_draft(name, target, perm)
    most = spec.max_draft_tokens(config, K)
    k = K if most is None else min(K, most)
    mapping = mapping_from_ids(list(range(PERM_VOCAB)), PERM_VOCAB + 1) if spec.calibrated_vocab else None
    folder = tmp_path / name
    report = write_draft(folder, draft.state_dict(), config, export_layout(name, "flat"), "float32", str(target), k,
                         mapping and mapping.d2t, mapping and mapping.t2d)
    assert report.ok, report.lines()
    reference = evaluate_reference(str(target), folder, k, [prompts], 60)[prompts.name]
    vllm = evaluate_vllm(str(target), str(folder), speculative_config(name), k, [prompts], 60)[0][prompts.name]
    assert 0.4 < reference.per_position[0] < 0.95 and 1.3 < reference.acceptance_length < k + 0.7, reference
    for theirs, ours in zip(vllm.per_position, reference.per_position):
        assert abs(theirs - ours) < 0.1 and (ours > 0 or theirs == 0), (vllm, reference)
    assert abs(vllm.acceptance_length - reference.acceptance_length) < 0.15, (vllm, reference)
    assert vllm.lossless and reference.lossless, vllm.identical_outputs
    assert vllm.tokens_per_s_with_draft > 0 and vllm.tokens_per_s_target_alone > 0
