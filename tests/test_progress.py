"""The plain progress lines a run prints when its output is not a terminal (logs, CI): a stage says it runs,
then one line per phase and at most one every 10 s within a phase, in the stage's own unit, with an ETA."""

from __future__ import annotations

from eagle_recipes.graph.progress import Display


def test_plain_lines_say_running_then_each_phase_with_its_own_rate(capsys, monkeypatch):
    clock = iter([float(t) for t in range(0, 1000, 5)])
    monkeypatch.setattr("eagle_recipes.graph.progress.time.time", lambda: next(clock))
    display = Display(["evaluate"], interactive=False)
    display.set_status("evaluate", "running")
    display.progress("evaluate", 0, None, "")  # the stage started: nothing counted yet, nothing printed
    display.progress("evaluate", 0, 80, "prompts (mt-bench, target alone)")
    display.progress("evaluate", 40, 80, "prompts (mt-bench, target alone)")  # 5 s later: within 10 s, quiet
    display.progress("evaluate", 60, 80, "prompts (mt-bench, target alone)")  # 15 s after the last line
    display.progress("evaluate", 0, 80, "prompts (mt-bench, with the draft)")  # a new phase: printed at once
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[evaluate] running"
    assert lines[1] == "[evaluate] 0/80 prompts (mt-bench, target alone)"
    assert lines[2].startswith("[evaluate] 60/80 prompts (mt-bench, target alone)  ") and "prompts/s" in lines[2]
    assert "ETA" in lines[2]
    assert lines[3] == "[evaluate] 0/80 prompts (mt-bench, with the draft)"
    assert len(lines) == 4


def test_a_failed_stage_says_how_long_it_ran(capsys, monkeypatch):
    clock = iter([100.0, 300.5, 301.0, 302.0])
    monkeypatch.setattr("eagle_recipes.graph.progress.time.time", lambda: next(clock))
    display = Display(["train"], interactive=False)
    display.set_status("train", "running")
    display.set_status("train", "failed", "FeatureServerLost: feature server 1 of 1 died 4 times")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "[train] failed in 200.5s (FeatureServerLost: feature server 1 of 1 died 4 times)"
