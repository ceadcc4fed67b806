"""The checkpoint folder: `step-NNNNNNN/` with `state.pt` (draft weights, optimizer state, step) and
`complete.json` (written last: the size the state file must have). One class owns that layout; FSDP's gathering
and restoring go through a subclass.

Checkpoints are written by rank 0, atomically; the last `keep` are kept. A checkpoint whose state file is cut short
(or lacks its record) is removed before a resume, so training resumes from the last whole one (or from the start)
rather than failing on, or reading, a damaged file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from eagle_recipes.atomic import atomic_path, write_json
from eagle_recipes.run_folder import CHECKPOINT_PREFIX as PREFIX
from eagle_recipes.run_folder import checkpoint_name
STATE = "state.pt"
RECORD = "complete.json"
BEST = "best"  # the draft of the best simulated acceptance so far (its record holds the step and tau)


def step_of(path: Path) -> int:
    return int(path.name.removeprefix(PREFIX))


class Checkpointer:
    """Checkpoints of a draft trained by one process or by DDP workers (every rank holds the whole state)."""

    def __init__(self, folder: Path, keep: int = 1):
        self.folder, self.keep = Path(folder), keep

    # ---------------------------------------------------------------- the folder
    def checkpoints(self) -> list[Path]:
        found = self.folder.glob(f"{PREFIX}*") if self.folder.exists() else []
        return sorted(found, key=step_of)

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def latest_step(self) -> int:
        latest = self.latest()
        return step_of(latest) if latest else 0

    @staticmethod
    def is_whole(path: Path) -> bool:
        try:
            record = json.loads((path / RECORD).read_text(encoding="utf-8"))
            return (path / STATE).stat().st_size == record["bytes"]
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def discard_damaged(self, log: Callable[[str], None]) -> None:
        best = self.folder / BEST
        for path in self.checkpoints() + ([best] if best.exists() else []):
            if not self.is_whole(path):
                log(f"checkpoint {path.name} is damaged: removed, resuming from an earlier one")
                shutil.rmtree(path, ignore_errors=True)

    def load_latest(self, device: torch.device | str = "cpu") -> dict | None:
        """{"draft", "optimizer", "step"} of the latest checkpoint, or None."""
        latest = self.latest()
        return torch.load(latest / STATE, weights_only=False, map_location=device) if latest else None

    def best(self) -> dict | None:
        """{"step", "tau", "bytes"} of the best draft kept so far, or None."""
        try:
            return json.loads((self.folder / BEST / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def load_best(self) -> dict | None:
        """{"draft", "step", "tau"} of the best draft kept, or None."""
        record = self.best()
        if record is None:
            return None
        return {**torch.load(self.folder / BEST / STATE, weights_only=False, map_location="cpu"), **record}

    def write_best(self, step: int, tau: float, draft_state: dict) -> None:
        with atomic_path(self.folder / BEST) as tmp:
            tmp.mkdir()
            torch.save({"draft": draft_state}, tmp / STATE)
            write_json(tmp / RECORD, {"step": step, "tau": tau, "bytes": (tmp / STATE).stat().st_size})

    def write(self, step: int, draft_state: dict, optimizer_state: dict) -> None:
        with atomic_path(self.folder / checkpoint_name(step)) as tmp:
            tmp.mkdir()
            torch.save({"draft": draft_state, "optimizer": optimizer_state, "step": step}, tmp / STATE)
            write_json(tmp / RECORD, {"step": step, "bytes": (tmp / STATE).stat().st_size})
        for old in self.checkpoints()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    # ---------------------------------------------------------------- a worker's state
    def gather(self, wrapped: torch.nn.Module, draft: torch.nn.Module,
               optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """(draft weights, optimizer state), whole."""
        return draft.state_dict(), optimizer.state_dict()

    def restore_optimizer(self, wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def save(self, step: int, rank: int, wrapped: torch.nn.Module, draft: torch.nn.Module,
             optimizer: torch.optim.Optimizer) -> None:
        """Every rank calls this (a sharded state is gathered collectively); rank 0 writes."""
        draft_state, optimizer_state = self.gather(wrapped, draft, optimizer)
        if rank == 0:
            self.write(step, draft_state, optimizer_state)

    def save_best(self, step: int, tau: float, rank: int, wrapped: torch.nn.Module, draft: torch.nn.Module,
                  optimizer) -> None:
        """Every rank calls this, as `save`; rank 0 keeps the draft as the best one."""
        draft_state, _ = self.gather(wrapped, draft, optimizer)
        if rank == 0:
            self.write_best(step, tau, draft_state)


class ShardedCheckpointer(Checkpointer):
    """FSDP: the state is sharded over the ranks; gathered whole (on the CPU) to save, re-sharded to restore."""

    def gather(self, wrapped, draft, optimizer) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model_state, optimizer_state = get_state_dict(wrapped, optimizer,
                                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k.removeprefix("draft."): v for k, v in model_state.items()}, optimizer_state

    def restore_optimizer(self, wrapped, optimizer, state) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(wrapped, optimizer, state, options=StateDictOptions(full_state_dict=True))


def checkpointer_for(strategy: str, folder: Path, keep: int = 1) -> Checkpointer:
    return ShardedCheckpointer(folder, keep) if strategy == "fsdp" else Checkpointer(folder, keep)
