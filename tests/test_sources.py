"""Training data by name: datasets in the Hub's layout read with Hugging Face `datasets` (subsets, splits, columns,
row limits), mixtures with weights, de-duplication across sources, unusable rows reported by source, offline
failures named, and a dataset folder through the whole graph. No hub here: datasets are folders in the Hub's
layout built by the tests (Parquet files and a README.md card whose `configs` name subsets and splits)."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eagle_recipes.data.formats import DataFormatError, load_conversations, read_conversation_rows
from eagle_recipes.data.sources import DatasetSource, Source, SourceError, count_rows
from eagle_recipes.stages.synthesize import describe_sources, source_records
from eagle_recipes.run_folder import SYNTHESIZE, RunFolder
from tests.helpers import cli, recipe_head, write_recipe

CARD = """---
configs:
- config_name: chat
  data_files:
  - split: train_sft
    path: chat/train_sft-*.parquet
  - split: test_sft
    path: chat/test_sft-*.parquet
- config_name: sharegpt
  data_files:
  - split: train
    path: sharegpt/train-*.parquet
- config_name: prompts
  data_files:
  - split: train
    path: prompts/train-*.parquet
---
# A dataset in the Hub's layout
"""


def chat(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]


@pytest.fixture
def hub_folder(tmp_path):
    """Subsets: chat (OpenAI messages, two splits), sharegpt (its turns; its first 10 rows repeat chat's
    conversations, two rows are unusable), prompts (an `instruction` column)."""
    folder = tmp_path / "hub-dataset"
    for subset in ("chat", "sharegpt", "prompts"):
        (folder / subset).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"messages": chat(i)} for i in range(40)]),
                   folder / "chat" / "train_sft-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([{"messages": chat(100 + i)} for i in range(5)]),
                   folder / "chat" / "test_sft-00000-of-00001.parquet")
    sharegpt = [{"conversations": [{"from": "human" if t["role"] == "user" else "gpt", "value": t["content"]}
                                   for t in chat(i if i < 10 else 200 + i)]} for i in range(30)]
    sharegpt[10] = {"conversations": [{"from": "gpt", "value": "no question"}]}
    sharegpt[11] = {"conversations": [{"from": "robot", "value": "?"}]}
    pq.write_table(pa.Table.from_pylist(sharegpt), folder / "sharegpt" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([{"instruction": f"Write a line about {i}.", "id": i} for i in range(12)]),
                   folder / "prompts" / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text(CARD)
    return folder


def test_subset_split_column_and_row_limit(hub_folder):
    test_split = DatasetSource(str(hub_folder), "data.prompts.0", split="test_sft", subset="chat")
    limited = DatasetSource(str(hub_folder), "data.prompts.1", split="train_sft", subset="chat", max_rows=7)
    prompts = DatasetSource(str(hub_folder), "data.prompts.2", subset="prompts", column="instruction")
    assert (count_rows(test_split), count_rows(limited), count_rows(prompts)) == (5, 7, 12)
    loaded = load_conversations([test_split, limited, prompts])
    assert loaded.formats == {"hub-dataset[chat/test_sft]": "openai", "hub-dataset[chat/train_sft]": "openai",
                              "hub-dataset[prompts/train]": "prompt"}
    assert loaded.used == {"hub-dataset[chat/test_sft]": 5, "hub-dataset[chat/train_sft]": 7,
                           "hub-dataset[prompts/train]": 12}
    texts = {c["conversations"][0]["content"] for c in loaded.conversations}
    assert "Question 100: what is 100 plus 100?" in texts and "Write a line about 11." in texts


def test_a_parquet_folder_is_read_by_pyarrow_in_the_order_and_shape_datasets_reads_it(hub_folder):
    """Local Parquet splits skip `datasets`' streaming reader (about 300 MiB more at 200k rows): the rows must be
    the ones it gives, in its order, over several files of a split and for every subset."""
    from datasets import load_dataset

    from eagle_recipes.data.sources import dataset_rows

    more = [{"conversations": [{"from": "human", "value": f"Say {i}."}] + ([{"from": "gpt", "value": None}] if i % 2
                                                                          else [])} for i in range(7)]
    pq.write_table(pa.Table.from_pylist(more), hub_folder / "sharegpt" / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([{"messages": chat(400 + i)} for i in range(3)]),
                   hub_folder / "chat" / "train_sft-00001-of-00002.parquet")
    for subset, split in (("chat", "train_sft"), ("chat", "test_sft"), ("sharegpt", "train"), ("prompts", "train")):
        source = DatasetSource(str(hub_folder), "data.prompts.0", split=split, subset=subset)
        by_library = list(load_dataset(str(hub_folder), name=subset, split=split, streaming=True))
        assert [row for _, row in dataset_rows(source)] == by_library, (subset, split)
    assert count_rows(DatasetSource(str(hub_folder), "data.prompts.0", split="train_sft", subset="chat")) == 43


def test_mixture_weights_deduplication_and_unusable_rows_by_source(hub_folder):
    chat_source = DatasetSource(str(hub_folder), "data.prompts.0", split="train_sft", subset="chat", weight=3)
    sharegpt = DatasetSource(str(hub_folder), "data.prompts.1", subset="sharegpt", weight=1)
    loaded = load_conversations([chat_source, sharegpt], max_samples=20, seed=7)
    assert loaded.used == {"hub-dataset[chat/train_sft]": 15, "hub-dataset[sharegpt/train]": 5}
    # sharegpt's rows 1-10 repeat chat's conversations: dropped there, whatever their format (without ids given,
    # a conversation's id is its content's hash)
    assert loaded.by_source[("hub-dataset[sharegpt/train]", "duplicate id")] == 10
    lines = loaded.skipped_lines()
    assert "skipped 1 rows of hub-dataset[sharegpt/train]: empty conversation (first: hub-dataset[sharegpt/train] row 11)" in lines
    assert any("unknown role (first: hub-dataset[sharegpt/train] row 12)" in line for line in lines)
    again = load_conversations([chat_source, sharegpt], max_samples=20, seed=7)
    assert [c["conversation_id"] for c in again.conversations] == [c["conversation_id"] for c in loaded.conversations]
    other = load_conversations([chat_source, sharegpt], max_samples=20, seed=8)
    assert {c["conversation_id"] for c in other.conversations} != {c["conversation_id"] for c in loaded.conversations}


@pytest.mark.slow
def test_validate_and_plan_see_the_sources(hub_folder, tmp_path, smollm2_config):
    head = recipe_head("sources", "some/model", config=str(smollm2_config), prompts="unused.jsonl")

    def sources(revision: str) -> str:
        return (f'data.prompts=[{{ dataset = "{hub_folder.name}", subset = "chat", split = "train_sft", '
                'max_rows = 25 }, { dataset = "HuggingFaceH4/ultrachat_200k", split = "train_sft", '
                f'revision = "{revision}", weight = 1 }}]')

    recipe = write_recipe(tmp_path, head, overrides=[sources("v1"), "data.max_samples=30"])
    assert cli("validate", recipe).returncode == 0
    plan = cli("plan", recipe).stdout
    assert "hub-dataset[chat/train_sft] (local, 25 rows)" in plan
    assert "HuggingFaceH4/ultrachat_200k[train_sft] (Hub@v1, rows known once read, weight 1)" in plan
    planned = json.loads(cli("plan", recipe, "--json").stdout)
    synthesize = next(s for s in planned["stages"] if s["name"] == "synthesize")
    assert any(f.endswith("train_sft-00000-of-00001.parquet") for f in synthesize["input_files"])
    # a pinned revision is part of the fingerprint
    repinned = json.loads(cli("plan", write_recipe(tmp_path, head, "other.toml",
                                                   overrides=[sources("v2"), "data.max_samples=30"]),
                              "--json").stdout)
    assert next(s for s in repinned["stages"] if s["name"] == "synthesize")["fingerprint"] != synthesize["fingerprint"]
    bad = write_recipe(tmp_path, head, "bad.toml", overrides=['data.prompts=[{ dataset = "no such thing" }]'])
    failed = cli("validate", bad, check=False)
    assert failed.returncode == 1 and "data.prompts.0.dataset" in failed.stderr and "neither a local folder" in failed.stderr


def test_an_unreachable_hub_fails_in_seconds_naming_the_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the Hub unreachable, at once
    source = DatasetSource("no-such-org/no-such-dataset-eagle-recipes", "data.prompts.3", split="train")
    started = time.time()
    with pytest.raises(SourceError) as raised:
        load_conversations([source])
    assert time.time() - started < 20
    message = str(raised.value)
    assert message.startswith("data.prompts.3: cannot read no-such-org/no-such-dataset-eagle-recipes[train]")
    assert "HF_HUB_OFFLINE" in message and "local folder" in message and "Traceback" not in message


@pytest.mark.slow
def test_a_hub_model_offline_fails_naming_model_path(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    recipe = write_recipe(tmp_path, recipe_head("offline", "no-such-org/no-such-model-eagle-recipes",
                                                config=str((tmp_path / "config.json")))
                          + '[synthesis]\nengine = "vllm"\n')
    (tmp_path / "config.json").write_text((__import__("tests.helpers", fromlist=["PROJECT"]).PROJECT
                                           / "catalog/smollm2/configs/SmolLM2-135M-Instruct.json").read_text())
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "eagle_recipes.cli", "run", str(recipe), "--only", "synthesize"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 1 and time.time() - started < 120
    assert "model.path = 'no-such-org/no-such-model-eagle-recipes'" in result.stderr
    assert "HF_HUB_OFFLINE" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_dataset_folder_runs_the_whole_graph(hub_folder, tmp_path, tiny_llama):
    """Two sources of one dataset folder (a mixture), no JSONL written by hand: synthesize (the conversations as
    they are), calibrate, train, export and evaluate (the reference decoder)."""
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?"})
                                                 + "\n" for i in range(3)))
    text = recipe_head("hub-folder", tiny_llama, prompts="unused.jsonl")
    text += ('[synthesis]\nengine = "none"\n[vocab]\ndraft_vocab_size = 300\n[train]\nmax_steps = 6\nttt_steps = 2\n'
             'max_seq_len = 128\n[eval]\nengine = "reference"\nprompts = ["eval.jsonl"]\nnum_speculative_tokens = 2\n'
             "max_tokens = 8\n")
    recipe = write_recipe(tmp_path, text, overrides=[
        f'data.prompts=[{{ dataset = "{hub_folder.name}", subset = "chat", split = "train_sft" }}, '
        f'{{ dataset = "{hub_folder.name}", subset = "sharegpt" }}]'])
    cli("run", recipe)
    out = RunFolder(tmp_path / "out")
    synthesize = json.loads(out.manifest_file(SYNTHESIZE).read_text())
    # 40 + 30 rows: 10 sharegpt rows repeat chat's, 2 unusable
    assert synthesize["counts"]["conversations"] == 58
    assert synthesize["metrics"]["sources"] == [{"source": "hub-dataset[chat/train_sft]", "conversations": 40},
                                                {"source": "hub-dataset[sharegpt/train]", "conversations": 18}]
    assert synthesize["counts"]["skipped_by_source"]["hub-dataset[sharegpt/train]: duplicate id"] == 10
    report = json.loads(out.report.read_text())
    assert report["sets"]["eval"]["prompts"] == 3
    again = cli("plan", recipe, "--json").stdout
    assert {s["status"] for s in json.loads(again)["stages"]} == {"up to date"}  # a rerun reads nothing again


class InMemorySource(Source):
    """The next kind of source in one class (object storage would read its rows where this lists them)."""

    row_unit = "record"

    def __init__(self, key: str, records: list):
        self.key, self.records = key, records

    @property
    def label(self) -> str:
        return "memory"

    def rows(self):
        return enumerate(self.records, start=1)

    def input_files(self):
        return []


def test_a_new_kind_of_source_is_one_class():
    records = [{"messages": [{"role": "user", "content": f"Say {i}."}]} for i in range(4)] + ["not an object"]
    source = InMemorySource("data.prompts.0", records)
    loaded = load_conversations([source])
    assert loaded.used == {"memory": 4} and loaded.formats == {"memory": "openai"}
    assert loaded.skipped_lines() == ["skipped 1 rows of memory: not an object (first: memory record 5)"]
    assert describe_sources([source]) == "sources: memory (rows known once read)"
    assert source_records([source], loaded) == [{"source": "memory", "conversations": 4}]
    # the conversations format reads through the same interface, and its message names the source and the row
    good = {"conversation_id": "a", "conversations": [{"role": "user", "content": "Hi"}]}
    assert list(read_conversation_rows([InMemorySource("data.conversations.0", [good])])) == [good]
    with pytest.raises(DataFormatError, match=r"^memory: record 2: no 'conversation_id' string"):
        list(read_conversation_rows([InMemorySource("data.conversations.0", [good, {"conversations": []}])]))


def test_validate_reads_data_conversations_through_its_source(tmp_path, smollm2_config):
    conversations = tmp_path / "own.jsonl"
    conversations.write_text(json.dumps({"conversation_id": "a", "conversations": [{"role": "user", "content": "Hi"}]})
                             + "\n" + json.dumps({"conversations": []}) + "\n")
    head = recipe_head("own", "some/model", config=str(smollm2_config), prompts="unused.jsonl")
    recipe = write_recipe(tmp_path, head, overrides=["data.prompts=[]", 'data.conversations=["own.jsonl"]'])
    failed = cli("validate", recipe, check=False)
    assert failed.returncode == 1, failed.stdout
    assert "data.conversations" in failed.stderr and f"{conversations}: line 2: no 'conversation_id' string" in failed.stderr
