"""A typed, read-only view of a validated recipe (defaults already applied)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eagle_recipes.data.formats import HELD_OUT_SPLIT

FREE_FORM_TABLES = ("overrides", "engine_kwargs", "rope_scaling", "space")  # tables whose keys the schema does not fix
NAMED_PROMPT_SETS = ("mt-bench", HELD_OUT_SPLIT)  # eval prompt sets that are not files


class Section:
    """Attribute access over one TOML table: `recipe.train.lr` rather than `recipe["train"]["lr"]`."""

    def __init__(self, values: dict[str, Any]):
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._values[name]
        except KeyError:
            raise AttributeError(name) from None
        return Section(value) if isinstance(value, dict) and name not in FREE_FORM_TABLES else value

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)


@dataclass(frozen=True)
class Recipe:
    path: Path  # the recipe file; relative paths inside it are relative to its folder
    data: dict[str, Any]  # the recipe with every default applied
    overrides: tuple[str, ...] = ()  # command-line KEY=VALUE overrides, already in `data` (recorded in run.json)
    notes: tuple[str, ...] = ()  # what validation could not check here (said, not refused)

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def folder(self) -> Path:
        """What relative paths are relative to: the recipe's folder, or its `relative_to` (best.toml's)."""
        relative_to = self.data.get("relative_to") or ""
        return (self.path.parent / relative_to).resolve() if relative_to else self.path.parent

    def resolve(self, relative: str) -> Path:
        """A path written in the recipe, made absolute against the recipe's folder."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else (self.folder / path).resolve()

    @property
    def output_dir(self) -> Path:
        return self.resolve(self.data["output_dir"].format(name=self.name))

    @property
    def eval_prompt_files(self) -> list[str]:
        return [p for p in self.eval.prompts if p not in NAMED_PROMPT_SETS]

    def prompt_sources(self) -> list:
        """data.prompts as sources (data/sources.py: files, and datasets by name), paths made absolute."""
        return self._sources("data.prompts", self.dataset.prompts)

    def conversation_sources(self) -> list:
        """data.conversations as sources (files in the conversations format), paths made absolute."""
        return self._sources("data.conversations", self.dataset.conversations)

    def _sources(self, key: str, entries: list) -> list:
        from eagle_recipes.data.sources import source_of

        return [source_of(entry, f"{key}.{i}", self.resolve) for i, entry in enumerate(entries)]

    def named_files(self) -> list[tuple[str, str]]:
        """Every file (or dataset folder) the recipe names, as (TOML key, path as written): checked by validate,
        sent by submit. Sources with nothing local (Hub datasets) are not files."""
        named = []
        for source, entry in zip(self.prompt_sources() + self.conversation_sources(),
                                 self.dataset.prompts + self.dataset.conversations):
            if source.local_path() is not None:  # the path as the recipe wrote it (a submission keeps it relative)
                named.append((source.path_key, entry if isinstance(entry, str) else entry["dataset"]))
        named += [(f"eval.prompts.{self.eval.prompts.index(p)}", p) for p in self.eval_prompt_files]
        named += [(key, value) for key, value in (("vocab.draft_vocab_cache", self.vocab.draft_vocab_cache),
                                                  ("model.config", self.model.config),
                                                  ("model.chat_template", self.model.chat_template)) if value]
        return named

    def tracking(self):
        """What the trackers of this run need (training opens them, the evaluate stage adds to the same run)."""
        from eagle_recipes.trackers import TrackingSpec

        return TrackingSpec(names=list(self.train.report_to), folder=str(self.output_dir), run_name=self.name,
                            config=self.data)

    def section(self, name: str) -> Section:
        return Section(self.data[name])

    model = property(lambda self: self.section("model"))
    dataset = property(lambda self: self.section("data"))  # the [data] table; `data` is the whole raw dict
    synthesis = property(lambda self: self.section("synthesis"))
    vocab = property(lambda self: self.section("vocab"))
    draft = property(lambda self: self.section("draft"))
    train = property(lambda self: self.section("train"))
    tokenize = property(lambda self: self.section("tokenize"))
    capture = property(lambda self: self.section("capture"))
    export = property(lambda self: self.section("export"))
    eval = property(lambda self: self.section("eval"))
    ray = property(lambda self: self.section("ray"))
    tune = property(lambda self: self.section("tune"))
