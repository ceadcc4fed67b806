"""Export: write the trained draft in a layout vLLM and SGLang load, and check it key by key.

Serving engines do not check completeness (a missing tensor keeps its random init, a stray bias is dropped
without a word), so every export is compared with the exact key set, shapes and dtypes the layout needs.
The same check is `eagle-recipes inspect DRAFT_DIR`, for drafts made elsewhere too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eagle_recipes.atomic import atomic_path, write_json, write_text
from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.recipe import Recipe
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.stages.common import base_model_path

DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
LAYOUTS = ("flat", "speculators", "eagle1")


# ---------------------------------------------------------------- expected tensors per layout
def _layer(prefix: str, c: dict, input_width: int, input_norm: bool, hidden_norm: bool) -> dict[str, tuple]:
    hidden, heads, kv, head_dim = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    inter = c["intermediate_size"]
    tensors = {
        f"{prefix}.self_attn.q_proj.weight": (heads * head_dim, input_width),
        f"{prefix}.self_attn.k_proj.weight": (kv * head_dim, input_width),
        f"{prefix}.self_attn.v_proj.weight": (kv * head_dim, input_width),
        f"{prefix}.self_attn.o_proj.weight": (hidden, heads * head_dim),
        f"{prefix}.mlp.gate_proj.weight": (inter, hidden),
        f"{prefix}.mlp.up_proj.weight": (inter, hidden),
        f"{prefix}.mlp.down_proj.weight": (hidden, inter),
        f"{prefix}.post_attention_layernorm.weight": (hidden,),
    }
    if input_norm:
        tensors[f"{prefix}.input_layernorm.weight"] = (hidden,)
    if hidden_norm:
        tensors[f"{prefix}.hidden_norm.weight"] = (hidden,)
    return tensors


def expected_tensors(layout: str, c: dict) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """{name: (shape, dtype or None for 'the export dtype')} for a layout and its config.json values."""
    hidden, layers = c["hidden_size"], c["num_hidden_layers"]
    out: dict[str, tuple] = {}
    if layout == "eagle1":
        out["fc.weight"] = (hidden, 2 * hidden)
        for i in range(layers):
            out.update(_layer(f"layers.{i}", c, hidden, input_norm=i > 0, hidden_norm=False))
        return {k: (v, None) for k, v in out.items()}
    first = "midlayer" if layout == "flat" else "layers.0"
    out.update(_layer(first, c, 2 * hidden, input_norm=True, hidden_norm=True))
    for i in range(1, layers):
        out.update(_layer(f"layers.{i}", c, hidden, input_norm=True, hidden_norm=False))
    out["fc.weight"] = (hidden, len(c["aux_layer_ids"]) * c["target_hidden_size"])
    out["norm.weight"] = (hidden,)
    out["lm_head.weight"] = (c["draft_vocab_size"], hidden)
    result = {k: (v, None) for k, v in out.items()}
    if c["draft_vocab_size"] != c["vocab_size"]:
        result["d2t"] = ((c["draft_vocab_size"],), "I64")
        result["t2d"] = ((c["vocab_size"],), "BOOL")
    return result


# ---------------------------------------------------------------- config.json per layout
def _llama_fields(config: DraftConfig, dtype: str) -> dict[str, Any]:
    return {
        "model_type": "llama", "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
        "hidden_act": config.hidden_act, "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling, "max_position_embeddings": config.max_position_embeddings,
        "vocab_size": config.vocab_size, "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "torch_dtype": dtype,
    }


def export_config(config: DraftConfig, layout: str, dtype: str, base_model: str, k: int) -> dict[str, Any]:
    llama = _llama_fields(config, dtype)
    if layout == "eagle1":
        return {**llama, "architectures": ["LlamaForCausalLM"]}
    eagle3 = {"draft_vocab_size": config.draft_vocab_size, "target_hidden_size": config.hidden_size,
              "norm_before_residual": config.norm_before_residual}
    if layout == "flat":
        return {**llama, **eagle3, "architectures": ["LlamaForCausalLMEagle3"],
                "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(config.aux_layer_ids),
                                 "use_aux_hidden_state": True}}
    return {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
            "transformer_layer_config": {**llama, "architectures": ["LlamaForCausalLM"]}, **eagle3,
            "eagle_aux_hidden_state_layer_ids": list(config.aux_layer_ids),
            "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                   "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": k}],
                                   "verifier": {"name_or_path": base_model, "architectures": ["LlamaForCausalLM"]}},
            "torch_dtype": dtype}


def layout_of(config: dict) -> str:
    if config.get("speculators_model_type"):
        return "speculators"
    if "Eagle3" in " ".join(config.get("architectures", [])) or "eagle_config" in config:
        return "flat"
    return "eagle1"


def config_facts(config: dict) -> dict[str, Any]:
    """The values expected_tensors needs, from any layout's config.json."""
    layout = layout_of(config)
    body = config["transformer_layer_config"] if layout == "speculators" else config
    heads = body["num_attention_heads"]
    facts = {k: body[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                  "vocab_size")}
    facts["num_key_value_heads"] = body.get("num_key_value_heads", heads)
    facts["head_dim"] = body.get("head_dim") or body["hidden_size"] // heads
    if layout != "eagle1":
        facts["draft_vocab_size"] = config.get("draft_vocab_size") or body["vocab_size"]
        facts["target_hidden_size"] = config.get("target_hidden_size") or body["hidden_size"]
        ids = (config.get("eagle_config", {}) or {}).get("eagle_aux_hidden_state_layer_ids") \
            or config.get("eagle_aux_hidden_state_layer_ids")
        facts["aux_layer_ids"] = ids or [0, 0, 0]  # engines default to 3 layers
        facts["aux_ids_written"] = bool(ids)
    return facts


# ---------------------------------------------------------------- the check
@dataclass
class InspectReport:
    folder: Path
    layout: str = "?"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensors: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        head = f"{self.folder}: layout {self.layout}, {self.tensors} tensors: " + ("OK" if self.ok else "BROKEN")
        return [head] + [f"  problem: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]


def inspect_draft(folder: Path) -> InspectReport:
    from safetensors import safe_open

    report = InspectReport(folder=folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        report.problems.append(f"config.json: cannot read it ({error})")
        return report
    report.layout = layout_of(config)
    try:
        facts = config_facts(config)
    except KeyError as error:
        report.problems.append(f"config.json: missing field {error}")
        return report
    if report.layout != "eagle1" and not facts["aux_ids_written"]:
        report.problems.append("config.json: eagle_aux_hidden_state_layer_ids not written; engines then guess "
                               "(2, L//2, L-3), which repeats ids on small targets and fails at the first draft step")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        report.problems.append("no *.safetensors file")
        return report
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor_slice = handle.get_slice(name)
                found[name] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
    report.tensors = len(found)
    expected = expected_tensors(report.layout, facts)
    float_dtypes = {dtype for name, (_, dtype) in found.items() if name in expected and expected[name][1] is None}
    if len(float_dtypes) > 1:
        report.problems.append(f"weights mix dtypes {sorted(float_dtypes)}")
    for name, (shape, dtype) in sorted(expected.items()):
        if name not in found:
            report.problems.append(f"missing tensor {name} {list(shape)} (the engine would keep its random init)")
            continue
        got_shape, got_dtype = found[name]
        if got_shape != tuple(shape):
            report.problems.append(f"tensor {name} has shape {list(got_shape)}, expected {list(shape)}")
        if dtype and got_dtype != dtype:
            report.problems.append(f"tensor {name} has dtype {got_dtype}, expected {dtype}")
    allowed_extra = {"embed_tokens.weight"} if report.layout == "speculators" else set()
    for name in sorted(set(found) - set(expected) - allowed_extra):
        why = "a bias the engine would drop silently" if name.endswith(".bias") else "not read by the engine"
        report.problems.append(f"unexpected tensor {name} ({why})")
    if report.layout != "eagle1" and facts["draft_vocab_size"] == facts["vocab_size"] and "d2t" in found:
        report.problems.append("d2t present with a full draft vocabulary (engines refuse it)")
    if report.layout == "flat" and "norm_before_residual" not in config:
        report.notes.append("norm_before_residual not written: vLLM assumes False for this layout")
    return report


# ---------------------------------------------------------------- writing
def draft_state_for_layout(state: dict, layout: str) -> dict:
    """Our module names -> the layout's names (EAGLE-3 extra layers are numbered from 1)."""
    renamed = {}
    for name, tensor in state.items():
        if layout in ("flat", "speculators") and name.startswith("layers."):
            index, rest = name.split(".", 2)[1:]
            name = f"layers.{int(index) + 1}.{rest}"
        if layout == "speculators" and name.startswith("midlayer."):
            name = "layers.0." + name[len("midlayer."):]
        renamed[name] = tensor
    return renamed


def serving_snippet(base: str, draft: Path, algorithm: str, k: int) -> str:
    method = "eagle3" if algorithm == "eagle3" else "eagle"
    sglang = "EAGLE3" if algorithm == "eagle3" else "EAGLE"
    spec = json.dumps({"method": method, "model": str(draft), "num_speculative_tokens": k})
    return (f"# Serve with vLLM\nvllm serve {base} --speculative-config '{spec}'\n\n"
            f"# Serve with SGLang\npython -m sglang.launch_server --model-path {base} \\\n"
            f"  --speculative-algorithm {sglang} --speculative-draft-model-path {draft} \\\n"
            f"  --speculative-num-steps {k} --speculative-eagle-topk 1 --speculative-num-draft-tokens {k + 1}\n")


def write_draft(folder: Path, state: dict, config: DraftConfig, layout: str, dtype: str, base_model: str, k: int,
                d2t=None, t2d=None) -> InspectReport:
    """Write config.json + model.safetensors atomically, then check the result."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, dtype)
    tensors = {name: tensor.detach().to(torch_dtype).contiguous()
               for name, tensor in draft_state_for_layout(state, layout).items()}
    if layout != "eagle1" and config.draft_vocab_size != config.vocab_size:
        tensors["d2t"] = d2t.to(torch.int64).contiguous()
        tensors["t2d"] = t2d.to(torch.bool).contiguous()
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        write_json(tmp / "config.json", export_config(config, layout, dtype, base_model, k))
        write_text(tmp / "README.md", serving_snippet(base_model, folder.resolve(), config.algorithm, k))
    return inspect_draft(folder)


def load_draft(folder: Path) -> tuple[dict, dict]:
    """(config.json, tensors) of an exported draft, names as written."""
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return config, tensors


class ExportStage(Stage):
    name = "export"
    description = "write the draft for vLLM/SGLang and check every tensor"

    @staticmethod
    def depends_on(recipe: Recipe, enabled: set[str]) -> list[str]:
        return ["train"]

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        return {"export": recipe.data["export"], "k": recipe.eval.num_speculative_tokens}

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return ["export/draft/config.json", "export/draft/model.safetensors", "export/draft/README.md"]

    @staticmethod
    def resources(recipe: Recipe) -> dict[str, Any]:
        return {"driver": {"num_cpus": 1}}

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        import torch
        from safetensors.torch import load_file

        final = ctx.inputs["train"] / "final"
        config = DraftConfig.from_dict(json.loads((final / "draft_config.json").read_text(encoding="utf-8")))
        state = load_file(str(final / "model.safetensors"))
        layout = "eagle1" if config.algorithm == "eagle1" else ctx.recipe.export.layout
        base = base_model_path(ctx.recipe)
        k = ctx.recipe.eval.num_speculative_tokens
        report = write_draft(ctx.out / "draft", state, config, layout, ctx.recipe.export.dtype, base, k,
                             torch.load(final / "d2t.pt", weights_only=True),
                             torch.load(final / "t2d.pt", weights_only=True))
        for line in report.lines():
            ctx.log(line)
        if not report.ok:
            raise RuntimeError("the exported draft failed its completeness check:\n" + "\n".join(report.lines()))
        ctx.log("serve it with:\n" + serving_snippet(base, ctx.out / "draft", config.algorithm, k))
        return {"counts": {"tensors": report.tensors}, "metrics": {"layout": layout, "inspect_ok": report.ok}}
