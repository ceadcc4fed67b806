"""Load a recipe: TOML syntax, then the JSON Schema, then rules that need the base model's config.

Every problem is reported with file, line and key path, all of them at once, never as a traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from eagle_recipes.draft.drafters import DEFAULT_DRAFTER, drafter
from eagle_recipes.recipe.errors import Problem, RecipeError
from eagle_recipes.recipe.overrides import apply_overrides, parse_overrides, relabel
from eagle_recipes.recipe.schema import apply_defaults, field_names, load_schema
from eagle_recipes.recipe.serving_check import serving_problems
from eagle_recipes.recipe.toml_lines import key_lines, line_of
from eagle_recipes.recipe.tune_space import space_problems, tune_refusals
from eagle_recipes.recipe.view import Recipe
from eagle_recipes.training.features import FEATURE_MODES, feature_mode

if TYPE_CHECKING:
    from jsonschema import ValidationError


def _key_path(parts: Any) -> str:
    return ".".join(str(part) for part in parts)


# Names people bring from other tools, which string similarity alone does not connect.
ALIASES = {"learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs", "model_path": "path",
           "model_name_or_path": "path", "draft_vocab": "draft_vocab_size", "max_length": "max_seq_len",
           "gradient_accumulation_steps": "grad_accum", "max_new_tokens": "max_tokens"}


# Keys that moved under the table of what owns them (a drafter, a feature mode): old -> new place.
MOVED_KEYS = {"train.anchors": "train.dflash.anchors", "train.block_loss_decay": "train.dflash.block_loss_decay",
              "train.stream_in_flight": "train.streamed.in_flight", "train.stream_cache_gib": "train.streamed.cache_gib"}


def _moved(key: str, file: str, lines: dict[str, int]) -> Problem:
    table, name = MOVED_KEYS[key].rsplit(".", 1)
    return Problem(file, line_of(lines, key), key, f"moved to {MOVED_KEYS[key]}",
                   f"write `{name} = ...` under [{table}], or override {MOVED_KEYS[key]}=...")


def _did_you_mean(word: str, choices: list[str]) -> str:
    if ALIASES.get(word) in choices:
        return f"did you mean '{ALIASES[word]}'?"
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    if not close:
        return ""
    # equally similar choices: the one sharing the longest start ("eagle2" -> "eagle3", not "peagle")
    best = max(close, key=lambda c: (difflib.SequenceMatcher(None, word, c).ratio(),
                                     len(os.path.commonprefix([word, c]))))
    return f"did you mean '{best}'?"


def _schema_problem(error: ValidationError, file: str, lines: dict[str, int]) -> list[Problem]:
    """Turn one jsonschema error into messages a person can act on."""
    path = _key_path(error.absolute_path)
    line = line_of(lines, path)
    validator, instance = error.validator, error.instance
    if validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {})) or field_names(re.sub(r"\.\d+", "", path))
        problems = []
        for key in sorted(set(instance) - set(allowed)):
            full = f"{path}.{key}" if path else key
            if full in MOVED_KEYS:
                problems.append(_moved(full, file, lines))
                continue
            hint = _did_you_mean(key, allowed) or f"allowed here: {', '.join(allowed)}"
            problems.append(Problem(file, line_of(lines, full), full, "unknown key", hint))
        return problems
    if validator == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        key = missing.group(1) if missing else "?"
        full = f"{path}.{key}" if path else key
        table = f"[{path}]" if path else "the top level"
        return [Problem(file, line, full, "is required but missing", f"add `{key} = ...` to {table}")]
    if validator == "type":
        expected = error.validator_value
        return [Problem(file, line, path, f"expected {expected}, got {type(instance).__name__} {instance!r}")]
    if validator == "enum":
        options = [str(option) for option in error.validator_value]
        hint = _did_you_mean(str(instance), options)
        hint = f"{hint} " if hint else ""
        return [Problem(file, line, path, f"{instance!r} is not one of {', '.join(options)}",
                        f"{hint}choose one of them".strip())]
    if validator == "oneOf" and path.endswith("temperature"):
        return [Problem(file, line, path, f"{instance!r} is not a number >= 0 or a list of them")]
    if validator == "oneOf" and isinstance(instance, dict):  # a table where a string or a table goes: its own errors
        table_errors = [e for e in error.context if e.validator != "type" or list(e.relative_schema_path)[1:] != ["type"]]
        return [problem for e in table_errors for problem in _schema_problem(e, file, lines)]
    if validator == "pattern":
        description = error.schema.get("description", "")
        return [Problem(file, line, path, f"{instance!r} does not match {error.validator_value}", description)]
    return [Problem(file, line, path, error.message)]


def _check_schema(data: dict, file: str, lines: dict[str, int]) -> list[Problem]:
    # imported here, where a recipe is validated: the training code imports this package on machines that only
    # train (benchmarks/gpu_check.py's bare GPU machine has no jsonschema)
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load_schema())
    problems: list[Problem] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        problems.extend(_schema_problem(error, file, lines))
    return problems


def _check_files(recipe: Recipe, lines: dict[str, int]) -> list[Problem]:
    """Files the recipe names must exist."""
    file = str(recipe.path)
    problems = []
    for key, relative in recipe.named_files():
        if not recipe.resolve(relative).exists():
            problems.append(Problem(file, line_of(lines, key), re.sub(r"\.\d+$", "", key),
                                    f"file not found: {relative}", f"paths are relative to {recipe.folder}"))
    return problems


def _check_output_dir(recipe: Recipe, lines: dict[str, int]) -> list[Problem]:
    """The output folder must be one `run` can make: its nearest existing folder takes a new folder (a probe,
    made and removed), so that validate refuses what run would."""
    import tempfile

    folder = recipe.output_dir
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        os.rmdir(tempfile.mkdtemp(prefix=".validate-", dir=existing))
    except OSError as error:
        return [Problem(str(recipe.path), line_of(lines, "output_dir"), "output_dir",
                        f"cannot make {folder}: {error.strerror or error}",
                        "set output_dir (or --output-dir) to a folder you can write")]
    return []


def _check_data_files(recipe: Recipe, lines: dict[str, int]) -> list[Problem]:
    """Each data source must look readable, and the first rows of those read in a blink (files) must be in their
    format (the stages read the rest)."""
    from eagle_recipes.data.formats import check_source
    from eagle_recipes.data.sources import FileSource

    checks = [(source, recipe.dataset.format, False) for source in recipe.prompt_sources()]
    checks += [(source, "auto", True) for source in recipe.conversation_sources()]
    checks += [(FileSource(recipe.resolve(p), f"eval.prompts.{recipe.eval.prompts.index(p)}"), "auto", False)
               for p in recipe.eval_prompt_files]
    problems = []
    for source, fmt, conversations_format in checks:
        problem = source.problem()
        if problem:
            problems.append(Problem(str(recipe.path), line_of(lines, source.key), source.path_key, problem))
            continue
        local = source.local_path()
        if not source.quick_to_peek or (local is not None and not local.exists()):
            continue  # a missing file: _check_files says so
        problem = check_source(source, fmt, conversations_format)
        if problem:
            problems.append(Problem(str(recipe.path), line_of(lines, source.key), re.sub(r"\.\d+$", "", source.key),
                                    problem))
    return problems


def _check_against_model(recipe: Recipe, raw: dict, lines: dict[str, int]) -> tuple[list[Problem], list[str]]:
    """Rules that need the base model's architecture: vocabulary size, draft architecture, and the engines that
    must serve the draft on it; (problems, notes)."""
    from eagle_recipes.draft.config import BaseModelFacts, DraftConfigError
    from eagle_recipes.draft.drafters import build_draft_config
    from eagle_recipes.models import ModelError, load_base_config

    file = str(recipe.path)
    try:
        config = load_base_config(recipe.model.path, recipe.model.config, recipe.folder)
        facts = BaseModelFacts.from_config(config)
    except KeyError as error:
        key = "model.config" if recipe.model.config else "model.path"
        return [Problem(file, line_of(lines, key), key, f"the base model's config.json lacks the field {error}",
                        "point model.config at the model's own config.json")], []
    except (ModelError, OSError, ValueError) as error:
        key = "model.config" if recipe.model.config else "model.path"
        return [Problem(file, line_of(lines, key), key, f"cannot read the base model's config: {error}",
                        "set model.config to its config.json to validate and plan offline")], []
    problems = []
    written_vocab = raw.get("vocab", {}).get("draft_vocab_size")
    if written_vocab is not None and written_vocab > facts.vocab_size:
        problems.append(Problem(file, line_of(lines, "vocab.draft_vocab_size"), "vocab.draft_vocab_size",
                                f"{written_vocab} is larger than the base model's vocabulary ({facts.vocab_size})",
                                f"use at most {facts.vocab_size}; {facts.vocab_size} means no compression"))
    try:
        draft = build_draft_config(recipe.draft.algorithm, recipe.draft.overrides, facts,
                                   recipe.vocab.draft_vocab_size)
    except DraftConfigError as error:
        problems.append(Problem(file, line_of(lines, error.key), error.key, error.message, error.hint))
        return problems, []
    k = recipe.eval.num_speculative_tokens
    spec = drafter(draft.algorithm)
    trained_for = spec.max_draft_tokens(draft, recipe.train.ttt_steps)
    if trained_for is not None and k > trained_for:
        grows = "train.ttt_steps" if spec.trains_by_unroll else "draft.overrides.block_size"
        problems.append(Problem(file, line_of(lines, "eval.num_speculative_tokens") or line_of(lines, "eval"),
                                "eval.num_speculative_tokens",
                                f"{k} draft tokens, but {spec.title} drafts them in one pass and this recipe "
                                f"trains {trained_for}", f"use at most {trained_for}, or raise {grows}"))
    serving, notes = serving_problems(recipe, config, draft, lines)
    return problems + serving + _check_worker_memory(recipe, lines) + _check_feature_disk(recipe, lines), notes


def _check_feature_disk(recipe: Recipe, lines: dict[str, int]) -> list[Problem]:
    """Cached features that cannot fit the disk under output_dir: refused when the size is exact (the run's
    sequences are tokenized). Before that it is an upper bound (every conversation at max_seq_len), which plan
    shows but which would refuse runs that fit; the capture stage checks the exact size before its first shard."""
    from eagle_recipes.sizes import free_disk, training_sizes
    from eagle_recipes.units import gib

    if not feature_mode(recipe.train.features).writes_features:
        return []
    sizes = training_sizes(recipe)
    if sizes is None or not sizes.tokens_exact:
        return []
    free = free_disk(recipe.output_dir)
    if sizes.cache_fits(free):
        return []
    return [Problem(str(recipe.path), line_of(lines, "train.features") or line_of(lines, "train"), "train.features",
                    f"the feature cache needs {gib(sizes.cache_bytes)} ({sizes.tokens:,} tokenized tokens x "
                    f"{sizes.bytes_per_token:,} B), the disk under {recipe.output_dir} has {gib(free)} free",
                    'set train.features = "streamed" (features computed when a worker asks, nothing on disk), '
                    '"online", put output_dir on a larger disk, or use capture.dtype = "bfloat16" (half of float32)')]


def _check_worker_memory(recipe: Recipe, lines: dict[str, int]) -> list[Problem]:
    """Online training puts the whole base model in every GPU worker: refuse it when the weights alone cannot fit."""
    from eagle_recipes.sizes import training_sizes
    from eagle_recipes.units import gib

    train = recipe.train
    mode = feature_mode(train.features)
    if not train.use_gpu or not mode.base_in_workers:
        return []
    sizes = training_sizes(recipe)
    capacity = train.accelerator_memory_gb * 1e9
    if sizes is None or sizes.workers[mode.name].total <= capacity:
        return []
    needed = sizes.workers[mode.name]
    lighter = [name for name, other in FEATURE_MODES.items() if not other.base_in_workers]
    held = min(sizes.workers[name].total for name in lighter)
    choices = " or ".join(f'"{name}"' for name in lighter)
    return [Problem(str(recipe.path), line_of(lines, "train.features") or line_of(lines, "train"), "train.features",
                    f"{mode.name} training needs about {gib(needed.total)} per GPU (base model {gib(needed.base)} in "
                    f"bf16, draft state {gib(needed.draft)}, activations of one batch at max_seq_len "
                    f"{gib(needed.activations)}); a GPU has "
                    f"{gib(capacity)} (train.accelerator_memory_gb = {train.accelerator_memory_gb:g})",
                    f"set train.features = {choices}: workers then hold {gib(held)} "
                    f"(feature servers, or the capture stage once, run the base model, tensor parallel with "
                    f"capture.engine = \"vllm\")")]


def _check_rope_scaling(recipe: Recipe, lines: dict[str, int]) -> list[Problem]:
    """[export] rope_scaling must be one engines build (a free-form table: each type has its own extra keys)."""
    from eagle_recipes.draft.layouts import rope_scaling_problems

    rope = recipe.export.rope_scaling
    if not rope:
        return []
    hints = {"rope_type": "use rope_type = \"yarn\" (or linear, dynamic, llama3, longrope)",
             "factor": "factor = 4.0 serves the draft at 4x the original length",
             "": "set original_max_position_embeddings to the length the draft was trained for (the base model's "
                 "context)"}
    line = line_of(lines, "export.rope_scaling")
    return [Problem(str(recipe.path), line, "export.rope_scaling" + (f".{field}" if field else ""), text, hints[field])
            for field, text in rope_scaling_problems(rope.get("rope_type"), rope.get("factor"),
                                                     rope.get("original_max_position_embeddings"))]


def _check_training_levers(recipe: Recipe, lines: dict[str, int]) -> list[Problem]:
    """Training settings that cannot work together (each named, with what to do)."""
    file, train = str(recipe.path), recipe.train
    problems = []

    def problem(key: str, message: str, hint: str) -> None:
        problems.append(Problem(file, line_of(lines, key) or line_of(lines, "train"), key, message, hint))

    if train.optimizer == "muon" and train.strategy == "fsdp":
        problem("train.optimizer", "Muon orthogonalises whole matrices; FSDP shards them across workers",
                'use strategy = "ddp" with Muon, or optimizer = "adamw" with FSDP')
    if train.keep_best and not train.simulate_every:
        problem("train.keep_best", "the best checkpoint is chosen by simulated tau, which is never measured",
                "set train.simulate_every (e.g. 200)")
    if train.simulate_every and not recipe.dataset.holdout_fraction:
        problem("train.simulate_every", "simulated acceptance replays the held-out split, which is empty",
                "set data.holdout_fraction (e.g. 0.05)")
    spec = drafter(recipe.draft.algorithm)
    if train.feature_noise and not spec.reads_aux_states:
        problem("train.feature_noise", f"noise goes on the aux hidden states, which {spec.title} does not read",
                f"remove it, or use draft.algorithm = \"{DEFAULT_DRAFTER}\"")
    return problems


def _check_consistency(recipe: Recipe, lines: dict[str, int]) -> list[Problem]:
    file = str(recipe.path)
    problems = []
    has_data = recipe.dataset.prompts or recipe.dataset.conversations or recipe.synthesis.self_prompts
    if not has_data:
        problems.append(Problem(file, line_of(lines, "data"), "data.prompts", "no training data",
                                "name prompt files in data.prompts, conversations in data.conversations, "
                                "or set synthesis.self_prompts"))
    problems += _check_training_levers(recipe, lines)
    base_outside_workers = not feature_mode(recipe.train.features).base_in_workers
    if base_outside_workers and recipe.capture.engine == "vllm" and not recipe.train.use_gpu:
        problems.append(Problem(file, line_of(lines, "capture.engine"), "capture.engine",
                                "vLLM's hidden-state extractor needs GPUs (the CPU build cannot save the states)",
                                'use capture.engine = "hf" on CPU machines'))
    from eagle_recipes.trackers import missing_extras

    missing = missing_extras(list(recipe.train.report_to))
    if missing:
        problems.append(Problem(file, line_of(lines, "train.report_to"), "train.report_to",
                                "a tracker's library is not installed", "; ".join(missing)))
    problems += _check_rope_scaling(recipe, lines)
    if recipe.synthesis.self_prompts and recipe.synthesis.engine == "none":
        problems.append(Problem(file, line_of(lines, "synthesis.self_prompts"), "synthesis.self_prompts",
                                "needs a synthesis engine", "set synthesis.engine to vllm or openai"))
    return problems


def validate_file(path: str | Path, check_model: bool = True, overrides: Sequence[str] = (),
                  check_space: bool = True, tuning: bool = False) -> tuple[Recipe | None, list[Problem]]:
    """Load and check a recipe, with command-line `KEY=VALUE` overrides applied (recipe/overrides.py), and every
    value of its [tune] space unless not `check_space` (a tune's own trials), and what `tune` alone refuses when
    `tuning`; return (recipe or None, every problem found)."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        return None, [Problem(file, None, "", f"cannot read the recipe: {error.strerror or error}",
                              "give the path of a .toml recipe file")]
    except UnicodeDecodeError:
        return None, [Problem(file, None, "", "not UTF-8 text", "a recipe is a TOML text file")]
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(error))
        message = re.sub(r"\s*\(at line.*\)", "", str(error))
        line = int(found.group(1)) if found else None
        column = f" at column {found.group(2)}" if found else ""
        return None, [Problem(file, line, "", f"TOML syntax error{column}: {message}",
                              "check quotes, brackets and `key = value` form")]
    lines = key_lines(text)
    parsed, problems = parse_overrides(overrides, file)
    raw, misplaced = apply_overrides(raw, parsed, file)
    problems += misplaced
    recipe = None
    if not problems:
        recipe, problems = _table_problems(raw, path, lines, check_model)
    if not problems and check_space:  # each value a tune would try, checked as the same override would be
        problems = space_problems(raw, file, lines,
                                  lambda table: _table_problems(table, path, lines, check_model, inputs=False)[1])
    if not problems and tuning:
        problems = tune_refusals(raw, file, lines)
    problems = relabel(problems, parsed, file)
    if problems or recipe is None:
        return None, problems
    return replace(recipe, overrides=tuple(overrides)), []


def _table_problems(raw: dict, path: Path, lines: dict[str, int], check_model: bool,
                    inputs: bool = True) -> tuple[Recipe | None, list[Problem]]:
    """A recipe table's problems: the schema's, then (when it passes) the input files' (unless not `inputs`),
    the cross-field rules' and the base model's."""
    file = str(path)
    problems = _check_schema(raw, file, lines)
    if problems:
        return None, problems
    recipe = Recipe(path=path.resolve(), data=apply_defaults(raw))
    if inputs:
        problems = _check_files(recipe, lines) + _check_data_files(recipe, lines) + _check_output_dir(recipe, lines)
    problems += _check_consistency(recipe, lines)
    if check_model:
        model_problems, notes = _check_against_model(recipe, raw, lines)
        problems += model_problems
        recipe = replace(recipe, notes=tuple(notes))
    return recipe, problems


def load_recipe(path: str | Path, check_model: bool = True, overrides: Sequence[str] = (),
                check_space: bool = True, tuning: bool = False) -> Recipe:
    recipe, problems = validate_file(path, check_model, overrides, check_space, tuning)
    if problems:
        raise RecipeError(problems)
    assert recipe is not None
    return recipe
