"""The `vllm` capture engine: vLLM's own hidden-state extractor.

vLLM runs the base model with the `extract_hidden_states` speculative method, which keeps the requested layers'
states in a cache-only layer, and a KV connector writes each finished request's states to a safetensors file.
Layer id k is the residual stream entering decoder layer k (0 = the embeddings; equal to transformers'
`hidden_states[k]`), and id L (= num_hidden_layers) the stream after the last layer, before the final norm: the
convention vLLM uses when it serves an EAGLE-3 draft. This actor applies the final norm and the LM head itself.

GPUs only: the CPU build's connector dies at its first save (its copy goes through pinned memory:
`pin_memory=True requires a CUDA or other accelerator backend`). A subclass that copies synchronously gets past
that, but then generation never finishes on the CPU build (the request is never reported done) and the CPU KV
cache uses the LBHNC layout, which the connector's extraction does not index; so CPUs capture with `hf`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eagle_recipes.devices import compute_dtype, has_gpu_here
from eagle_recipes.draft.drafters import reads_aux_states


class VLLMCaptureEngine:
    def __init__(self, spec):
        from vllm import LLM
        from vllm.config import KVTransferConfig

        from eagle_recipes.data.feature_cache import head_tensors
        from eagle_recipes.models import base_model_facts

        facts = base_model_facts(spec.model_path)
        self.spec, self.eps = spec, facts.rms_norm_eps
        self.layer_ids = (list(spec.aux_layer_ids) if reads_aux_states(spec.algorithm) else []) + [facts.num_hidden_layers]
        # the engine's files, read at once and removed: in /dev/shm (memory) where there is one, so a feature server
        # of streamed training writes nothing to disk
        shared_memory = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.storage = Path(tempfile.mkdtemp(prefix="eagle-recipes-states-", dir=shared_memory))
        kwargs: dict[str, Any] = dict(
            model=spec.model_path, tensor_parallel_size=spec.tensor_parallel_size,
            enable_chunked_prefill=False, enable_prefix_caching=False,  # prefix caching would cut states short
            speculative_config={"method": "extract_hidden_states", "num_speculative_tokens": 1,
                                "draft_model_config": {"hf_config": {
                                    "eagle_aux_hidden_state_layer_ids": self.layer_ids}}},
            kv_transfer_config=KVTransferConfig(
                kv_connector="ExampleHiddenStatesConnector", kv_role="kv_producer",
                kv_connector_extra_config={"shared_storage_path": str(self.storage),
                                           "use_synchronization_lock": True}))
        if not has_gpu_here():
            raise RuntimeError('capture.engine = "vllm" needs GPUs (the CPU build cannot save hidden states); '
                               'use capture.engine = "hf" on CPUs')
        if spec.tensor_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "ray"
        self.llm = LLM(**kwargs)
        device = torch.device("cuda")
        compute = compute_dtype(device)
        head = head_tensors(spec.model_path)
        self.norm = head["norm"].to(device, torch.float32)
        self.lm_head = head["lm_head"].to(device, compute)
        self.device, self.compute = device, compute

    def capture(self, sequences: list[np.ndarray]) -> list[dict]:
        from vllm import SamplingParams
        from vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector import (
            cleanup_hidden_states,
            load_hidden_states,
        )

        from eagle_recipes.draft.target import top_tokens

        outputs = self.llm.generate([{"prompt_token_ids": ids.tolist()} for ids in sequences],
                                    SamplingParams(max_tokens=1), use_tqdm=False)
        rows = []
        for ids, output in zip(sequences, outputs):
            path = output.kv_transfer_params["hidden_states_path"]
            states = load_hidden_states(path)["hidden_states"]  # [T, layers, H], ascending layer ids
            cleanup_hidden_states(path)
            if states.shape[0] != len(ids):
                raise RuntimeError(f"vLLM returned states for {states.shape[0]} of {len(ids)} tokens")
            raw_final = states[:, -1].to(self.device, torch.float32)
            final = raw_final * torch.rsqrt(raw_final.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm
            final = final.to(self.compute)
            top = top_tokens(lambda x: x @ self.lm_head.T, final)
            hidden = states[:, :-1].reshape(len(ids), -1) if reads_aux_states(self.spec.algorithm) else final
            rows.append({"hidden": hidden.cpu(), "final": final.cpu(), "top": top.cpu()})
        return rows

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "storage", ""), ignore_errors=True)

