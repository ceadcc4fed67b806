"""Engines: what runs the base model.

- generation.py: an in-process vLLM engine and any OpenAI-compatible server (synthesis);
- capture.py / capture_vllm.py: the base model's features for cached training (a transformers forward, or
  vLLM's hidden-state extractor);
- actor_pool.py: shards of work through Ray Data actors that each hold one engine;
- placement.py: the Ray resources of an engine's actor and the settings a CPU vLLM engine needs.
"""
