"""Submit a run to a Ray cluster as a Ray Job: the recipe and every file it names travel in the runtime_env.

`output_dir` must be storage every node sees (a shared filesystem path): stages may run on any node.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from eagle_recipes.errors import UserError
from eagle_recipes.recipe import Recipe


def named_files(recipe: Recipe) -> list[Path]:
    """Every file (and dataset folder) the recipe names (they must travel with the job)."""
    return [recipe.resolve(path) for _, path in recipe.named_files()]


def stage_job_folder(recipe: Recipe) -> tuple[Path, str]:
    """Copy the recipe and its files under one folder, keeping their relative layout; return (folder,
    the recipe's path inside it)."""
    files = [recipe.path, *named_files(recipe)]
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    folder = Path(tempfile.mkdtemp(prefix="eagle-recipes-job-"))
    for path in files:
        target = folder / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():  # a dataset folder in the Hub's layout
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            shutil.copy2(path, target)
    return folder, str(recipe.path.relative_to(root))


def submit_when_ready(client, entrypoint: str, folder: Path, name: str, wait_s: float = 90.0) -> str:
    """Submit the job; a cluster just started answers "No available agent" until its job agent is up: wait."""
    deadline = time.time() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(folder)},
                                     metadata={"recipe": name})
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.time() > deadline:
                raise
            time.sleep(2.0)


def submit(recipe: Recipe, address: str, follow: bool, output_dir: str | None, console: Console) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    output = Path(output_dir).resolve() if output_dir else recipe.output_dir
    try:
        client = JobSubmissionClient(address)
    except ConnectionError as error:
        raise UserError(f"cannot reach the Ray dashboard at {address} ({error}); start the cluster with "
                        "`ray start --head --dashboard-host 0.0.0.0` or check --address") from None
    folder, recipe_in_job = stage_job_folder(recipe)
    # the nodes run the Python that started Ray; eagle-recipes must be installed there (like any job's code)
    overrides = "".join(f" {shlex.quote(text)}" for text in recipe.overrides)  # the same edit on the cluster
    entrypoint = f"python -m eagle_recipes.cli run {recipe_in_job}{overrides} --address auto --output-dir {output}"
    try:
        job_id = submit_when_ready(client, entrypoint, folder, recipe.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    console.print(f"submitted job {job_id}: {entrypoint}", markup=False)
    console.print(f"artifacts: {output}", markup=False)
    if not follow:
        return 0
    seen = 0
    while True:
        logs = client.get_job_logs(job_id)
        if len(logs) > seen:
            print(logs[seen:], end="", flush=True)
            seen = len(logs)
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            logs = client.get_job_logs(job_id)
            print(logs[seen:], end="", flush=True)
            console.print(f"job {job_id}: {status.value}", markup=False)
            return 0 if status == JobStatus.SUCCEEDED else 1
        time.sleep(1.0)
