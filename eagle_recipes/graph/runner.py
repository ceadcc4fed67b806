"""Run a Plan on Ray: one Ray task per stage, chained through ObjectRefs, skipping up-to-date stages."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray

from eagle_recipes.atomic import write_json
from eagle_recipes.errors import UserError
from eagle_recipes.manifest import (
    Manifest,
    prepare_folder,
    read_manifest,
    write_manifest,
)
from eagle_recipes.graph.plan import Plan
from eagle_recipes.graph.progress import Display, ProgressHub
from eagle_recipes.paths import ensure_writable_folder
from eagle_recipes.peak_memory import peak_mib, reset_peak
from eagle_recipes.recipe import Recipe
from eagle_recipes.run_folder import RunFolder
from eagle_recipes.stages import STAGES
from eagle_recipes.stages.base import StageContext

STAGE_BY_NAME = {stage.name: stage for stage in STAGES}


def embedded_cpus(requested: int) -> int:
    """Logical CPUs for an embedded Ray: more than the cores, so that Ray Data's helper actors, an engine actor
    and training workers can be scheduled together on a machine with few cores (real threads are sized separately)."""
    return requested or max(8, 4 * (os.cpu_count() or 1))


def init_ray(recipe: Recipe, address: str | None, verbose: bool = False) -> None:
    """Join the cluster at `address` (or the recipe's), or start an embedded Ray sized to this machine.

    Unless `verbose`, Ray's own start-up notices and the workers' logs (vLLM, Ray Train) stay out of the output:
    they are kept in Ray's session folder, the stages report their own progress, and a failing stage's error is
    shown either way.
    """
    import logging

    if ray.is_initialized():
        return
    address = address or recipe.ray.address or None
    env = {"TOKENIZERS_PARALLELISM": "false"}
    quiet = {} if verbose else {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        check_reachable(address)
        ray.init(address=address, runtime_env={"env_vars": env}, **quiet)
    else:
        # address="local": always a fresh embedded Ray, never a cluster that `ray start` left on this machine
        ray.init(address="local", num_cpus=embedded_cpus(recipe.ray.num_cpus), include_dashboard=False,
                 runtime_env={"env_vars": env}, **quiet)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, by name, when nothing listens at a cluster address (ray.init would wait minutes)."""
    import socket
    from urllib.parse import urlsplit

    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    if parts.hostname is None or parts.port is None:
        raise UserError(f"Ray address '{address}' has no host:port (e.g. HEAD:6379, ray://HEAD:10001 or auto)")
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=timeout_s).close()
    except OSError as error:
        raise UserError(f"cannot reach the Ray cluster at {address} ({error.strerror or error}); start it with "
                        "`ray start --head` there, or run without --address for an embedded Ray") from None


def execute_stage(recipe: Recipe, name: str, fingerprint: str, upstream: dict[str, str], hub: Any) -> dict:
    """Body of a stage's Ray task: prepare its folder (resume or wipe), run it, write its manifest last."""
    stage = STAGE_BY_NAME[name]
    out = RunFolder(Path(recipe.output_dir)).stage(name)
    prepare_folder(out, fingerprint)  # keeps partial work of the same fingerprint, for the stage to resume

    def progress(done: int, total: int | None, unit: str) -> None:
        hub.update.remote(name, done, total, unit)

    def log(message: str) -> None:
        hub.log.remote(name, message)

    progress(0, None, "")  # the stage shows as running from its first moment, before it has a count
    measured = reset_peak()  # this worker process may have run other tasks before
    started = time.time()
    context = StageContext(recipe=recipe, out=out, upstream={k: Path(v) for k, v in upstream.items()},
                           progress=progress, log=log)
    result = stage.run(context) or {}
    finished = time.time()
    manifest = Manifest(stage=name, fingerprint=fingerprint, started_at=started, finished_at=finished,
                        wall_s=round(finished - started, 3), counts=result.get("counts", {}),
                        metrics=result.get("metrics", {}), outputs=stage.outputs(recipe),
                        peak_rss_mib=peak_mib() if measured else None)
    write_manifest(out, manifest)
    return asdict(manifest)


def run_plan(recipe: Recipe, plan: Plan, address: str | None = None, display: Display | None = None,
             verbose: bool = False) -> dict:
    """Run every stage that must run; return the run summary (also written to <output_dir>/run.json)."""
    output_dir = Path(recipe.output_dir)
    _check_upstream(plan, output_dir)
    ensure_writable_folder(output_dir, "set output_dir (or --output-dir) to a writable folder")
    display = display or Display([s.name for s in plan.stages])
    hub = None
    if any(stage.must_run for stage in plan.stages):  # nothing to do: no Ray to start, seconds not minutes
        init_ray(recipe, address, verbose)
        hub = ProgressHub.remote()
    summary: dict[str, Any] = {"recipe": plan.recipe, "overrides": list(recipe.overrides),
                               "output_dir": plan.output_dir, "stages": {}}
    started = time.time()
    with display:
        pending = _start_stages(recipe, plan, hub, display, summary["stages"])
        failure = _follow_stages(pending, hub, display, summary["stages"])
    summary["wall_s"] = round(time.time() - started, 3)
    summary["ok"] = failure is None
    summary["outcome"] = [line for name, entry in summary["stages"].items()
                          if entry["status"] in ("done", "up to date")
                          for line in STAGE_BY_NAME[name].outcome(recipe, entry)]
    write_json(RunFolder(output_dir).summary_file, summary)
    if failure is not None:
        raise failure
    return summary


def _start_stages(recipe: Recipe, plan: Plan, hub: Any, display: Display,
                  stages: dict[str, dict]) -> dict[ray.ObjectRef, str]:
    """One Ray task per stage that must run, chained to its upstream tasks; the others shown as up to date or
    skipped. Returns the running tasks (ref -> stage name)."""
    output_dir = Path(recipe.output_dir)
    refs: dict[str, ray.ObjectRef] = {}
    for planned in plan.stages:
        if not planned.must_run:
            manifest = read_manifest(RunFolder(output_dir).stage(planned.name))
            if planned.status == "up to date" and manifest:
                headline = STAGE_BY_NAME[planned.name].headline(asdict(manifest))
                display.set_status(planned.name, "up to date", headline, manifest.wall_s)
                stages[planned.name] = {"status": "up to date", **asdict(manifest)}
            else:
                display.set_status(planned.name, "skipped")
                stages[planned.name] = {"status": "skipped", "reason": planned.reason}
            continue
        upstream_refs = [refs[d] for d in planned.depends_on if d in refs]
        upstream_folders = {d: str(RunFolder(output_dir).stage(d)) for d in planned.depends_on}
        task = ray.remote(_stage_task).options(name=f"stage:{planned.name}", max_retries=0, **planned.ray_options)
        refs[planned.name] = task.remote(recipe, planned.name, planned.fingerprint, upstream_folders, hub,
                                         *upstream_refs)
    return {ref: name for name, ref in refs.items()}


def _follow_stages(pending: dict[ray.ObjectRef, str], hub: Any, display: Display,
                   stages: dict[str, dict]) -> BaseException | None:
    """Show the running stages' progress and log lines until every task ended; returns the first failure."""
    running: set[str] = set()
    failure: BaseException | None = None
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        state, lines = ray.get(hub.drain.remote())  # pending implies hub exists
        for stage_name, (done, total, unit, _) in state.items():  # a stage shows as running before its lines
            if stage_name not in running and stage_name in pending.values():
                running.add(stage_name)
                display.set_status(stage_name, "running")
            display.progress(stage_name, done, total, unit)
        for stage_name, message in lines:
            display.say(f"[{stage_name}] {message}")
        for ref in ready:
            stage_name = pending.pop(ref)
            try:
                manifest = ray.get(ref)
            except Exception as error:  # noqa: BLE001 - report which stage failed, then re-raise
                if failure is not None and stage_name not in running:
                    display.set_status(stage_name, "not run", "an upstream stage failed")
                    stages[stage_name] = {"status": "not run"}
                    continue
                failure = error
                display.set_status(stage_name, "failed", failure_line(error))
                stages[stage_name] = {"status": "failed", "error": str(error)[-2000:]}
                continue
            if stage_name not in running:  # finished between two looks: it still ran
                display.set_status(stage_name, "running")
            display.set_status(stage_name, "done", STAGE_BY_NAME[stage_name].headline(manifest), manifest["wall_s"])
            stages[stage_name] = {"status": "done", **manifest}
    return failure


def _check_upstream(plan: Plan, output_dir: Path) -> None:
    """Every stage that runs reads upstream stages that run before it or finished earlier."""
    running = {stage.name for stage in plan.stages if stage.must_run}
    for stage in plan.stages:
        missing = [d for d in stage.depends_on if d not in running and read_manifest(RunFolder(output_dir).stage(d)) is None]
        if stage.must_run and missing:
            raise UserError(f"stage {stage.name} reads {', '.join(missing)}, which has not run yet: run without "
                            f"--only, or with --from {missing[0]}")


def failure_line(error: BaseException) -> str:
    """What went wrong in a stage's Ray task: a user error's own message, else the innermost `SomeError: message`
    line of the (remote) traceback, past Ray's and Ray Data's own wrappers."""
    import re

    cause = error
    while getattr(cause, "cause", None) is not None:  # RayTaskError, and Ray Data's wrapping of it
        cause = cause.cause
    if isinstance(cause, UserError):
        return str(cause)
    text = str(error)
    raised = [line for line in text.splitlines()
              if re.match(r"^[A-Za-z_][\w.]*(Error|Exception): ", line) and not line.startswith("ray.")]
    if raised:
        return raised[-1][:500]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(error).__name__


def _stage_task(recipe: Recipe, name: str, fingerprint: str, upstream: dict[str, str], hub: Any,
                *upstream_manifests: Any) -> dict:
    # `upstream_manifests` are the manifests of the stages this one waits on: passing their ObjectRefs makes Ray
    # start this task only after they finished (and fail it if they failed).
    return execute_stage(recipe, name, fingerprint, upstream, hub)

