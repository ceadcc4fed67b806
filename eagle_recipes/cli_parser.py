"""The `eagle-recipes` argument parser: every command, its arguments and help (what `--help` prints and docs/cli.md
is generated from). The functions the commands run are in cli.py."""

from __future__ import annotations

import argparse
from typing import Callable

from eagle_recipes import __version__

EXAMPLES = """examples:
  eagle-recipes validate recipes/quickstart.toml
  eagle-recipes plan recipes/quickstart.toml
  eagle-recipes run recipes/quickstart.toml
  eagle-recipes run my.toml --from train --force train
  eagle-recipes tune recipes/quickstart.toml
  eagle-recipes submit my.toml --address http://head:8265 --follow
  eagle-recipes catalog list
  eagle-recipes catalog copy llama3/Llama-3.1-8B-Instruct my.toml
  eagle-recipes inspect runs/quickstart/export/draft
  eagle-recipes eval --base BASE_DIR --draft DRAFT_DIR --prompts mt-bench -k 5
"""


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def build_parser(handlers: dict[str, Callable], description: str) -> argparse.ArgumentParser:
    """The `eagle-recipes` parser; `handlers`: the function each command runs, by command name."""
    parser = argparse.ArgumentParser(prog="eagle-recipes", description=description, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"eagle-recipes {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str, example: str):
        return sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    _add_recipe_commands(command, handlers)
    _add_draft_commands(command, handlers)
    return parser


def _add_overrides(p) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe keys to override, e.g. train.lr=3e-4 (checked, fingerprinted and recorded as an edit "
                        "of the file would be)")


def _add_catalog_command(command, handlers: dict[str, Callable]) -> None:
    """`catalog`: list, show, copy, check, table."""
    p = command("catalog", "recipes per model family, each saying how it was tested", "eagle-recipes catalog list")
    catalog_sub = p.add_subparsers(dest="catalog_command", required=True)
    catalog_sub.add_parser("list", help="table of entries")
    show = catalog_sub.add_parser("show", help="print one entry")
    show.add_argument("name")
    copy = catalog_sub.add_parser("copy", help="write an editable copy of an entry, to run as your own")
    copy.add_argument("name")
    copy.add_argument("dest", nargs="?")
    copy.add_argument("--force", action="store_true", help="overwrite an existing file")
    check = catalog_sub.add_parser("check", help="run an entry's architecture (a tiny random base of its class) "
                                                 "through every stage on this CPU and have real vLLM serve the draft; "
                                                 "records what ran in the entry")
    check.add_argument("names", nargs="+", help="entries (family/model), or 'all'")
    check.add_argument("--work-dir", help="where the tiny bases and runs go (default: a folder under the cache); "
                                          "a second check there resumes")
    check.add_argument("--shift-served-layers", type=int, default=0, metavar="N",
                       help="serve a copy whose layer ids are moved by N (proves the check fails on a wrong "
                            "numbering; nothing is recorded)")
    check.add_argument("--no-record", action="store_true", help="do not write the result into the entry")
    catalog_sub.add_parser("table", help="the catalog as README's markdown table: what each engine serves")
    p.set_defaults(func=handlers["catalog"])


def _add_recipe_commands(command, handlers: dict[str, Callable]) -> None:
    """Commands that read a recipe: validate, schema, plan, run, tune, submit, catalog, draft-fields."""
    p = command("validate", "check recipes (syntax, schema, cross-field rules); exit 1 if any is invalid",
                "eagle-recipes validate recipes/*.toml")
    p.add_argument("recipes", nargs="+", metavar="RECIPE or KEY=VALUE",
                   help="recipe files; KEY=VALUE overrides (e.g. train.lr=3e-4) apply to each")
    p.set_defaults(func=handlers["validate"])
    p = command("schema", "print the recipe JSON Schema", "eagle-recipes schema > recipe.schema.json")
    p.set_defaults(func=handlers["schema"])
    from eagle_recipes.stages import STAGE_NAMES as stage_names
    for name, help_ in (("plan", "show the task graph: stages, inputs, outputs, resources, what must run and why"),
                        ("run", "run the graph (embedded Ray, or a cluster with --address)"),
                        ("tune", "choose levers by measurement: Ray Tune trials over the recipe's [tune] space, "
                                 "scored by simulated tau on the held-out split (<output_dir>/tune/best.toml)")):
        p = command(name, help_, f"eagle-recipes {name} recipes/quickstart.toml train.max_steps=200")
        p.add_argument("recipe")
        _add_overrides(p)
        if name != "tune":
            p.add_argument("--from", dest="start_from", choices=stage_names, help="run this stage and all after it")
            p.add_argument("--only", choices=stage_names, help="run just this stage")
            p.add_argument("--force", action="append", choices=stage_names, help="run this stage even if up to date")
        p.add_argument("--output-dir", help="override the recipe's output_dir")
        if name == "plan":
            p.add_argument("--json", action="store_true", help="machine-readable output")
            p.set_defaults(func=handlers["plan"])
        else:
            p.add_argument("--address", help="Ray cluster address (default: the recipe's, else embedded Ray)")
            p.add_argument("--verbose", action="store_true",
                           help="also show Ray's start-up notices and the workers' own logs (vLLM, Ray Train)")
            p.set_defaults(func=handlers[name])
    p = command("submit", "submit a run to a Ray cluster as a Ray Job",
                "eagle-recipes submit my.toml --address http://127.0.0.1:8265 --follow")
    p.add_argument("recipe")
    _add_overrides(p)
    p.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    p.add_argument("--follow", action="store_true", help="stream the job's logs; exit with its status")
    p.add_argument("--output-dir", help="absolute path on storage every node sees (default: the recipe's, made "
                                        "absolute on this machine)")
    p.set_defaults(func=handlers["submit"])
    _add_catalog_command(command, handlers)
    p = command("draft-fields", "list the draft architecture fields and defaults [draft.overrides] accepts",
                "eagle-recipes draft-fields")
    p.set_defaults(func=handlers["draft-fields"])


def _add_draft_commands(command, handlers: dict[str, Callable]) -> None:
    """Commands that take a draft folder: inspect, eval, publish."""
    p = command("inspect", "check a draft folder against the layout serving engines load",
                "eagle-recipes inspect runs/quickstart/export/draft")
    p.add_argument("draft")
    p.set_defaults(func=handlers["inspect"])
    p = command("eval", "measure acceptance length of any draft folder",
                "eagle-recipes eval --base BASE --draft DRAFT --prompts mt-bench -k 5")
    p.add_argument("--base", required=True)
    p.add_argument("--draft", required=True)
    p.add_argument("--prompts", default="mt-bench", help="mt-bench or a JSONL file")
    p.add_argument("-k", "--num-speculative-tokens", type=_at_least(1), default=5)
    p.add_argument("--max-tokens", type=_at_least(1), default=128)
    p.add_argument("--max-prompts", type=_at_least(0), default=0, help="0: every prompt")
    p.add_argument("--engine", choices=["vllm", "reference"], default="vllm")
    p.add_argument("--out", help="folder for report.json and the chart")
    p.add_argument("--concurrency", nargs="*", type=lambda t: None if t == "none" else _at_least(1)(t),
                   default=[1, 16], help="loads for the speed sweep over k = 1..K (default: 1 16; none, or the "
                                         "flag alone: no sweep)")
    p.add_argument("--speed-prompts", type=_at_least(1), default=16, help="MT-bench prompts of the speed sweep")
    p.add_argument("--speed-max-tokens", type=_at_least(1), default=64, help="tokens per prompt in the sweep")
    p.add_argument("--speed-repeats", type=_at_least(1), default=3,
                   help="measurements of each load on each engine (median and spread)")
    p.add_argument("--verbose", action="store_true", help="also show vLLM's own log lines")
    p.set_defaults(func=handlers["eval"])
    p = command("publish", "upload a draft folder (and its model card) to the Hugging Face Hub",
                "eagle-recipes publish runs/quickstart/export/draft --repo-id me/smollm2-eagle3")
    p.add_argument("draft")
    p.add_argument("--repo-id", required=True, help="the Hub repository, e.g. my-org/my-model-eagle3")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=handlers["publish"])
