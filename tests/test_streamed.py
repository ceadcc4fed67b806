"""Streamed features: feature servers (real Ray actors holding the tiny base model) compute each micro-batch's
features when a training worker asks; nothing is written.

Streamed features equal the capture stage's cached ones (float32 capture: allclose, top tokens identical), and a
streamed training run whose feature server is SIGKILLed mid-run gives the cached run's losses step by step (Ray
restarts the server and asks it again; one dead for good is named); a worker never has more requests out than
`train.streamed.in_flight`, two epochs ask for every sequence twice, and the stream cache's hits read back exactly
what was served."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from eagle_recipes.data.sequences import Sequences
from eagle_recipes.run_folder import FEATURE_SHARDS, HEAD_FILE, TRAIN, RunFolder
from tests.helpers import override_recipe, run_stage, small_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out


def _recipe(folder, model, features: str, steps: int = 6, overrides: tuple[str, ...] = ()):
    recipe = small_recipe(folder, model, steps=steps, extra='[capture]\ndtype = "float32"\nsequences_per_shard = 8\n')
    return override_recipe(recipe, f"train.features={features}", *overrides)


@pytest.fixture(scope="module")
def captured(tmp_path_factory, tiny_llama, ray_session):
    """A run folder whose synthesize, calibrate and capture (float32) stages have run: the reference features."""
    folder = tmp_path_factory.mktemp("streamed")
    recipe = _recipe(folder, tiny_llama, "cached")
    for stage in ("synthesize", "tokenize", "calibrate", "capture"):
        run_stage(recipe, stage)
    return folder


def _train_config(folder, model, features: str, **fields):
    from eagle_recipes.recipe.draft_config import capture_spec
    from eagle_recipes.recipe import load_recipe
    from eagle_recipes.training.config import TrainConfig

    run = RunFolder(folder / "out")
    spec = capture_spec(load_recipe(folder / "recipe.toml"), model, run.sequences)  # the capture stage's engine
    values = dict(model_path=model, draft_config={}, vocab_file="", data_folder=str(run.sequences),
                  checkpoint_dir="", metrics_file="", features=features, capture_dir=str(run.features), threads=1,
                  use_gpu=False, strategy="ddp", precision="float32", epochs=2, max_steps=0, batch_size=2,
                  grad_accum=1, lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, schedule="constant", grad_clip=0.0,
                  ttt_steps=2, ttt_decay=1.0, loss_on="assistant", checkpoint_every=5, keep_checkpoints=1, seed=0,
                  init_from_target=True, loss="forward_kl", optimizer="adamw", muon_lr_scale=1.0, feature_noise=0.0,
                  simulate_every=0, simulate_k=3, keep_best=False, tables={"streamed": {"in_flight": 2, "cache_gib": 0.0, "server_cpus": 0}},
                  feature_servers={"spec": spec.to_dict(), "replicas": 1})
    settings = {key: fields.pop(key) for key in ("in_flight", "cache_gib") if key in fields}
    values["tables"] = {"streamed": {**values["tables"]["streamed"], **settings}}
    return TrainConfig(**{**values, **fields})


def _batch(sequences: Sequences, indices: list[int]):
    from eagle_recipes.training.batches import collate

    return collate(sequences, indices, "assistant")


def test_streamed_features_equal_the_cached_ones(captured, tiny_llama):
    from eagle_recipes.engines.feature_server import FeatureServer, LocalFeatureServers
    from eagle_recipes.training.streamed import StreamedTarget
    from eagle_recipes.training.target_source import CachedTarget

    config = _train_config(captured, tiny_llama, "streamed")
    draft_ids = torch.arange(0, 600, 2)
    cached = CachedTarget(config, None, draft_ids, torch.device("cpu"), torch.float32)
    server = FeatureServer(config.feature_servers["spec"], torch.device("cpu"))
    streamed = StreamedTarget(config, draft_ids, torch.device("cpu"), torch.float32, LocalFeatureServers(server),
                              config.data_folder)
    sequences = Sequences.load(config.data_folder)
    for indices in ([0, 1], [5, 17, 3], [sequences.count - 1]):
        batch = _batch(sequences, indices)
        ours, theirs = streamed.outputs(*batch, indices), cached.outputs(*batch, indices)
        torch.testing.assert_close(ours.hidden, theirs.hidden, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.draft_logits, theirs.draft_logits, rtol=1e-4, atol=1e-5)
        assert torch.equal(ours.top_in_draft, theirs.top_in_draft)
        assert float(ours.hidden.abs().sum()) > 0  # real features, not zeros on both sides
    torch.testing.assert_close(streamed.draft_head.weight, cached.draft_head.weight, rtol=0, atol=0)
    assert server.served_counts()["sequences"] == 6


def _kill_a_feature_server_once_training_runs(metrics: Path, killed: dict) -> threading.Thread:
    """A watcher that SIGKILLs the feature server's process once the first step is logged (the steps after it
    need the server), noting its pid and the steps logged by then."""
    import psutil

    def watch() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and "pid" not in killed:
            if metrics.exists() and metrics.read_text().count("\n") >= 1:
                for process in psutil.process_iter(["cmdline"]):
                    if "ray::FeatureServer" in " ".join(process.info["cmdline"] or []):
                        killed.update(pid=process.pid, steps_logged=metrics.read_text().count("\n"))
                        os.kill(process.pid, signal.SIGKILL)
                        break
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_streamed_training_survives_a_killed_feature_server_with_the_cached_runs_losses(captured, tiny_llama,
                                                                                       ray_session):
    """The feature server is SIGKILLed after the first of 12 steps: Ray restarts it and asks it again for the
    requests it held, the stage finishes, and every step's losses equal the cached run's (which equal an
    uninterrupted streamed run's: same features, same batches, same order); nothing is written to disk."""
    steps = 12
    run_stage(_recipe(captured, tiny_llama, "cached", steps=steps), "train")
    cached_losses = [json.loads(line)["loss"] for line in RunFolder(captured / "out").metrics.read_text().splitlines()]
    streamed_folder = captured.parent / f"{captured.name}-streamed"
    streamed_folder.mkdir()
    recipe = _recipe(streamed_folder, tiny_llama, "streamed", steps=steps)
    for stage in ("synthesize", "tokenize", "calibrate"):
        run_stage(recipe, stage)
    run = RunFolder(streamed_folder / "out")
    killed: dict = {}
    watcher = _kill_a_feature_server_once_training_runs(run.metrics, killed)
    result = run_stage(recipe, "train")
    watcher.join(timeout=5)
    assert "pid" in killed and killed["steps_logged"] < steps, killed  # killed while training went on
    assert result["counts"]["streamed_restarted"] == 1 and result["counts"]["streamed_lost"] == 0, result["counts"]
    streamed_losses = [json.loads(line)["loss"] for line in run.metrics.read_text().splitlines()]
    assert len(streamed_losses) == len(cached_losses) == steps
    assert all(loss[0] > 0.1 for loss in cached_losses)  # real labels: not a comparison of zeros
    for step, (a, b) in enumerate(zip(streamed_losses, cached_losses)):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), f"step {step + 1}: streamed {a}, cached {b}"
    manifest = json.loads(run.manifest_file(TRAIN).read_text())
    assert manifest["metrics"]["train_config"]["features"] == "streamed"
    train = json.loads(RunFolder(captured / "out").manifest_file(TRAIN).read_text())["metrics"]["train_config"]
    # the restarted server alone served at least the steps after the kill, less the two asked for ahead
    after_kill = steps - killed["steps_logged"] - 2
    assert result["counts"]["streamed_sequences"] >= after_kill * train["batch_size"] * train["grad_accum"]
    assert not list(run.root.rglob(f"{FEATURE_SHARDS}/*.safetensors")) and not list(run.root.rglob(HEAD_FILE))


class _Recorded:
    """A feature server's handle that notes which server each request went to."""

    def __init__(self, index: int, handle, log: list[int]):
        self.index, self.handle, self.log = index, handle, log

    @property
    def features(self):
        def remote(folder, indices):
            self.log.append(self.index)
            return self.handle.features.remote(folder, indices)

        return type("Method", (), {"remote": staticmethod(remote)})


def test_workers_in_lockstep_keep_every_server_busy_with_equal_shares(captured, tiny_llama, ray_session):
    """Two workers stepping in lockstep, two requests out each, four real servers: the four requests out at once go
    to four different servers (each rank starts at its own server), and over the run each server serves an equal
    share, within one."""
    from eagle_recipes.engines.capture import CaptureSpec
    from eagle_recipes.engines.feature_server import RayFeatureServers, start_feature_servers, stop_feature_servers
    from eagle_recipes.training.batches import planned_micro_batches, steps_per_epoch
    from eagle_recipes.training.streamed import StreamedTarget

    config = _train_config(captured, tiny_llama, "streamed", in_flight=2)
    sequences = Sequences.load(config.data_folder)
    per_epoch = steps_per_epoch(sequences.count, 2, 1, config.batch_size)
    servers = start_feature_servers(CaptureSpec.from_dict(config.feature_servers["spec"]), 4, {"num_cpus": 0.5})
    logs: list[list[int]] = [[], []]
    try:
        workers, plans = [], []
        for rank in (0, 1):
            handles = [_Recorded(i, handle, logs[rank]) for i, handle in enumerate(servers)]
            target = StreamedTarget(config, torch.arange(300), torch.device("cpu"), torch.float32,
                                    RayFeatureServers(handles, first=rank * config.feature_settings["in_flight"]),
                                    config.data_folder)
            plan = list(planned_micro_batches(sequences.count, 0, per_epoch, 0, 2 * per_epoch, rank, 2, 1,
                                             config.batch_size))
            target.expect(plan)
            workers.append(target)
            plans.append(plan)
        for step in range(len(plans[0])):
            for target, plan in zip(workers, plans):
                target.outputs(*_batch(sequences, plan[step]), plan[step])
            out_now = [server for target, log in zip(workers, logs) for server in log[len(log) - len(target.pending):]]
            assert len(out_now) == len(set(out_now)), (step, out_now)  # no server holds two of them
            if step == 0:
                assert sorted(out_now) == [0, 1, 2, 3]
    finally:
        served = stop_feature_servers(servers)
    shares = [sum(log.count(i) for log in logs) for i in range(4)]
    assert max(shares) - min(shares) <= 1 and sum(shares) == served["requests"], shares


def test_a_worker_keeps_at_most_the_bound_in_flight_and_two_epochs_ask_for_every_sequence_twice(captured, tiny_llama,
                                                                                                ray_session):
    from eagle_recipes.engines.capture import CaptureSpec
    from eagle_recipes.engines.feature_server import RayFeatureServers, start_feature_servers, stop_feature_servers
    from eagle_recipes.training.batches import planned_micro_batches, steps_per_epoch
    from eagle_recipes.training.streamed import StreamedTarget

    config = _train_config(captured, tiny_llama, "streamed", in_flight=3)
    sequences = Sequences.load(config.data_folder)
    per_epoch = steps_per_epoch(sequences.count, 1, 1, config.batch_size)
    servers = start_feature_servers(CaptureSpec.from_dict(config.feature_servers["spec"]), 2, {"num_cpus": 1})
    try:
        target = StreamedTarget(config, torch.arange(300), torch.device("cpu"), torch.float32,
                                RayFeatureServers(servers), config.data_folder)
        target.expect(planned_micro_batches(sequences.count, 0, per_epoch, 0, 2 * per_epoch, 0, 1, 1, 2))
        seen = []
        for indices in planned_micro_batches(sequences.count, 0, per_epoch, 0, 2 * per_epoch, 0, 1, 1, 2):
            target.outputs(*_batch(sequences, indices), indices)
            assert len(target.pending) <= 3
            seen += indices
    finally:
        served = stop_feature_servers(servers)
    assert target.most_in_flight == 3  # it did ask ahead, up to the bound and never past it
    epoch_size = per_epoch * config.batch_size
    assert len(seen) == served["sequences"] == target.requested_sequences == 2 * epoch_size
    assert sorted(seen[:epoch_size]) == sorted(seen[epoch_size:])  # every sequence of an epoch, again
    assert served["requests"] == 2 * per_epoch


def test_the_stream_cache_reads_back_what_was_served_and_asks_for_the_rest(captured, tiny_llama):
    from eagle_recipes.engines.feature_server import FeatureServer, LocalFeatureServers
    from eagle_recipes.training.streamed import StreamedTarget

    sequences = Sequences.load(RunFolder(captured / "out").sequences)
    # room for about half the training split's features: (2 aux + final) x 64 floats + a top id per token
    half = sequences.head(sequences.count // 2).tokens * (3 * 64 * 4 + 4) / 2**30
    config = _train_config(captured, tiny_llama, "streamed", cache_gib=half)
    server = FeatureServer(config.feature_servers["spec"], torch.device("cpu"))
    target = StreamedTarget(config, torch.arange(300), torch.device("cpu"), torch.float32, LocalFeatureServers(server),
                            config.data_folder)
    first = {}
    for index in range(sequences.count):
        first[index] = target.outputs(*_batch(sequences, [index]), [index])
    asked = server.served_counts()["sequences"]
    assert asked == sequences.count and 0 < len(target.cache.rows) < sequences.count
    for index in range(sequences.count):
        again = target.outputs(*_batch(sequences, [index]), [index])
        if (config.data_folder, index) in target.cache:
            assert torch.equal(again.hidden, first[index].hidden) and torch.equal(again.draft_logits,
                                                                                 first[index].draft_logits)
    assert target.cache.hits == len(target.cache.rows)
    assert server.served_counts()["sequences"] == asked + sequences.count - len(target.cache.rows)


def test_a_feature_server_dead_for_good_is_named_with_its_cause(captured, tiny_llama, ray_session):
    import ray

    from eagle_recipes.engines.capture import CaptureSpec
    from eagle_recipes.engines.feature_server import (FeatureServerLost, RayFeatureServers, start_feature_servers,
                                                      stop_feature_servers)

    config = _train_config(captured, tiny_llama, "streamed")
    servers = start_feature_servers(CaptureSpec.from_dict(config.feature_servers["spec"]), 2, {"num_cpus": 0.5})
    ray.kill(servers[1], no_restart=True)  # as one that died more often than Ray restarts it
    routed = RayFeatureServers(servers)
    assert routed.result(routed.submit(config.data_folder, [0], turn=0))["lengths"]  # the live one answers
    with pytest.raises(FeatureServerLost, match=r"feature server 2 of 2 is dead for good .*last cause: .*killed by `ray.kill`.* run again to resume"):
        routed.result(routed.submit(config.data_folder, [0], turn=1))
    assert stop_feature_servers(servers)["lost"] == 1
