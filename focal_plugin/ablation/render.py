"""A report (``build_report``'s dict) as Markdown (the paper's table layout) and CSV."""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Dict, Optional

from focal_plugin.ablation.spec import METRIC_LABELS

_IMBALANCE_ROWS = (("anchors / image", "anchors_per_image", "{:,.0f}"),
                   ("classes K", "num_classes", "{:d}"),
                   ("positive anchors / image", "positive_anchors_per_image", "{:,.1f}"),
                   ("anchors x classes per positive anchor", "anchor_classes_per_positive", "{:,.0f}"),
                   ("binary negatives per positive", "negatives_per_positive", "{:,.0f}"))


def _num(v: Optional[float], digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _md_code(text: str) -> str:
    """``text`` as an inline code span that survives a table cell: double backticks (a single one
    inside stays literal), pipes escaped, line breaks shown as ⏎ (report.json has the exact text)."""
    return "`` " + _md_escape(text).replace("\n", "⏎") + " ``"


def to_markdown(report: Dict[str, Any]) -> str:
    metrics, env = report["metrics"], report["environment"]
    labels = [METRIC_LABELS[m] for m in metrics]
    lines = [f"# {report['title']} — ours vs paper", ""]
    if env.get("label"):
        lines += [f"> **{env['label']}**", ""]
    lines += [f"- Paper setting: {report['source'] or '—'}",
              f"- Our scale: **{env['scale']}**; seeds per row: {env['seeds']}; "
              f"spec: `{_rel(report['spec_file'])}`"]
    if env.get("base_config_override"):
        lines.append(f"- Base config replaced by `{_rel(env['base_config_override'])}` (--base-config)")
    if env.get("extra_opts"):
        lines.append(f"- Extra overrides on every cell: `{' '.join(env['extra_opts'])}`")
    # a study the paper did not run (the imbalance scan) has no paper or Δ columns
    has_paper = any(e["metrics"][m]["paper"] is not None or e["paper_note"]
                    for e in report["table"] for m in metrics)
    if env["scale"] != "paper" and has_paper:
        lines.append("- Δ compares our synthetic-data numbers with the paper's COCO numbers: read the "
                     "trends and the verdicts, not the size of Δ.")
    lines.append("")
    by_row = report["imbalance"].get("by_row") or {}
    counts = sorted({r["images"] for r in by_row.values() if r.get("images")})
    measured = f"measured, {' / '.join(map(str, counts))} train images" if counts else "measured"
    header = [*report["columns"], *([f"negatives / positive ({measured})"] if by_row else []), *labels]
    if has_paper:
        header += [*[f"{x} (paper)" for x in labels], *[f"Δ{x}" for x in labels]]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for e in report["table"]:
        ours = []
        for m in metrics:
            t = e["metrics"][m]["ours_text"]
            ours.append(f"**{t}**" if e["metrics"][m]["best_ours"] else t)
        paper = []
        for m in metrics:
            p = e["metrics"][m]["paper"]
            t = _num(p) if p is not None else (e["paper_note"] or "—")
            paper.append(f"**{t}**" if e["metrics"][m]["best_paper"] else t)
        delta = [f"{e['metrics'][m]['delta']:+.1f}" if e["metrics"][m]["delta"] is not None else "—"
                 for m in metrics]
        settings = [_md_escape(e["settings"].get(c, "")) for c in report["columns"]]
        if by_row:
            settings.append(_fmt((by_row.get(e["row"]) or {}).get("negatives_per_positive"), "{:,.0f}"))
        lines.append("| " + " | ".join([*settings, *ours, *((*paper, *delta) if has_paper else ())]) + " |")
    lines += ["", "Bold: the best value per column (highest AP, lowest ms/img). Ours: mean ± sample std over "
              "the finished seeds. ms/img: median batch-1 inference time after warm-up on our device "
              "(the paper: Nvidia M40)." if "ms" in metrics else
              "Bold: the best value per column. Ours: mean ± sample std over the finished seeds."]
    if report.get("note"):
        lines += ["", report["note"]]
    lines += ["", "## The paper's claims", "",
              "Verdict: *reproduced* / *not reproduced* when the gap exceeds the seed noise "
              "(2·sqrt(s²/n + s²/n)); *inconclusive* when it does not, or with one seed; *no data* "
              "while a row the claim names has not run (a claim over several rows waits for all of "
              "them, unless the finished ones already refute it).", "",
              "| claim | paper | ours | verdict |", "|---|---|---|---|"]
    for c in report["claims"]:
        lines.append(f"| {_md_escape(c['claim'])} | {_md_escape(c['paper'])} | {_md_escape(c['ours'])} | "
                     f"**{c['verdict']}** |")
    if not report["claims"]:
        lines.append("| (none stated) | | | |")
    lines += ["", "## Class imbalance of the data", ""]
    imb = report["imbalance"]
    if imb.get("available"):
        o, c = imb["ours"], imb["coco"]
        lines += [f"| | {_md_escape(o['dataset'])} ({o['images']} images) | {_md_escape(c['dataset'])} |",
                  "|---|---|---|"]
        for label, key, fmt in _IMBALANCE_ROWS:
            lines.append(f"| {label} | {_fmt(o.get(key), fmt)} | {_fmt(c.get(key), fmt)} |")
        if by_row:
            lines += ["", "The rows train on different data, anchors, sizes or matching; per row:", "",
                      "| row | dataset | " + " | ".join(label for label, _, _ in _IMBALANCE_ROWS) + " |",
                      "|---|---|" + "---|" * len(_IMBALANCE_ROWS)]
            for row, r in by_row.items():
                if "error" in r:
                    lines.append(f"| {_md_escape(row)} | n/a: {_md_escape(r['error'])} |")
                    continue
                lines.append(f"| {_md_escape(row)} | {_md_escape(r['dataset'])} | "
                             + " | ".join(_fmt(r.get(key), fmt) for _, key, fmt in _IMBALANCE_ROWS) + " |")
    else:
        lines.append(f"n/a: {imb.get('reason', 'not computed')}")
    lines += ["", "## Environment", "",
              f"- Scale: {env['scale']}; seeds: {env['seeds']}; "
              f"launcher(s): {', '.join(env['launchers']) or '—'}",
              f"- Device(s): {'; '.join(env['devices']) or '—'}",
              f"- Commit(s): {', '.join(env['commits']) or '—'}; host(s): {', '.join(env['hosts']) or '—'}",
              ""]
    # a run that found every cell finished and took nothing from other specs changed nothing
    no_ops = [r for r in env.get("invocations") or []
              if r["ended"] and r["to_run"] == 0 and r.get("reused") == 0]
    if env.get("invocations"):
        lines += ["| runner started | launcher | cells to run | outcome | command |", "|---|---|---|---|---|"]
        for r in env["invocations"]:
            if r in no_ops:
                continue
            outcome = (", ".join(f"{n} {s}" for s, n in sorted(r["states"].items())) if r["states"]
                       else "none recorded") if r["ended"] else "running" if r.get("running") \
                else "no end recorded: killed or crashed"
            lines.append(f"| {r['started']} (pid {r['pid']}) | {r['launcher']} (workers {r['workers']}) | "
                         f"{r['to_run']} of {r['cells']} | {outcome} | {_md_code(r['command'])} |")
        if no_ops:
            lines.append(f"\n{len(no_ops)} more invocation(s) found every cell finished and changed nothing "
                         f"(report.json lists them).")
        lines.append("")
    lines += ["| cell | state | wall time (s, last attempt) | attempts | resumed from iter | iterations "
              "| device |",
              "|---|---|---|---|---|---|---|"]
    for c in env["cells"]:
        wall = f"{c['wall_time_s']:.1f}" if c.get("wall_time_s") is not None else "—"
        state = c["state"] + (f" (result of {c['reused_from']})" if c.get("reused_from") else
                              f" (weights of {c['trained_by']})" if c.get("trained_by") else "")
        lines.append(f"| {c['cell']} | {_md_escape(state)} | {wall} | {c.get('attempts') or '—'} | "
                     f"{c.get('resumed_from_iter') if c.get('resumed_from_iter') is not None else '—'} | "
                     f"{c.get('iterations') if c.get('iterations') is not None else '—'} | "
                     f"{_md_escape(c.get('device') or '—')} |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any, fmt: str) -> str:
    if v is None:
        return "—"
    try:
        return fmt.format(int(v) if fmt == "{:d}" else v)
    except (TypeError, ValueError):
        return str(v)


def _rel(path: str) -> str:
    from focal_plugin.configs import CONFIG_ROOT

    path = str(path)
    return "configs/" + os.path.relpath(path, CONFIG_ROOT) if path.startswith(CONFIG_ROOT) else path


def to_csv(report: Dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    metrics = report["metrics"]
    by_row = report["imbalance"].get("by_row") or {}
    header = ["row", *report["columns"], *(["negatives_per_positive"] if by_row else [])]
    for m in metrics:
        header += [f"{m}_ours", f"{m}_std", f"{m}_n", f"{m}_paper", f"{m}_delta"]
    header += ["seeds_finished", "seeds_planned", "diverged_at", "best_ours", "best_paper", "paper_note"]
    w.writerow(header)
    for e in report["table"]:
        line = [e["row"], *[e["settings"].get(c, "") for c in report["columns"]]]
        if by_row:
            line.append(_csv_num((by_row.get(e["row"]) or {}).get("negatives_per_positive")))
        for m in metrics:
            x = e["metrics"][m]
            line += [_csv_num(x["ours"]), _csv_num(x["std"]), x["n"], _csv_num(x["paper"]),
                     _csv_num(x["delta"])]
        line += [e["seeds_finished"], e["seeds_planned"], ";".join(map(str, e["diverged_at"])),
                 ";".join(m for m in metrics if e["metrics"][m]["best_ours"]),
                 ";".join(m for m in metrics if e["metrics"][m]["best_paper"]), e["paper_note"]]
        w.writerow(line)
    return buf.getvalue()


def _csv_num(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.4g}" if abs(v) < 1e-3 else f"{v:.3f}"


__all__ = ["to_csv", "to_markdown"]
