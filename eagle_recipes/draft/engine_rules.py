"""Each serving engine's rules for a draft folder: which base-model layers it feeds the draft, and whether it loads
the folder at all. Read from the engines' own source (vLLM 0.32, SGLang 0.5.23); export, `inspect`, `eval` and the
tests ask these functions, nothing else spells the rules out.

Our numbering (the recipe's `aux_layer_ids`, training, capture): id k is the hidden state *entering* decoder layer
k, that is Hugging Face's `output_hidden_states[k]` (0 = the embeddings). vLLM numbers the same way. SGLang adds 1
to every EAGLE-3 id a draft supplies (its id k is the *output* of layer k), and so do the trainers that target it
(SpecForge, ModelOpt: `[1, L//2-1, L-4]` for our `[2, L//2, L-3]`). An export therefore writes vLLM's numbering at
the top level (both vLLM runners read it first) and SGLang's inside `eagle_config` (the only place SGLang reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# how an export names its layers (the export stage fingerprints it: a folder written before is written again)
EXPORTED_NUMBERING = "vLLM's at the top level, SGLang's in eagle_config"
VLLM_V1, VLLM_V2, SGLANG = "vLLM V1", "vLLM V2", "SGLang"
ENGINES = (VLLM_V1, VLLM_V2, SGLANG)  # vLLM's CPU build runs V1; V2 is vLLM's default for EAGLE-3 on GPUs
TOP_KEY = "eagle_aux_hidden_state_layer_ids"
FINAL_STATE = "the final hidden state"  # what every engine feeds a drafter that reads no aux states (EAGLE-1)
Layers = tuple[int, ...]


@dataclass(frozen=True)
class Reading:
    """What one engine makes of a draft folder: the layers it feeds the draft (our numbering; None: its default
    `(2, L//2, L-3)` of the base's L layers), where it found them, or why it does not load the folder."""

    engine: str
    layers: Layers | None = None
    found_in: str = ""
    cannot_load: str = ""


def _ids(value: Any) -> Layers | None:
    return tuple(int(i) for i in value) if isinstance(value, (list, tuple)) and value else None


def _nested(config: dict, table: str, key: str) -> Layers | None:
    inner = config.get(table)
    return _ids(inner.get(key)) if isinstance(inner, dict) else None


def vllm_v1_layers(config: dict) -> tuple[Layers | None, str]:
    """vLLM's V1 runner (`v1/worker/gpu_model_runner.py`, `_get_eagle3_aux_layers_from_config`; the CPU build's
    `cpu_model_runner.py` subclasses it): the top-level key; else `dflash_config.target_layer_ids` + 1, overridden by
    `eagle_config`'s key when there is one; else the target's default."""
    top = _ids(config.get(TOP_KEY))
    if top:
        return top, TOP_KEY
    layers, found_in = None, "its default"
    dflash = _nested(config, "dflash_config", "target_layer_ids")
    if dflash:
        layers, found_in = tuple(i + 1 for i in dflash), "dflash_config.target_layer_ids + 1"
    nested = _nested(config, "eagle_config", TOP_KEY)
    if nested:
        layers, found_in = nested, f"eagle_config.{TOP_KEY}"
    return layers, found_in


def vllm_v2_layers(config: dict) -> tuple[Layers | None, str]:
    """vLLM's V2 runner (`v1/worker/gpu/spec_decode/eagle/eagle3_utils.py`, `get_eagle3_aux_layers_from_config`):
    the top-level key; else `dflash_config.target_layer_ids` + 1; never `eagle_config`'s ids."""
    top = _ids(config.get(TOP_KEY))
    if top:
        return top, TOP_KEY
    dflash = _nested(config, "dflash_config", "target_layer_ids")
    if dflash:
        return tuple(i + 1 for i in dflash), "dflash_config.target_layer_ids + 1"
    return None, "its default"


def sglang_layers(config: dict) -> tuple[Layers | None, str]:
    """SGLang: EAGLE-3 ids from `eagle_config` only (`model_runner_components/spec_aux_hidden_state.py`), each + 1
    (`set_eagle3_layers_to_capture` in `srt/models/llama.py`, `qwen2.py`, `qwen3.py`, `gemma3_causal.py`), its
    default `[2, L//2, L-3]` without them; DFlash's `dflash_config.target_layer_ids` + 1
    (`set_dflash_layers_to_capture`)."""
    dflash = _nested(config, "dflash_config", "target_layer_ids")
    if dflash:
        return tuple(i + 1 for i in dflash), "dflash_config.target_layer_ids + 1"
    nested = _nested(config, "eagle_config", TOP_KEY)
    if nested:
        return tuple(i + 1 for i in nested), f"eagle_config.{TOP_KEY} + 1"
    return None, "its default"


def trained_layers(config: dict) -> tuple[Layers | None, str]:
    """The layers a folder says it was trained on, in our numbering: the top-level key (vLLM's numbering, as we,
    EAGLE and speculators write it); else DFlash's `target_layer_ids` + 1; else ids nested in `eagle_config` alone,
    which SpecForge and ModelOpt write in SGLang's numbering (+ 1). None: the folder names none."""
    top = _ids(config.get(TOP_KEY))
    if top:
        return top, f"top-level {TOP_KEY}"
    dflash = _nested(config, "dflash_config", "target_layer_ids")
    if dflash:
        return tuple(i + 1 for i in dflash), "dflash_config.target_layer_ids (+ 1)"
    nested = _nested(config, "eagle_config", TOP_KEY)
    if nested:
        return tuple(i + 1 for i in nested), f"eagle_config.{TOP_KEY} alone: SGLang's numbering, as SpecForge " \
                                              "and ModelOpt write it (+ 1)"
    return None, "none written"


def default_layers_could_be(layers: Layers) -> bool:
    """Whether `layers` equal an engine's default `(2, L//2, L-3)` for some base of L layers (both engines'
    defaults land on the same physical layers)."""
    if len(layers) != 3 or layers[0] != 2:
        return False
    num_layers = layers[2] + 3
    return layers[1] == num_layers // 2


def export_fields(aux_layer_ids: Layers) -> tuple[dict[str, Any], dict[str, Any]]:
    """(top-level fields, `eagle_config` fields) that make every engine read `aux_layer_ids` (our numbering)."""
    ids = [int(i) for i in aux_layer_ids]
    return {TOP_KEY: ids}, {TOP_KEY: [i - 1 for i in ids]}


def sglang_cannot_load(config: dict, facts: dict[str, Any]) -> str:
    """Why SGLang would not serve this folder as it was trained ('' when it does). SGLang 0.5.23 loads EAGLE-3
    drafts as `LlamaForCausalLMEagle3` only (`srt/models/llama_eagle3.py`: Llama attention, no q/k norms, the
    residual taken before hidden_norm); what each layout adds to that is its `sglang_refusal` (draft/layouts/)."""
    if facts.get("sglang_refusal"):
        return facts["sglang_refusal"]
    if facts.get("qk_norm"):
        return ("SGLang loads EAGLE-3 drafts as LlamaForCausalLMEagle3 only: no Qwen3-style layer "
                "(set draft.overrides.qk_norm = false)")
    if facts.get("norm_before_residual"):
        return ("SGLang's EAGLE-3 layer takes the residual before hidden_norm "
                "(set draft.overrides.norm_before_residual = false)")
    layers, _ = trained_layers(config)
    if layers and min(layers) < 1:
        return "SGLang names layer outputs: it cannot feed the embeddings (aux id 0); use ids from 1"
    return ""


def readings(config: dict, facts: dict[str, Any]) -> list[Reading]:
    """Each engine's reading of a folder (`facts`: its layout's, draft/layouts/config_facts; a drafter that reads no
    aux states is fed the final state by every engine)."""
    out = []
    for engine, rule in ((VLLM_V1, vllm_v1_layers), (VLLM_V2, vllm_v2_layers), (SGLANG, sglang_layers)):
        cannot = sglang_cannot_load(config, facts) if engine == SGLANG else ""
        if cannot:
            out.append(Reading(engine, cannot_load=cannot))
            continue
        reads_aux = facts.get("reads_aux_states", True)
        layers, found_in = rule(config) if reads_aux else (None, FINAL_STATE)
        out.append(Reading(engine, layers, found_in))
    return out


def misread(reading: Reading, trained: Layers | None) -> str:
    """Why an engine that loads a folder would feed it other layers than it was trained on ('' when it would not,
    or when that cannot be known without the base model: its default against ids that could be a default)."""
    if reading.cannot_load or trained is None:
        return ""
    if reading.layers is None:
        if default_layers_could_be(trained):
            return ""
        return (f"{reading.engine} would feed its default layers (2, L//2, L-3), not the trained {list(trained)}: "
                f"it reads them from {TOP_KEY} at the top level")
    if tuple(reading.layers) != tuple(trained):
        return (f"{reading.engine} would feed layers {list(reading.layers)} ({reading.found_in}), not the trained "
                f"{list(trained)}")
    return ""


def reading_line(reading: Reading, trained: Layers | None) -> str:
    """One line of `inspect`: what an engine feeds the draft, and whether that is what it was trained on."""
    if reading.cannot_load:
        return f"{reading.engine}: does not load it ({reading.cannot_load})"
    if reading.found_in == FINAL_STATE:
        return f"{reading.engine}: feeds {FINAL_STATE}"
    where = "its default (2, L//2, L-3)" if reading.layers is None else f"{list(reading.layers)} ({reading.found_in})"
    problem = misread(reading, trained)
    verdict = "NOT as trained" if problem else ("as trained" if trained is not None else "")
    return f"{reading.engine}: feeds the hidden states entering layers {where}" + (f": {verdict}" if verdict else "")


def engines_that_serve(config: dict, facts: dict[str, Any]) -> list[str]:
    """The engines ("vllm", "sglang") that load this folder and feed it the layers it was trained on; vLLM counts
    when both of its runners do."""
    trained, _ = trained_layers(config)
    by_engine = {r.engine: r for r in readings(config, facts)}
    ok = {name: not by_engine[name].cannot_load and not misread(by_engine[name], trained) for name in ENGINES}
    return [name for name, good in (("vllm", ok[VLLM_V1] and ok[VLLM_V2]), ("sglang", ok[SGLANG])) if good]
