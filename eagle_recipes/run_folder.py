"""The layout of a run's output folder: one folder per stage, named by the stage, each with its manifest; the
exported draft, the evaluated model card and the training sequences at known places inside. Stages name
themselves with the constants below; everything else that looks into a run (the card, publish, plan's sizes)
asks this module where things are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYNTHESIZE, CALIBRATE, CAPTURE, TRAIN, EXPORT, EVALUATE = (
    "synthesize", "calibrate", "capture", "train", "export", "evaluate")
DRAFT_FOLDER = "draft"  # export/draft: what engines load
CARD_FOLDER = "card"  # evaluate/card: README.md and per_position.png, ready to publish


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def stage(self, name: str) -> Path:
        return self.root / name

    @property
    def draft(self) -> Path:
        return self.root / EXPORT / DRAFT_FOLDER

    @property
    def card(self) -> Path:
        return self.root / EVALUATE / CARD_FOLDER

    def manifests(self, names: tuple[str, ...] = (SYNTHESIZE, CALIBRATE, CAPTURE, TRAIN)) -> dict[str, dict]:
        """{stage: {"counts", "metrics", "wall_s"}} of the finished stages among `names`."""
        from eagle_recipes.graph.manifest import read_manifest

        found = {}
        for name in names:
            manifest = read_manifest(self.stage(name))
            if manifest:
                found[name] = {"counts": manifest.counts, "metrics": manifest.metrics, "wall_s": manifest.wall_s}
        return found

    def sequences_folder(self) -> Path | None:
        """The folder holding the run's tokenized training sequences (capture's, else online training's)."""
        from eagle_recipes.data.sequences import has_sequences

        return next((self.stage(name) for name in (CAPTURE, TRAIN) if has_sequences(self.stage(name))), None)

    @classmethod
    def of_draft(cls, draft: Path) -> "RunFolder | None":
        """The run whose export wrote `draft`, when it is one's `export/draft`."""
        draft = draft.resolve()
        if draft.name == DRAFT_FOLDER and draft.parent.name == EXPORT:
            return cls(draft.parent.parent)
        return None
