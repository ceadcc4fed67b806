"""The distributed paths that run without a GPU, on CPU twins: FSDP2 on two gloo workers against DDP (loss and
weights), an FSDP checkpoint resumed to identical weights, bfloat16 autocast steps against float32, and the
placement of GPU recipes on a Ray cluster that declares GPUs. What is left to a GPU machine: NCCL itself and CUDA
kernels (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from eagle_recipes.manifest import IN_PROGRESS, MANIFEST
from eagle_recipes.run_folder import CALIBRATE, CHECKPOINT_PREFIX, TOKENIZE, TRAIN, RunFolder
from tests.helpers import override_recipe, run_stage, small_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out

# FSDP2 reduce-scatters what DDP all-reduces: the same sums in another order (float32)
LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = dict(atol=2e-5, rtol=1e-4)


def _train(folder, model, strategy: str, steps: int = 8, every: int = 5):
    recipe = override_recipe(small_recipe(folder, model, steps=steps), "train.cpus_per_worker=1",
                             "train.num_workers=2", f"train.strategy={strategy}",
                             f"train.checkpoint_every={every}", "train.keep_checkpoints=3")
    for stage in ("synthesize", "tokenize", "calibrate", "train"):
        run_stage(recipe, stage)
    return recipe


def _weights(folder):
    return load_file(str(RunFolder(folder / "out").trained / "model.safetensors"))


def _losses(folder):
    rows = RunFolder(folder / "out").metrics.read_text().splitlines()
    return [loss for line in rows for loss in json.loads(line)["loss"]]  # every TTT step of every step


def test_fsdp_on_two_cpu_workers_matches_ddp(tmp_path, tiny_llama, ray_session):
    results = {}
    for strategy in ("ddp", "fsdp"):
        folder = tmp_path / strategy
        folder.mkdir()
        _train(folder, tiny_llama, strategy)
        results[strategy] = (_weights(folder), _losses(folder))
    (ddp_weights, ddp_losses), (fsdp_weights, fsdp_losses) = results["ddp"], results["fsdp"]
    assert len(ddp_losses) == 8 * 2 and all(loss > 0.1 for loss in ddp_losses)  # real labels: weights moved
    assert fsdp_losses == pytest.approx(ddp_losses, rel=LOSS_TOLERANCE)
    assert set(fsdp_weights) == set(ddp_weights)  # the gathered state has the draft's own names
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(fsdp_weights[name], tensor, **WEIGHT_TOLERANCE, msg=name)


def test_fsdp_checkpoint_resumes_to_identical_weights(tmp_path, tiny_llama, ray_session):
    recipe = _train(tmp_path, tiny_llama, "fsdp", steps=8, every=4)
    uninterrupted = _weights(tmp_path)
    run = RunFolder(tmp_path / "out")
    train = run.stage(TRAIN)
    # what a kill after step 4's checkpoint leaves: no manifest, the in-progress marker, no later checkpoint
    fingerprint = json.loads((train / MANIFEST).read_text())["fingerprint"]
    (train / MANIFEST).unlink()
    (train / IN_PROGRESS).write_text(fingerprint)
    for later in sorted(run.checkpoints.glob(f"{CHECKPOINT_PREFIX}*"))[1:]:
        __import__("shutil").rmtree(later)
    result = run_stage(recipe, "train")
    assert result["counts"]["resumed_from_step"] == 4 and result["counts"]["steps_this_run"] == 4
    resumed = _weights(tmp_path)
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name


def test_bf16_autocast_steps_on_cpu_match_float32(tmp_path, tiny_llama, ray_session):
    """The bfloat16 path GPUs take (autocast; float32 weights and optimizer), on a CPU, against float32."""
    from eagle_recipes.recipe import load_recipe
    from eagle_recipes.stages.train import prepare_training
    from eagle_recipes.training.loop import setup, train_step

    path = small_recipe(tmp_path, tiny_llama)
    for stage in ("synthesize", "tokenize", "calibrate"):
        run_stage(path, stage)
    recipe = load_recipe(path)
    upstream = {name: RunFolder(recipe.output_dir).stage(name) for name in (TOKENIZE, CALIBRATE)}
    config = prepare_training(recipe, upstream, tmp_path, *RunFolder.trial_training_files(tmp_path), simulate=False,
                              log=print).config
    assert config.precision == "float32"  # auto, on a CPU
    runs = {}
    for precision in ("float32", "bfloat16"):
        training = setup(replace(config, precision=precision), rank=0, world=1, local_rank=0)
        runs[precision] = ([train_step(training)["loss"] for _ in range(6)], training.draft.state_dict())
    (losses32, weights32), (losses16, weights16) = runs["float32"], runs["bfloat16"]
    assert losses32[0] != losses16[0]  # bfloat16 really computed
    for step32, step16 in zip(losses32, losses16):
        assert step16 == pytest.approx(step32, rel=0.03), (losses32, losses16)
    for name, tensor in weights32.items():  # weights stay float32 and end close
        assert weights16[name].dtype == torch.float32
        assert float((weights16[name] - tensor).abs().max()) < 0.02, name


def test_gpu_recipes_are_placed_on_a_cluster_that_declares_gpus():
    """Scheduling as on a GPU cluster (Ray told it has 4 GPUs): engine actors take one GPU each, a tensor-parallel
    engine gets a placement group of one GPU bundle per rank, and training asks one GPU per worker."""
    import ray

    from eagle_recipes.engines.actor_pool import TaskActor, run_in_actor_pool
    from eagle_recipes.engines.placement import capture_placement, cluster_has_gpus, engine_placement
    from eagle_recipes.training.trainer import scaling_config

    class GPUProbe(TaskActor):
        def run_task(self, task: dict) -> dict:
            return {"task": task["index"], "gpus": [int(i) for i in ray.get_gpu_ids()],
                    "actor": ray.get_runtime_context().get_actor_id()}

    ray.shutdown()
    ray.init(num_cpus=8, num_gpus=4, include_dashboard=False)
    try:
        assert cluster_has_gpus()
        assert capture_placement("hf", 1, True) == {"num_gpus": 1}
        results = list(run_in_actor_pool(GPUProbe, [{"index": i} for i in range(8)], 4, {},
                                         engine_placement(1, True)))
        assert sorted(r["task"] for r in results) == list(range(8))
        by_actor = {r["actor"]: tuple(r["gpus"]) for r in results}  # Ray Data may use fewer actors than the pool
        assert 1 <= len(by_actor) <= 4 and all(len(gpus) == 1 for gpus in by_actor.values())
        assert len(set(by_actor.values())) == len(by_actor)  # each engine actor its own GPU
        tensor_parallel = engine_placement(2, True)
        assert tensor_parallel["num_gpus"] == 0  # the engine's workers take the GPUs, in the group
        group = tensor_parallel["ray_remote_args_fn"]()["scheduling_strategy"].placement_group
        ray.get(group.ready(), timeout=60)
        assert ray.util.placement_group_table(group)["bundles"] == {0: {"GPU": 1.0, "CPU": 1.0},
                                                                    1: {"GPU": 1.0, "CPU": 1.0}}
        scaling = scaling_config(use_gpu=True, num_workers=4, cpus_per_worker=2)
        assert scaling.num_workers == 4 and scaling.total_resources == {"GPU": 4, "CPU": 4}
    finally:
        ray.shutdown()
