"""`eagle-recipes publish DRAFT --repo-id ID`: upload a draft folder to the Hugging Face Hub with its model card.

The folder must pass `inspect`. When it is a run's `export/draft` and the run was evaluated, the complete card
(`evaluate/card/README.md`, with tau and the chart) goes up as README.md, with the local draft path in its serving
commands replaced by the repository id. The token is huggingface_hub's own (HF_TOKEN or `hf auth login`); this
command never reads, prints or writes it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from eagle_recipes.errors import UserError
from eagle_recipes.run_folder import REPORT_PLOT, RunFolder


def evaluated_card(draft: Path) -> Path | None:
    """evaluate/card/ of the run this draft was exported by, when there is one."""
    run = RunFolder.of_draft(draft)
    return run.card if run and (run.card / "README.md").is_file() else None


def stage_upload(draft: Path, repo_id: str, into: Path) -> list[str]:
    """Copy what goes up into `into`: the draft's files, and the evaluated card with its chart when there is one."""
    for path in sorted(draft.iterdir()):
        if path.is_file():
            shutil.copy(path, into / path.name)
    card = evaluated_card(draft)
    if card:
        for path in (card / "README.md", card / REPORT_PLOT):
            if path.is_file():
                shutil.copy(path, into / path.name)
    readme = into / "README.md"
    if readme.is_file():  # the serving commands name the repository, not this machine's folder
        readme.write_text(readme.read_text(encoding="utf-8").replace(str(draft.resolve()), repo_id), encoding="utf-8")
    return sorted(p.name for p in into.iterdir())


def publish(draft: Path, repo_id: str, private: bool, api=None) -> str:
    """Create the repository (if needed) and upload; returns its URL. `api`: an HfApi (tests pass their own)."""
    from eagle_recipes.draft.inspect import inspect_draft

    report = inspect_draft(draft)
    if not report.ok:
        raise UserError(f"{draft}: not published, engines would not load it:\n" + "\n".join(report.lines()[1:]))
    if api is None:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise UserError("publishing needs huggingface_hub: pip install huggingface_hub") from None
        api = HfApi()
    with tempfile.TemporaryDirectory(prefix="eagle-recipes-publish-") as staging:
        stage_upload(draft, repo_id, Path(staging))
        try:
            url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="model",
                              commit_message="Upload an EAGLE draft made with eagle-recipes")
        except Exception as error:  # noqa: BLE001 - network, auth and naming errors all come from the Hub client
            raise UserError(f"could not publish to {repo_id}: {type(error).__name__}: {str(error)[:300]} "
                            "(log in with `hf auth login` or set HF_TOKEN; check the repository id)") from None
    return str(url)
