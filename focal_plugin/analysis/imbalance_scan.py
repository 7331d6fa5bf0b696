"""The imbalance scan's curve: how far the claimed-best row leads its strongest rival, against the
class imbalance of the data (spec ``configs/ablations/imbalance_scan.yaml``).

Reads an ablation report (``report.json`` of :mod:`focal_plugin.ablation.report`): each ``best``
claim contributes one point, x = binary negatives per positive anchor of the claimed row's data
(the report's per-row imbalance), y = the claimed row's metric minus its strongest rival's (the
claim's ``margin``: for the scan, FL minus the best α-balanced CE, in AP points), with the seed
noise of that gap (half the width of its 95 % Welch interval, :mod:`focal_plugin.analysis.seed_stats`)
when both rows have two or more seeds.
"""

from __future__ import annotations

import csv
import json
from typing import Any, Dict, List, Optional, Sequence

from focal_plugin.io import atomic_write, write_figure_atomic, write_text_atomic

COLUMNS = ("claim", "row", "rival", "x", "negatives_per_positive", "metric", "gap", "noise", "diverged",
           "pending", "lower_wins", "note", "verdict")


def _fmt_x(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def _row_note(entry: Dict[str, Any], metric: str) -> str:
    """What the gap leaves out about the claimed row: seeds that diverged, seeds without a value."""
    finished, diverged = entry.get("seeds_finished") or 0, len(entry.get("diverged_at") or [])
    n = (entry.get(metric) or {}).get("n") or 0
    parts = []
    if 0 < diverged < finished:
        parts.append(f"{diverged} of {finished} seeds diverged")
    if finished - diverged > n:
        parts.append(f"{finished - diverged - n} seed(s) without {metric}")
    return "; ".join(parts)


def gap_points(report: Dict[str, Any], x_column: Optional[str] = None) -> List[Dict[str, Any]]:
    """One dict per ``best`` claim of ``report`` (keys :data:`COLUMNS`), sorted by ``x``: the
    binary negatives per positive of the claimed row's data, or with ``x_column`` that setting of
    the claimed row (e.g. the schedule scan's ``iterations``).

    ``gap`` is None while the claim's rows have not run (``diverged`` says when a side has no
    value because it diverged); ``pending`` lists the rivals not finished yet (the gap is then
    against the finished ones only: a pending rival may still be stronger); ``lower_wins`` marks
    a claim whose strongest rival is the lowest one ("α = .10 is the worst": a negative gap
    supports it). Raises ``ValueError`` when ``report`` is not an ablation report or has no
    ``best`` claim, when it has no imbalance figures (computed with ``--no-imbalance``, or the
    data was missing), when ``x_column`` is not a numeric column of the report, or when the
    report predates claim rows.
    """
    if not isinstance(report, dict) or not isinstance(report.get("claims"), list):
        raise ValueError("not an ablation report (no 'claims' list; tools/ablate.py writes report.json)")
    claims = [c for c in report["claims"] if isinstance(c, dict) and c.get("type") == "best"]
    if not claims:
        raise ValueError(f"report of {report.get('spec')!r} has no claim of type 'best' (each such claim "
                         "gives a point: its row minus the strongest rival); the scans' reports have them")
    imb = report.get("imbalance") or {}
    if x_column is not None and x_column not in report.get("columns", []):
        raise ValueError(f"report of {report.get('spec')!r} has no column {x_column!r} "
                         f"(columns: {report.get('columns')})")
    if x_column is None and not imb.get("available"):
        raise ValueError(f"report of {report.get('spec')!r} has no imbalance figures "
                         f"({imb.get('reason', 'not computed')}): rebuild it without --no-imbalance")
    by_row = imb.get("by_row") or {}
    table = {e.get("row"): e for e in report.get("table", []) if isinstance(e, dict)}
    points = []
    for c in claims:
        if "row" not in c:
            raise ValueError(f"report of {report.get('spec')!r} predates claim rows and margins: "
                             f"rebuild it (tools/ablate.py --spec {report.get('spec')} --report)")
        row, metric = c["row"], c.get("metric", "AP")
        margin = c.get("margin") or {}
        data = by_row.get(row) or imb.get("ours") or {}
        settings = (table.get(row) or {}).get("settings") or {}
        try:
            x = float(settings[x_column]) if x_column else data.get("negatives_per_positive")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"row {row!r}: setting {x_column!r} = {settings.get(x_column)!r} is not a "
                             "number") from e
        points.append({"claim": c["claim"], "row": row, "rival": margin.get("rival"), "x": x,
                       "negatives_per_positive": data.get("negatives_per_positive"),
                       "metric": metric, "gap": margin.get("diff"),
                       "noise": margin.get("noise"), "diverged": margin.get("diverged"),
                       "pending": list(margin.get("pending") or []),
                       "lower_wins": bool(margin.get("lower_wins")), "ran": bool(margin),
                       "note": _row_note(table.get(row) or {}, metric), "verdict": c.get("verdict")})
    return sorted(points, key=lambda p: (p["x"] is None, p["x"] or 0.0))


def _gap_text(p: Dict[str, Any]) -> tuple:
    if p["diverged"]:
        return {"row": "the row diverged", "rivals": "every rival diverged"}[p["diverged"]], "—"
    if p["gap"] is None:
        return ("not run" if not p.get("ran", True) else f"no {p['metric']} value"), "—"
    gap = f"{p['gap']:+.2f} {p['metric']}" + (" (lower wins)" if p.get("lower_wins") else "")
    noise = f"±{p['noise']:.2f}" if p["noise"] is not None else "unknown (one seed)"
    return gap, noise


def to_markdown(points: Sequence[Dict[str, Any]], title: str, x_label: str = "negatives / positive") -> str:
    lines = [f"# {title}", "", f"| {x_label} | claim | rival | gap | seed noise (95 % CI ±) | verdict |",
             "|---|---|---|---|---|---|"]
    for p in points:
        x = _fmt_x(p["x"]) if p["x"] is not None else "—"
        gap, noise = _gap_text(p)
        notes = [p["note"]] if p.get("note") else []
        if p.get("pending") and (p["gap"] is not None or p["diverged"]):
            notes.append(f"vs finished rivals only: {len(p['pending'])} pending ({', '.join(p['pending'])})")
        if notes:
            gap += f" ({'; '.join(notes)})"
        lines.append(f"| {x} | {p['claim']} | {p['rival'] or '—'} | {gap} | {noise} | {p['verdict']} |")
    lines += ["", "gap = the claimed row minus its strongest rival (mean over finished seeds); "
              "seed noise = half the width of the gap's 95 % Welch interval, unknown while either row "
              "has one seed; a verdict needs 3 seeds on both rows.", ""]
    return "\n".join(lines)


def write_outputs(points: Sequence[Dict[str, Any]], stem: str, title: str,
                  x_label: str = "binary negatives per positive anchor",
                  reference: Optional[Dict[str, Any]] = None) -> List[str]:
    """``<stem>.md``, ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png``; returns the paths.
    ``reference``: ``{"x", "label"}`` drawn as a vertical line (COCO's imbalance, from the report)."""
    paths = [f"{stem}.{ext}" for ext in ("md", "csv", "json", "png")]
    write_text_atomic(paths[0], to_markdown(points, title, x_label))

    def write_csv(f) -> None:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**p, "pending": ";".join(p.get("pending") or [])} for p in points)

    atomic_write(paths[1], write_csv)
    atomic_write(paths[2], lambda f: json.dump(list(points), f, indent=1))
    _plot(points, paths[3], title, x_label, reference)
    return paths


def _plot(points: Sequence[Dict[str, Any]], path: str, title: str, x_label: str,
          reference: Optional[Dict[str, Any]]) -> None:
    """The gap curve as a PNG: gap (claimed row minus strongest rival) against the level's x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [p for p in points if p["gap"] is not None and p["x"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(0.0, color="gray", lw=0.8)
    _draw_gaps(ax, points, done)
    if reference:
        ax.axvline(reference["x"], color="C3", ls="--", lw=0.8, label=reference["label"])
    _x_axis(ax, points, reference)
    ax.margins(y=0.15)
    ax.set_xlabel(x_label)
    metric = done[0]["metric"] if done else "AP"
    ax.set_ylabel(f"{metric}: claimed row − strongest rival")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax, points, done)
    fig.tight_layout()
    write_figure_atomic(fig, path, dpi=110)
    plt.close(fig)


def _draw_gaps(ax, points: Sequence[Dict[str, Any]], done: List[Dict[str, Any]]) -> None:
    """One point per level with a gap (bar: seed noise; hollow grey: rivals pending), joined by a
    line; a side that diverged at the plot's edge."""
    for p in done:
        final = not p.get("pending")  # else: against the finished rivals only, a pending one may be stronger
        color = ("C0" if p["noise"] is not None else "C1") if final else "C7"
        ax.errorbar(p["x"], p["gap"], yerr=p["noise"] or 0.0, fmt="o", color=color, capsize=3,
                    mfc=color if final else "none")
        ax.annotate(p["row"] + (" (lower wins)" if p.get("lower_wins") else ""), (p["x"], p["gap"]),
                    fontsize=7, textcoords="offset points", xytext=(4, 4))
    if len(done) > 1:
        ax.plot([p["x"] for p in done], [p["gap"] for p in done], color="C0", alpha=0.4)
    # a side with no value because it diverged: at the top (every rival diverged, the row won)
    # or the bottom (the row diverged) edge, x in data units
    for p in points:
        if p["diverged"] and p["x"]:
            up = p["diverged"] == "rivals"
            ax.plot(p["x"], 0.95 if up else 0.05, "^" if up else "v", color="C2" if up else "C3",
                    transform=ax.get_xaxis_transform(), clip_on=False)
            ax.annotate(p["row"], (p["x"], 0.95 if up else 0.05), xycoords=ax.get_xaxis_transform(),
                        fontsize=7, textcoords="offset points", xytext=(4, -3))


def _x_axis(ax, points: Sequence[Dict[str, Any]], reference: Optional[Dict[str, Any]]) -> None:
    """Log x with ticks at the measured levels (every level, run or not), in plain numbers: the log
    axis's own minor labels (3×10³ 4×10³ ...) collide."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    levels = sorted({p["x"] for p in points if p["x"]})
    ax.xaxis.set_minor_formatter(NullFormatter())
    if levels:
        labels = [_fmt_x(x) for x in levels]
        ax.set_xticks(levels, labels, fontsize=7, rotation=30)
        ends = levels + ([reference["x"]] if reference else [])
        ax.set_xlim(min(ends) / 1.25, max(ends) * 1.25)  # every level, run or not, and the reference


def _legend(ax, points: Sequence[Dict[str, Any]], done: List[Dict[str, Any]]) -> None:
    """The colour key (entries for the kinds of point present only)."""
    ax.plot([], [], "o", color="C0", label="≥ 2 seeds each (bar: seed noise)")
    ax.plot([], [], "o", color="C1", label="one seed (noise unknown)")
    if any(p.get("pending") for p in done):
        ax.plot([], [], "o", color="C7", mfc="none", label="rivals pending (vs finished ones only)")
    if any(p["diverged"] == "rivals" for p in points):
        ax.plot([], [], "^", color="C2", label="every rival diverged")
    if any(p["diverged"] == "row" for p in points):
        ax.plot([], [], "v", color="C3", label="the row diverged")
    ax.legend(fontsize=7, loc="best")


def coco_reference_line(report: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """COCO's negatives per positive at the paper's setting, as the report computed it (None if absent)."""
    coco = (report.get("imbalance") or {}).get("coco") or {}
    x = coco.get("negatives_per_positive")
    return {"x": x, "label": f"COCO at 600 px ({x:,.0f})"} if x else None


__all__ = ["COLUMNS", "coco_reference_line", "gap_points", "to_markdown", "write_outputs"]
