"""Cached features: the capture stage runs the tiny base model once, training reads the features back.

Cached training with an fp32 capture gives the same losses, step by step, as online training with the same seed
(tolerance: 1e-4 relative, the difference between one full-vocabulary matmul and one over the draft rows); a
capture interrupted part-way, with a shard missing and one cut short, resumes by shard and ends with shards equal
to an uninterrupted capture's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eagle_recipes.data.feature_cache import FeatureStore
from eagle_recipes.data.sequences import Sequences
from eagle_recipes.manifest import IN_PROGRESS, MANIFEST
from eagle_recipes.run_folder import CAPTURE, FEATURE_SHARDS, TRAIN, RunFolder
from tests.helpers import override_recipe, run_stage, small_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out


def _recipe(folder, model, features: str, steps: int = 12, shard: int = 8):
    recipe = small_recipe(folder, model, steps=steps, extra=f'[capture]\ndtype = "float32"\nsequences_per_shard = {shard}\n')
    return override_recipe(recipe, f"train.features={features}")


def _losses(folder):
    return [json.loads(line)["loss"] for line in RunFolder(folder / "out").metrics.read_text().splitlines()]


def test_cached_training_matches_online_training_step_by_step(tmp_path, tiny_llama, ray_session):
    results = {}
    for features in ("online", "cached"):
        folder = tmp_path / features
        folder.mkdir()
        recipe = _recipe(folder, tiny_llama, features)
        stages = ["synthesize", "tokenize", "calibrate"] + (["capture"] if features == "cached" else []) + ["train"]
        for stage in stages:
            run_stage(recipe, stage)
        results[features] = (_losses(folder), load_file(str(RunFolder(folder / "out").trained / "model.safetensors")))
    (online_losses, online_weights), (cached_losses, cached_weights) = results["online"], results["cached"]
    assert len(online_losses) == len(cached_losses) == 12
    assert all(loss[0] > 0.1 for loss in online_losses)  # real labels: not a comparison of zeros
    for step, (a, b) in enumerate(zip(online_losses, cached_losses)):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), f"step {step + 1}: online {a}, cached {b}"
    for name in online_weights:
        torch.testing.assert_close(cached_weights[name], online_weights[name], rtol=1e-3, atol=1e-5)
    cached = RunFolder(tmp_path / "cached" / "out")
    manifest = json.loads(cached.manifest_file(TRAIN).read_text())
    assert manifest["metrics"]["train_config"]["features"] == "cached"
    capture = json.loads(cached.manifest_file(CAPTURE).read_text())
    # the 6-layer target's aux layers are (2, 3): two states and the final one, 64 wide, fp32; top id, token id
    assert capture["metrics"]["bytes_per_token"] == (2 + 1) * 64 * 4 + 4 + 4


def test_interrupted_capture_resumes_by_shard_to_identical_shards(tmp_path, tiny_llama, ray_session):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    for folder in (reference, interrupted):
        folder.mkdir()
        recipe = _recipe(folder, tiny_llama, "cached", shard=5)
        run_stage(recipe, "synthesize")
        run_stage(recipe, "tokenize")
        run_stage(recipe, "capture")
    out = RunFolder(interrupted / "out").features
    shards = sorted((out / FEATURE_SHARDS).glob("*.safetensors"))
    assert len(shards) >= 4
    # what a kill leaves: no manifest, the in-progress marker, one shard never written, one cut short
    fingerprint = json.loads((out / MANIFEST).read_text())["fingerprint"]
    (out / MANIFEST).unlink()
    (out / IN_PROGRESS).write_text(fingerprint)
    shards[1].unlink()
    shards[2].write_bytes(shards[2].read_bytes()[: shards[2].stat().st_size // 2])
    result = run_stage(_recipe(interrupted, tiny_llama, "cached", shard=5), "capture")
    sequences = Sequences.load(RunFolder(interrupted / "out").sequences).count
    assert result["counts"]["resumed_from_earlier_run"] == sequences - 10  # every whole shard was kept
    assert result["counts"]["captured_this_run"] == 10
    for path in sorted((RunFolder(reference / "out").features / FEATURE_SHARDS).glob("*.safetensors")):
        ours, theirs = load_file(str(out / FEATURE_SHARDS / path.name)), load_file(str(path))
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), (path.name, name)
    data = RunFolder(interrupted / "out").sequences
    store = FeatureStore(out, data)
    assert store.tokens == Sequences.load(data).tokens


def test_feature_store_reads_the_rows_of_each_sequence(tmp_path, tiny_llama, ray_session):
    recipe = _recipe(tmp_path, tiny_llama, "cached", shard=7)
    run_stage(recipe, "synthesize")
    run_stage(recipe, "tokenize")
    run_stage(recipe, "capture")
    out = RunFolder(tmp_path / "out").features
    store = FeatureStore(out, RunFolder(tmp_path / "out").sequences)
    data = Sequences.load(RunFolder(tmp_path / "out").sequences)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    for index in (0, 6, 7, 13, data.count - 1):
        ids = torch.from_numpy(data.ids_of(index).astype(np.int64))
        hidden, final, top = store.batch([index], len(ids) + 3, "cpu", torch.float32)
        with torch.no_grad():
            out_ = model(input_ids=ids[None], output_hidden_states=True)
        torch.testing.assert_close(final[0, : len(ids)], out_.hidden_states[-1][0], atol=1e-4, rtol=1e-4)
        assert torch.equal(top[0, : len(ids)], out_.logits[0].argmax(-1))
        assert float(hidden[0, len(ids):].abs().sum()) == 0.0  # padding stays zero
