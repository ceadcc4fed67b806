"""Where an engine runs and with which settings: the Ray resources of the actor or task that holds one, and the
settings every in-process vLLM engine needs on a CPU (synthesis, capture and evaluation alike)."""

from __future__ import annotations

import os
from typing import Any

from eagle_recipes.devices import engine_dtype, has_gpu_here

# vLLM's CPU build reserves its KV cache from RAM: 1 GiB is plenty for small models and fits a laptop.
CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                  # in-process engine: no separate scheduler process needs a core of its own
                  "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def engine_log_env(verbose: bool = False) -> dict[str, str]:
    """vLLM's own log level: its errors only, unless the user asked to see everything."""
    return {"VLLM_LOGGING_LEVEL": "INFO" if verbose else "ERROR"}


def cpu_engine_env(verbose: bool = False) -> dict[str, str]:
    """Environment of a process that holds a CPU vLLM engine: the CPU build's settings, every core for torch."""
    return {**CPU_ENGINE_ENV, **engine_log_env(verbose), "OMP_NUM_THREADS": str(os.cpu_count() or 1)}


def apply_engine_env(verbose: bool = False) -> None:
    """Set the engine environment in this process before an engine starts (values already set win)."""
    for key, value in (engine_log_env(verbose) if has_gpu_here() else cpu_engine_env(verbose)).items():
        os.environ.setdefault(key, value)


def vllm_engine_kwargs(model: str, dtype: str) -> dict[str, Any]:
    """`vllm.LLM` settings every in-process engine here needs (synthesis and evaluation alike)."""
    on_gpu = has_gpu_here()
    chosen = engine_dtype(dtype, on_gpu)
    if on_gpu:
        return {} if chosen == "auto" else {"dtype": chosen}
    return dict(
        dtype=chosen, enforce_eager=True, gpu_memory_utilization=0.3,
        max_model_len=cpu_max_model_len(model),
        # a chunked prefill's discarded sample rewinds the request's seeded generator, which a CPU generator
        # cannot do ("CPU Generator does not use offset"): any seeded pass that vLLM chunks would crash
        enable_chunked_prefill=False)


def cpu_max_model_len(model: str, cap: int = 4096) -> int:
    """A context length whose KV cache fits the 1 GiB a CPU engine reserves (the model's own if smaller)."""
    from eagle_recipes.models import base_model_facts

    try:
        return min(cap, int(base_model_facts(model).max_position_embeddings or cap))
    except Exception:  # noqa: BLE001 - a Hub id offline: keep the cap
        return cap


def cluster_has_gpus() -> bool:
    import ray

    return bool(ray.cluster_resources().get("GPU", 0))


def engine_placement(tensor_parallel_size: int, on_gpus: bool) -> dict[str, Any]:
    """Ray resources for the actor or task that holds one vLLM engine (map_batches' or `.options` remote args).

    CPU: one core, and the CPU build's settings in the process's environment. One GPU: the actor takes it. Several
    (tensor parallel): the actor takes none itself and is placed in a placement group of one GPU bundle per
    tensor-parallel rank, which vLLM's Ray executor fills with its workers (as Ray Data LLM does). The GPU branches
    are tested for their shape only on CPU machines (tests/test_fsdp.py); they run on GPU clusters.
    """
    if not on_gpus:
        return {"num_cpus": 1, "runtime_env": {"env_vars": cpu_engine_env()}}
    if tensor_parallel_size == 1:
        return {"num_gpus": 1}

    def placement_group_strategy() -> dict[str, Any]:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = ray.util.placement_group([{"GPU": 1, "CPU": 1}] * tensor_parallel_size, strategy="PACK")
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            group, placement_group_capture_child_tasks=True)}

    return {"num_gpus": 0, "ray_remote_args_fn": placement_group_strategy}


def capture_placement(engine: str, tensor_parallel_size: int, on_gpus: bool) -> dict[str, Any]:
    """Ray resources of a capture actor: vLLM's extractor as any vLLM engine; a transformers forward on one GPU,
    or one CPU core (it sizes its own threads)."""
    if engine == "vllm":
        return engine_placement(tensor_parallel_size, on_gpus)
    return {"num_gpus": 1} if on_gpus else {"num_cpus": 1}
