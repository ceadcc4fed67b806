"""Cluster submission: a real two-node Ray cluster on loopback (head + a second node with its own resources),
a recipe submitted as a Ray Job through `eagle-recipes submit --follow`, artifacts checked, nodes stopped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from eagle_recipes.run_folder import RunFolder
from tests.helpers import free_port, small_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def two_node_cluster(tmp_path):
    port, dashboard = free_port(), free_port()
    # the cluster's nodes run this virtual environment's Python, as a real cluster runs its image's
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    subprocess.run([RAY, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--num-cpus=4",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}",
                    "--resources={\"head\": 1}"], check=True, env=env, capture_output=True)
    try:
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=4",
                        "--resources={\"second\": 1}"], check=True, env=env, capture_output=True)
        yield f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


def test_submit_to_a_two_node_cluster(tmp_path, two_node_cluster, tiny_llama):
    dashboard, gcs = two_node_cluster
    import ray

    ray.init(address=gcs)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2 and ray.cluster_resources()["CPU"] == 8
    finally:
        ray.shutdown()
    recipe = small_recipe(tmp_path, tiny_llama, steps=4)
    output = tmp_path / "shared-output"
    run = RunFolder(output)
    result = subprocess.run([sys.executable, "-m", "eagle_recipes.cli", "submit", str(recipe), "--address", dashboard,
                             "--follow", "--output-dir", str(output)], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "submitted job" in result.stdout and "SUCCEEDED" in result.stdout
    summary = json.loads(run.summary_file.read_text())
    assert summary["ok"] and set(summary["stages"]) == {"synthesize", "tokenize", "calibrate", "train", "export"}
    assert all(s["status"] == "done" for s in summary["stages"].values())
    assert (run.draft / "model.safetensors").exists()
    assert not (tmp_path / "out").exists()  # everything went to the shared output directory
