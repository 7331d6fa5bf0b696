"""The verdict on each of the paper's claims about a table, from its rows' seeds.

Verdicts: ``reproduced`` / ``not reproduced`` when Welch's 95 % interval of the difference decides
it with at least ``MIN_SEEDS`` seeds on every side (:mod:`focal_plugin.analysis.seed_stats`);
``inconclusive`` otherwise (the interval straddles the claim's boundary, or too few seeds);
``no data`` (cells not finished). A stated size (``by``) must lie inside the interval.

A claim over several rows ("α = .75 is the best α") is judged once every row it names has a
finished seed — a rival that has not run could still beat the claimed row — unless the finished
rows already refute it.

Claim types are the functions registered with :func:`claim_type`: a claim's fields are the
keyword arguments of its function (those without a default are required), so a type is declared
once. Row fields (``row``, ``than``, ``to``, ``rows``) must name rows of the spec.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from focal_plugin.analysis.seed_stats import (
    CONFIDENCE,
    LOWER_IS_BETTER,
    METRIC_LABELS,
    MIN_SEEDS,
    Comparison,
    RowStats,
    compare,
    fmt_stat,
    gap_text,
    mean_interval,
    paired,
)

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NO_DATA = "reproduced", "not reproduced", "inconclusive", "no data"
_ROW_FIELDS = ("row", "than", "to")


# ------------------------------------------------------------------------------------ claims
@dataclasses.dataclass(frozen=True)
class Claim:
    """One of the paper's qualitative claims about a table: its type's fields in ``args``."""

    text: str
    type: str
    args: Mapping[str, Any]

    @property
    def metric(self) -> str:
        return self.args.get("metric", "AP")

    @property
    def row(self) -> Optional[str]:
        return self.args.get("row")


@dataclasses.dataclass
class Context:
    """What a claim is judged on: each row's stats, the paper's numbers and our scale (a size
    stated in the paper's AP is judged at the paper's scale only)."""

    stats: Dict[str, RowStats]
    paper: Dict[str, Dict[str, Optional[float]]]
    scale: str = "paper"

    def paper_value(self, row: str, metric: str) -> Optional[float]:
        return (self.paper.get(row) or {}).get(metric)

    def paper_text(self, rows: Sequence[str], metric: str) -> str:
        vals = [self.paper_value(r, metric) for r in rows]
        if all(v is None for v in vals):
            return "—"
        return ", ".join(f"{r} {v:.1f}" if v is not None else f"{r} —" for r, v in zip(rows, vals))


CLAIM_TYPES: Dict[str, Callable[..., Dict[str, Any]]] = {}


def claim_type(name: str):
    """Register ``fn(ctx, *, fields...) -> {"verdict", "ours", "paper", ...}`` as claim type ``name``."""
    def register(fn):
        CLAIM_TYPES[name] = fn
        return fn
    return register


def _fields(kind: str) -> Dict[str, bool]:
    """A claim type's fields -> required?"""
    params = list(inspect.signature(CLAIM_TYPES[kind]).parameters.values())[1:]
    return {p.name: p.default is inspect.Parameter.empty for p in params}


def parse_claim(raw: Any, i: int, rows: set, metrics: List[str], fail) -> Claim:
    """A spec's claim #``i``, checked: type, fields, the rows and metric it names."""
    where = f"claim #{i + 1}"
    if not isinstance(raw, Mapping) or "type" not in raw or "text" not in raw:
        raise fail(f"{where} must be a mapping with 'text' and 'type'")
    kind = raw["type"]
    if kind not in CLAIM_TYPES:
        raise fail(f"{where}: unknown type {kind!r}; expected one of {sorted(CLAIM_TYPES)}")
    fields = _fields(kind)
    args = {k: v for k, v in raw.items() if k not in ("text", "type")}
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise fail(f"unknown key(s) {unknown} in {where}; allowed: {sorted({*fields, 'text', 'type'})}")
    missing = sorted(k for k, required in fields.items() if required and k not in args)
    if missing:
        raise fail(f"{where} ({kind}) is missing {missing}")
    for ref in [args[k] for k in _ROW_FIELDS if k in args] + list(args.get("rows", ())):
        if ref not in rows:
            raise fail(f"{where} refers to row {ref!r}, which the spec does not have")
    if args.get("metric", "AP") not in metrics:
        raise fail(f"{where}: metric {args['metric']!r} is not one of the spec's metrics {metrics}")
    if args.get("direction") not in (None, "max", "min"):
        raise fail(f"{where}: direction {args['direction']!r} must be 'max' or 'min'")
    if "rows" in args:
        args["rows"] = tuple(args["rows"])
    for key, kind_of in (("tol", float), ("by", float), ("min_value", float), ("min_count", int)):
        if key in args:
            if isinstance(args[key], bool) or not isinstance(args[key], (int, float)):
                raise fail(f"{where}: {key} = {args[key]!r} is not a number")
            args[key] = kind_of(args[key])
    return Claim(text=str(raw["text"]), type=kind, args=args)


def judge(claim: Claim, stats: Dict[str, RowStats], paper: Dict[str, Dict[str, Optional[float]]],
          scale: str = "paper") -> Dict[str, Any]:
    """``{"claim", "type", "metric", "row", "verdict", "ours", "paper", ...}`` for one claim."""
    out = {"claim": claim.text, "type": claim.type, "metric": claim.metric, "row": claim.row}
    out.update(CLAIM_TYPES[claim.type](Context(stats, paper, scale), **claim.args))
    # supplementary (the verdict stays Welch's): the claimed row minus its rival seed by seed
    rival = claim.args.get("than") or claim.args.get("to") or (out.get("margin") or {}).get("rival")
    if claim.row in stats and rival in stats:
        out["paired"] = {"vs": rival, **(paired(stats[claim.row], stats[rival], claim.metric) or {})}
    return out


def _sign(metric: str) -> int:
    return -1 if metric in LOWER_IS_BETTER else 1


def _divergence(ctx: Context, row: str, metric: str, expect: bool, min_value: Optional[float] = None
                ) -> Dict[str, Any]:
    s = ctx.stats[row]
    k = len(s.diverged_at)
    if s.seeds == 0:
        verdict = NO_DATA
    elif 0 < k < s.seeds or s.seeds < MIN_SEEDS:
        verdict = INCONCLUSIVE
    else:
        verdict = REPRODUCED if (k == s.seeds) == expect else NOT_REPRODUCED
    at = f" (at iteration {', '.join(map(str, s.diverged_at))})" if k else ""
    ours = f"{row}: {k}/{s.seeds} seeds diverged{at}"
    if min_value is not None and s.values.get(metric):  # "trains": above a stated criterion too
        above, criterion = _above(s.values[metric], min_value)
        verdict = above if verdict == REPRODUCED else verdict
        ours += f"; {METRIC_LABELS.get(metric, metric)} {fmt_stat(s, metric)}{criterion}"
    return {"verdict": verdict, "ours": ours, "paper": ctx.paper_text([row], metric)}


def _above(values: Sequence[float], floor: float) -> tuple:
    """(verdict, text) of "the mean exceeds ``floor``" from the interval of the mean."""
    interval = mean_interval(values)
    if interval is None:
        return INCONCLUSIVE, f" (criterion > {floor:g}: one seed, no interval)"
    verdict = REPRODUCED if interval[0] > floor else NOT_REPRODUCED if interval[1] <= floor else INCONCLUSIVE
    return verdict, f" ({CONFIDENCE:.0%} CI [{interval[0]:.2f}, {interval[1]:.2f}] vs criterion > {floor:g})"


@claim_type("diverges")
def _diverges(ctx: Context, *, row: str, metric: str = "AP") -> Dict[str, Any]:
    return _divergence(ctx, row, metric, expect=True)


@claim_type("converges")
def _converges(ctx: Context, *, row: str, metric: str = "AP", min_value: Optional[float] = None
               ) -> Dict[str, Any]:
    return _divergence(ctx, row, metric, expect=False, min_value=min_value)


def _decided(c: Comparison) -> str:
    """The verdict of "a beats b" from one comparison."""
    if c.relation == "no data":
        return NO_DATA
    if not c.decisive or c.relation not in ("better", "worse"):
        return INCONCLUSIVE
    return REPRODUCED if c.relation == "better" else NOT_REPRODUCED


@claim_type("better")
def _better(ctx: Context, *, row: str, than: str, metric: str = "AP", by: Optional[float] = None
            ) -> Dict[str, Any]:
    c = compare(ctx.stats[row], ctx.stats[than], metric, _sign(metric))
    verdict = _decided(c)
    pa, pb = ctx.paper_value(row, metric), ctx.paper_value(than, metric)
    paper = (f"{pa:.1f} vs {pb:.1f} (Δ {pa - pb:+.1f})" if pa is not None and pb is not None
             else ctx.paper_text([row, than], metric))
    label = METRIC_LABELS.get(metric, metric)
    ours = f"{label} {fmt_stat(ctx.stats[row], metric)} vs {fmt_stat(ctx.stats[than], metric)}{gap_text(c)}"
    if by is not None and ctx.scale != "paper":  # AP of another dataset: no common unit
        ours += (f"; the stated size ({by:g} {label} on COCO) is not comparable at {ctx.scale} scale: "
                 "only the sign is judged")
    elif by is not None and verdict == REPRODUCED and c.ci is not None:  # the stated size, too
        low, high = sorted(_sign(metric) * x for x in c.ci)
        verdict = REPRODUCED if low <= by <= high else NOT_REPRODUCED
        ours += f"; stated size {by:g} {'inside' if low <= by <= high else 'outside'} the interval"
    return {"verdict": verdict, "paper": paper, "ours": ours}


@claim_type("best")
def _best(ctx: Context, *, row: str, metric: str = "AP", rows: Sequence[str] = (),
          direction: Optional[str] = None) -> Dict[str, Any]:
    stats = ctx.stats
    rivals = [r for r in (rows or stats) if r != row]
    sign = _sign(metric) if direction is None else (1 if direction == "max" else -1)
    comps = {r: compare(stats[row], stats[r], metric, sign) for r in rivals}
    decided = {_decided(c) for c in comps.values()} - {NO_DATA}  # no data: not run, or no value
    pending = [r for r in rivals if stats[r].seeds == 0]
    if stats[row].seeds == 0:
        verdict, pending = NO_DATA, []
    elif NOT_REPRODUCED in decided:
        verdict = NOT_REPRODUCED
    elif pending or not decided:  # a rival not run yet could still beat it
        verdict = NO_DATA
    else:
        verdict = REPRODUCED if decided == {REPRODUCED} else INCONCLUSIVE
    return {"verdict": verdict, "ours": _best_text(ctx, row, metric, comps, pending, len(rivals)),
            "paper": _best_paper(ctx, [row, *rivals], metric, sign),
            "margin": _margin(row, rivals, comps, stats, metric, sign)}


def _best_text(ctx: Context, row: str, metric: str, comps: Dict[str, Comparison], pending, of: int) -> str:
    ours = f"{row} {METRIC_LABELS.get(metric, metric)} {fmt_stat(ctx.stats[row], metric)}"
    beaten_by = [r for r, c in comps.items() if _decided(c) == NOT_REPRODUCED]
    close = [f"{r}{gap_text(c)}" for r, c in comps.items() if _decided(c) == INCONCLUSIVE]
    if beaten_by:
        ours += f"; beaten beyond noise by {', '.join(beaten_by)}"
    if close:
        ours += f"; not separated from {'; '.join(close[:3])}" + (" ..." if len(close) > 3 else "")
    if pending:
        shown = ", ".join(pending[:4]) + (" ..." if len(pending) > 4 else "")
        ours += f"; pending: {len(pending)} of {of} other rows ({shown})"
    return ours


def _best_paper(ctx: Context, rows: Sequence[str], metric: str, sign: int) -> str:
    known = {r: v for r in rows if (v := ctx.paper_value(r, metric)) is not None}
    if not known:
        return "—"
    pick = (max if sign > 0 else min)(known, key=known.get)
    return f"{'highest' if sign > 0 else 'lowest'}: {pick} ({known[pick]:.1f})"


def _margin(row: str, rivals: Sequence[str], comps: Dict[str, Comparison], stats: Dict[str, RowStats],
            metric: str, sign: int) -> Optional[Dict[str, Any]]:
    """The claimed row against its strongest finished rival: ``{"rival", "diff", "noise",
    "relation", "diverged", "pending", "lower_wins"}`` (``diverged``: "row" / "rivals" when a side
    has no value because all its seeds diverged; ``pending``: rivals not finished yet, any of
    which could still be stronger); None while the row or every rival has not finished."""
    finished = [r for r in rivals if stats[r].seeds]
    if not stats[row].seeds or not finished:
        return None
    common = {"pending": [r for r in rivals if not stats[r].seeds], "lower_wins": sign < 0}
    ranked = [r for r in finished if stats[r].n(metric) and not stats[r].all_diverged]
    top = (max if sign > 0 else min)(ranked, key=lambda r: stats[r].mean(metric)) if ranked else None
    if stats[row].all_diverged or not ranked:
        c = comps[top or finished[0]]
        return {"rival": top, "diff": None, "noise": None, "relation": c.relation,
                "diverged": "row" if stats[row].all_diverged else "rivals", **common}
    c = comps[top]
    return {"rival": top, "diff": c.diff, "noise": c.noise, "relation": c.relation, "diverged": None,
            **common}


def _similar(a: RowStats, b: RowStats, metric: str, tol: float) -> tuple:
    c = compare(a, b, metric)
    if c.relation == "no data":
        return NO_DATA, ""
    if not c.decisive:
        return INCONCLUSIVE, gap_text(c) or f" ({c.n[0]}/{c.n[1]} seeds: under {MIN_SEEDS}, not decisive)"
    if a.all_diverged != b.all_diverged:
        return NOT_REPRODUCED, " (one of the two diverged)"
    if c.diff is None:  # both diverged
        return REPRODUCED, " (both diverged)"
    if abs(c.diff) + c.noise <= tol:
        return REPRODUCED, gap_text(c)
    return (NOT_REPRODUCED if abs(c.diff) - c.noise > tol else INCONCLUSIVE), gap_text(c)


def _similar_rows(ctx: Context, rows: Sequence[str], to: str, tol: float, metric: str,
                  min_count: int) -> Dict[str, Any]:
    per = {r: _similar(ctx.stats[r], ctx.stats[to], metric, tol) for r in rows}
    counts = {v: sum(1 for x in per.values() if x[0] == v) for v in (REPRODUCED, NOT_REPRODUCED, NO_DATA)}
    if counts[NO_DATA] == len(rows):
        verdict = NO_DATA
    elif counts[REPRODUCED] >= min_count:
        verdict = REPRODUCED
    elif len(rows) - counts[NOT_REPRODUCED] < min_count:
        verdict = NOT_REPRODUCED
    elif any(ctx.stats[r].seeds == 0 for r in rows):  # rows not run yet could still meet it
        verdict = NO_DATA
    else:
        verdict = INCONCLUSIVE
    label = METRIC_LABELS.get(metric, metric)
    parts = [f"{r} {label} {fmt_stat(ctx.stats[r], metric)}{per[r][1]}" for r in rows]
    ours = f"{to} {fmt_stat(ctx.stats[to], metric)}; " + "; ".join(parts[:6])
    ours += " ..." if len(parts) > 6 else ""
    return {"verdict": verdict, "ours": ours, "paper": ctx.paper_text([to, *rows], metric), "tolerance": tol,
            "count": counts[REPRODUCED]}


@claim_type("similar")
def _similar_claim(ctx: Context, *, row: str, to: str, tol: float, metric: str = "AP") -> Dict[str, Any]:
    out = _similar_rows(ctx, (row,), to, tol, metric, 1)
    del out["count"]
    return out


@claim_type("any_similar")
def _any_similar(ctx: Context, *, rows: Sequence[str], to: str, tol: float, metric: str = "AP",
                 min_count: int = 1) -> Dict[str, Any]:
    out = _similar_rows(ctx, rows, to, tol, metric, min_count)
    out["ours"] += f" — {out.pop('count')} of {len(rows)} within ±{tol:g} beyond noise (need {min_count})"
    return out


@claim_type("increasing")
def _increasing(ctx: Context, *, rows: Sequence[str], metric: str = "AP") -> Dict[str, Any]:
    stats, rows = ctx.stats, list(rows)
    steps = {_decided(compare(stats[b], stats[a], metric, 1)) for a, b in zip(rows, rows[1:])}
    if any(_decided(compare(stats[b], stats[a], metric, 1)) == NOT_REPRODUCED  # any pair, gaps too
           for i, a in enumerate(rows) for b in rows[i + 1:]):
        verdict = NOT_REPRODUCED
    elif NO_DATA in steps:
        verdict = NO_DATA
    else:
        verdict = REPRODUCED if steps == {REPRODUCED} else INCONCLUSIVE
    ours = " → ".join(fmt_stat(stats[r], metric) for r in rows)
    return {"verdict": verdict, "ours": f"{METRIC_LABELS.get(metric, metric)}: {ours}",
            "paper": ctx.paper_text(rows, metric)}
