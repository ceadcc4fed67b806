"""The docs hold to their sources: docs/cli.md is what the parser prints; the quickstart's figures in README.md and
docs/ agree with recipes/quickstart.toml and its recorded run (benchmarks/results/quickstart.json); a recipe or
catalog entry that says it shares the quickstart's data does, or names how it differs; the README's catalog table is
the catalog; the README is a short front door; every relative link and image resolves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from eagle_recipes.cli_reference import WIDTH, render
from tests.helpers import PROJECT

README = PROJECT / "README.md"
DOCS = PROJECT / "docs"
LOG = PROJECT / "benchmarks" / "results" / "LOG.md"
RECORD = PROJECT / "benchmarks" / "results" / "quickstart.json"
QUICKSTART = PROJECT / "recipes" / "quickstart.toml"
SCHEMA = json.loads((PROJECT / "schemas" / "recipe.schema.json").read_text())


def setting(recipe: dict, key: str):
    """A recipe's value for a dotted key, the schema's default where the recipe does not set it."""
    value, schema = recipe, SCHEMA
    for part in key.split("."):
        schema = schema.get("properties", {}).get(part, {})
        value = value.get(part) if isinstance(value, dict) else None
    return schema.get("default") if value is None else value


# ---------------------------------------------------------------------------------------------- the CLI reference

def test_the_cli_reference_is_what_the_parser_gives():
    written = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert written == render(), "docs/cli.md is stale: run `make docs` (python -m eagle_recipes.cli_reference)"


def test_the_help_command_prints_the_parser_the_reference_is_written_from():
    env = {**os.environ, "COLUMNS": str(WIDTH), "NO_COLOR": "1"}
    helped = subprocess.run([sys.executable, "-m", "eagle_recipes.cli", "--help"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert helped.returncode == 0
    assert f"## eagle-recipes\n\n```text\n{helped.stdout.rstrip()}\n```" in render()


# ---------------------------------------------------------------------------- the quickstart's figures and sources

# what a figure about the quickstart looks like, by kind: each pattern's first group is the number
FIGURES = {
    "steps": r"\b(\d[\d,]*) (?:AdamW |optimizer |training )?steps\b",
    "conversations": r"\b(\d[\d,]*) (?:[\w-]+ ){0,2}conversations\b",
    "held out": r"\b(\d[\d,]*) held[ -]out\b",
    "self prompts": r"\b(\d[\d,]*) (?:self prompts|prompts the model writes)",
    "prompts": r"\b(\d[\d,]*) (?:prompts|instructions) written for this project",
    "answer tokens": r"(?:answers of (?:up to |at most )?(\d+) tokens|\b(\d+)-token answers)",
    "tau": r"(?<![\d.,])(1\.\d{3,4})(?!\d|\.\d|x)",
    "identical": r"\b(\d+/\d+)\b",
}
# a 7-digit commit: figures that name one the record does not are about an earlier run, and are left alone
COMMIT = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7}\b")
ABOUT_THE_QUICKSTART = re.compile(r"quickstart(?![-\w])", re.I)  # not quickstart-gpu, -dflash, -peagle


def chunks(text: str) -> list[str]:
    """Paragraphs, table rows and list items of Markdown, code blocks left out: the unit a figure is read in."""
    found, current, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        starts = re.match(r"\s*(\||- |\d+\. |#)", line) and not line.startswith("   ")
        if fenced or not line.strip() or starts:
            found += [" ".join(current)] if current else []
            current = []
        if not fenced and line.strip():
            current.append(line.strip())
    return found + ([" ".join(current)] if current else [])


def quoted_figures(text: str, commits: set[str]) -> list[tuple[str, str, str]]:
    """(kind, figure, the chunk) for every figure in a chunk about the quickstart that names no other run's commit."""
    found = []
    for chunk in chunks(text):
        if not ABOUT_THE_QUICKSTART.search(chunk) or set(COMMIT.findall(chunk)) - commits:
            continue
        for kind, pattern in FIGURES.items():
            for match in re.finditer(pattern, chunk):
                found.append((kind, next(group for group in match.groups() if group), chunk))
    return found


def record_problems(recipe: dict, record: dict, prompt_rows: int) -> list[str]:
    """Where the recorded run and the recipe as it ships disagree, or the record disagrees with itself."""
    problems = [f"recipes/quickstart.toml says {key} = {setting(recipe, key)!r}, the recorded run "
                f"(benchmarks/results/quickstart.json, {record['commit']}) ran {value!r}: run the quickstart and "
                f"record it" for key, value in record["settings"].items() if setting(recipe, key) != value]
    counts = record["conversations"]
    if counts["prompts"] != prompt_rows:
        problems.append(f"the record names {counts['prompts']} prompts, the recipe's prompt file holds {prompt_rows}")
    if counts["synthesized"] != counts["prompts"] + counts["self_prompts"]:
        problems.append("the record's synthesized conversations are not its prompts plus its self prompts")
    if counts["training"] + counts["held_out"] != counts["synthesized"]:
        problems.append("the record's training and held-out conversations do not add up to the synthesized ones")
    if record["tau"]["holdout"]["prompts"] != counts["held_out"]:
        problems.append("the record's held-out tau is not over its held-out conversations")
    return problems


def figure_problems(recipe_text: str, docs: dict[str, str], record: dict, prompt_rows: int) -> list[str]:
    """Every disagreement between the quickstart's recipe, its recorded run and the figures the docs quote: a figure
    about the quickstart that names no other run must be the current one, and the README must state the headline
    ones (steps, conversations, held-out size, tau)."""
    recipe = tomllib.loads(recipe_text)
    problems = record_problems(recipe, record, prompt_rows)
    counts, runs = record["conversations"], [record["tau"]] + [run["tau"] for run in record["same_recipe_elsewhere"]]
    taus = [t["value"] if isinstance(t, dict) else t for run in runs for t in run.values()]
    allowed = {
        "steps": {setting(recipe, "train.max_steps")},
        "conversations": {counts["synthesized"], counts["training"], counts["held_out"]},
        "held out": {counts["held_out"]},
        "self prompts": {setting(recipe, "synthesis.self_prompts")},
        "prompts": {counts["prompts"]},
        "answer tokens": {setting(recipe, "synthesis.max_tokens")},
        "tau": {f"{tau:.3f}" for tau in taus} | {f"{tau:.4f}" for tau in taus},
        "identical": {f"{n}/{n}" for n in (record["tau"]["mt-bench"]["prompts"], counts["held_out"])},
    }
    commits = {record["commit"]} | {run["commit"] for run in record["same_recipe_elsewhere"]}
    for name, text in docs.items():
        figures = quoted_figures(text, commits)
        for kind, figure, chunk in figures:
            value = figure if kind in ("tau", "identical") else int(figure.replace(",", ""))
            if value not in allowed[kind]:
                problems.append(f"{name}: {figure} ({kind}) where the quickstart's is {sorted(allowed[kind])}, in: "
                                f"{chunk[:160]}")
        if name == "README.md":
            stated = {(kind, figure.replace(",", "")) for kind, figure, _ in figures}
            headline = {("steps", str(setting(recipe, "train.max_steps"))),
                        ("conversations", str(counts["synthesized"])), ("held out", str(counts["held_out"])),
                        ("tau", f"{record['tau']['mt-bench']['value']:.3f}"),
                        ("tau", f"{record['tau']['holdout']['value']:.3f}")}
            problems += [f"README.md does not state the quickstart's {kind}: {figure}"
                         for kind, figure in sorted(headline - stated)]
    return problems


def the_docs() -> dict[str, str]:
    pages = {"README.md": README.read_text(encoding="utf-8")}
    pages.update({f"docs/{p.name}": p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md"))
                  if p.name != "cli.md"})
    return pages


def prompt_rows(recipe_text: str) -> int:
    files = [f for f in tomllib.loads(recipe_text)["data"]["prompts"] if isinstance(f, str)]
    return sum(len((QUICKSTART.parent / f).read_text(encoding="utf-8").splitlines()) for f in files)


def test_the_quickstarts_figures_agree_with_its_recipe_and_its_recorded_run():
    text, record = QUICKSTART.read_text(encoding="utf-8"), json.loads(RECORD.read_text())
    assert figure_problems(text, the_docs(), record, prompt_rows(text)) == []


def test_the_figure_check_fails_when_the_recipe_changes_without_the_docs():
    text, record, docs = QUICKSTART.read_text(encoding="utf-8"), json.loads(RECORD.read_text()), the_docs()
    steps = tomllib.loads(text)["train"]["max_steps"]
    changed = re.sub(r"(?m)^max_steps = \d+", f"max_steps = {steps + 100}", text)
    assert tomllib.loads(changed)["train"]["max_steps"] == steps + 100
    problems = figure_problems(changed, docs, record, prompt_rows(text))
    assert any("train.max_steps" in p and "recorded run" in p for p in problems), problems
    assert any(p.startswith("README.md: ") and f"{steps:,}" in p for p in problems), problems
    assert any("does not state the quickstart's steps" in p for p in problems), problems


def test_the_figure_check_reads_a_stale_line_and_leaves_a_dated_one_alone():
    text, record = QUICKSTART.read_text(encoding="utf-8"), json.loads(RECORD.read_text())
    docs = the_docs()
    stale = dict(docs, **{"docs/x.md": "The quickstart trains 1,800 AdamW steps on 300 conversations; tau 1.388.\n"})
    problems = figure_problems(text, stale, record, prompt_rows(text))
    assert len([p for p in problems if p.startswith("docs/x.md")]) == 3, problems
    dated = dict(docs, **{"docs/x.md": "The quickstart at cb67e2e trained 1,800 AdamW steps; tau 1.388.\n"})
    assert figure_problems(text, dated, record, prompt_rows(text)) == []


# ------------------------------------------------------------------ recipes and entries beside the quickstart

CLAIM = re.compile(r"same model, data and budget|the quickstart's (?:settings|data)(?! (?:at|of|as of|before)\b)|"
                   r"the model the quickstart runs|share the same synthesized conversations", re.I)
DECLARED = re.compile(r"^# Data: differs from recipes/quickstart\.toml in (.+)$", re.M)
DATA_TABLES = ("model", "data", "synthesis", "vocab")  # what decides the conversations and the draft vocabulary
NOT_DATA = {"model.config", "synthesis.batch_size"}  # a file of facts for offline planning; the unit of resume


def data_settings(recipe: dict) -> dict[str, object]:
    keys = {f"{table}.{key}" for table in DATA_TABLES for key in recipe.get(table, {})} - NOT_DATA
    values = {key: setting(recipe, key) for key in keys}
    if "data.prompts" in values:  # the same file, named relative to each recipe's folder
        values["data.prompts"] = [Path(p).name if isinstance(p, str) else p for p in values["data.prompts"]]
    return values


def sharing_problems(quickstart_text: str, name: str, text: str) -> list[str]:
    """A recipe that says it shares the quickstart's data (or settings) must, and one that declares how its data
    differs (`# Data: differs from recipes/quickstart.toml in KEY = VALUE, ...`) must differ in exactly that."""
    quickstart, other = tomllib.loads(quickstart_text), tomllib.loads(text)
    ours, theirs = data_settings(quickstart), data_settings(other)
    differs = {key: setting(other, key) for key in sorted(ours.keys() | theirs.keys())
               if setting_of(ours, quickstart, key) != setting_of(theirs, other, key)}
    declared = DECLARED.search(text)
    said = " ".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    said += " " + other.get("catalog", {}).get("notes", "")
    claim = CLAIM.search(said)
    problems = []
    if declared:
        pairs = dict(pair.split(" = ", 1) for pair in re.split(r",\s*", declared.group(1).strip()))
        named = {key: tomllib.loads(f"v = {value}")["v"] for key, value in pairs.items()}
        if named != differs:
            problems.append(f"{name}: declares its data differs in {named}, but it differs in {differs}")
    elif claim and differs:
        problems.append(f"{name}: says '{claim.group(0)}' but its data differs in {differs}")
    if claim and re.search(r"settings|budget", claim.group(0), re.I):
        steps = (setting(other, "train.max_steps"), setting(quickstart, "train.max_steps"))
        if steps[0] != steps[1]:
            problems.append(f"{name}: says '{claim.group(0)}' but trains {steps[0]} steps against {steps[1]}")
    return problems


def setting_of(values: dict, recipe: dict, key: str):
    return values[key] if key in values else setting(recipe, key)


def beside_the_quickstart() -> list[Path]:
    return [p for p in sorted((PROJECT / "recipes").glob("*.toml")) if p != QUICKSTART] + sorted(
        (PROJECT / "catalog").glob("*/*.toml"))


def test_recipes_and_entries_that_share_the_quickstarts_data_do_or_say_how_they_differ():
    quickstart = QUICKSTART.read_text(encoding="utf-8")
    problems = [problem for path in beside_the_quickstart()
                for problem in sharing_problems(quickstart, str(path.relative_to(PROJECT)), path.read_text())]
    assert problems == []
    # the sister recipes and the two catalog entries run on the quickstart's model: each says how its data differs
    for name in ("recipes/quickstart-dflash.toml", "recipes/quickstart-peagle.toml",
                 "catalog/smollm2/SmolLM2-135M-Instruct.toml", "catalog/smollm2/SmolLM2-135M-Instruct-DFlash.toml"):
        assert DECLARED.search((PROJECT / name).read_text()), f"{name} does not say how its data differs"


def test_the_sharing_check_catches_a_false_claim_and_a_wrong_declaration():
    quickstart = QUICKSTART.read_text(encoding="utf-8")
    fewer = re.sub(r"(?m)^self_prompts = \d+", "self_prompts = 40", quickstart)
    claimed = "# Same model, data and budget as recipes/quickstart.toml.\n" + fewer
    assert "synthesis.self_prompts" in " ".join(sharing_problems(quickstart, "x", claimed))
    wrong = "# Data: differs from recipes/quickstart.toml in synthesis.self_prompts = 41\n" + fewer
    assert sharing_problems(quickstart, "x", wrong) and not sharing_problems(quickstart, "x", wrong.replace("41", "40"))


# ------------------------------------------------------------------------------- the README as a front door

def test_the_readme_is_a_short_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, len(lines)
    headings = {line: number for number, line in enumerate(lines, 1) if line.startswith("## ")}
    for wanted in ("## Install", "## The quickstart on a CPU", "## Your model on a GPU", "## On a Ray cluster",
                   "## Serve it"):
        assert headings.get(wanted, 999) <= 120, f"{wanted} is not within the README's first 120 lines"
    first_commands = [line.split("#")[0].strip() for line in lines[:12] if line.startswith("make ")]
    assert first_commands == ["make quickstart", "make test"], "the two commands stay at the top"


def test_every_docs_page_is_linked_from_the_readme():
    readme = README.read_text(encoding="utf-8")
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    assert len(pages) >= 8 and [p for p in pages if f"](docs/{p})" not in readme] == []


def test_the_readmes_catalog_table_is_the_catalog():
    """README's table is what `eagle-recipes catalog table` prints of the entries (their `tested` and `checked`,
    SGLang's rules), one row per entry."""
    from eagle_recipes.catalog import entries
    from eagle_recipes.catalog_check import readme_table

    readme = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- catalog table:[^\n]*-->\n(.*?)<!-- end of catalog table -->", readme, re.S)
    assert block, "README lost its catalog table markers"
    assert block.group(1) == readme_table(entries()), "README's catalog table is stale: run `eagle-recipes " \
                                                      "catalog table` and paste it between the markers"
    assert len(re.findall(r"^\| [\w.-]+/[\w.-]+ \|", block.group(1), re.M)) == len(entries())


def test_contributing_names_every_folder_of_the_package():
    text = (DOCS / "contributing.md").read_text(encoding="utf-8")
    folders = sorted(p.name for p in (PROJECT / "eagle_recipes").iterdir() if (p / "__init__.py").exists())
    assert [f for f in folders if f"`{f}/`" not in text] == []


def test_the_gpu_quickstart_is_what_make_offers():
    makefile = (PROJECT / "Makefile").read_text()
    assert "QUICKSTART := recipes/quickstart-gpu.toml" in makefile and "quickstart-gpu:" in makefile
    assert "QUICKSTART := recipes/quickstart.toml" in makefile
    assert "\t$(BIN)/python -m pytest -q -rs --durations=30 tests\n" in makefile
    recipe = tomllib.loads((PROJECT / "recipes" / "quickstart-gpu.toml").read_text())
    assert recipe["train"]["use_gpu"] is True and not (PROJECT / "recipes" / recipe["model"]["path"]).exists()


# ------------------------------------------------------------------------------------------------- links

def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen, fenced = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        fenced = fenced != line.startswith("```")
        if not fenced and re.match(r"#{1,6} ", line):
            base = slug(line)
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def test_every_relative_link_and_image_resolves():
    broken = []
    for page in [README, LOG, *sorted(DOCS.glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(PROJECT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(PROJECT)}: {target} (no such heading)")
    assert broken == []
