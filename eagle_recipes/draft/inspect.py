"""Check a draft folder against what the serving engines load, tensor by tensor.

Engines do not check completeness (a missing tensor keeps its random init, a stray bias is dropped without a
word), so every name, shape and dtype is compared with the layout's lists (draft/layouts/). The export stage runs
this on its own output; `eagle-recipes inspect DRAFT_DIR` runs it on drafts made anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eagle_recipes.draft.drafters import drafter
from eagle_recipes.draft.engine_rules import engines_that_serve, misread, reading_line, readings, trained_layers
from eagle_recipes.draft.layouts import (
    FLOAT_DTYPES,
    LayoutError,
    algorithm_of,
    config_facts,
    first_layer_prefix,
    layout_of,
    optional_tensors,
    read_config,
    required_tensors,
    rope_problems,
)


@dataclass
class InspectReport:
    folder: Path
    layout: str = "?"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensors: int = 0
    trained_layers: tuple[int, ...] | None = None  # our numbering (HF hidden_states indices); None: not written
    serving: list[str] = field(default_factory=list)  # per engine: which layers it feeds the draft
    misread: list[str] = field(default_factory=list)  # engines that load it but feed other layers than trained
    engines: list[str] = field(default_factory=list)  # "vllm", "sglang": those that serve it as trained

    @property
    def loads(self) -> bool:
        """Every tensor and field an engine needs is there (whatever layers each engine feeds it)."""
        return not self.problems

    @property
    def ok(self) -> bool:
        return not self.problems and not self.misread

    def lines(self) -> list[str]:
        head = f"{self.folder}: layout {self.layout}, {self.tensors} tensors: " + ("OK" if self.ok else "BROKEN")
        trained = ([f"  trained on the hidden states entering layers {list(self.trained_layers)}"]
                   if self.trained_layers else [])
        return ([head] + trained + [f"  {line}" for line in self.serving]
                + [f"  problem: {p}" for p in self.problems + self.misread] + [f"  note: {n}" for n in self.notes])


def tensor_headers(files: list[Path]) -> tuple[dict[str, tuple[tuple[int, ...], str]], list[str]]:
    """{name: (shape, dtype)} from the safetensors headers (no data read), and a problem per unreadable file."""
    from safetensors import safe_open

    found: dict[str, tuple[tuple[int, ...], str]] = {}
    problems = []
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    tensor_slice = handle.get_slice(name)
                    found[name] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for bad files
            problems.append(f"{path.name}: not a readable safetensors file ({str(error)[:200]}); "
                            "it may be truncated: copy or export it again")
    return found, problems


def _expected_problems(found: dict, required: dict, optional: dict) -> list[str]:
    problems = []
    float_dtypes = {dtype for name, (_, dtype) in found.items()
                    if name in required and required[name][1] is None}
    if len(float_dtypes) > 1:
        problems.append(f"weights mix dtypes {sorted(float_dtypes)}")
    for name, (shape, dtype) in sorted(required.items()):
        if name not in found:
            problems.append(f"missing tensor {name} {list(shape)} (the engine would keep its random init)")
    for name, (shape, dtype) in sorted({**optional, **required}.items()):
        if name not in found:
            continue
        got_shape, got_dtype = found[name]
        if got_shape != tuple(shape):
            problems.append(f"tensor {name} has shape {list(got_shape)}, expected {list(shape)}")
        if dtype and got_dtype != dtype:
            problems.append(f"tensor {name} has dtype {got_dtype}, expected {dtype}")
        elif dtype is None and got_dtype not in FLOAT_DTYPES:
            problems.append(f"tensor {name} has dtype {got_dtype}, expected a float type")
    for name in sorted(set(found) - set(required) - set(optional)):
        why = ("a bias the engine would drop silently" if name.endswith(".bias")
               else "engines refuse d2t with a full draft vocabulary" if name == "d2t" else "not read by the engine")
        problems.append(f"unexpected tensor {name} ({why})")
    return problems


def _engine_readings(report: InspectReport, config: dict, facts: dict) -> None:
    """Per engine (draft/engine_rules.py): which layers it would feed the draft, against those it was trained on."""
    trained, source = trained_layers(config)
    report.trained_layers = trained
    for reading in readings(config, facts):
        report.serving.append(reading_line(reading, trained))
        problem = misread(reading, trained)
        if problem:
            report.misread.append(problem)
    report.engines = engines_that_serve(config, facts)
    if trained and source.startswith("eagle_config"):
        report.notes.append(f"layer ids nested in eagle_config alone are read in SGLang's numbering, as SpecForge "
                            f"and ModelOpt write them: trained on {list(trained)} in ours (HF hidden_states); "
                            "`eagle-recipes eval` serves vLLM a copy with them at the top level")


def inspect_draft(folder: Path) -> InspectReport:
    report = InspectReport(folder=folder)
    if not folder.is_dir():
        report.problems.append(f"{folder}: not a folder" + ("" if folder.exists() else " (it does not exist)"))
        return report
    try:
        config = read_config(folder)
        report.layout = layout_of(config)
        facts = config_facts(config)
    except LayoutError as error:
        report.problems.append(str(error))
        return report
    report.problems += rope_problems(facts)
    _engine_readings(report, config, facts)
    rope = facts.get("rope_scaling")
    if isinstance(rope, dict) and rope.get("factor"):
        report.notes.append(f"long context: rope {rope.get('rope_type', rope.get('type'))} x{rope['factor']:g}, "
                            f"served up to {facts['max_position_embeddings']:,} tokens")
    if drafter(algorithm_of(report.layout)).reads_aux_states and not facts["aux_ids_written"]:
        report.problems.append("config.json: eagle_aux_hidden_state_layer_ids not written; engines then guess "
                               "(2, L//2, L-3), which repeats ids on small targets and fails at the first draft step")
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        report.problems.append(f"{folder}: no *.safetensors file")
        return report
    found, unreadable = tensor_headers(files)
    report.tensors = len(found)
    report.problems += unreadable
    if unreadable:
        return report
    required = required_tensors(report.layout, facts, first_layer_prefix(report.layout, set(found)))
    report.problems += _expected_problems(found, required, optional_tensors(report.layout, facts))
    if report.layout == "flat" and "norm_before_residual" not in config:
        report.notes.append("norm_before_residual not written: vLLM assumes False for this layout")
    return report
