"""`publish`: what goes up, and what is refused. The Hugging Face Hub cannot be reached from here, so the upload
goes to a recording stand-in for huggingface_hub's HfApi (its two calls, same arguments); everything before the
network (inspect, the card, the staged folder) is real."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eagle_recipes.errors import UserError
from eagle_recipes.publish import publish
from eagle_recipes.run_folder import REPORT_PLOT, RunFolder
from tests.builders import build_permutation_target, export_copy_draft, permutation


class RecordingHub:
    """Stands in for HfApi: records the calls and keeps a copy of the uploaded folder."""

    def __init__(self, folder: Path):
        self.folder, self.calls = folder, []

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        self.calls.append(("upload_folder", repo_id, repo_type))
        shutil.copytree(folder_path, self.folder)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A run's layout: export/draft, and evaluate/card with an evaluated card naming the local draft path."""
    run = tmp_path_factory.mktemp("run")
    perm = permutation()
    build_permutation_target(run / "base", perm)
    draft = export_copy_draft(RunFolder(run).draft, run / "base", perm)
    card = RunFolder(run).card
    card.mkdir(parents=True)
    (card / "README.md").write_text(f"# card\n| mt-bench | 80 | 4.000 |\nvllm serve base --speculative-config "
                                    f"'{{\"model\": \"{draft.resolve()}\"}}'\n")
    (card / REPORT_PLOT).write_bytes(b"png")
    return run


def test_publish_uploads_the_draft_with_the_evaluated_card(run_folder, tmp_path):
    hub = RecordingHub(tmp_path / "uploaded")
    url = publish(RunFolder(run_folder).draft, "me/perm-eagle3", private=True, api=hub)
    assert url == "https://huggingface.co/me/perm-eagle3"
    assert hub.calls == [("create_repo", "me/perm-eagle3", "model", True, True),
                         ("upload_folder", "me/perm-eagle3", "model")]
    assert sorted(p.name for p in (tmp_path / "uploaded").iterdir()) == sorted([
        "README.md", "config.json", "model.safetensors", REPORT_PLOT])
    card = (tmp_path / "uploaded" / "README.md").read_text()
    assert "| mt-bench | 80 | 4.000 |" in card and '"model": "me/perm-eagle3"' in card
    assert str(run_folder) not in card  # no local path goes public


def test_publish_refuses_a_draft_that_inspect_rejects(run_folder, tmp_path):
    broken = tmp_path / "draft"
    shutil.copytree(RunFolder(run_folder).draft, broken)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    hub = RecordingHub(tmp_path / "uploaded")
    with pytest.raises(UserError, match="not published, engines would not load it"):
        publish(broken, "me/broken", private=False, api=hub)
    assert hub.calls == []
