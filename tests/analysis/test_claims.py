"""Verdicts on the paper's claims (focal_plugin.analysis.claims): a claim over several rows is
judged only when every row it names has finished, unless the finished rows already refute it."""

from __future__ import annotations

import pytest

from focal_plugin.analysis.claims import (
    INCONCLUSIVE,
    NO_DATA,
    NOT_REPRODUCED,
    REPRODUCED,
    Claim,
    judge,
)
from focal_plugin.analysis.seed_stats import RowStats, compare


def make_claim(text, type, **args):
    return Claim(text=text, type=type, args=args)


def _rows(**values):
    """RowStats per row from AP values per seed (None: the row has not run)."""
    out = {}
    for row, aps in values.items():
        s = RowStats(row)
        if aps is not None:
            s.values["AP"] = list(aps)
            s.seeds = s.planned = len(aps)
        out[row] = s
    return out


THREE_SEEDS_HIGH, THREE_SEEDS_LOW = (9.0, 9.2, 9.4), (4.0, 4.5, 5.0)
BEST = make_claim(text="g2 is the best", type="best", row="g2")


@pytest.mark.parametrize("values, verdict", [
    # every rival finished, all beaten beyond noise
    ({"g2": THREE_SEEDS_HIGH, "g0": THREE_SEEDS_LOW, "g5": THREE_SEEDS_LOW}, REPRODUCED),
    # a rival has not run: it could still beat g2 (was "reproduced": the pending rival was ignored)
    ({"g2": THREE_SEEDS_HIGH, "g0": THREE_SEEDS_LOW, "g5": None}, NO_DATA),
    # ... but a finished rival that beats g2 already refutes the claim
    ({"g2": THREE_SEEDS_LOW, "g0": THREE_SEEDS_HIGH, "g5": None}, NOT_REPRODUCED),
    # the claimed row has not run
    ({"g2": None, "g0": THREE_SEEDS_LOW, "g5": THREE_SEEDS_LOW}, NO_DATA),
    # every row finished, one rival with one seed: noise unknown
    ({"g2": THREE_SEEDS_HIGH, "g0": THREE_SEEDS_LOW, "g5": (4.0,)}, INCONCLUSIVE),
])
def test_best_is_judged_only_against_finished_rivals(values, verdict):
    out = judge(BEST, _rows(**values), {})
    assert out["verdict"] == verdict
    pending = [r for r, v in values.items() if v is None and r != "g2"]
    if pending and verdict == NO_DATA:
        assert f"pending: {len(pending)} of 2 other rows ({', '.join(pending)})" in out["ours"]


def test_best_with_lower_is_better_direction():
    claim = make_claim(text="a10 is the worst", type="best", row="a10", direction="min")
    rows = _rows(a10=(0.1, 0.2, 0.0), a75=THREE_SEEDS_LOW, a25=None)
    assert judge(claim, rows, {})["verdict"] == NO_DATA
    rows["a25"] = _rows(a25=THREE_SEEDS_HIGH)["a25"]
    assert judge(claim, rows, {})["verdict"] == REPRODUCED


INCREASING = make_claim(text="AP grows", type="increasing", rows=("r1", "r2", "r3"))


@pytest.mark.parametrize("values, verdict", [
    ({"r1": THREE_SEEDS_LOW, "r2": THREE_SEEDS_HIGH, "r3": (12.0, 12.1, 12.2)}, REPRODUCED),
    ({"r1": THREE_SEEDS_LOW, "r2": THREE_SEEDS_HIGH, "r3": None}, NO_DATA),
    # a finished pair going down refutes it whatever the pending row gives (was "no data")
    ({"r1": THREE_SEEDS_HIGH, "r2": THREE_SEEDS_LOW, "r3": None}, NOT_REPRODUCED),
    ({"r1": THREE_SEEDS_LOW, "r2": (4.2, 4.6, 4.4), "r3": (12.0, 12.1, 12.2)}, INCONCLUSIVE),
])
def test_increasing(values, verdict):
    assert judge(INCREASING, _rows(**values), {})["verdict"] == verdict


ANY_SIMILAR = make_claim(text="some FL* is like FL", type="any_similar", rows=("s1", "s2"), to="fl", tol=0.5,
                    min_count=1)


@pytest.mark.parametrize("values, verdict", [
    ({"fl": THREE_SEEDS_HIGH, "s1": THREE_SEEDS_HIGH, "s2": None}, REPRODUCED),  # one is enough
    ({"fl": THREE_SEEDS_HIGH, "s1": THREE_SEEDS_LOW, "s2": None}, NO_DATA),  # s2 could still be
    ({"fl": THREE_SEEDS_HIGH, "s1": THREE_SEEDS_LOW, "s2": THREE_SEEDS_LOW}, NOT_REPRODUCED),
    ({"fl": THREE_SEEDS_HIGH, "s1": THREE_SEEDS_LOW, "s2": (9.2,)}, INCONCLUSIVE),
])
def test_any_similar(values, verdict):
    assert judge(ANY_SIMILAR, _rows(**values), {})["verdict"] == verdict


def _diverged(row, seeds=3):
    s = RowStats(row)
    s.seeds = s.planned = seeds
    s.diverged_at = [100] * seeds
    return s


def test_a_diverged_row_has_the_worst_value():
    """Table 1a: "α = .10 is the worst setting (training fails)". A row whose seeds all diverged
    is the lowest AP: it wins a 'worst' claim and loses a 'best' one."""
    worst = make_claim(text="a10 is the worst", type="best", row="a10", direction="min")
    rows = _rows(a75=THREE_SEEDS_HIGH, a25=THREE_SEEDS_LOW)
    rows["a10"] = _diverged("a10")
    assert judge(worst, rows, {})["verdict"] == REPRODUCED
    # a10 trains (AP ~0) but another row diverged: that one is the worst
    rows = _rows(a10=(0.1, 0.0, 0.2), a75=THREE_SEEDS_HIGH)
    rows["a999"] = _diverged("a999")
    assert judge(worst, rows, {})["verdict"] == NOT_REPRODUCED
    best = make_claim(text="a75 is the best", type="best", row="a75")
    assert judge(best, rows, {})["verdict"] == REPRODUCED
    rows["a75"] = _diverged("a75")
    assert judge(best, rows, {})["verdict"] == NOT_REPRODUCED
    # lower-is-better metric (ms/image): a diverged row is no fastest row either
    fastest = make_claim(text="r1 is the fastest", type="best", row="r1", metric="ms")
    timed = {"r1": RowStats("r1", {"ms": [10.0, 10.2, 10.1]}, seeds=3), "r2": _diverged("r2")}
    assert judge(fastest, timed, {})["verdict"] == REPRODUCED


def test_pending_lists_only_rows_not_run():
    # the claimed row has not run: nothing else is "pending"
    out = judge(BEST, _rows(g2=None, g0=THREE_SEEDS_LOW, g5=THREE_SEEDS_LOW), {})
    assert out["verdict"] == NO_DATA and "pending" not in out["ours"].replace("g2 AP pending", "")
    # a finished rival without a value of the metric (e.g. AP75 missing) is not "pending" forever
    rows = _rows(g2=THREE_SEEDS_HIGH, g0=THREE_SEEDS_LOW)
    rows["g5"] = RowStats("g5", {}, seeds=3)
    out = judge(BEST, rows, {})
    assert out["verdict"] == REPRODUCED and "pending" not in out["ours"]


def test_increasing_is_refuted_across_a_row_not_run():
    rows = _rows(r1=THREE_SEEDS_HIGH, r2=None, r3=THREE_SEEDS_LOW)
    assert judge(INCREASING, rows, {})["verdict"] == NOT_REPRODUCED


def test_best_claim_reports_its_margin_over_the_strongest_rival():
    """The imbalance scan plots this margin (FL minus the best α-CE) against the imbalance."""
    stats = _rows(g2=THREE_SEEDS_HIGH, g0=THREE_SEEDS_LOW, g5=(7.5, 8.5, 9.5), g1=None)
    m = judge(BEST, stats, {})["margin"]
    assert m["rival"] == "g5" and m["diff"] == pytest.approx(9.2 - 8.5)
    welch = compare(stats["g2"], stats["g5"], "AP")  # the margin is that comparison (its formula:
    assert m["noise"] == pytest.approx(welch.noise) and m["relation"] == "within"  # test_seed_stats)
    assert m["pending"] == ["g1"] and m["lower_wins"] is False  # g1 not run: it may still be stronger
    low = make_claim(text="g0 is the worst", type="best", row="g0", direction="min")
    m = judge(low, stats, {})["margin"]  # the strongest rival of a "worst" claim is the lowest one
    assert m["rival"] == "g5" and m["diff"] == pytest.approx(4.5 - 8.5) and m["relation"] == "better"
    assert m["lower_wins"] is True
    one = judge(BEST, _rows(g2=THREE_SEEDS_HIGH, g0=(9.5,)), {})["margin"]
    assert one["diff"] == pytest.approx(-0.3) and one["noise"] is None and one["relation"] == "one seed"
    assert judge(BEST, _rows(g2=None, g0=THREE_SEEDS_LOW), {})["margin"] is None
    assert judge(BEST, stats, {})["row"] == "g2"


def test_margin_says_which_side_diverged():
    def diverged(row, seeds=3):
        s = RowStats(row)
        s.seeds = s.planned = seeds
        s.diverged_at = [10] * seeds
        return s

    stats = _rows(g0=THREE_SEEDS_LOW, g5=THREE_SEEDS_HIGH)
    stats["g2"] = diverged("g2")
    m = judge(BEST, stats, {})["margin"]
    assert m["diverged"] == "row" and m["diff"] is None and m["rival"] == "g5" and m["relation"] == "worse"
    stats = _rows(g2=THREE_SEEDS_HIGH)
    stats["g0"], stats["g5"] = diverged("g0"), diverged("g5")
    m = judge(BEST, stats, {})["margin"]
    assert m["diverged"] == "rivals" and m["rival"] is None and m["relation"] == "better"
    assert judge(BEST, _rows(g2=THREE_SEEDS_HIGH, g0=THREE_SEEDS_LOW), {})["margin"]["diverged"] is None


BETTER = make_claim(text="FL beats CE", type="better", row="fl", than="ce")


@pytest.mark.parametrize("fl, ce, verdict", [
    (THREE_SEEDS_HIGH, THREE_SEEDS_LOW, REPRODUCED),
    (THREE_SEEDS_LOW, THREE_SEEDS_HIGH, NOT_REPRODUCED),
    ((9.0, 9.4), (4.0, 4.5), INCONCLUSIVE),  # a large gap, but two seeds a side decide nothing
    ((9.0, 9.2, 9.4), (9.5,), INCONCLUSIVE),  # one seed: no interval
    ((9.14, 8.87, 9.41), (8.97, 8.4, 9.54), INCONCLUSIVE),  # within noise
])
def test_better_needs_three_seeds_a_side_and_an_interval_that_excludes_zero(fl, ce, verdict):
    assert judge(BETTER, _rows(fl=fl, ce=ce), {})["verdict"] == verdict


@pytest.mark.parametrize("by, verdict", [(4.7, REPRODUCED), (3.0, NOT_REPRODUCED), (8.0, NOT_REPRODUCED)])
def test_a_stated_size_must_lie_inside_the_interval(by, verdict):
    claim = make_claim(text=f"FL beats CE by ~{by} AP", type="better", row="fl", than="ce", by=by)
    rows = _rows(fl=THREE_SEEDS_HIGH, ce=THREE_SEEDS_LOW)  # Δ 4.7, CI ~[3.7, 5.7]
    out = judge(claim, rows, {})
    assert out["verdict"] == verdict and f"stated size {by:g}" in out["ours"]
    mini = judge(claim, rows, {}, scale="mini")  # synthetic AP and COCO AP share no unit
    assert mini["verdict"] == REPRODUCED and "not comparable at mini scale" in mini["ours"]


@pytest.mark.parametrize("aps, verdict", [
    ((9.0, 9.2, 9.4), REPRODUCED),
    ((0.3, 0.4, 0.35), NOT_REPRODUCED),  # trains without NaN, but to no useful AP
    ((0.5, 2.0, 3.5), INCONCLUSIVE),  # the interval straddles the criterion
    ((9.0,), INCONCLUSIVE),  # one seed
])
def test_trains_is_judged_on_a_stated_criterion(aps, verdict):
    claim = make_claim(text="CE with the prior init trains", type="converges", row="ce", min_value=1.0)
    assert judge(claim, _rows(ce=aps), {})["verdict"] == verdict


def test_divergence_needs_three_seeds():
    claim = make_claim(text="CE without the prior init diverges", type="diverges", row="ce")
    assert judge(claim, {"ce": _diverged("ce", seeds=1)}, {})["verdict"] == INCONCLUSIVE
    assert judge(claim, {"ce": _diverged("ce", seeds=3)}, {})["verdict"] == REPRODUCED
