"""The speed table's arithmetic and advice (no engine: rows as a sweep reports them)."""

from __future__ import annotations

from eagle_recipes.evaluation.speed import SpeedRow, SpeedSettings, SpeedTable


def table() -> SpeedTable:
    # the quickstart's draft as measured on a 2-core CPU: wins a little at load 1, loses at every k at load 16
    figures = {1: [24.0, 25.3, 24.2, 23.7], 16: [183.0, 159.1, 102.6, 82.8]}
    return SpeedTable([SpeedRow(k, load, rate, acceptance_length=1.0 + 0.1 * k)
                       for load, rates in figures.items() for k, rate in enumerate(rates)])


def test_speedup_is_against_the_base_alone_at_the_same_load():
    speed = table()
    assert [round(r.speedup, 3) for r in speed.at(16)] == [1.0, 0.869, 0.561, 0.452]
    assert round(speed.at(1)[1].speedup, 3) == 1.054


def test_recommendation_is_the_fastest_row_even_the_base_alone():
    speed = table()
    assert speed.recommended(1).k == 1
    assert speed.recommended(16).k == 0 and speed.best_draft(16).k == 1
    assert "no k beats the base alone" in speed.advice(16) and "0.87x" in speed.advice(16)
    assert speed.advice(1).startswith("load 1: serve with k = 1")
    assert speed.headline().startswith("fastest: k = 1 at load 1, 1.05x")


def test_round_trip_and_the_card_table():
    speed = table()
    again = SpeedTable.from_dict(speed.to_dict())
    assert [(r.k, r.concurrency, r.speedup) for r in again.rows] == [(r.k, r.concurrency, r.speedup) for r in speed.rows]
    lines = speed.markdown()
    assert lines[0] == "| k | load 1: tokens/s, speedup, tau | load 16: tokens/s, speedup, tau |"
    assert lines[2] == "| base alone | 24.0, 1.00x, 1.00 | 183.0, 1.00x, 1.00 |"


def test_prompts_per_load():
    settings = SpeedSettings(concurrency=(1, 16), prompts=16, max_tokens=64)
    assert settings.prompts_at(1) == 4 and settings.prompts_at(16) == 16 and settings.prompts_at(32) == 16
