"""Figure 2-style speed/accuracy plot: inference time (ms/image) vs AP, one curve per backbone
over input scales, our measurements beside the paper's Table 1e.

Our points come from a report of the ablation runner (``report.json`` / ``report.csv`` of a
Table 1e or Table 2 run, see ``focal_plugin.ablation.report``) or from any CSV with columns
``depth, scale, AP, ms`` (``ms_per_image`` or ``time`` are accepted for ``ms``). The paper's
points (Table 1e: ResNet-50/101-FPN at 400-800 px, COCO test-dev, Nvidia M40) are built in.

A point is a dict ``{"series", "label", "AP", "ms"}``: ``series`` names the curve (e.g. "R50"),
``label`` the point (e.g. the scale "600").
"""

from __future__ import annotations

import csv
import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

Point = Dict[str, Any]

#: Table 1e of the paper: (depth, scale, AP, ms/image on an Nvidia M40), COCO test-dev
PAPER_TABLE1E: Tuple[Tuple[int, int, float, float], ...] = (
    (50, 400, 30.5, 64), (50, 500, 32.5, 72), (50, 600, 34.3, 98), (50, 700, 35.1, 121),
    (50, 800, 35.7, 153), (101, 400, 31.9, 81), (101, 500, 34.4, 90), (101, 600, 36.0, 122),
    (101, 700, 37.1, 154), (101, 800, 37.8, 198),
)

_MS_COLUMNS = ("ms", "ms_per_image", "ms/img", "time")


def paper_points() -> List[Point]:
    """The paper's Table 1e as points, series "R50" / "R101", labels the scales."""
    return [{"series": f"R{d}", "label": str(s), "AP": ap, "ms": float(ms)} for d, s, ap, ms in PAPER_TABLE1E]


def _number(v: Any) -> Optional[float]:
    if isinstance(v, dict):  # a report's metric cell
        v = v.get("ours")
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _point(settings: Dict[str, Any], ap: Any, ms: Any) -> Optional[Point]:
    ap, ms = _number(ap), _number(ms)
    if ap is None or ms is None:
        return None
    depth = settings.get("depth")
    if depth not in (None, ""):
        series = f"R{int(float(depth))}" if str(depth).replace(".", "", 1).isdigit() else str(depth)
        label = str(settings.get("scale", ""))
    else:  # Table 2: method / backbone columns
        series = " ".join(str(v) for v in settings.values() if v not in (None, "")) or "ours"
        label = ""
    return {"series": series, "label": label, "AP": ap, "ms": ms}


def read_points(path: str) -> Tuple[List[Point], Dict[str, Any]]:
    """Our points from a report (``report.json``/``report.csv``) or a ``depth,scale,AP,ms`` CSV,
    and what is known of the run (``{"scale", "devices", "title"}``). Rows without both AP and
    ms (pending, diverged) are left out. Raises ValueError naming the file when it holds neither."""
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        rows = data.get("table") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a report with a 'table' list or a list of rows")
        points = []
        for r in rows:
            if "metrics" in r:  # ablation report entry
                p = _point(r.get("settings", {}), r["metrics"].get("AP"), r["metrics"].get("ms"))
            else:
                p = _point(r, r.get("AP"), next((r[c] for c in _MS_COLUMNS if c in r), None))
            if p:
                points.append(p)
        env = data.get("environment", {}) if isinstance(data, dict) else {}
        info = {"scale": env.get("scale"), "devices": env.get("devices", []),
                "title": data.get("title") if isinstance(data, dict) else None}
        return points, info
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return [], {}
    cols = rows[0].keys()
    ap_col = "AP_ours" if "AP_ours" in cols else "AP" if "AP" in cols else None
    ms_col = "ms_ours" if "ms_ours" in cols else next((c for c in _MS_COLUMNS if c in cols), None)
    if ap_col is None or ms_col is None:
        raise ValueError(f"{path}: needs an AP column (AP or AP_ours) and a time column "
                         f"({', '.join(_MS_COLUMNS)} or ms_ours); it has {list(cols)}")
    skip = {"row", ap_col, ms_col}
    points = []
    for r in rows:
        settings = {k: v for k, v in r.items() if k in ("depth", "scale")} or \
                   {k: v for k, v in r.items() if k not in skip and "_" not in k}
        p = _point(settings, r[ap_col], r[ms_col])
        if p:
            points.append(p)
    return points, {}


def _draw_series(ax, points: Sequence[Point], style: Dict[str, Any], name: str) -> None:
    series: Dict[str, List[Point]] = {}
    for p in points:
        series.setdefault(p["series"], []).append(p)
    for s, pts in series.items():
        pts = sorted(pts, key=lambda p: p["ms"])
        ax.plot([p["ms"] for p in pts], [p["AP"] for p in pts], label=f"{name} {s}", **style)
        for p in pts:
            if p["label"]:
                ax.annotate(p["label"], (p["ms"], p["AP"]), textcoords="offset points", xytext=(4, -10),
                            fontsize=7)


_PAPER_STYLE = {"linestyle": "--", "marker": "o", "markerfacecolor": "none", "linewidth": 1.4}
_OURS_STYLE = {"linestyle": "-", "marker": "s", "linewidth": 1.8}


def plot_speed_accuracy(ours: Sequence[Point], path_stem: str, formats: Sequence[str] = ("png",),
                        paper: Sequence[Point] | None = None, same_axes: bool = False,
                        ours_note: str = "", title: str = "") -> List[str]:
    """Figure 2 style: ms/image (x) vs AP (y). The paper's points (default Table 1e) dashed with
    hollow markers and labelled "paper"; ours solid, labelled "ours". Side by side (two panels, as
    the scales of synthetic CPU runs and COCO GPU runs differ) unless ``same_axes``."""
    from matplotlib.figure import Figure

    from focal_plugin.analysis.curves import save_figure

    paper = paper_points() if paper is None else list(paper)
    panels = 1 if same_axes or not ours else 2
    fig = Figure(figsize=(5.5 * panels, 4.4), layout="constrained")
    axes = list(fig.subplots(1, panels)) if panels == 2 else [fig.add_subplot(1, 1, 1)]
    _draw_series(axes[0], paper, _PAPER_STYLE, "paper")
    paper_title = "paper: Table 1e (COCO test-dev, Nvidia M40)"
    axes[0].set_title(paper_title + (" and ours" if ours and panels == 1 else ""), fontsize=9)
    if ours:
        ax = axes[-1]
        _draw_series(ax, ours, _OURS_STYLE, "ours")
        if panels == 2:
            ax.set_title("ours" + (f": {ours_note}" if ours_note else ""), fontsize=9)
    else:
        axes[0].text(0.02, 0.98, "ours: no finished rows with AP and ms/img", transform=axes[0].transAxes,
                     ha="left", va="top", fontsize=8, color="gray")
    for ax in axes:
        ax.set(xlabel="inference time (ms/image)", ylabel="AP")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title or "Fig. 2 style: speed vs accuracy (labels: input scale, px)", fontsize=10)
    return save_figure(fig, path_stem, formats)
