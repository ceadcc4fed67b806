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


def test_repeats_give_the_median_and_spread_and_a_lead_within_the_spread_is_called_a_tie():
    # load 1: the base alone and k = 1 to 3 measured three times each; k = 2 leads k = 1 by 1.5%, while the
    # repeats of either spread 4-5%: too close to call. Load 16: k = 0 leads by 25%, far beyond its 2% spread.
    samples = {(0, 1): [17.0, 17.4, 17.2], (1, 1): [20.0, 20.8, 20.1], (2, 1): [20.4, 21.2, 20.3],
               (3, 1): [19.0, 19.2, 19.1], (0, 16): [147.0, 148.0, 150.0], (1, 16): [114.0, 115.0, 116.0]}
    speed = SpeedTable([SpeedRow.from_samples(k, load, values, acceptance_length=1.0 + 0.1 * k)
                        for (k, load), values in samples.items()], {"hardware": "CPU AVX2, bfloat16 emulated"})
    best = speed.recommended(1)
    assert best.k == 2 and best.tokens_per_s == 20.4 and best.spread == round((21.2 - 20.3) / 20.4, 4)
    assert speed.runner_up(1).k == 1 and speed.within_noise(1)
    assert "k = 1 (1.17x) is within the measurement's spread (4% over 3 repeats): too close to call" in speed.advice(1)
    assert not speed.within_noise(16) and "too close" not in speed.advice(16)
    assert speed.headline().startswith("fastest: k = 2 at load 1, 1.19x the base alone "
                                       "(CPU AVX2, bfloat16 emulated, spread 4%, within noise of the next)")
    assert SpeedTable.from_dict(speed.to_dict()).rows[2].samples == [20.4, 21.2, 20.3]
    assert speed.markdown()[3] == "| 1 | 20.1 ±2%, 1.17x, 1.10 | 115.0 ±1%, 0.78x, 1.10 |"


def test_the_sweep_measures_the_ks_asked_for_up_to_k():
    assert SpeedSettings((1,), 16, 64).ks(5) == [1, 2, 3, 4, 5]
    assert SpeedSettings((1,), 16, 64, draft_tokens=(3, 1, 2, 9)).ks(5) == [1, 2, 3]
