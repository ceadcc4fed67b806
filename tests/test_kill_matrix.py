"""A kill in any stage loses nothing: the whole run (driver and its embedded Ray, one process group) is SIGKILLed
inside each stage in turn, then run again; and damaged artifacts placed between runs (a cut shard line, a cut
checkpoint, cut safetensors files) are found and redone, never read as if whole.

One chain of runs on SmolLM2-135M (vLLM's CPU attention has no kernel for the tiny Llama's head size), every
stage real: vLLM synthesis, calibrate, HF capture, cached training, export, reference evaluation. Each run resumes
the one before it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from eagle_recipes.data.feature_cache import shard_is_whole
from eagle_recipes.data.sequences import Sequences
from eagle_recipes.draft.inspect import inspect_draft
from eagle_recipes.manifest import IN_PROGRESS, MANIFEST
from eagle_recipes.run_folder import (CAPTURE, CHECKPOINT_PREFIX, CHECKPOINTS, CONVERSATION_SHARDS, EXPORT,
                                     FEATURE_SHARDS, SEQUENCES_FOLDER, SYNTHESIZE, TOKENIZE, TRAIN, RunFolder)
from eagle_recipes.stages import STAGE_NAMES
from tests.helpers import CLI, recipe_head, small_conversations, write_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out


def kill_recipe(folder: Path, model: str) -> Path:
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": c["conversations"][0]["content"]}) + "\n"
                                                  for c in small_conversations(40)))
    (folder / "eval.jsonl").write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?"}) + "\n"
                                               for i in range(3)))
    return write_recipe(folder, recipe_head("kill", model) + """holdout_fraction = 0.0
[synthesis]
batch_size = 8
max_tokens = 16
temperature = 0.0
[vocab]
draft_vocab_size = 300
[capture]
sequences_per_shard = 2
[train]
features = "cached"
max_steps = 40
ttt_steps = 2
max_seq_len = 128
checkpoint_every = 5
keep_checkpoints = 3
[eval]
engine = "reference"
prompts = ["eval.jsonl"]
max_tokens = 24
num_speculative_tokens = 2
""")


def start(recipe: Path, *options: str) -> subprocess.Popen:
    # a session of its own: the kill takes the driver and every Ray process it started, as a power cut would
    return subprocess.Popen([*CLI, "run", str(recipe), *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def kill_inside(recipe: Path, out: Path, stage: str, ready, rng: random.Random) -> float:
    """SIGKILL the whole run at a random point inside `stage` (once `ready(folder)` holds); return the delay.
    A stage of a second or less may finish before a late kill lands: it is then forced to run again and
    killed sooner."""
    run = RunFolder(out)
    for attempt in range(5):
        driver = start(recipe, *(["--force", stage] if attempt else []))
        delay = kill_when_ready(driver, run.stage(stage), ready, rng.uniform(0.0, 0.3) if attempt == 0 else 0.0)
        if not run.manifest_file(stage).exists():
            return delay
    raise AssertionError(f"{stage} finished before every kill")


def running(folder: Path, since: float) -> bool:
    """The stage started in this run (its in-progress marker is touched at every start) and has not finished."""
    try:
        return (folder / IN_PROGRESS).stat().st_mtime >= since and not (folder / MANIFEST).exists()
    except FileNotFoundError:
        return False


def kill_when_ready(driver: subprocess.Popen, folder: Path, ready, delay: float) -> float:
    stage, launched = folder.name, time.time() - 0.05  # marker times may round down
    deadline, known, listed = launched + 900, [], 0.0
    while time.time() < deadline and driver.poll() is None:
        if running(folder, launched) and ready(folder):
            break
        if time.time() - listed > 0.05:  # the run's processes, listed ahead: the kill must land within milliseconds
            known, listed = session_members(driver.pid), time.time()
        time.sleep(0.0005)  # a stage of a few milliseconds (export) must be seen while it runs
    assert driver.poll() is None, f"the run ended before {stage} ran: {driver.stderr.read().decode()[-3000:]}"
    time.sleep(delay)
    for pid in known:
        _kill(pid)
    kill_session(driver.pid)
    driver.wait()
    return delay


def kill_session(session: int) -> None:
    """SIGKILL every process of the run's session at once: the driver and all of Ray's (its workers put
    themselves in process groups of their own, so killing the driver's group alone lets them finish a step)."""
    for _ in range(50):
        members = session_members(session)
        if not members:
            return
        for pid in members:
            _kill(pid)
        time.sleep(0.05)
    raise AssertionError(f"processes of session {session} outlived SIGKILL")


def session_members(session: int) -> list[int]:
    return [pid for pid in _pids() if _session_of(pid) == session]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (command) "
    return None if fields[0] == "Z" else int(fields[3])  # state, ppid, pgrp, session; zombies are dead


def manifest(out: Path, stage: str) -> dict:
    return json.loads(RunFolder(out).manifest_file(stage).read_text())


def test_a_kill_inside_every_stage_loses_nothing(tmp_path, smollm2_path):
    recipe = kill_recipe(tmp_path, smollm2_path)
    out = tmp_path / "out"
    run = RunFolder(out)
    rng = random.Random(int(os.environ.get("KILL_SEED", "0")))
    ready = {  # how far a stage must be before the kill, so that its rerun has finished work to keep
        SYNTHESIZE: lambda f: len(list((f / CONVERSATION_SHARDS).glob("*.jsonl"))) >= 2,
        TOKENIZE: lambda f: len(list((f / SEQUENCES_FOLDER).glob("[0-9]*/pad_id.npy"))) >= 1,
        CAPTURE: lambda f: len(list((f / FEATURE_SHARDS).glob("*.safetensors"))) >= 2,
        TRAIN: lambda f: len(list((f / CHECKPOINTS).glob(f"{CHECKPOINT_PREFIX}*"))) >= 2,
    }
    matrix = []
    for stage in STAGE_NAMES:
        delay = kill_inside(recipe, out, stage, ready.get(stage, lambda f: True), rng)
        matrix.append({"killed in": stage, "after ready (s)": round(delay, 3), "damage placed": damage(out, stage)})
    final = start(recipe)
    assert final.wait(timeout=1800) == 0, final.stderr.read().decode()[-5000:]
    for row in matrix:  # what the rerun of each killed stage kept and redid (each later run finished it)
        row["rerun"] = manifest(out, row["killed in"])["counts"]
        print(row)

    # every artifact complete; nothing lost, duplicated, or read while damaged
    rows = [json.loads(line) for shard in sorted(run.conversations.glob("*.jsonl"))
            for line in shard.read_text().splitlines()]
    ids = [row["conversation_id"] for row in rows]
    assert len(ids) == len(set(ids)) == 40 and all(row["conversations"][-1]["role"] == "assistant" for row in rows)
    synthesize = manifest(out, SYNTHESIZE)["counts"]
    assert synthesize["resumed_from_earlier_run"] >= 8 and synthesize["generated_this_run"] >= 8  # cut shard redone
    data = Sequences.load(run.sequences)
    tokenize = manifest(out, TOKENIZE)["counts"]
    assert len(data.shards) == tokenize["sequence_shards"] and data.count == tokenize["sequences"]
    shards = sorted((run.features / FEATURE_SHARDS).glob("*.safetensors"))
    assert len(shards) == manifest(out, CAPTURE)["counts"]["shards"]
    for index, shard in enumerate(shards):
        first = 2 * index
        last = min(first + 2, data.count)
        assert shard_is_whole(shard, first, data.ids_between(first, last)), shard
    capture = manifest(out, CAPTURE)["counts"]
    assert capture["resumed_from_earlier_run"] > 0 and capture["captured_this_run"] >= 2  # the cut shard redone
    train = manifest(out, TRAIN)["counts"]
    assert train["steps"] == 40 and 0 < train["resumed_from_step"] < 40
    metrics = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()]
    assert metrics == list(range(1, 41))  # each step once: none lost, none counted twice
    assert inspect_draft(run.draft).ok
    report = json.loads(run.report.read_text())
    assert report["sets"]["eval"]["prompts"] == 3 and report["acceptance_length"] >= 1.0


def damage(out: Path, stage: str) -> str:
    """Leave a damaged artifact of the killed stage where the rerun will find it."""
    run = RunFolder(out)
    if stage == SYNTHESIZE:
        shard = sorted(run.conversations.glob("*.jsonl"))[0]
        with open(shard, "a") as handle:
            handle.write('{"conversation_id": "cut-sh')  # a line cut mid-write
        return f"half a line appended to {shard.name}"
    if stage == TOKENIZE:
        shards = sorted((run.sequences / SEQUENCES_FOLDER).glob("[0-9]*/pad_id.npy"))
        if shards:  # a shard left without its last file, as a cut copy would be: not whole, so redone
            shards[0].unlink()
            return f"{shards[0].parent.name} left without pad_id.npy"
        return "nothing (no shard was whole yet)"
    if stage == CAPTURE:
        shard = sorted((run.features / FEATURE_SHARDS).glob("*.safetensors"))[0]
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        return f"{shard.name} cut to half"
    if stage == TRAIN:
        latest = sorted(run.checkpoints.glob(f"{CHECKPOINT_PREFIX}*"))[-1]
        state = latest / "state.pt"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        metrics = run.metrics
        with open(metrics, "a") as handle:
            handle.write('{"step": 9')  # a metrics line cut mid-write
        return f"{latest.name}/state.pt cut to half, a metrics line cut"
    if stage == EXPORT:
        draft = run.draft
        draft.mkdir(parents=True, exist_ok=True)
        (draft / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a cut file
        return "a cut draft/model.safetensors"
    return "none"
