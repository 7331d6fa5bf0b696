"""A report (``report.build_report``'s dict) as Markdown (the paper's table layout) and CSV."""

from __future__ import annotations

import csv
import io
from typing import Any, Dict, List, Optional

from tabulate import tabulate

from focal_plugin.analysis.imbalance_table import FIGURES
from focal_plugin.analysis.seed_stats import METRIC_LABELS, paired_text
from focal_plugin.configs import config_name

VERDICT_RULE = ("Verdict: *reproduced* / *not reproduced* when Welch's t-test decides it: the 95 % "
                "interval of the difference excludes the claim's boundary (0, or ±tol for *similar*; a "
                "stated size must lie inside it), with at least 3 seeds on every row compared; "
                "*inconclusive* when the interval does not decide, or with fewer seeds; *no data* while a "
                "row the claim names has not run (a claim over several rows waits for all of them, unless "
                "the finished ones already refute it).")
PAIRED_RULE = ("The paired column is supplementary and decides nothing: the claimed row minus its rival "
               "seed by seed (a seed fixes the backbone a cell starts from and its data order), by the "
               "paired t-test over the seeds both rows finished.")


def _md(rows: List[List[Any]], header: List[str]) -> List[str]:
    """A GitHub Markdown table; pipes inside cells escaped."""
    esc = [[str(x).replace("|", "\\|") for x in r] for r in rows]
    return tabulate(esc, headers=[h.replace("|", "\\|") for h in header], tablefmt="github",
                    disable_numparse=True).splitlines()


def _fmt(v: Any, fmt: str) -> str:
    if v is None:
        return "—"
    try:
        return fmt.format(int(v) if fmt == "{:d}" else v)
    except (TypeError, ValueError):
        return str(v)


def _rel(path: str) -> str:
    return "configs/" + config_name(path) if config_name(path) != path else path


def _bold(text: str, on: bool) -> str:
    return f"**{text}**" if on else text


def _has_paper(report: Dict[str, Any]) -> bool:
    """A study the paper did not run (the imbalance scan) has no paper or Δ columns."""
    return any(e["metrics"][m]["paper"] is not None or e["paper_note"]
               for e in report["table"] for m in report["metrics"])


def _header(report: Dict[str, Any]) -> List[str]:
    env = report["environment"]
    lines = [f"# {report['title']} — ours vs paper", ""]
    if env.get("label"):
        lines += [f"> **{env['label']}**", ""]
    lines += [f"- Paper setting: {report['source'] or '—'}",
              f"- Our scale: **{env['scale']}**; seeds per row: up to {env['seeds']}; "
              f"spec: `{_rel(report['spec_file'])}`"]
    if env.get("base_config_override"):
        lines.append(f"- Base config replaced by `{_rel(env['base_config_override'])}` (--base-config)")
    if env.get("extra_opts"):
        lines.append(f"- Extra overrides on every cell: `{' '.join(env['extra_opts'])}`")
    if env["scale"] != "paper" and _has_paper(report):
        lines.append("- Δ compares our synthetic-data numbers with the paper's COCO numbers: read the "
                     "trends and the verdicts, not the size of Δ.")
    return lines + [""]


def _results_table(report: Dict[str, Any]) -> List[str]:
    metrics, labels = report["metrics"], [METRIC_LABELS[m] for m in report["metrics"]]
    by_row = report["imbalance"].get("by_row") or {}
    has_paper = _has_paper(report)
    counts = sorted({r["images"] for r in by_row.values() if r.get("images")})
    measured = f"measured, {' / '.join(map(str, counts))} train images" if counts else "measured"
    header = [*report["columns"], *([f"negatives / positive ({measured})"] if by_row else []), *labels]
    header += [*[f"{x} (paper)" for x in labels], *[f"Δ{x}" for x in labels]] if has_paper else []
    rows = []
    for e in report["table"]:
        x = e["metrics"]
        line = [e["settings"].get(c, "") for c in report["columns"]]
        if by_row:
            line.append(_fmt((by_row.get(e["row"]) or {}).get("negatives_per_positive"), "{:,.0f}"))
        line += [_bold(x[m]["ours_text"], x[m]["best_ours"]) for m in metrics]
        if has_paper:
            line += [_bold(_fmt(x[m]["paper"], "{:.1f}") if x[m]["paper"] is not None
                           else e["paper_note"] or "—", x[m]["best_paper"]) for m in metrics]
            line += [_fmt(x[m]["delta"], "{:+.1f}") for m in metrics]
        rows.append(line)
    note = ("Bold: the best value per column (highest AP, lowest ms/img). Ours: mean ± sample std over the "
            "finished seeds. ms/img: median batch-1 inference time after warm-up on our device (the paper: "
            "Nvidia M40)." if "ms" in metrics else
            "Bold: the best value per column. Ours: mean ± sample std over the finished seeds.")
    return _md(rows, header) + ["", note] + (["", report["note"]] if report.get("note") else [])


def _claims(report: Dict[str, Any]) -> List[str]:
    rows = [[c["claim"], c["paper"], c["ours"], f"**{c['verdict']}**", _paired(c)] for c in report["claims"]]
    return ["", "## The paper's claims", "", VERDICT_RULE, PAIRED_RULE, ""] + \
        _md(rows or [["(none stated)", "", "", "", ""]],
            ["claim", "paper", "ours", "verdict", "paired by seed (supplementary)"])


def _paired(claim: Dict[str, Any]) -> str:
    p = claim.get("paired")
    return "—" if not p or "diff" not in p else f"{claim['row']} − {p['vs']}: {paired_text(p)}"


def _imbalance(report: Dict[str, Any]) -> List[str]:
    imb = report["imbalance"]
    lines = ["", "## Class imbalance of the data", ""]
    if not imb.get("available"):
        return lines + [f"n/a: {imb.get('reason', 'not computed')}"]
    o, c = imb["ours"], imb["coco"]
    lines += _md([[label, _fmt(o.get(k), f), _fmt(c.get(k), f)] for label, k, f in FIGURES],
                 ["", f"{o['dataset']} ({o['images']} images)", str(c["dataset"])])
    by_row = imb.get("by_row") or {}
    if by_row:
        rows = [[row, f"n/a: {r['error']}"] + [""] * len(FIGURES) if "error" in r else
                [row, r["dataset"], *[_fmt(r.get(k), f) for _, k, f in FIGURES]]
                for row, r in by_row.items()]
        lines += ["", "The rows train on different data, anchors, sizes or matching; per row:", ""]
        lines += _md(rows, ["row", "dataset", *[label for label, _, _ in FIGURES]])
    return lines


def _environment(report: Dict[str, Any]) -> List[str]:
    env = report["environment"]
    lines = ["", "## Environment", "", f"- Scale: {env['scale']}; seeds: up to {env['seeds']}",
             f"- Device(s): {'; '.join(env['devices']) or '—'}",
             f"- Commit(s): {', '.join(env['commits']) or '—'}; "
             f"host(s): {', '.join(env['hosts']) or '—'}", *([f"- Weights: {'; '.join(env['weights'])}"]
                                                             if env.get("weights") else []), ""]
    runs = [r for r in env.get("invocations") or [] if not (r["ended"] and r["to_run"] == 0)]
    if runs:
        lines += _md([[f"{r['started']} (pid {r['pid']})", r["launcher"], f"{r['to_run']} of {r['cells']}",
                       _outcome(r), "`` " + r["command"].replace("\n", "⏎") + " ``"] for r in runs],
                     ["runner started", "launcher", "cells to run", "outcome", "command"])
        skipped = len(env["invocations"]) - len(runs)
        lines += [f"\n{skipped} more invocation(s) found every cell finished (report.json lists them)."
                  if skipped else "", ""]
    rows = [[c["cell"], c["key"], c["state"], _fmt(c.get("wall_time_s"), "{:.1f}"), c.get("attempts") or "—",
             _fmt(c.get("resumed_from_iter"), "{}"), _fmt(c.get("iterations"), "{}"), c.get("device") or "—"]
            for c in env["cells"]]
    return lines + _md(rows, ["cell", "folder (cells/)", "state", "wall time (s, last attempt)", "attempts",
                              "resumed from iter", "iterations", "device"])


def _outcome(r: Dict[str, Any]) -> str:
    if r["ended"]:
        states = sorted((r["states"] or {}).items())
        return ", ".join(f"{n} {s}" for s, n in states) if states else "none recorded"
    return "running" if r.get("running") else "no end recorded: killed or crashed"


def to_markdown(report: Dict[str, Any]) -> str:
    parts = _header(report) + _results_table(report) + _claims(report) + _imbalance(report)
    return "\n".join(parts + _environment(report)) + "\n"


def to_csv(report: Dict[str, Any]) -> str:
    """One line per row: settings, then per metric ours / std / n / paper / delta, then seeds."""
    metrics, by_row = report["metrics"], report["imbalance"].get("by_row") or {}
    lines = []
    for e in report["table"]:
        line = {"row": e["row"], **{c: e["settings"].get(c, "") for c in report["columns"]}}
        if by_row:
            neg = (by_row.get(e["row"]) or {}).get("negatives_per_positive")
            line["negatives_per_positive"] = _csv_num(neg)
        for m in metrics:
            x = e["metrics"][m]
            line.update({f"{m}_ours": _csv_num(x["ours"]), f"{m}_std": _csv_num(x["std"]), f"{m}_n": x["n"],
                         f"{m}_paper": _csv_num(x["paper"]), f"{m}_delta": _csv_num(x["delta"])})
        line.update(seeds_finished=e["seeds_finished"], seeds_planned=e["seeds_planned"],
                    diverged_at=";".join(map(str, e["diverged_at"])),
                    best_ours=";".join(m for m in metrics if e["metrics"][m]["best_ours"]),
                    best_paper=";".join(m for m in metrics if e["metrics"][m]["best_paper"]),
                    paper_note=e["paper_note"])
        lines.append(line)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(lines[0]) if lines else ["row"])
    w.writeheader()
    w.writerows(lines)
    return buf.getvalue()


def _csv_num(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.4g}" if abs(v) < 1e-3 else f"{v:.3f}"
