"""Per-row statistics over seeds and the verdict on each of the paper's claims.

A gap between two rows counts only when it is larger than the seed noise: with ``n_a``, ``n_b``
finished seeds and sample standard deviations ``s_a``, ``s_b``, the noise is
``K * sqrt(s_a^2 / n_a + s_b^2 / n_b)`` (K = 2, about a 95 % two-sample interval). With a single
seed of either row the noise is unknown, so every comparison is **inconclusive**. A row whose
seeds all diverged ranks below any row that trained. Verdicts: ``reproduced``, ``not reproduced``,
``inconclusive`` (within noise, or one seed), ``no data`` (cells not finished).

A claim over several rows ("α = .75 is the best α", "AP increases with depth") is only judged
once every row it names has a finished seed: a rival that has not run could still beat the
claimed row, so until then the verdict is ``no data`` and the text lists the rows not run —
unless the finished rows already refute the claim (``not reproduced`` cannot be undone by more
rows). Like every comparison, it uses the seeds finished so far.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Dict, List, Optional, Sequence

from focal_plugin.ablation.spec import LOWER_IS_BETTER, METRIC_LABELS, Claim

NOISE_K = 2.0
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NO_DATA = "reproduced", "not reproduced", "inconclusive", "no data"


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
    lowest AP, the highest ms), so it loses, unless the claim looks for the worst row (Table 1a's
    "α = .10 is the worst": AP with ``sign`` -1), where it wins."""
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
    if sign * diff > noise:
        return Comparison("better", diff, noise)
    if sign * diff < -noise:
        return Comparison("worse", diff, noise)
    return Comparison("within", diff, noise)


def fmt_stat(s: RowStats, metric: str) -> str:
    if s.seeds == 0:
        return "pending"
    if s.all_diverged:
        return "diverged"
    m, sd = s.mean(metric), s.std(metric)
    if m is None:
        return "n/a"
    return f"{m:.1f}" + (f" ± {sd:.1f}" if sd is not None else "")


def _gap(c: Comparison) -> str:
    if c.diff is None:
        return ""
    noise = f", noise ±{c.noise:.2f}" if c.noise is not None else ", one seed: noise unknown"
    return f" (Δ {c.diff:+.2f}{noise})"


def _paper(paper: Dict[str, Dict[str, Optional[float]]], row: str, metric: str) -> Optional[float]:
    return (paper.get(row) or {}).get(metric)


def _paper_text(paper, rows: Sequence[str], metric: str) -> str:
    vals = [_paper(paper, r, metric) for r in rows]
    if all(v is None for v in vals):
        return "—"
    return ", ".join(f"{r} {v:.1f}" if v is not None else f"{r} —" for r, v in zip(rows, vals))


def judge(claim: Claim, stats: Dict[str, RowStats], paper: Dict[str, Dict[str, Optional[float]]]
          ) -> Dict[str, Any]:
    """``{"claim", "type", "verdict", "ours", "paper"}`` for one claim (see the module docstring)."""
    m = claim.metric
    sign = -1 if m in LOWER_IS_BETTER else 1
    label = METRIC_LABELS.get(m, m)
    out: Dict[str, Any] = {"claim": claim.text, "type": claim.type, "metric": m, "row": claim.row}
    if claim.type in ("diverges", "converges"):
        s = stats[claim.row]
        k = len(s.diverged_at)
        if s.seeds == 0:
            verdict = NO_DATA
        elif k in (0, s.seeds):
            verdict = REPRODUCED if (k == s.seeds) == (claim.type == "diverges") else NOT_REPRODUCED
        else:
            verdict = INCONCLUSIVE
        at = f" (at iteration {', '.join(map(str, s.diverged_at))})" if k else ""
        out.update(verdict=verdict, ours=f"{claim.row}: {k}/{s.seeds} seeds diverged{at}",
                   paper=_paper_text(paper, [claim.row], m))
        return out
    if claim.type == "better":
        c = compare(stats[claim.row], stats[claim.than], m, sign)
        verdict = {"better": REPRODUCED, "worse": NOT_REPRODUCED, "no data": NO_DATA}.get(
            c.relation, INCONCLUSIVE)
        pa, pb = _paper(paper, claim.row, m), _paper(paper, claim.than, m)
        ptxt = f"{pa:.1f} vs {pb:.1f} (Δ {pa - pb:+.1f})" if pa is not None and pb is not None else \
            _paper_text(paper, [claim.row, claim.than], m)
        ours = f"{label} {fmt_stat(stats[claim.row], m)} vs {fmt_stat(stats[claim.than], m)}{_gap(c)}"
        out.update(verdict=verdict, paper=ptxt, ours=ours)
        return out
    if claim.type == "best":
        rivals = [r for r in (claim.rows or stats) if r != claim.row]
        s_sign = sign if claim.direction is None else (1 if claim.direction == "max" else -1)
        comps = {r: compare(stats[claim.row], stats[r], m, s_sign) for r in rivals}
        rels = {c.relation for c in comps.values()} - {"no data"}  # no data: not run, or no value
        pending = [r for r in rivals if stats[r].seeds == 0]
        if stats[claim.row].seeds == 0:
            verdict, pending = NO_DATA, []
        elif "worse" in rels:
            verdict = NOT_REPRODUCED
        elif pending or not rels:  # a rival not run yet could still beat it
            verdict = NO_DATA
        elif rels == {"better"}:
            verdict = REPRODUCED
        else:
            verdict = INCONCLUSIVE
        beaten_by = [r for r, c in comps.items() if c.relation == "worse"]
        close = [f"{r}{_gap(c)}" for r, c in comps.items() if c.relation in ("within", "one seed")]
        ours = f"{claim.row} {label} {fmt_stat(stats[claim.row], m)}"
        if beaten_by:
            ours += f"; beaten beyond noise by {', '.join(beaten_by)}"
        if close:
            ours += f"; not separated from {'; '.join(close[:3])}" + (" ..." if len(close) > 3 else "")
        ours += _pending_text(pending, len(rivals))
        out["margin"] = _margin(claim.row, rivals, comps, stats, m, s_sign)
        pvals = {r: _paper(paper, r, m) for r in [claim.row, *rivals]}
        known = {r: v for r, v in pvals.items() if v is not None}
        pick = (max if s_sign > 0 else min)(known, key=known.get) if known else None
        ptxt = f"{'highest' if s_sign > 0 else 'lowest'}: {pick} ({known[pick]:.1f})" if pick else "—"
        out.update(verdict=verdict, ours=ours, paper=ptxt)
        return out
    if claim.type in ("similar", "any_similar"):
        rows = [claim.row] if claim.type == "similar" else list(claim.rows)
        per = {r: _similar(stats[r], stats[claim.to], m, claim.tol or 0.0) for r in rows}
        counts = {v: sum(1 for x in per.values() if x[0] == v) for v in (REPRODUCED, NOT_REPRODUCED, NO_DATA)}
        need = 1 if claim.type == "similar" else claim.min_count
        if counts[NO_DATA] == len(rows):
            verdict = NO_DATA
        elif counts[REPRODUCED] >= need:
            verdict = REPRODUCED
        elif len(rows) - counts[NOT_REPRODUCED] < need:
            verdict = NOT_REPRODUCED
        elif any(stats[r].seeds == 0 for r in rows):  # rows not run yet could still meet it
            verdict = NO_DATA
        else:
            verdict = INCONCLUSIVE
        parts = [f"{r} {label} {fmt_stat(stats[r], m)}{per[r][1]}" for r in rows]
        ours = f"{claim.to} {fmt_stat(stats[claim.to], m)}; " + "; ".join(parts[:6])
        ours += " ..." if len(parts) > 6 else ""
        if claim.type == "any_similar":
            ours += f" — {counts[REPRODUCED]} of {len(rows)} within ±{claim.tol:g} beyond noise (need {need})"
        out.update(verdict=verdict, ours=ours, paper=_paper_text(paper, [claim.to, *rows], m),
                   tolerance=claim.tol)
        return out
    if claim.type == "increasing":
        comps = [compare(stats[b], stats[a], m, 1) for a, b in zip(claim.rows, claim.rows[1:])]
        rels = {c.relation for c in comps}
        rows = list(claim.rows)
        if any(compare(stats[b], stats[a], m, 1).relation == "worse"  # any finished pair, gaps too
               for i, a in enumerate(rows) for b in rows[i + 1:]):
            verdict = NOT_REPRODUCED
        elif "no data" in rels:
            verdict = NO_DATA
        elif rels == {"better"}:
            verdict = REPRODUCED
        else:
            verdict = INCONCLUSIVE
        ours = " → ".join(fmt_stat(stats[r], m) for r in claim.rows)
        out.update(verdict=verdict, ours=f"{label}: {ours}", paper=_paper_text(paper, list(claim.rows), m))
        return out
    raise ValueError(f"unknown claim type {claim.type!r}")  # pragma: no cover (spec validates)


def _margin(row: str, rivals: Sequence[str], comps: Dict[str, Comparison], stats: Dict[str, RowStats],
            metric: str, sign: int) -> Optional[Dict[str, Any]]:
    """The claimed row against its strongest finished rival: ``{"rival", "diff", "noise",
    "relation", "diverged", "pending"}`` (``diverged``: "row" / "rivals" when a side has no value
    because all its seeds diverged, else None; ``pending``: the rivals not finished yet, any of which
    could still be stronger; ``lower_wins``: the claim's "strongest" is the lowest value, as in
    "α = .10 is the worst"); None while the row or every rival has not finished."""
    finished = [r for r in rivals if stats[r].seeds]
    if not stats[row].seeds or not finished:
        return None
    common = {"pending": [r for r in rivals if not stats[r].seeds], "lower_wins": sign < 0}
    ranked = [r for r in finished if stats[r].n(metric) and not stats[r].all_diverged]
    if stats[row].all_diverged or not ranked:
        top = (max if sign > 0 else min)(ranked, key=lambda r: stats[r].mean(metric)) if ranked else None
        c = comps[top or finished[0]]
        return {"rival": top, "diff": None, "noise": None, "relation": c.relation,
                "diverged": "row" if stats[row].all_diverged else "rivals", **common}
    top = (max if sign > 0 else min)(ranked, key=lambda r: stats[r].mean(metric))
    c = comps[top]
    return {"rival": top, "diff": c.diff, "noise": c.noise, "relation": c.relation, "diverged": None,
            **common}


def _pending_text(pending: Sequence[str], of: int) -> str:
    if not pending:
        return ""
    shown = ", ".join(pending[:4]) + (" ..." if len(pending) > 4 else "")
    return f"; pending: {len(pending)} of {of} other rows ({shown})"


def _similar(a: RowStats, b: RowStats, metric: str, tol: float) -> tuple:
    c = compare(a, b, metric)
    if c.relation == "no data":
        return NO_DATA, ""
    if a.all_diverged != b.all_diverged:
        return NOT_REPRODUCED, " (one of the two diverged)"
    if c.diff is None:  # both diverged
        return REPRODUCED, " (both diverged)"
    if c.noise is None:
        return INCONCLUSIVE, _gap(c)
    if abs(c.diff) + c.noise <= tol:
        return REPRODUCED, _gap(c)
    if abs(c.diff) - c.noise > tol:
        return NOT_REPRODUCED, _gap(c)
    return INCONCLUSIVE, _gap(c)
