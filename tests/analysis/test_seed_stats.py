"""Row statistics over seeds (focal_plugin.analysis.seed_stats): Welch's interval of a gap against
its formulas, one seed, too few seeds, rows that diverged."""

from __future__ import annotations

import math
import statistics

import pytest

from focal_plugin.analysis.seed_stats import MIN_SEEDS, RowStats, compare, fmt_stat, gap_text, mean_interval


def _row(name, ap=(), diverged=()):
    return RowStats(name, {"AP": list(ap)} if ap else {}, seeds=len(ap) + len(diverged),
                    diverged_at=list(diverged))


def _welch_by_hand(a, b):
    """Welch's interval from its formulas: se² = s_a²/n_a + s_b²/n_b, Welch–Satterthwaite df,
    the t quantile; p two-sided."""
    from scipy.stats import t as student

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    diff, se = statistics.fmean(a) - statistics.fmean(b), math.sqrt(va + vb)
    half = student.ppf(0.975, df) * se
    return diff, (diff - half, diff + half), 2 * student.sf(abs(diff) / se, df)


@pytest.mark.parametrize("a, b", [([30.0, 31.0, 32.0], [28.0, 28.5, 29.0]),
                                  ([9.14, 8.87, 9.41], [8.97, 8.4, 9.54]),  # FL vs tuned α-CE-like
                                  ([1.0, 2.0], [0.0, 0.5, 0.1, 0.3])])
def test_the_interval_is_welchs(a, b):
    c = compare(_row("a", a), _row("b", b), "AP")
    diff, ci, p = _welch_by_hand(a, b)
    assert c.diff == pytest.approx(diff) and c.ci == pytest.approx(ci) and c.p == pytest.approx(p)
    assert c.noise == pytest.approx((ci[1] - ci[0]) / 2)
    assert c.relation == ("better" if ci[0] > 0 else "worse" if ci[1] < 0 else "within")
    assert c.decisive == (min(len(a), len(b)) >= MIN_SEEDS)


def test_the_interval_decides_the_relation_both_ways():
    a, b = _row("a", [30.0, 31.0, 32.0]), _row("b", [28.0, 28.5, 29.0])
    assert compare(a, b, "AP").relation == "better" and compare(b, a, "AP").relation == "worse"
    assert compare(a, _row("b", [29.5, 30.5, 31.5]), "AP").relation == "within"
    # a normal cut-off (2 standard errors) would call this gap significant; Welch's t with ~2 df does not
    tight, wide = _row("t", [10.0, 10.1, 10.2]), _row("w", [8.0, 9.5, 11.0])
    z = (10.1 - 9.5) / math.sqrt(0.01 / 3 + 2.25 / 3)
    assert z < 2 and compare(tight, wide, "AP").relation == "within"
    far = _row("f", [5.0, 6.5, 8.0])
    z = (10.1 - 6.5) / math.sqrt(0.01 / 3 + 2.25 / 3)
    assert z > 2 and compare(tight, far, "AP").relation == "within"  # z 4.2; Welch's t needs 4.3


def test_constant_seeds_give_a_zero_width_interval():
    c = compare(_row("a", [5.0, 5.0, 5.0]), _row("b", [4.0, 4.0, 4.0]), "AP")
    assert (c.relation, c.ci, c.p) == ("better", (1.0, 1.0), 0.0)
    assert compare(_row("a", [5.0] * 3), _row("b", [5.0] * 3), "AP").relation == "within"


def test_one_seed_gives_no_interval_and_two_are_not_decisive():
    c = compare(_row("a", [35.0]), _row("b", [20.0, 21.0]), "AP")
    assert (c.relation, c.ci, c.decisive) == ("one seed", None, False) and c.diff == pytest.approx(14.5)
    assert gap_text(c) == " (Δ +14.50, 1/2 seeds: no interval with one seed)"
    two = compare(_row("a", [30.0, 30.2]), _row("b", [20.0, 20.1]), "AP")
    assert two.relation == "better" and not two.decisive
    assert "under 3 seeds: not decisive" in gap_text(two) and "95% CI [" in gap_text(two)


def test_mean_interval_is_students():
    from scipy.stats import t as student

    lo, hi = mean_interval([1.0, 2.0, 3.0])
    half = student.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half)) and mean_interval([1.0]) is None


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


def test_paired_differences_use_the_seeds_both_rows_have():
    from scipy import stats

    from focal_plugin.analysis.seed_stats import paired

    a = RowStats("a", by_seed={"AP": {0: 10.0, 1: 12.5, 2: 11.0, 3: 9.0}})
    b = RowStats("b", by_seed={"AP": {0: 9.0, 1: 11.0, 2: 10.8, 5: 1.0}})
    p = paired(a, b, "AP")
    ref = stats.ttest_rel([10.0, 12.5, 11.0], [9.0, 11.0, 10.8])
    assert p["n"] == 3 and p["diffs"] == pytest.approx([1.0, 1.5, 0.2])
    assert p["p"] == pytest.approx(ref.pvalue) and p["diff"] == pytest.approx(0.9)
    ci = ref.confidence_interval(0.95)
    assert p["ci"] == pytest.approx((ci.low, ci.high))
    assert paired(a, RowStats("c", by_seed={"AP": {0: 1.0, 7: 2.0}}), "AP") is None  # one common seed
    same = paired(a, RowStats("d", by_seed={"AP": {k: v - 2.0 for k, v in a.by_seed["AP"].items()}}), "AP")
    assert same["ci"] == pytest.approx((2.0, 2.0)) and same["p"] == 0.0  # a constant shift
