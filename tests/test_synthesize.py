"""Synthesis with real engines: in-process vLLM held by Ray Data actors (one and two replicas), and the
OpenAI-compatible path against a real vLLM server on loopback, including a server killed mid-run and a server
answering 500 for a while."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eagle_recipes.run_folder import RunFolder
from tests.helpers import VLLMServer, run_stage, write_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out

API_KEY = "sk-test-not-a-real-key-0123456789"

PROMPTS = [
    {"id": "multi", "conversations": [{"from": "human", "value": "Name a color."},
                                      {"from": "gpt", "value": "(original answer, to be replaced)"},
                                      {"from": "human", "value": "Name another one."}]},
    {"id": "system", "messages": [{"role": "system", "content": "Answer in one word."},
                                  {"role": "user", "content": "What is the capital of Italy?"}]},
    {"id": "plain", "prompt": "Count from one to five."},
]


def _recipe(folder: Path, model: str, engine: str, extra: str = "", rows=PROMPTS) -> Path:
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return write_recipe(folder, f"""
name = "synth"
output_dir = "out"
[model]
path = "{model}"
[data]
prompts = ["prompts.jsonl"]
holdout_fraction = 0.0
[synthesis]
engine = "{engine}"
max_tokens = 24
batch_size = 2
system_prompt = "You are a helpful assistant."
{extra}
""")


def _read(folder: Path) -> dict[str, dict]:
    rows = {}
    for shard in sorted(RunFolder(folder / "out").conversations.glob("*.jsonl")):
        for line in shard.read_text().splitlines():
            row = json.loads(line)
            assert row["conversation_id"] not in rows, "a conversation was written twice"
            rows[row["conversation_id"]] = row
    return rows


def _hf_greedy(model_path: str, messages: list[dict], max_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def vllm_engine_run(tmp_path_factory, smollm2_path, ray_session):
    folder = tmp_path_factory.mktemp("vllm-engine")
    manifest = run_stage(_recipe(folder, smollm2_path, "vllm"), "synthesize")
    return folder, manifest, _read(folder)


def test_vllm_engine_regenerates_turn_by_turn(vllm_engine_run, smollm2_path):
    _, manifest, rows = vllm_engine_run
    assert set(rows) == {"multi", "system", "plain"}
    multi = rows["multi"]["conversations"]
    assert [t["role"] for t in multi] == ["system", "user", "assistant", "user", "assistant"]
    assert multi[0]["content"] == "You are a helpful assistant."  # the recipe's system prompt is added
    assert "(original answer" not in multi[2]["content"]  # the model's own answer replaces the original
    assert rows["system"]["conversations"][0]["content"] == "Answer in one word."  # existing system kept
    # the assistant turns are the model's greedy output, given the model's own earlier answers
    assert multi[2]["content"] == _hf_greedy(smollm2_path, multi[:2], 24)
    assert multi[4]["content"] == _hf_greedy(smollm2_path, multi[:4], 24)
    assert manifest["counts"]["conversations"] == 3 and manifest["counts"]["generated_tokens"] > 0
    assert all("truncated" in r and r["temperature"] == 0.0 for r in rows.values())


def test_vllm_engine_replicas_share_the_shards(tmp_path, smollm2_path, ray_session):
    """Two replicas: the shards are spread over two Ray Data actors, each holding its own engine, and every
    conversation is written exactly once."""
    rows = [{"id": f"p{i}", "prompt": f"Say the number {i}."} for i in range(8)]
    manifest = run_stage(_recipe(tmp_path, smollm2_path, "vllm", "replicas = 2", rows=rows), "synthesize")
    written = _read(tmp_path)
    assert set(written) == {f"p{i}" for i in range(8)} and manifest["counts"]["shards"] == 4
    assert all([t["role"] for t in r["conversations"]] == ["system", "user", "assistant"] for r in written.values())
    assert manifest["counts"]["engines_used"] == 2  # distinct Ray Data actors that returned shards


@pytest.fixture(scope="module")
def server(smollm2_path):
    running = VLLMServer(smollm2_path, API_KEY).start()
    yield running
    running.kill()


def test_openai_engine_matches_in_process_engine(tmp_path, server, vllm_engine_run, smollm2_path, ray_session,
                                                 monkeypatch):
    monkeypatch.setenv("SYNTH_KEY", API_KEY)
    recipe = _recipe(tmp_path, smollm2_path, "openai",
                     f'[synthesis.openai]\nbase_url = "{server.base_url}"\napi_key_env = "SYNTH_KEY"\n')
    run_stage(recipe, "synthesize")
    rows = _read(tmp_path)
    _, _, in_process = vllm_engine_run
    for conversation_id, row in rows.items():
        assert row["conversations"] == in_process[conversation_id]["conversations"]
    # the key was used (the server requires it) but is written nowhere
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY not in path.read_text(errors="ignore"), path


def test_server_killed_mid_run_then_resumed(tmp_path, server, smollm2_path, ray_session, monkeypatch):
    monkeypatch.setenv("SYNTH_KEY", API_KEY)
    rows = [{"id": f"p{i}", "prompt": f"Write one sentence about the number {i}."} for i in range(10)]
    recipe = _recipe(tmp_path, smollm2_path, "openai",
                     f'[synthesis.openai]\nbase_url = "{server.base_url}"\napi_key_env = "SYNTH_KEY"\n'
                     "max_retries = 1\ntimeout_s = 30\n", rows)
    shards = RunFolder(tmp_path / "out").conversations

    def kill_after_two_shards():
        while len(list(shards.glob("*.jsonl"))) < 2:
            time.sleep(0.05)
        server.kill()

    killer = threading.Thread(target=kill_after_two_shards)
    killer.start()
    # the engine's ServerError names the unreachable server (Ray and Ray Data wrap it in their own types)
    with pytest.raises(Exception, match=re.escape(server.base_url)):
        run_stage(recipe, "synthesize")
    killer.join()
    finished_before = len(list(shards.glob("*.jsonl")))
    assert 2 <= finished_before < 5
    server.start()
    manifest = run_stage(recipe, "synthesize")
    assert manifest["counts"]["resumed_from_earlier_run"] == 2 * finished_before
    assert manifest["counts"]["generated_this_run"] == 10 - 2 * finished_before
    assert set(_read(tmp_path)) == {f"p{i}" for i in range(10)}  # every conversation exactly once


class _FlakyProxy(BaseHTTPRequestHandler):
    """Answers 500 to the first `failures` requests, then forwards to the real server."""

    failures = 5
    seen = 0
    upstream = ""

    def do_POST(self):  # noqa: N802 - http.server's naming
        type(self).seen += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).seen <= type(self).failures:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"temporarily broken")
            return
        request = urllib.request.Request(self.upstream + self.path[len("/v1"):], data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": self.headers["Authorization"]})
        with urllib.request.urlopen(request) as response:
            payload = response.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_server_answering_500_for_a_while_is_retried(tmp_path, server, smollm2_path, ray_session, monkeypatch):
    monkeypatch.setenv("SYNTH_KEY", API_KEY)
    _FlakyProxy.upstream, _FlakyProxy.seen = server.base_url, 0
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        recipe = _recipe(tmp_path, smollm2_path, "openai",
                         f'[synthesis.openai]\nbase_url = "http://127.0.0.1:{proxy.server_port}/v1"\n'
                         'model = "base"\napi_key_env = "SYNTH_KEY"\nmax_retries = 8\n')
        manifest = run_stage(recipe, "synthesize")
    finally:
        proxy.shutdown()
    assert _FlakyProxy.seen > _FlakyProxy.failures
    assert manifest["counts"]["conversations"] == 3 and set(_read(tmp_path)) == {"multi", "system", "plain"}
