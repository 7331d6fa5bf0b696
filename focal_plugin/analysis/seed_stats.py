"""Statistics of a table row over seeds, and whether one row beats another beyond seed noise.

A gap between two rows counts only when it is larger than the seed noise: with ``n_a``, ``n_b``
finished seeds and sample standard deviations ``s_a``, ``s_b``, the noise is
``K * sqrt(s_a^2 / n_a + s_b^2 / n_b)`` (K = 2, about a 95 % two-sample interval). With a single
seed of either row the noise is unknown. A row whose seeds all diverged ranks below any row
that trained.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Dict, List, Optional, Sequence

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ms")
METRIC_LABELS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APS", "APm": "APM", "APl": "APL",
                 "ms": "ms/img"}
LOWER_IS_BETTER = frozenset({"ms"})  # the metrics where lower values win
NOISE_K = 2.0


@dataclasses.dataclass
class RowStats:
    """One row's finished seeds: metric values of the seeds that trained, divergences."""

    row: str
    values: Dict[str, List[float]] = dataclasses.field(default_factory=dict)
    seeds: int = 0  # finished seeds (trained or diverged)
    diverged_at: List[int] = dataclasses.field(default_factory=list)
    planned: int = 0

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
    diff: Optional[float] = None  # a - b (raw metric units)
    noise: Optional[float] = None


def compare(a: RowStats, b: RowStats, metric: str, sign: int = 1) -> Comparison:
    """Is ``a`` better than ``b`` on ``metric`` beyond seed noise? ``sign`` +1: higher values win,
    -1: lower values win. A row whose seeds all diverged has the worst value of the metric (the
    lowest AP, the highest ms), so it loses — unless the claim looks for the worst row (``sign``
    against the metric's direction), where it wins."""
    if a.seeds == 0 or b.seeds == 0:
        return Comparison("no data")
    if a.all_diverged or b.all_diverged:
        if a.all_diverged and b.all_diverged:
            return Comparison("within")
        worst_wins = sign != (-1 if metric in LOWER_IS_BETTER else 1)
        return Comparison("better" if a.all_diverged == worst_wins else "worse")
    if not a.n(metric) or not b.n(metric):
        return Comparison("no data")
    diff = a.mean(metric) - b.mean(metric)
    if a.n(metric) < 2 or b.n(metric) < 2:
        return Comparison("one seed", diff)
    noise = NOISE_K * math.sqrt(a.std(metric) ** 2 / a.n(metric) + b.std(metric) ** 2 / b.n(metric))
    relation = "better" if sign * diff > noise else "worse" if sign * diff < -noise else "within"
    return Comparison(relation, diff, noise)


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
    """" (Δ +1.23, noise ±0.45)" for a comparison with a difference, else ""."""
    if c.diff is None:
        return ""
    noise = f", noise ±{c.noise:.2f}" if c.noise is not None else ", one seed: noise unknown"
    return f" (Δ {c.diff:+.2f}{noise})"
