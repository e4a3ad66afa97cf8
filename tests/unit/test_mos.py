"""The E-model estimate against values worked out by hand from the G.107 / G.113 formulas."""

from __future__ import annotations

import math

import pytest

from qiancheng.probes.measure.mos import (
    absolute_delay_impairment,
    delay_impairment,
    mos_from_r,
    r_factor,
    voice_figures,
)


def test_perfect_path_gives_the_g107_default_rating() -> None:
    # Ro 94.77 − Is 1.41 − Id(0) 0.15 (listener echo with WEPL 110) = 93.2 (G.107 §7.7) → MOS 4.41
    figures = voice_figures(0.0, 0.0, 0.0)
    assert set(figures) == {"r_factor", "mos"}
    assert figures["r_factor"] == pytest.approx(93.2, abs=0.01)
    assert figures["mos"] == pytest.approx(4.41, abs=0.005)


@pytest.mark.parametrize(
    ("ta_ms", "expected"),
    [
        (0.0, 0.0),
        (100.0, 0.0),  # up to mT = 100 ms no absolute delay impairment
        # X = 1: 25·(2^(1/6) − 3·(1 + 3^-6)^(1/6) + 2) = 25·(1.122462 − 3.000686 + 2)
        (200.0, 3.0444),
        # X = 2: 25·(65^(1/6) − 3·(1 + (2/3)^6)^(1/6) + 2) = 25·(2.005160 − 3.042373 + 2)
        (400.0, 24.0697),
    ],
)
def test_absolute_delay_curve(ta_ms: float, expected: float) -> None:
    assert absolute_delay_impairment(ta_ms) == pytest.approx(expected, abs=1e-3)


def test_delay_impairment_at_200_ms_adds_both_echoes() -> None:
    # Idte: TERV = 65 − 40·log10(21/2.3333) = 26.83, Re = 112.08, Roe = 94.77 → 3.57
    # Idle: Rle = 1228.5·401^(−1/4) = 274.5 → 0.93;  Idd = 3.04;  sum 7.55
    assert delay_impairment(200.0) == pytest.approx(7.55, abs=0.01)


def test_loss_uses_g711_plc_robustness() -> None:
    # Ie,eff = 0 + 95·1 / (1/1 + 25.1) = 3.640 at 1 % random loss
    assert r_factor(0.0, 0.0, 0.01) == pytest.approx(93.206 - 3.640, abs=0.01)
    # every packet lost: 95·100 / (100 + 25.1) = 75.94
    assert r_factor(0.0, 0.0, 1.0) == pytest.approx(93.206 - 75.94, abs=0.01)


def test_jitter_is_folded_into_delay_as_twice_its_value() -> None:
    assert r_factor(0.100, 0.025, 0.0) == pytest.approx(r_factor(0.150, 0.0, 0.0), abs=1e-9)
    assert r_factor(0.100, 0.025, 0.0) < r_factor(0.100, 0.0, 0.0)


@pytest.mark.parametrize(
    ("r", "expected"),
    [
        (-5.0, 1.0),
        (0.0, 1.0),
        (50.0, 2.575),  # 1 + 1.75 + 50·(−10)·50·7e-6
        (80.0, 4.024),  # 1 + 2.8 + 80·20·20·7e-6
        (93.2, 4.409),
        (100.0, 4.5),
        (120.0, 4.5),
    ],
)
def test_mos_from_r_annex_b(r: float, expected: float) -> None:
    assert mos_from_r(r) == pytest.approx(expected, abs=1e-3)


def test_worse_paths_never_score_better() -> None:
    delays = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0]
    scores = [voice_figures(d, 0.0, 0.0)["mos"] for d in delays]
    assert scores == sorted(scores, reverse=True)
    losses = [0.0, 0.001, 0.01, 0.05, 0.2, 1.0]
    ratings = [r_factor(0.02, 0.001, p) for p in losses]
    assert ratings == sorted(ratings, reverse=True)
    assert voice_figures(0.4, 0.05, 0.2)["mos"] < 2.0


@pytest.mark.parametrize(
    ("delay", "jitter", "loss"),
    [(-0.1, 0.0, 0.0), (0.0, -1e-3, 0.0), (0.0, 0.0, 1.5), (math.nan, 0.0, 0.0), (0.0, math.inf, 0.0)],
)
def test_bad_inputs_are_refused(delay: float, jitter: float, loss: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        voice_figures(delay, jitter, loss)
