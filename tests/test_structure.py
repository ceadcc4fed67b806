"""The package's structure, read from its source (every import, function-level ones included; nothing is run):
no import cycle, no stage module that imports another stage module, nothing in training/ that imports the recipe
or the stages, and no module over 400 lines. The layout the README describes stays the layout the code has."""

from __future__ import annotations

import ast
from pathlib import Path

from eagle_recipes.draft.drafters import DRAFTERS
from eagle_recipes.recipe.schema import load_schema
from tests.helpers import PROJECT

PACKAGE = PROJECT / "eagle_recipes"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PROJECT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source (`from x import y` counts x, and x.y
    when y is a module); a package's own __init__ is not an edge of its modules."""
    edges = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = name.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([module] if module else []))
            candidates = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        edges |= {c for c in candidates if c in known and c != name and not name.startswith(c + ".")}
    return edges


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def package_graph() -> dict[str, set[str]]:
    """The import graph between the package's folders (a top-level module stands for itself)."""
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}

    def owner(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in folders else module

    graph: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        graph.setdefault(owner(name), set()).update(owner(t) for t in targets if owner(t) != owner(name))
    return graph


def test_no_import_cycle_between_the_package_folders():
    assert cycles(package_graph()) == []


def test_draft_and_data_take_values_never_the_recipe():
    offending = [(name, target) for name, targets in import_graph().items()
                 if name.startswith(("eagle_recipes.draft", "eagle_recipes.data"))
                 for target in targets if target.startswith("eagle_recipes.recipe")]
    assert offending == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_stage_imports_another_stage():
    shared = {"eagle_recipes.stages", "eagle_recipes.stages.base"}
    offending = [(name, target) for name, targets in import_graph().items()
                 if name.startswith("eagle_recipes.stages.") and name not in shared
                 for target in targets if target.startswith("eagle_recipes.stages.") and target not in shared]
    assert offending == []


def test_training_never_imports_the_recipe_or_the_stages():
    offending = [(name, target) for name, targets in import_graph().items() if name.startswith("eagle_recipes.training")
                 for target in targets
                 if target.startswith(("eagle_recipes.recipe", "eagle_recipes.stages", "eagle_recipes.graph"))]
    assert offending == []


def test_no_module_over_400_lines():
    sizes = {name: path.read_text(encoding="utf-8").count("\n") for name, path in modules().items()}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}


def test_the_readme_names_every_folder_of_the_package():
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert [f for f in folders if f"`{f}/`" not in readme] == []


# what a run's folder holds, by name: eagle_recipes/run_folder.py is the one module that may spell these out
# (manifest.py owns its stage.json); everyone else asks a RunFolder or imports the name
RUN_LAYOUT_NAMES = {"run.json", "stage.json", "d2t.pt", "t2d.pt", "counts.npy", "tokenized", "head.safetensors",
                    "metrics.jsonl", "loss.png", "accuracy.png", "simulated_tau.png", "report.json",
                    "per_position.png", "checkpoints", "trained", "shards", "holdout"}
LAYOUT_OWNERS = {PACKAGE / "run_folder.py", PACKAGE / "manifest.py", PACKAGE / "data" / "formats.py"}


def spelled_layout_names(source: str) -> list[tuple[int, str]]:
    """(line, text), in order, of each string that spells a run-layout name as a path or a path part ("train/metrics.jsonl",
    "step-0000010"); dictionary keys and keyword names are names of counts and settings, not paths."""
    tree = ast.parse(source)
    keys = {id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys if key is not None}
    keys |= {id(node.slice) for node in ast.walk(tree) if isinstance(node, ast.Subscript)}  # manifest["counts"]["shards"]
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr)}  # prose about the layout, not a path
    keys |= docstrings
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in keys:
            continue
        parts = set(node.value.strip("/").split("/"))
        if parts & RUN_LAYOUT_NAMES or any(part.startswith("step-0") for part in parts):
            found.append((node.lineno, node.value))
    return sorted(found)


def test_no_run_layout_name_outside_its_owner():
    scanned = [p for p in sorted(PACKAGE.rglob("*.py")) if p not in LAYOUT_OWNERS]
    scanned += sorted((PROJECT / "benchmarks").glob("*.py")) + sorted((PROJECT / "tests").glob("*.py"))
    offenders = [f"{path.relative_to(PROJECT)}:{line}: {text!r}" for path in scanned if path != Path(__file__)
                 for line, text in spelled_layout_names(path.read_text(encoding="utf-8"))]
    assert not offenders, "ask eagle_recipes/run_folder.py (RunFolder, its names) instead:\n" + "\n".join(offenders)


def test_the_layout_check_finds_a_spelled_path():
    source = 'metrics = out / "train" / "metrics.jsonl"\nlatest = "checkpoints/step-0000010"\ncounts = {"shards": 2}\nn = counts["shards"]\n'
    assert [line for line, _ in spelled_layout_names(source)] == [1, 2]


SOURCE_KINDS = {"FileSource", "DatasetSource"}  # data/sources.py's Source classes


def checks_class(node: ast.AST, classes: set[str]) -> bool:
    """Whether the node is `isinstance(x, K)` (or a tuple of kinds) with K one of `classes`."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"):
        return False
    kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
    return any(isinstance(kind, ast.Name) and kind.id in classes for kind in kinds)


def source_kind_checks(source: str) -> list[int]:
    """Lines of `isinstance(x, K)` where K names a kind of data source: readers ask the Source interface instead."""
    return [node.lineno for node in ast.walk(ast.parse(source)) if checks_class(node, SOURCE_KINDS)]


def test_no_reader_tells_the_kinds_of_source_apart():
    offenders = [f"{path.relative_to(PROJECT)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
                 if path != PACKAGE / "data" / "sources.py"
                 for line in source_kind_checks(path.read_text(encoding="utf-8"))]
    offenders += [f"{path.relative_to(PROJECT)}:{line}" for path in sorted((PROJECT / "benchmarks").glob("*.py"))
                  for line in source_kind_checks(path.read_text(encoding="utf-8"))]
    assert not offenders, "ask the Source (data/sources.py) instead:\n" + "\n".join(offenders)
    assert source_kind_checks("ok = isinstance(s, (Path, DatasetSource))\nfine = isinstance(s, str)\n") == [1]


DRAFTER_NAMES = set(DRAFTERS)  # the registry's names, which are the schema's draft.algorithm enum (checked below)
DRAFT_CLASSES = {"Eagle3Draft", "Eagle1Draft", "DFlashDraft"}



def drafter_switches(source: str) -> list[int]:
    """Lines comparing a value with a drafter's name (==, !=, in) or checking a draft's class with isinstance."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            sides += [e for side in sides if isinstance(side, (ast.Tuple, ast.List, ast.Set)) for e in side.elts]
            if any(isinstance(side, ast.Constant) and side.value in DRAFTER_NAMES for side in sides):
                found.append(node.lineno)
        elif checks_class(node, DRAFT_CLASSES):
            found.append(node.lineno)
    return found


def test_code_asks_the_drafter_registry_instead_of_comparing_names():
    counts = {str(path.relative_to(PACKAGE)): len(drafter_switches(path.read_text(encoding="utf-8")))
              for path in sorted(PACKAGE.rglob("*.py")) if "drafters" not in path.parts}
    counts.update({f"../benchmarks/{path.name}": len(drafter_switches(path.read_text(encoding="utf-8")))
                   for path in sorted((PROJECT / "benchmarks").glob("*.py"))})
    switching = {name: count for name, count in counts.items() if count}
    assert not switching, f"ask eagle_recipes/draft/drafters/ (drafter(name).<fact>) instead of comparing names: {switching}"
    assert DRAFTER_NAMES == set(load_schema()["properties"]["draft"]["properties"]["algorithm"]["enum"])
    assert drafter_switches('a = x == "dflash"\nb = y in ("eagle1", "z")\nc = isinstance(d, DFlashDraft)\n'
                            'd = x == "other"\n') == [1, 2, 3]


def mode_name_uses(source: str, names: set[str]) -> list[int]:
    """Lines that compare with a feature mode's name (`==`, `!=`, `in`) or index by one (`sizes["online"]`):
    code asks the mode (training/features/) instead."""
    def is_name(node: ast.AST) -> bool:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_name(element) for element in node.elts)
        return isinstance(node, ast.Constant) and node.value in names

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(is_name(side) for side in [node.left, *node.comparators]):
            found.append(node.lineno)
        elif isinstance(node, ast.Subscript) and is_name(node.slice):
            found.append(node.lineno)
    return sorted(found)


def test_no_feature_mode_name_is_compared_outside_its_package():
    from eagle_recipes.training.features import FEATURE_MODES

    owner = PACKAGE / "training" / "features"
    offenders = [f"{path.relative_to(PROJECT)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
                 if owner not in path.parents
                 for line in mode_name_uses(path.read_text(encoding="utf-8"), set(FEATURE_MODES))]
    assert offenders == [], "ask eagle_recipes/training/features/ (feature_mode(name)) instead"


def test_the_mode_check_finds_a_comparison():
    source = 'if train.features == "online":\n    pass\nx = sizes["cached"]\ny = mode in ("streamed",)\nz = "a" == b\n'
    assert mode_name_uses(source, {"online", "cached", "streamed"}) == [1, 3, 4]


def test_the_wheel_lists_every_package_of_the_source_tree():
    """pyproject.toml names its packages one by one (schemas/ and catalog/ ship as packages of their own): a new
    folder of eagle_recipes/ that is not named there would be missing from every installed copy."""
    import tomllib

    listed = set(tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(path.parent.relative_to(PROJECT).parts)
               for path in (PROJECT / "eagle_recipes").rglob("__init__.py")}
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
