"""Statistics of a table row over seeds, and whether one row beats another beyond seed noise.

Two rows are compared by Welch's t-test (unequal variances; ``scipy.stats.ttest_ind``) on their
finished seeds: the difference of the means with its 95 % confidence interval (Welch–Satterthwaite
degrees of freedom) and the two-sided p-value. A row beats another when the interval excludes 0.
A comparison can decide a claim only with at least :data:`MIN_SEEDS` seeds on each side
(``Comparison.decisive``); with one seed of either row there is no interval at all. A row whose
seeds all diverged ranks below any row that trained.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ms")
METRIC_LABELS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APS", "APm": "APM", "APl": "APL",
                 "ms": "ms/img"}
LOWER_IS_BETTER = frozenset({"ms"})  # the metrics where lower values win
#: seeds each side of a comparison needs before it can decide a claim
MIN_SEEDS = 3
CONFIDENCE = 0.95


@dataclasses.dataclass
class RowStats:
    """One row's finished seeds: metric values of the seeds that trained, divergences."""

    row: str
    values: Dict[str, List[float]] = dataclasses.field(default_factory=dict)
    seeds: int = 0  # finished seeds (trained or diverged)
    diverged_at: List[int] = dataclasses.field(default_factory=list)
    planned: int = 0
    #: metric -> seed -> value (the same seed of two rows shares the backbone and data order)
    by_seed: Dict[str, Dict[int, float]] = dataclasses.field(default_factory=dict)

    def n(self, metric: str) -> int:
        return len(self.values.get(metric, []))

    def mean(self, metric: str) -> Optional[float]:
        v = self.values.get(metric, [])
        return statistics.fmean(v) if v else None

    def std(self, metric: str) -> Optional[float]:
        v = self.values.get(metric, [])
        return statistics.stdev(v) if len(v) >= 2 else None

    @property
    def all_diverged(self) -> bool:
        return self.seeds > 0 and len(self.diverged_at) == self.seeds

    def as_dict(self, metrics: Sequence[str]) -> Dict[str, Any]:
        return {"seeds_finished": self.seeds, "seeds_planned": self.planned, "diverged_at": self.diverged_at,
                **{m: {"mean": self.mean(m), "std": self.std(m), "n": self.n(m),
                       "values": self.values.get(m, [])} for m in metrics}}


@dataclasses.dataclass
class Comparison:
    relation: str  # "better" | "worse" | "within" | "one seed" | "no data"
    diff: Optional[float] = None  # mean(a) - mean(b), raw metric units
    ci: Optional[Tuple[float, float]] = None  # CONFIDENCE interval of diff (Welch)
    p: Optional[float] = None  # two-sided Welch p-value
    n: Tuple[int, int] = (0, 0)  # seeds with a value on each side

    @property
    def noise(self) -> Optional[float]:
        """Half the width of the confidence interval (None without one)."""
        return None if self.ci is None else (self.ci[1] - self.ci[0]) / 2

    @property
    def decisive(self) -> bool:
        """Enough seeds on both sides (:data:`MIN_SEEDS`) for the comparison to decide a claim."""
        return min(self.n) >= MIN_SEEDS


def welch(a: Sequence[float], b: Sequence[float]) -> Tuple[float, Tuple[float, float], float]:
    """``(mean(a) - mean(b), its CONFIDENCE interval, two-sided p)`` by Welch's t-test; ``a`` and
    ``b`` need two values each. Two constant samples (zero variance) give a zero-width interval
    at the difference, and p = 0 (or 1 when they are equal)."""
    from scipy import stats

    diff = statistics.fmean(a) - statistics.fmean(b)
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:
        return diff, (diff, diff), float(diff == 0)
    result = stats.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(CONFIDENCE)
    return diff, (float(ci.low), float(ci.high)), float(result.pvalue)


def mean_interval(values: Sequence[float]) -> Optional[Tuple[float, float]]:
    """The CONFIDENCE interval of the mean of ``values`` (Student's t; None under two values)."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean, sem = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)) * sem
    return mean - half, mean + half


def compare(a: RowStats, b: RowStats, metric: str, sign: int = 1) -> Comparison:
    """Is ``a`` better than ``b`` on ``metric`` beyond seed noise (the interval of the difference
    excludes 0)? ``sign`` +1: higher values win, -1: lower values win. A row whose seeds all
    diverged has the worst value of the metric (the lowest AP, the highest ms), so it loses —
    unless the claim looks for the worst row (``sign`` against the metric's direction), where it
    wins; ``n`` then counts finished seeds."""
    if a.seeds == 0 or b.seeds == 0:
        return Comparison("no data")
    if a.all_diverged or b.all_diverged:
        n = (a.seeds, b.seeds)
        if a.all_diverged and b.all_diverged:
            return Comparison("within", n=n)
        worst_wins = sign != (-1 if metric in LOWER_IS_BETTER else 1)
        return Comparison("better" if a.all_diverged == worst_wins else "worse", n=n)
    if not a.n(metric) or not b.n(metric):
        return Comparison("no data")
    va, vb, n = a.values[metric], b.values[metric], (a.n(metric), b.n(metric))
    if min(n) < 2:
        return Comparison("one seed", statistics.fmean(va) - statistics.fmean(vb), n=n)
    diff, ci, p = welch(va, vb)
    low, high = ci if sign > 0 else (-ci[1], -ci[0])  # the interval of sign * diff
    relation = "better" if low > 0 else "worse" if high < 0 else "within"
    return Comparison(relation, diff, ci, p, n)


def paired(a: RowStats, b: RowStats, metric: str) -> Optional[Dict[str, Any]]:
    """``a`` minus ``b`` seed by seed (the seeds both have): ``{"diffs", "diff", "ci", "p", "n"}``
    by the paired t-test (``scipy.stats.ttest_1samp`` of the differences; CONFIDENCE interval),
    None under two common seeds. Supplementary to :func:`compare`: a seed fixes the backbone a
    cell starts from and its data order, so pairing removes their spread from the comparison."""
    from scipy import stats

    va, vb = a.by_seed.get(metric, {}), b.by_seed.get(metric, {})
    seeds = sorted(set(va) & set(vb))
    if len(seeds) < 2:
        return None
    diffs = [va[s] - vb[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if statistics.pvariance(diffs) <= 1e-20 * max(1.0, mean * mean):  # constant up to rounding
        return {"diffs": diffs, "diff": mean, "ci": (mean, mean), "p": float(mean == 0), "n": len(seeds)}
    result = stats.ttest_1samp(diffs, 0.0)
    ci = result.confidence_interval(CONFIDENCE)
    return {"diffs": diffs, "diff": mean, "ci": (float(ci.low), float(ci.high)), "p": float(result.pvalue),
            "n": len(seeds)}


def paired_text(p: Optional[Dict[str, Any]]) -> str:
    if p is None:
        return "—"
    return (f"Δ {p['diff']:+.2f}, 95% CI [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}], p {p['p']:.2g} "
            f"({p['n']} seeds: {', '.join(f'{d:+.2f}' for d in p['diffs'])})")


def fmt_stat(s: RowStats, metric: str) -> str:
    """"mean ± std" of ``metric`` ("pending", "diverged" or "n/a" without a value)."""
    if s.seeds == 0:
        return "pending"
    if s.all_diverged:
        return "diverged"
    m, sd = s.mean(metric), s.std(metric)
    if m is None:
        return "n/a"
    return f"{m:.1f}" + (f" ± {sd:.1f}" if sd is not None else "")


def gap_text(c: Comparison) -> str:
    """" (Δ +1.23, 95 % CI [+0.50, +1.96], p 0.011, 3/3 seeds)" for a comparison with a difference,
    else ""."""
    if c.diff is None:
        return ""
    seeds = f"{c.n[0]}/{c.n[1]} seeds"
    if c.ci is None:
        return f" (Δ {c.diff:+.2f}, {seeds}: no interval with one seed)"
    return (f" (Δ {c.diff:+.2f}, {CONFIDENCE:.0%} CI [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}], p {c.p:.2g}, {seeds}"
            + ("" if c.decisive else f"; under {MIN_SEEDS} seeds: not decisive") + ")")
