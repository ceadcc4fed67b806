"""The `eagle-recipes` command line: validate, plan, run, tune, submit, catalog, inspect, eval, publish and more."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eagle_recipes.cli_parser import build_parser as parser_for
from eagle_recipes.errors import UserError
from eagle_recipes.run_folder import REPORT_FILE, RunFolder


console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; plain tab-separated lines (nothing cut) when piped."""
    if not console.is_terminal:
        print(title)
        print("\t".join(columns))
        for row in rows:
            print("\t".join(row))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _print_problems(problems) -> None:
    for problem in problems:
        errors.print(str(problem), markup=False, highlight=False)


def _load(path: str, check_model: bool = True, overrides: list[str] | None = None, tuning: bool = False):
    from eagle_recipes.recipe import validate_file
    from eagle_recipes.recipe.overrides import is_override

    if is_override(path):
        raise UserError(f"{path} is an override, not a recipe: name the recipe file first (my.toml {path})")

    recipe, problems = validate_file(path, check_model, overrides or (), tuning=tuning)
    if problems:
        _print_problems(problems)
        errors.print(f"{len(problems)} problem(s) in {path}", markup=False)
        raise SystemExit(1)
    return recipe


def cmd_validate(args) -> int:
    from eagle_recipes.recipe import validate_file
    from eagle_recipes.recipe.overrides import is_override

    failed = 0
    overrides = [a for a in args.recipes if is_override(a)]  # applied to every recipe named
    if len(overrides) == len(args.recipes):
        raise UserError("no recipe given: name a recipe file before its overrides "
                        "(eagle-recipes validate my.toml train.lr=3e-4)")
    for path in (a for a in args.recipes if not is_override(a)):
        recipe, problems = validate_file(path, overrides=overrides)
        if problems:
            failed += 1
            _print_problems(problems)
        else:
            for line in [f"note: {note}" for note in recipe.notes] + ["valid"]:
                console.print(f"{path}: {line}", markup=False, highlight=False)
    return 1 if failed else 0


def cmd_schema(args) -> int:
    from eagle_recipes.recipe.schema import load_schema

    print(json.dumps(load_schema(), indent=2))
    return 0


def _with_output_dir(recipe, output_dir: str | None):
    if not output_dir:
        return recipe
    return replace(recipe, data={**recipe.data, "output_dir": str(Path(output_dir).resolve())})


def _plan(args):
    from eagle_recipes.graph.plan import compile_plan

    recipe = _with_output_dir(_load(args.recipe, overrides=args.overrides), getattr(args, "output_dir", None))
    try:
        plan = compile_plan(recipe, force=set(getattr(args, "force", None) or []),
                            only=getattr(args, "only", None), start_from=getattr(args, "start_from", None))
    except ValueError as error:
        errors.print(f"error: {error}", markup=False)
        raise SystemExit(2)
    return recipe, plan


def cmd_plan(args) -> int:
    recipe, plan = _plan(args)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    rows = []
    for stage in plan.stages:
        reads = ", ".join(stage.depends_on + [Path(f).name for f in stage.input_files]) or "-"
        resources = "; ".join([_describe_task(stage.ray_options), *stage.resources])
        rows.append([stage.name, stage.status, stage.reason, reads, ", ".join(stage.outputs), resources])
    print_table(f"{recipe.name}: {recipe.output_dir}", ["stage", "status", "why", "reads", "writes", "resources"],
                rows)
    for name, why in plan.left_out.items():
        console.print(f"left out: {name} ({why})", markup=False)
    return 0


def _describe_task(options: dict) -> str:
    gpus = f", {options['num_gpus']} GPU" if options.get("num_gpus") else ""
    return f"task {options.get('num_cpus', 0.1)} CPU{gpus}"


def cmd_run(args) -> int:
    from eagle_recipes.graph.runner import failure_line, run_plan

    recipe, plan = _plan(args)
    try:
        summary = run_plan(recipe, plan, address=args.address, verbose=args.verbose)
    except KeyboardInterrupt:
        errors.print("interrupted: finished work is kept; run the same command again to resume", markup=False)
        return 130
    except Exception as error:  # noqa: BLE001 - the runner already showed which stage failed
        errors.print(f"error: {failure_line(error)}", markup=False, highlight=False)
        summary_file = RunFolder(recipe.output_dir).summary_file
        if summary_file.is_file():  # a stage failed (a run that never started wrote none)
            errors.print(f"(the whole traceback is in {summary_file}; finished stages are kept: run the same "
                         "command again after fixing it)", markup=False, highlight=False)
        return 1
    _print_outcome(recipe, summary)
    return 0


def _print_outcome(recipe, summary: dict) -> None:
    console.print(f"run finished in {summary['wall_s']:.1f}s; artifacts under {recipe.output_dir}", markup=False)
    for line in summary["outcome"]:
        console.print(line, markup=False)


def cmd_tune(args) -> int:
    from eagle_recipes.tuning.display import tune_command
    recipe = _with_output_dir(_load(args.recipe, overrides=args.overrides, tuning=True), args.output_dir)
    return tune_command(recipe, args.address, args.verbose, console, print_table)


def cmd_submit(args) -> int:
    from eagle_recipes.graph.submit import submit

    recipe = _load(args.recipe, overrides=args.overrides)
    return submit(recipe, args.address, follow=args.follow, output_dir=args.output_dir, console=console)


def _catalog_check(args) -> int:
    from eagle_recipes import catalog
    from eagle_recipes.catalog_check import check_entry, record
    from eagle_recipes.paths import cache_dir

    chosen = catalog.entries() if args.names == ["all"] else [catalog.find(name) for name in args.names]
    work = Path(args.work_dir) if args.work_dir else cache_dir() / "catalog-check"
    failed = 0
    for entry in chosen:
        console.print(f"[bold]catalog check {entry.name}[/bold]")
        result = check_entry(entry, work / entry.name.replace("/", "--"), args.shift_served_layers,
                             log=lambda line: console.print(line, markup=False))
        console.print(result.summary(), markup=False)
        failed += not (result.passed or result.refused)
        if not args.no_record and not args.shift_served_layers and (result.passed or result.refused):
            record(entry, result)
            console.print(f"recorded in {entry.path}", markup=False)
    return 1 if failed else 0


def cmd_catalog(args) -> int:
    from eagle_recipes import catalog

    try:
        if args.catalog_command == "list":
            rows = [[e.name, e.family, e.model, e.algorithm, e.tested,
                     f"{e.acceptance_length:.2f}" if e.acceptance_length else "-", e.date, e.checked_short]
                    for e in catalog.entries()]
            print_table("catalog", ["name", "family", "model", "algorithm", "tested", "tau", "date", "checked"], rows)
        elif args.catalog_command == "check":
            return _catalog_check(args)
        elif args.catalog_command == "table":
            from eagle_recipes.catalog_check import readme_table

            print(readme_table(catalog.entries()), end="")
        elif args.catalog_command == "show":
            print(catalog.find(args.name).path.read_text(encoding="utf-8"), end="")
        elif args.catalog_command == "copy":
            written = catalog.copy(args.name, Path(args.dest) if args.dest else None, force=args.force)
            console.print(f"wrote {written}", markup=False)
    except catalog.CatalogError as error:
        errors.print(f"error: {error}", markup=False)
        return 1
    return 0


def cmd_inspect(args) -> int:
    from eagle_recipes.draft.inspect import inspect_draft

    report = inspect_draft(Path(args.draft))
    for line in report.lines():
        console.print(line, markup=False, highlight=False)
    return 0 if report.ok else 1


def cmd_eval(args) -> int:
    """Acceptance length of any draft folder on any base model."""
    from eagle_recipes.draft.export import served_copy, speculative_config
    from eagle_recipes.draft.inspect import inspect_draft
    from eagle_recipes.draft.layouts import algorithm_of
    from eagle_recipes.evaluation import evaluate_draft
    from eagle_recipes.evaluation.prompt_sets import resolve_sets
    from eagle_recipes.evaluation.speed import SpeedSettings
    from eagle_recipes.models import resolve_model
    from eagle_recipes.paths import ensure_writable_folder

    draft = Path(args.draft)
    check = inspect_draft(draft)
    for line in check.lines():
        console.print(line, markup=False, highlight=False)
    if not check.loads or (check.misread and not check.trained_layers):
        raise UserError(f"{draft}: engines would not load this draft as it is (problems above); "
                        "fix it or export it again")
    base = resolve_model(args.base, key="--base")
    out = Path(args.out or draft.parent / "eval")
    ensure_writable_folder(out, "pass --out a writable folder")
    if check.misread:  # served with the layers it was trained on, from a copy: the user's folder stays as it is
        draft = served_copy(draft, out / "served-draft", log=lambda m: console.print(m, markup=False))
    sets = resolve_sets([args.prompts], lambda spec: Path(spec), None, args.max_prompts, "first")
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    loads = tuple(load for load in args.concurrency if load)  # "none" is no load
    speed = SpeedSettings(loads, args.speed_prompts, args.speed_max_tokens,
                          repeats=args.speed_repeats) if loads and args.engine == "vllm" else None
    report = evaluate_draft(base, draft, speculative_config(algorithm_of(check.layout)), args.num_speculative_tokens,
                            sets, args.max_tokens, args.engine, out, settings,
                            log=lambda message: console.print(message, markup=False), verbose=args.verbose,
                            speed=speed)
    console.print(f"tau = {report.headline.acceptance_length:.3f}; report: {out / REPORT_FILE}", markup=False)
    if report.speed:
        console.print(report.speed.headline(), markup=False)
    return 0


def cmd_publish(args) -> int:
    from eagle_recipes.publish import publish

    url = publish(Path(args.draft), args.repo_id, args.private)
    console.print(f"published {args.draft} to {url}", markup=False)
    return 0


def cmd_draft_fields(args) -> int:
    from eagle_recipes.draft.drafters import DEFAULTS

    for algorithm, fields in DEFAULTS.items():
        console.print(f"[{algorithm}]", markup=False)
        for name, value in fields.items():
            console.print(f"  {name} = {value!r}" + ("  (from the base model)" if value is None else ""),
                          markup=False)
    return 0


HANDLERS = {"validate": cmd_validate, "schema": cmd_schema, "plan": cmd_plan, "run": cmd_run, "tune": cmd_tune,
            "submit": cmd_submit, "catalog": cmd_catalog, "draft-fields": cmd_draft_fields, "inspect": cmd_inspect,
            "eval": cmd_eval, "publish": cmd_publish}


def build_parser() -> argparse.ArgumentParser:
    return parser_for(HANDLERS, __doc__)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: usage errors exit 2, --help and --version 0
        return int(exit_.code or 0)
    try:
        return int(args.func(args) or 0)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        errors.print("interrupted", markup=False)
        return 130
    except UserError as error:
        errors.print(f"error: {error}", markup=False, highlight=False)
        return 1
    except Exception as error:  # noqa: BLE001 - the last net: one line, the traceback only on request
        if os.environ.get("EAGLE_RECIPES_DEBUG"):
            raise
        errors.print(f"error: {type(error).__name__}: {str(error)[-2000:]} (set EAGLE_RECIPES_DEBUG=1 for the "
                     "traceback)", markup=False, highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
