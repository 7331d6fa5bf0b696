"""Row statistics over seeds (focal_plugin.analysis.seed_stats): the noise of a gap, one seed,
rows that diverged."""

from __future__ import annotations

import math

import pytest

from focal_plugin.analysis.seed_stats import RowStats, compare, fmt_stat, gap_text


def _row(name, ap=(), diverged=()):
    return RowStats(name, {"AP": list(ap)} if ap else {}, seeds=len(ap) + len(diverged),
                    diverged_at=list(diverged))


def test_the_noise_is_twice_the_standard_error_of_the_difference():
    a, b = _row("a", [30.0, 31.0, 32.0]), _row("b", [28.0, 28.5, 29.0])
    c = compare(a, b, "AP")
    expected = 2.0 * math.sqrt(1.0 ** 2 / 3 + 0.5 ** 2 / 3)
    assert c.diff == pytest.approx(2.5) and c.noise == pytest.approx(expected)
    assert c.relation == "better" and compare(b, a, "AP").relation == "worse"
    assert compare(_row("a", [30.0, 31.0, 32.0]), _row("b", [29.5, 30.5, 31.5]), "AP").relation == "within"


def test_one_seed_leaves_the_noise_unknown():
    c = compare(_row("a", [35.0]), _row("b", [20.0, 21.0]), "AP")
    assert (c.relation, c.noise) == ("one seed", None) and c.diff == pytest.approx(14.5)
    assert gap_text(c) == " (Δ +14.50, one seed: noise unknown)"


def test_lower_is_better_for_time_and_a_diverged_row_loses_unless_the_worst_is_wanted():
    fast, slow = RowStats("f", {"ms": [10.0, 10.1]}, seeds=2), RowStats("s", {"ms": [20.0, 20.2]}, seeds=2)
    assert compare(fast, slow, "ms", sign=-1).relation == "better"
    dead, alive = _row("d", diverged=[40, 41]), _row("a", [1.0, 1.2])
    assert compare(dead, alive, "AP").relation == "worse"
    assert compare(dead, alive, "AP", sign=-1).relation == "better"  # looking for the lowest AP
    assert compare(_row("n"), alive, "AP").relation == "no data"


def test_fmt_stat_says_what_a_row_has():
    assert fmt_stat(_row("a", [30.0, 32.0]), "AP") == "31.0 ± 1.4"
    assert fmt_stat(_row("a", [30.0]), "AP") == "30.0"
    assert fmt_stat(_row("n"), "AP") == "pending"
    assert fmt_stat(_row("d", diverged=[3]), "AP") == "diverged"
