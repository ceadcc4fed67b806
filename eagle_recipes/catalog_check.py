"""`eagle-recipes catalog check NAME`: an entry's architecture through the whole graph on this CPU, served by real
vLLM.

From the entry's own `configs/*.json`, a tiny base of the same Hugging Face class (tiny_base.py) stands in for the
real weights, which are not reachable here. The entry's own recipe then runs with only sizes and the budget
overridden (`key=value`, listed in `check_overrides`): synthesis on vLLM, tokenize, calibrate, capture, a short
training, export, and evaluation in real vLLM. The draft trains on the very prompts it is then served (their
greedy replies, many passes), so its proposals hang on the exact features it was trained on.

It passes when vLLM serves the draft losslessly and measures, position by position, the acceptance the pure-PyTorch
reference decoder measures reading the layers the draft was trained on. A served folder whose layer ids are wrong
(`shift_served_layers`, to prove the check is sharp) feeds the draft other features, and the two part. An
architecture the installed vLLM cannot serve with the entry's drafter is refused before any work, by the same
capability check `validate` runs.

A pass says the serving plumbing is right for the family (layers, norms, biases, heads, rope, tying, MoE): it is
never a measure of a draft.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from eagle_recipes.catalog import CatalogError, Entry
from eagle_recipes.draft.engine_rules import TOP_KEY

# what the check trains on and serves: a few ordinary requests (the replies are the tiny base's own)
PROMPTS = ("Explain how a rainbow forms.", "Write a short poem about the sea.", "What is a prime number?",
           "Give three tips for learning to cook.", "Describe a busy market in the morning.",
           "Why do leaves change colour in autumn?", "Summarise the plot of a detective story you invent.",
           "How does a bicycle stay upright?")
MAX_TOKENS = 40
K = 3
TOLERANCE = 0.1  # per position, vLLM against the reference decoder (the served_layers test's bound)
STEPS = 200  # of 8 sequences: the draft learns the base's replies, and its proposals hang on the features
LEARNED = 0.3  # the reference's first-position acceptance below which the comparison could not tell layers apart
DRAFT_OVERRIDES = {"dflash": {"num_hidden_layers": 1, "block_size": 4}}  # sizes only
PASSED, REFUSED = "architecture-cpu", "refused"


@dataclass
class CheckResult:
    entry: str
    architecture: str
    algorithm: str
    passed: bool
    refused: str = ""  # the capability check's reason, when vLLM cannot serve it
    problem: str = ""  # why it failed
    vllm_per_position: list[float] = field(default_factory=list)
    reference_per_position: list[float] = field(default_factory=list)
    vllm_tau: float = 0.0
    reference_tau: float = 0.0
    lossless: bool = False
    wall_s: float = 0.0
    versions: str = ""

    def summary(self) -> str:
        if self.refused:
            return f"{self.entry}: refused by the capability check: {self.refused}"
        served = " ".join(f"{p:.2f}" for p in self.vllm_per_position)
        reference = " ".join(f"{p:.2f}" for p in self.reference_per_position)
        verdict = "passed" if self.passed else f"FAILED: {self.problem}"
        return (f"{self.entry} ({self.architecture}, {self.algorithm}): {verdict}; acceptance per position vLLM "
                f"[{served}] (tau {self.vllm_tau:.2f}), reference decoder [{reference}] (tau "
                f"{self.reference_tau:.2f}); {'lossless' if self.lossless else 'NOT lossless'}; "
                f"{self.wall_s:.0f} s ({self.versions})")


def versions() -> str:
    """The engine and library versions a check ran with, and the CPU it ran on."""
    import importlib.metadata

    from eagle_recipes.devices import cpu_capability
    from eagle_recipes.engines.serving_targets import installed_vllm_version

    return (f"vLLM {installed_vllm_version()}, transformers {importlib.metadata.version('transformers')}, "
            f"CPU {cpu_capability()}")


def check_prompts(folder: Path) -> Path:
    """PROMPTS as a prompt file in `folder`."""
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in PROMPTS), encoding="utf-8")
    return path


def given_replies(base: Path, prompts: Path, folder: Path) -> Path:
    """The prompts with the base's greedy replies, written by transformers: the data of the check's fast form
    (`synthesis.engine = none`), which the test suite runs for most families; vLLM synthesizes them otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    rows = []
    for index, line in enumerate(prompts.read_text(encoding="utf-8").splitlines()):
        turn = [{"role": "user", "content": json.loads(line)["prompt"]}]
        ids = tokenizer.apply_chat_template(turn, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
        reply = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        rows.append({"conversation_id": f"check-{index}", "conversations": [*turn, {"role": "assistant",
                                                                                     "content": reply}]})
    path = folder / "conversations.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def check_overrides(base: Path, prompts: Path, output_dir: Path, algorithm: str,
                    training_data: Path | None = None, steps: int = STEPS) -> list[str]:
    """The `key=value` overrides the check applies to an entry's recipe: the tiny base and the prompts, one engine
    and one CPU worker, small sizes, and a budget that makes the draft learn its few replies. With
    `training_data` (conversations with their replies) synthesis is off."""
    def quoted(path: Path) -> str:
        return json.dumps(str(path))

    draft = [f"draft.overrides.{key}={value}" for key, value in DRAFT_OVERRIDES.get(algorithm, {}).items()]
    return [
        f"output_dir={quoted(output_dir)}",
        f"model.path={quoted(base)}", f"model.config={quoted(base / 'config.json')}", "model.dtype=float32",
        f"data.prompts=[{quoted(training_data or prompts)}]", "data.holdout_fraction=0.0", "data.max_samples=0",
        f"synthesis.engine={'none' if training_data else 'vllm'}", "synthesis.replicas=1", "synthesis.tensor_parallel_size=1",
        f"synthesis.max_tokens={MAX_TOKENS}", "synthesis.self_prompts=0", "synthesis.batch_size=64",
        "vocab.draft_vocab_size=512", *draft,
        "train.use_gpu=false", "train.num_workers=1", "train.strategy=ddp", "train.features=cached",
        "train.max_seq_len=256", "train.epochs=40", f"train.max_steps={steps}", "train.lr=0.002",
        "train.warmup_ratio=0.0", "train.loss_on=all", "train.cpus_per_worker=2", "train.checkpoint_every=100000",
        "train.simulate_every=0", "capture.dtype=float32", "capture.engine=hf",
        f"eval.prompts=[{quoted(prompts)}]", f"eval.num_speculative_tokens={K}", f"eval.max_tokens={MAX_TOKENS}",
        "eval.engine=vllm", "eval.max_prompts=0", "eval.speed.concurrency=[]",
    ]


def shifted_copy(draft: Path, folder: Path, shift: int) -> Path:
    """The draft folder with every layer id it names moved `shift` layers (what a wrong numbering would serve)."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(draft, folder)
    config = json.loads((folder / "config.json").read_text())

    def moved(ids: list[int]) -> list[int]:
        return [max(0, i + shift) for i in ids]

    if TOP_KEY in config:
        config[TOP_KEY] = moved(config[TOP_KEY])
    for table, key in (("eagle_config", TOP_KEY), ("dflash_config", "target_layer_ids")):
        if isinstance(config.get(table), dict) and key in config[table]:
            config[table][key] = moved(config[table][key])
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def entry_config(entry: Entry) -> Path:
    """The base model's config facts an entry names (its `model.config`, relative to the entry)."""
    return entry.path.parent / tomllib.loads(entry.path.read_text(encoding="utf-8"))["model"].get("config", "")


def entry_architecture(entry: Entry) -> str:
    config = entry_config(entry)
    return (json.loads(config.read_text()).get("architectures") or ["?"])[0] if config.is_file() else "?"


def _refusal(problems) -> str:
    """The capability check's refusal among a recipe's problems ('' when it is not one)."""
    for problem in problems:
        if problem.key in ("export.engines", "eval.engine") and "vLLM" in problem.message:
            return problem.message
    return ""


def check_entry(entry: Entry, workdir: Path, shift_served_layers: int = 0, log=print,
                synthesize_in_vllm: bool = True, steps: int = STEPS) -> CheckResult:
    """Run the check for one entry in `workdir` (kept: its run folder resumes a second check). Without
    `synthesize_in_vllm` transformers writes the replies (given_replies) and the graph skips synthesis (the
    test suite's fast form, with fewer `steps`)."""
    from eagle_recipes.draft.export import speculative_config
    from eagle_recipes.evaluation.prompt_sets import prompts_from_file
    from eagle_recipes.evaluation.reference_path import evaluate_reference
    from eagle_recipes.evaluation.vllm_path import evaluate_vllm
    from eagle_recipes.graph.plan import compile_plan
    from eagle_recipes.graph.runner import run_plan
    from eagle_recipes.models import SMOLLM2, resolve_model
    from eagle_recipes.recipe import validate_file
    from eagle_recipes.run_folder import RunFolder
    from eagle_recipes.tiny_base import build_tiny_base

    started = time.monotonic()
    config_path = entry_config(entry)
    result = CheckResult(entry.name, entry_architecture(entry), entry.algorithm, passed=False, versions=versions())
    workdir.mkdir(parents=True, exist_ok=True)
    base = workdir / "base"
    if not (base / "config.json").is_file():
        build_tiny_base(config_path, resolve_model(SMOLLM2), base)
    prompts = check_prompts(workdir)
    training_data = None if synthesize_in_vllm else given_replies(base, prompts, workdir)
    overrides = check_overrides(base, prompts, workdir / "run", entry.algorithm, training_data, steps)
    recipe, problems = validate_file(entry.path, overrides=overrides)
    if problems:
        result.refused = _refusal(problems)
        if not result.refused:
            raise CatalogError(f"{entry.path}: the check's recipe does not validate:\n  " +
                               "\n  ".join(str(p) for p in problems))
        result.wall_s = time.monotonic() - started
        return result
    run_plan(recipe, compile_plan(recipe))
    run = RunFolder(recipe.output_dir)
    prompt_set = prompts_from_file(prompts)
    reference = evaluate_reference(str(base), run.draft, K, [prompt_set], MAX_TOKENS, log=log)[prompt_set.name]
    if shift_served_layers:
        served_folder = shifted_copy(run.draft, workdir / "served-shifted", shift_served_layers)
        log(f"serving a copy whose layer ids are moved by {shift_served_layers}: {served_folder}")
        reports, _ = evaluate_vllm(str(base), str(served_folder), speculative_config(entry.algorithm), K,
                                   [prompt_set], MAX_TOKENS, dtype="float32", log=log)
        served = reports[prompt_set.name].to_dict()
    else:
        served = json.loads(run.report.read_text())["sets"][prompt_set.name]
    result.vllm_per_position = list(served["per_position"])
    result.vllm_tau = served["acceptance_length"]
    result.lossless = served["identical"] == served["prompts"]
    result.reference_per_position = list(reference.per_position)
    result.reference_tau = reference.acceptance_length
    result.problem = verdict(result)
    result.passed = not result.problem
    result.wall_s = time.monotonic() - started
    return result


def verdict(result: CheckResult) -> str:
    """Why a check failed ('' when it passed)."""
    if not result.lossless:
        return "vLLM's output with the draft differs from the base model's alone"
    if not result.reference_per_position or result.reference_per_position[0] < LEARNED:
        return (f"the draft learned too little (first position {result.reference_per_position[:1]}, under "
                f"{LEARNED}) for the check to tell served features from trained ones")
    apart = [i for i, (a, b) in enumerate(zip(result.vllm_per_position, result.reference_per_position, strict=True))
             if abs(a - b) > TOLERANCE]
    if apart:
        return (f"vLLM's acceptance differs from the reference decoder's at position(s) {apart} by more than "
                f"{TOLERANCE}: vLLM feeds the draft other features than it was trained on")
    return ""


def record(entry: Entry, result: CheckResult, today: date | None = None) -> None:
    """Write what ran into the entry's [catalog] table: `tested` (raised to architecture-cpu from compiled; an e2e
    run stays) and `checked` (what, with which versions, when)."""
    from eagle_recipes.atomic import write_text

    today = today or date.today()
    text = entry.path.read_text(encoding="utf-8")
    if result.refused:
        checked = f"{today.isoformat()}, {result.versions}: refused by the capability check: {result.refused}"
        tested = REFUSED if entry.tested == "compiled" else entry.tested
    elif result.passed:
        checked = (f"{today.isoformat()}, {result.versions}: a tiny {result.architecture} through every stage, "
                   f"served losslessly by vLLM at the reference decoder's acceptance (tau {result.vllm_tau:.2f} "
                   f"against {result.reference_tau:.2f}, k = {K})")
        tested = PASSED if entry.tested in ("compiled", REFUSED) else entry.tested
    else:
        raise CatalogError(f"{entry.name}: a failed check is not recorded ({result.problem})")
    text = _set_catalog_key(text, "tested", tested)
    text = _set_catalog_key(text, "checked", checked)
    write_text(entry.path, text)


def _set_catalog_key(text: str, key: str, value: str) -> str:
    """`key = "value"` in the [catalog] table: replaced where it is, else added after `tested`."""
    head, marker, table = text.partition("\n[catalog]\n")
    if not marker:
        raise CatalogError("the entry has no [catalog] table")
    line = f"{key} = {json.dumps(value, ensure_ascii=False)}"
    pattern = re.compile(rf"^{key}\s*=.*$", re.M)
    if pattern.search(table):
        table = pattern.sub(lambda _: line, table, count=1)
    else:
        table = re.sub(r"^(tested\s*=.*)$", lambda m: f"{m.group(1)}\n{line}", table, count=1, flags=re.M)
    return head + marker + table


def sglang_by_rule(entry: Entry) -> str:
    """'✓', or '✗ ' and why: whether SGLang would serve the entry's draft on its base as trained, by its rules
    (draft/engine_rules.py, SGLang's target classes), asked as `validate` asks them."""
    from eagle_recipes.recipe import validate_file

    _, problems = validate_file(entry.path, overrides=['export.engines=["sglang"]', "eval.engine=reference"])
    why = [p.message.removeprefix("SGLang would not serve this draft: ") for p in problems
           if p.key == "export.engines"]
    return f"✗ {why[0]}" if why else "✓"


def vllm_served(entry: Entry) -> str:
    """What `catalog check` found in vLLM: ✓ with the tau it measured on the tiny base (the reference decoder's
    too), ✗ with the capability check's reason, or not run."""
    if not entry.checked:
        return "not checked"
    if "refused by the capability check: " in entry.checked:
        return "✗ " + entry.checked.split("refused by the capability check: ", 1)[1]
    found = re.search(r"\(tau ([\d.]+) against ([\d.]+)", entry.checked)
    return f"✓ lossless, tau {found.group(1)} = reference's {found.group(2)}" if found else "✓"


def tested_when(entry: Entry) -> str:
    """What ran and when: an end-to-end run with its date and tau, and the check's date."""
    checked_on = entry.checked.split(",")[0] if entry.checked else ""
    if entry.tested in (PASSED, REFUSED):
        return f"{entry.tested} ({checked_on})"
    tau = f", tau {entry.acceptance_length:.2f}" if entry.acceptance_length else ""
    return f"{entry.tested} ({entry.date}{tau})" + (f"; {PASSED} ({checked_on})" if checked_on else "")


def readme_table(entries: list[Entry]) -> str:
    """README's catalog table: entry, architecture class, drafter, vLLM served, SGLang by rule, tested what and
    when (`eagle-recipes catalog table` prints it; tests/test_docs.py keeps README's copy equal)."""
    lines = ["| entry | architecture | drafter | vLLM served (catalog check, tiny base) | SGLang, by its rules | "
             "tested |", "|---|---|---|---|---|---|"]
    for entry in entries:
        lines.append(f"| {entry.name} | {entry_architecture(entry)} | {entry.algorithm} | {vllm_served(entry)} | "
                     f"{sglang_by_rule(entry)} | {tested_when(entry)} |")
    return "\n".join(lines) + "\n"
