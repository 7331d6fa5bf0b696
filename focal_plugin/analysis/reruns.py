"""The same ablation cells run twice — in two output folders, on two machines — compared.

A cell is identified by its key (``ablation.identity.cell_key``: the resolved config and seed),
so a cell folder of one run and a folder with the same key in the other trained the same
config. :func:`compare_folders` pairs them and reports, per cell, both metrics, the weights'
sha256 and the CPU/GPU each ran on; per row (the cells' ``planned_by``) both sides' seeds, the
mean difference with its 95 % interval and p by Welch's t-test (the rerun is another draw when
the interval holds 0); and per pair of rows present on both sides the row difference on each
side (does a comparison the tables draw come out the same on both machines?).

Same weights' bytes and a deterministic cell mean the same result, bit for bit; other bytes (a
``focal-pretrained://`` backbone trained on another CPU model) make the rerun another draw of
the backbone, whose spread the seeds sample: the stated tolerance is then the seed noise.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence

from focal_plugin.analysis.seed_stats import RowStats, compare, paired, paired_text
from focal_plugin.io import read_json

CELLS_DIR = "cells"


def _finished(folder: str) -> Dict[str, Dict[str, Any]]:
    """``{key: {"row", "seed", "metrics", "weights", "device"}}`` of the done cells in ``folder``."""
    root = os.path.join(folder, CELLS_DIR)
    out = {}
    for key in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        status = read_json(os.path.join(root, key, "status.json")) or {}
        cell = read_json(os.path.join(root, key, "cell.json")) or {}
        if status.get("state") != "done" or not status.get("metrics"):
            continue
        device = status.get("device") or {}
        out[key] = {"row": cell.get("planned_by", "?"), "seed": cell.get("seed"),
                    "metrics": status["metrics"], "weights": (status.get("weights") or {}).get("sha256"),
                    "device": device.get("gpu") or device.get("cpu")}
    return out


def _by_seed(row: str, members: Sequence[Dict[str, Any]], side: str, metric: str) -> RowStats:
    values = {c["seed"]: c[side] for c in members if c[side] is not None}
    return RowStats(row, {metric: list(values.values())}, seeds=len(values), planned=len(values),
                    by_seed={metric: values})


def _row_stats(name: str, cells: Sequence[Dict[str, Any]], metric: str) -> RowStats:
    values = [c["metrics"][metric] for c in cells if metric in c["metrics"]]
    return RowStats(name, {metric: values}, seeds=len(values), planned=len(values))


def compare_folders(a: str, b: str, metric: str = "AP",
                    rows: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The cells finished in both folders ``a`` and ``b`` (optionally only ``rows``, as
    ``spec/row``), compared on ``metric``: ``{"cells", "rows", "row_pairs", "same_bytes"}``."""
    cells_a, cells_b = _finished(a), _finished(b)
    def value(cell):  # None for a metric the cell has no finite value of (APs without small objects)
        v = cell["metrics"].get(metric)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    keys = [k for k in cells_a if k in cells_b and (not rows or cells_b[k]["row"] in rows)
            and value(cells_a[k]) is not None and value(cells_b[k]) is not None]
    cells = [{"key": k, "row": cells_b[k]["row"], "seed": cells_b[k]["seed"],
              "a": value(cells_a[k]), "b": value(cells_b[k]),
              "same_weights": cells_a[k]["weights"] == cells_b[k]["weights"],
              "device_a": cells_a[k]["device"], "device_b": cells_b[k]["device"]} for k in keys]
    by_row: Dict[str, List[Dict[str, Any]]] = {}
    for c in cells:
        by_row.setdefault(c["row"], []).append(c)
    out_rows = {}
    for row, members in sorted(by_row.items()):
        sa = _row_stats(row, [{"metrics": {metric: c["a"]}} for c in members], metric)
        sb = _row_stats(row, [{"metrics": {metric: c["b"]}} for c in members], metric)
        cmp = compare(sb, sa, metric)  # b - a: the rerun minus the committed run
        out_rows[row] = {"n": len(members), "a": sa.values[metric], "b": sb.values[metric],
                         "mean_a": sa.mean(metric), "mean_b": sb.mean(metric), "std_a": sa.std(metric),
                         "std_b": sb.std(metric), "diff": cmp.diff, "ci": cmp.ci, "p": cmp.p,
                         "relation": cmp.relation}
    pairs = []
    for r1, r2 in itertools.combinations(sorted(by_row), 2):
        side = {}
        for s in ("a", "b"):
            s1, s2 = (_by_seed(r, by_row[r], s, metric) for r in (r1, r2))
            c = compare(s1, s2, metric)
            side[s] = {"diff": c.diff, "ci": c.ci, "p": c.p, "relation": c.relation,
                       "paired": paired(s1, s2, metric)}
        same = side["a"]["relation"] == side["b"]["relation"]
        pairs.append({"rows": [r1, r2], **side, "same_relation": same})
    return {"metric": metric, "a": a, "b": b, "only_rows": list(rows or []), "cells": cells, "rows": out_rows,
            "row_pairs": pairs,
            "same_bytes": bool(cells) and all(c["same_weights"] for c in cells),
            "bitwise_equal": bool(cells) and all(c["a"] == c["b"] for c in cells)}


def _num(v: Optional[float], fmt: str = "{:+.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def _ci(ci) -> str:
    return "—" if not ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def to_markdown(result: Dict[str, Any], title: str) -> str:
    """The comparison as Markdown: cells, rows (Welch's rerun − committed) and row pairs."""
    m = result["metric"]
    lines = [f"# {title}", "", f"`{result['a']}` (a, committed) vs `{result['b']}` (b, re-run); metric {m}.",
             "Weights: " + ("the same bytes in every pair." if result["same_bytes"] else
                            "other bytes in some pairs (another build of the backbone): b is another draw."),
             "", f"| cell | row | seed | {m} a | {m} b | b − a | same weights | device a | device b |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in result["cells"]:
        d = None if c["a"] is None or c["b"] is None else c["b"] - c["a"]
        lines.append(f"| `{c['key']}` | {c['row']} | {c['seed']} | {_num(c['a'], '{:.2f}')} | "
                     f"{_num(c['b'], '{:.2f}')} | {_num(d)} | {'yes' if c['same_weights'] else 'no'} | "
                     f"{c['device_a']} | {c['device_b']} |")
    lines += ["", "Per row, b − a by Welch's t (95 % CI; the rerun is another draw where the interval "
              "holds 0):", "", "| row | seeds | a mean ± sd | b mean ± sd | b − a | 95 % CI | p |",
              "|---|---|---|---|---|---|---|"]
    for row, r in result["rows"].items():
        lines.append(f"| {row} | {r['n']} | {_num(r['mean_a'], '{:.2f}')} ± {_num(r['std_a'], '{:.2f}')} | "
                     f"{_num(r['mean_b'], '{:.2f}')} ± {_num(r['std_b'], '{:.2f}')} | {_num(r['diff'])} | "
                     f"{_ci(r['ci'])} | {_num(r['p'], '{:.2f}')} |")
    if result["row_pairs"]:
        lines += ["", "Row differences on each side (first row − second, Welch):", "",
                  "| rows | a: diff, 95 % CI | b: diff, 95 % CI | same outcome | a: paired by seed | "
                  "b: paired by seed |", "|---|---|---|---|---|---|"]
        for p in result["row_pairs"]:
            lines.append(f"| {p['rows'][0]} − {p['rows'][1]} | {_num(p['a']['diff'])}, {_ci(p['a']['ci'])} "
                         f"({p['a']['relation']}) | {_num(p['b']['diff'])}, {_ci(p['b']['ci'])} "
                         f"({p['b']['relation']}) | {'yes' if p['same_relation'] else 'no'} | "
                         f"{paired_text(p['a']['paired'])} | {paired_text(p['b']['paired'])} |")
    spreads = [r["std_a"] for r in result["rows"].values() if r["std_a"] is not None]
    if spreads:
        lines += ["", f"Seed SD on side a, median over rows: {statistics.median(spreads):.2f} {m}."]
    return "\n".join(lines) + "\n"
