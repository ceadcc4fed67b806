"""Input formats: ShareGPT, OpenAI chat, the seed's, prompt-only; JSONL and Parquet; bad rows skipped and counted."""

from __future__ import annotations

import json

import pytest

from eagle_recipes.data.formats import DataFormatError, detect_format, load_conversations, merge_consecutive
from eagle_recipes.data.sources import FileSource


def load_files(paths, **options):
    """load_conversations over files, as data.prompts names them."""
    return load_conversations([FileSource(p, f"data.prompts.{i}") for i, p in enumerate(paths)], **options)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_sharegpt_with_system_and_mixed_roles(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": "c1", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
        {"from": "human", "value": "Bye"}]}])
    data = load_files([path])
    assert data.formats[path.name] == "sharegpt"
    turns = data.conversations[0]["conversations"]
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert data.conversations[0]["conversation_id"] == "c1"


def test_openai_messages_with_content_parts(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}, {"role": "assistant", "content": "4"}]}])
    data = load_files([path])
    assert data.formats[path.name] == "openai"
    assert data.conversations[0]["conversations"][0] == {"role": "user", "content": "What is 2+2?"}


def test_seed_format_with_and_without_id(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"conversation_id": 7, "conversations": [{"role": "user", "content": "A"}]},
        {"conversations": [{"role": "user", "content": "B"}]}])
    data = load_files([path])
    ids = sorted(c["conversation_id"] for c in data.conversations)
    assert "7" in ids and len(ids) == 2 and all(ids)


def test_prompt_only_rows_prompt_and_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "one"}, {"text": "two"}])
    data = load_files([path])
    assert sorted(c["conversations"][0]["content"] for c in data.conversations) == ["one", "two"]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2", "p3"]}), path)
    assert len(load_files([path]).conversations) == 3


def test_non_alternating_turns_are_merged_not_dropped(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [{"messages": [
        {"role": "user", "content": "part one"}, {"role": "user", "content": "part two"},
        {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]}])
    turns = load_files([path]).conversations[0]["conversations"]
    assert turns == [{"role": "user", "content": "part one\n\npart two"}, {"role": "assistant", "content": "x\n\ny"}]
    assert merge_consecutive([]) == []


def test_bad_rows_skipped_and_counted_by_reason(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [
        {"prompt": "fine"}, "{not json", {"conversations": [{"from": "alien", "value": "?"}]},
        {"messages": []}, {"prompt": "   "}, {"prompt": "fine"}, "[1, 2]"])
    data = load_files([path], fmt="auto")
    assert len(data.conversations) == 1
    assert data.skipped == {"malformed JSON": 1, "unknown role": 1, "empty conversation": 2, "duplicate id": 1,
                            "not an object": 1}


def test_unknown_format_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataFormatError, match=r"h\.jsonl: no known conversation format.*'conversations'"):
        load_files([path])


def test_explicit_format_override(tmp_path):
    path = write_jsonl(tmp_path / "i.jsonl", [{"prompt": "p", "messages": [{"role": "user", "content": "m"}]}])
    assert load_files([path], fmt="prompt").conversations[0]["conversations"][0]["content"] == "p"
    assert load_files([path], fmt="openai").conversations[0]["conversations"][0]["content"] == "m"


def test_shuffle_and_limit_are_deterministic_and_order_free(tmp_path):
    rows = [{"prompt": f"p{i}"} for i in range(50)]
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", list(reversed(rows)))
    first = [c["conversation_id"] for c in load_files([a], max_samples=10, seed=3).conversations]
    again = [c["conversation_id"] for c in load_files([b], max_samples=10, seed=3).conversations]
    other = [c["conversation_id"] for c in load_files([a], max_samples=10, seed=4).conversations]
    assert first == again and first != other and len(first) == 10


def test_detect_format():
    assert detect_format({"conversations": [{"from": "human", "value": "x"}]}) == "sharegpt"
    assert detect_format({"conversations": [{"role": "user", "content": "x"}]}) == "conversations"
    assert detect_format({"messages": []}) == "openai"
    assert detect_format({"text": "x"}) == "prompt"
    assert detect_format([1]) is None


def test_the_same_conversation_under_two_ids_is_kept_once(tmp_path):
    turns = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    first = write_jsonl(tmp_path / "a.jsonl", [{"conversation_id": "a-1", "conversations": turns}])
    second = write_jsonl(tmp_path / "b.jsonl", [{"conversation_id": "b-7", "conversations": turns},
                                                {"conversation_id": "b-8", "conversations": turns[:1]}])
    data = load_files([first, second])
    assert sorted(c["conversation_id"] for c in data.conversations) == ["a-1", "b-8"]
    assert data.skipped == {"duplicate conversation": 1}
    assert data.skipped_lines() == ["skipped 1 rows of b.jsonl: duplicate conversation (first: b.jsonl line 1)"]


def test_self_prompted_conversations_always_train_and_the_users_split_by_id():
    """The held-out split measures the user's own prompts: a self-prompted conversation never lands in it, whatever
    its id hashes to, so asking for more self prompts leaves the held-out split as it was."""
    from eagle_recipes.data.formats import HELD_OUT_SPLIT, SELF_PROMPTS_SOURCE, TRAIN_SPLIT, is_holdout, split_of

    ids = [f"self-{i:06d}" for i in range(200)]
    hashed_out = [i for i in ids if is_holdout(i, 0.05)]
    assert hashed_out  # ids that a plain hash split would hold out
    assert {split_of({"conversation_id": i, "source": SELF_PROMPTS_SOURCE}, 0.05) for i in ids} == {TRAIN_SPLIT}
    assert {split_of({"conversation_id": i, "source": "prompts.jsonl"}, 0.05) for i in hashed_out} == {HELD_OUT_SPLIT}
    assert split_of({"conversation_id": hashed_out[0]}, 0.05) == HELD_OUT_SPLIT  # the user's rows carry no source


def test_the_reader_keeps_conversations_on_disk_and_a_shard_of_work_names_them_by_offset(tmp_path, smollm2_config):
    from eagle_recipes.data.conversation_store import ROWS_FILE
    from eagle_recipes.recipe import load_recipe
    from eagle_recipes.stages.synthesize import shard_tasks, task_conversations
    from tests.helpers import recipe_head, write_recipe

    long_answer = "a long original answer " * 50
    rows = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"Question {i} é?"},
                                         {"role": "assistant", "content": long_answer}]} for i in range(30)]
    path = write_jsonl(tmp_path / "prompts.jsonl", rows + rows[:3])  # three duplicates
    loaded = load_files([path], max_samples=25, seed=1, folder=tmp_path / "store")
    store = loaded.conversations
    assert (tmp_path / "store" / ROWS_FILE).exists() and len(store) == 25 and loaded.skipped["duplicate id"] == 3
    every = list(store)
    assert store[3] == every[3] and store[-1] == every[-1] and store[5:9] == every[5:9]
    assert len({c["conversation_id"] for c in every}) == 25 and every[0]["source"] == "prompts.jsonl"
    assert store.offsets.dtype.itemsize == 8  # what memory holds per conversation: its offset in the file
    head = recipe_head("store", "some/model", config=str(smollm2_config))
    recipe = load_recipe(write_recipe(tmp_path, head + '[synthesis]\nengine = "vllm"\nbatch_size = 4\n'))
    tasks = shard_tasks(recipe, store, tokenizer=None)
    assert [c for task in tasks for c in task_conversations(task)] == every  # in order, none lost or repeated
    assert long_answer not in json.dumps(tasks)  # a task names its rows; the driver and Ray never hold them all
