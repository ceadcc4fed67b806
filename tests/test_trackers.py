"""Experiment trackers through their own libraries: a real run of the small recipe logs to TensorBoard, MLflow
(its file store) and W&B (offline); what the trackers hold is read back and equals metrics.jsonl and the
evaluate report."""

from __future__ import annotations

import json

import pytest

from eagle_recipes.run_folder import RunFolder
from eagle_recipes.trackers import missing_extras
from tests.helpers import cli, recipe_head, small_conversations, write_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("tracked")
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in small_conversations()))
    (folder / "eval.jsonl").write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?"})
                                               + "\n" for i in range(2)))
    recipe = write_recipe(folder, recipe_head("tracked", tiny_llama) + """
[synthesis]
engine = "none"
[vocab]
draft_vocab_size = 300
[train]
max_steps = 6
lr = 0.001
ttt_steps = 2
max_seq_len = 128
report_to = ["tensorboard", "mlflow", "wandb"]
[eval]
engine = "reference"
prompts = ["eval.jsonl"]
max_tokens = 8
num_speculative_tokens = 2
""")
    env = {**__import__("os").environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cli("run", recipe, env=env)
    out = folder / "out"
    metrics = [json.loads(line) for line in RunFolder(out).metrics.read_text().splitlines()]
    report = json.loads(RunFolder(out).report.read_text())
    return out, metrics, report


def test_tensorboard_holds_every_step_and_the_evaluation(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, metrics, report = tracked_run
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    for tag, pick in [("train/loss/ttt0", lambda m: m["loss"][0]), ("train/accuracy/ttt1", lambda m: m["accuracy"][1]),
                      ("train/lr", lambda m: m["lr"]), ("train/grad_norm", lambda m: m["grad_norm"]),
                      ("train/tokens_per_s", lambda m: m["tokens_per_s"])]:
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(m["step"], pytest.approx(pick(m), rel=1e-6)) for m in metrics], tag
    tau = events.Scalars("eval/eval/tau")
    assert [(e.step, e.value) for e in tau] == [(6, pytest.approx(report["sets"]["eval"]["acceptance_length"]))]
    recipe_text = events.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"name": "tracked"' in recipe_text and '"report_to": [' in recipe_text  # the recipe as configuration


def test_mlflow_file_store_holds_the_same_values_and_the_recipe(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    out, metrics, report = tracked_run
    run_id = json.loads((out / "trackers.json").read_text())["mlflow_run_id"]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    history = client.get_metric_history(run_id, "train.loss.ttt1")
    assert sorted((m.step, m.value) for m in history) == [(m["step"], pytest.approx(m["loss"][1])) for m in metrics]
    tau = client.get_metric_history(run_id, "eval.eval.tau")
    assert [(m.step, m.value) for m in tau] == [(6, pytest.approx(report["sets"]["eval"]["acceptance_length"]))]
    params = client.get_run(run_id).data.params
    assert params["train.lr"] == "0.001" and params["train.report_to"] == "['tensorboard', 'mlflow', 'wandb']"


def test_wandb_offline_writes_its_run_locally(tracked_run):
    out, _, _ = tracked_run
    runs = list((out / "wandb").glob("offline-run-*"))
    run_id = json.loads((out / "trackers.json").read_text())["wandb_run_id"]
    assert runs and all(run.name.endswith(run_id) for run in runs)  # training and evaluate: one run
    assert list(runs[0].glob("run-*.wandb"))


def test_a_missing_library_names_its_extra(monkeypatch):
    # the libraries are installed here; a missing one is what find_spec reports for an uninstalled package
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "mlflow" else real(name))
    assert missing_extras(["tensorboard", "mlflow"]) == ["pip install 'eagle-recipes[mlflow]'"]
