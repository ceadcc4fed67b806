"""Generation engines for synthesis: an in-process vLLM engine (held by Ray Data actors, data parallel), or any
OpenAI-compatible server (`vllm serve`, SGLang). Both take rendered prompt ids and return replies. Where an engine
runs and the settings it needs on a CPU: placement.py."""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    stop_at_newline: bool = False  # self prompts: one line of user text


@dataclass(frozen=True)
class Reply:
    text: str
    truncated: bool
    tokens: int


class VLLMGenerator:
    """One in-process vLLM engine: rendered prompt ids in, replies out. The synthesize stage holds one per Ray Data
    actor for a whole pass (starting one costs ~20 s on a CPU, minutes for a large model on GPUs)."""

    def __init__(self, model: str, dtype: str, tensor_parallel_size: int, engine_kwargs: dict, seed: int):
        from vllm import LLM

        from eagle_recipes.engines.placement import vllm_engine_kwargs

        kwargs: dict[str, Any] = dict(model=model, tensor_parallel_size=tensor_parallel_size, seed=seed,
                                      **vllm_engine_kwargs(model, dtype))
        if tensor_parallel_size > 1:
            # the engine's workers go into the placement group its actor was scheduled in (engine_placement)
            kwargs["distributed_executor_backend"] = "ray"
        kwargs.update(engine_kwargs)
        self.llm = LLM(**kwargs)

    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling) -> list[Reply]:
        from vllm import SamplingParams

        # one seed per request: identical prompts (self prompts) must not sample identical text
        params = [SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=sampling.max_tokens, seed=sampling.seed + index,
                                 stop=["\n"] if sampling.stop_at_newline else None)
                  for index in range(len(prompt_token_ids))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_token_ids], params,
                                    use_tqdm=False)
        return [Reply(o.outputs[0].text, o.outputs[0].finish_reason == "length", len(o.outputs[0].token_ids))
                for o in outputs]


class ServerError(RuntimeError):
    pass


class OpenAIEngine:
    """An OpenAI-compatible server: /v1/completions with the rendered prompt, so the chat template is exactly
    the one training uses. Bounded concurrency; retries with exponential backoff on 429/5xx/connection errors."""

    RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

    def __init__(self, base_url: str, model: str, api_key_env: str, concurrency: int, timeout_s: float,
                 max_retries: int, tokenizer: Any):
        self.base_url = base_url.rstrip("/")
        self.api_key = os.environ.get(api_key_env, "")  # read here, never written anywhere
        self.timeout_s, self.max_retries, self.concurrency = timeout_s, max_retries, concurrency
        self.tokenizer = tokenizer
        self.model = model or self._first_model()

    def _request(self, path: str, body: dict | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers,
                                         method="POST" if body is not None else "GET")
        for attempt in range(self.max_retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                if error.code not in self.RETRY_STATUS or attempt == self.max_retries:
                    raise ServerError(f"{self.base_url}{path}: HTTP {error.code}: {error.read()[:300]!r}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                if attempt == self.max_retries:
                    raise ServerError(f"{self.base_url}{path}: {error}") from None
            time.sleep(min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _first_model(self) -> str:
        models = self._request("/models", None).get("data", [])
        if not models:
            raise ServerError(f"{self.base_url}/models lists no model; set synthesis.openai.model")
        return models[0]["id"]

    def _one(self, prompt_ids: list[int], sampling: Sampling) -> Reply:
        body = {"model": self.model, "prompt": prompt_ids, "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed}
        if sampling.stop_at_newline:
            body["stop"] = ["\n"]
        choice = self._request("/completions", body)["choices"][0]
        text = choice.get("text", "")
        tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return Reply(text, choice.get("finish_reason") == "length", tokens)

    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling) -> list[Reply]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda item: self._one(item[1], replace(sampling, seed=sampling.seed + item[0])),
                                 enumerate(prompt_token_ids)))
