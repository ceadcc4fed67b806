"""The tokenize stage: every conversation rendered and tokenized once, on Ray Data actors, into sequence shards.

The shards hold exactly the sequences one process makes from the same conversations (same sequences, same order,
both splits), from synthesize's shards or from the recipe's own data.conversations; a run killed during tokenizing
keeps every whole shard and redoes the rest, ending equal to an uninterrupted run; calibrate counts from them."""

from __future__ import annotations

import json

import numpy as np

import pytest

from eagle_recipes.data.chat import load_tokenizer
from eagle_recipes.data.formats import HELD_OUT_SPLIT, TRAIN_SPLIT
from eagle_recipes.data.sequences import Sequences, tokenize
from eagle_recipes.recipe.training_data import conversation_sources, iter_conversations
from eagle_recipes.manifest import IN_PROGRESS, MANIFEST
from eagle_recipes.recipe import load_recipe
from eagle_recipes.run_folder import HELD_OUT_FOLDER, SEQUENCES_FOLDER, SYNTHESIZE, RunFolder
from tests.helpers import override_recipe, run_stage, small_conversations, small_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out



def _recipe(folder, model, conversations_file: bool = False, actors: int = 0):
    """The small recipe with a held-out split; `actors`: Ray Data actors tokenizing (0: the stage's own task, as
    for any data under 64 MiB)."""
    recipe = small_recipe(folder, model, extra=f"[tokenize]\nactors = {actors}\n")
    overrides = ["data.holdout_fraction=0.2"]
    if conversations_file:  # the recipe's own conversations: no synthesize stage
        rows = [{"conversation_id": f"c{i}", **row} for i, row in enumerate(small_conversations(50))]
        (folder / "conversations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        overrides += ["data.prompts=[]", 'data.conversations=["conversations.jsonl"]']
    return override_recipe(recipe, *overrides)


def _in_one_process(recipe_path, model) -> dict[str, Sequences]:
    """What one process makes of the same conversations: the sequences each split must hold."""
    recipe = load_recipe(recipe_path)
    run = RunFolder(recipe.output_dir)
    upstream = {SYNTHESIZE: run.stage(SYNTHESIZE)} if run.stage(SYNTHESIZE).exists() else {}
    tokenizer = load_tokenizer(model)
    return {split: tokenize(tokenizer, [row["conversations"] for row in
                                        iter_conversations(conversation_sources(recipe, upstream), recipe, split)],
                            recipe.train.max_seq_len)
            for split in (TRAIN_SPLIT, HELD_OUT_SPLIT)}


def _assert_same(ours: Sequences, theirs: Sequences) -> None:
    assert ours.count == theirs.count > 0 and np.array_equal(ours.offsets, theirs.offsets)
    for index in range(ours.count):
        assert np.array_equal(ours.ids_of(index), theirs.ids_of(index)), index
        assert np.array_equal(ours.mask_of(index), theirs.mask_of(index)), index


def test_the_shards_hold_what_one_process_makes_of_the_conversations(tmp_path, tiny_llama, ray_session):
    """On two Ray Data actors (synthesize's 5 shards) and in the stage's own task (the recipe's own rows)."""
    for name, own in (("synthesized", False), ("own", True)):
        folder = tmp_path / name
        folder.mkdir()
        recipe = _recipe(folder, tiny_llama, conversations_file=own, actors=0 if own else 2)
        if not own:
            run_stage(recipe, "synthesize")
        result = run_stage(recipe, "tokenize")
        run = RunFolder(folder / "out")
        expected = _in_one_process(recipe, tiny_llama)
        train, held_out = Sequences.load(run.sequences), Sequences.load(run.sequences / HELD_OUT_FOLDER)
        _assert_same(train, expected[TRAIN_SPLIT])
        _assert_same(held_out, expected[HELD_OUT_SPLIT])
        # synthesize's shards of 8 conversations, or the recipe's own 50 rows staged as one shard
        assert len(train.shards) == result["counts"]["sequence_shards"] == (1 if own else 5), name
        assert result["counts"]["sequences"] == train.count and result["counts"]["holdout_sequences"] == held_out.count
        assert result["metrics"]["actors"] == (0 if own else 2)
    counts = run_stage(recipe, "calibrate")["counts"]  # the own-conversations run: counted from its shards
    assert counts["tokens_counted"] == int(sum(train.mask_of(i).sum() for i in range(train.count)))
    assert counts["holdout_tokens"] == int(sum(held_out.mask_of(i).sum() for i in range(held_out.count)))


def test_a_run_killed_during_tokenizing_resumes_by_shard(tmp_path, tiny_llama, ray_session):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    for folder in (reference, interrupted):
        folder.mkdir()
        recipe = _recipe(folder, tiny_llama, actors=2 if folder == reference else 0)
        run_stage(recipe, "synthesize")
        run_stage(recipe, "tokenize")
    out = RunFolder(interrupted / "out").sequences
    # what a kill leaves: no manifest, the in-progress marker, one shard never written, one without its last file
    fingerprint = json.loads((out / MANIFEST).read_text())["fingerprint"]
    (out / MANIFEST).unlink()
    (out / IN_PROGRESS).write_text(fingerprint)
    shards = sorted((out / SEQUENCES_FOLDER).iterdir())
    assert len(shards) == 5
    for path in shards[1].iterdir():
        path.unlink()
    shards[1].rmdir()
    (out / HELD_OUT_FOLDER / SEQUENCES_FOLDER / shards[3].name / "pad_id.npy").unlink()
    result = run_stage(_recipe(interrupted, tiny_llama, actors=2), "tokenize")
    assert result["counts"]["resumed_from_earlier_run"] == 3 and result["counts"]["tokenized_this_run"] == 2
    for split in ("", HELD_OUT_FOLDER):
        _assert_same(Sequences.load(out / split), Sequences.load(RunFolder(reference / "out").sequences / split))
