"""Reports of a run laid out like the paper's tables: settings | ours | paper | Δ.

``write_reports`` reads the finished cells of a run folder (never trains) and writes
``report.md``, ``report.csv`` and ``report.json`` atomically:

- the table: each row's settings, our metrics (mean ± std over the finished seeds; "diverged at
  iteration N" for a row whose seeds all diverged), the paper's, and Δ = ours − paper; the best
  value per column in bold (highest AP, lowest ms), ours and the paper's alike;
- the paper's qualitative claims with our verdict (:mod:`focal_plugin.ablation.verdict`);
- the class imbalance of the data under the table's base config (anchors x classes per positive
  anchor) next to COCO's at the paper's setting;
- the environment: scale, seeds, device(s), commit(s), launcher, and the wall time per cell.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shlex
from typing import Any, Dict, List, Optional, Sequence

from focal_plugin.ablation import cell as cell_mod
from focal_plugin.ablation.files import read_json, write_json_atomic, write_text_atomic
from focal_plugin.ablation.spec import LOWER_IS_BETTER, METRIC_LABELS, RowPlan, Spec
from focal_plugin.ablation.verdict import RowStats, fmt_stat, judge

IMBALANCE_IMAGES = 50
_IMBALANCE_ROWS = (("anchors / image", "anchors_per_image", "{:,.0f}"),
                   ("classes K", "num_classes", "{:d}"),
                   ("positive anchors / image", "positive_anchors_per_image", "{:,.1f}"),
                   ("anchors x classes per positive anchor", "anchor_classes_per_positive", "{:,.0f}"),
                   ("binary negatives per positive", "negatives_per_positive", "{:,.0f}"))


# ------------------------------------------------------------------------------ collection
def collect(run_dir: str, rows: Sequence[RowPlan], metrics: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Per row: its :class:`RowStats` and the cells found on disk (definition + status)."""
    out: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        stats = RowStats(row.id)
        cells = []
        row_dir = os.path.join(run_dir, row.id)
        seeds = sorted((d for d in (os.listdir(row_dir) if os.path.isdir(row_dir) else [])
                        if d.startswith("seed") and d[4:].isdigit()), key=lambda d: int(d[4:]))
        for d in seeds:
            cdir = os.path.join(row_dir, d)
            definition = read_json(os.path.join(cdir, cell_mod.CELL_FILE))
            if definition is None:
                continue
            status = cell_mod.read_status(cdir)
            stats.planned += 1
            cells.append({"cell": f"{row.id}/{d}", "dir": cdir, "status": status})
            state = status.get("state")
            if state == "done":
                stats.seeds += 1
                for m in metrics:
                    v = (status.get("metrics") or {}).get(m)
                    if v is not None and math.isfinite(v):
                        stats.values.setdefault(m, []).append(float(v))
            elif state == "diverged":
                stats.seeds += 1
                stats.diverged_at.append(int(status.get("diverged_at", -1)))
        out[row.id] = {"stats": stats, "cells": cells}
    return out


def _best(values: Dict[str, Optional[float]], metric: str) -> List[str]:
    known = {k: v for k, v in values.items() if v is not None}
    if not known:
        return []
    pick = min(known.values()) if metric in LOWER_IS_BETTER else max(known.values())
    return [k for k, v in known.items() if abs(v - pick) < 1e-9]


def _ours_text(s: RowStats, metric: str) -> str:
    if s.planned == 0:
        return "not run"
    if s.seeds == 0:
        return "pending"
    if s.all_diverged:
        its = ", ".join(str(i) for i in s.diverged_at)
        return f"diverged at iteration {its}"
    text = fmt_stat(s, metric)
    k = len(s.diverged_at)
    if k:
        text += f" ({k}/{s.seeds} diverged)"
    if s.seeds < s.planned:
        text += f" ({s.seeds}/{s.planned} seeds)"
    return text


def _num(v: Optional[float], digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


# --------------------------------------------------------------------------------- imbalance
def imbalance(spec: Spec, scale: str, run_dir: str, base_config: Optional[str],
              extra_opts: Sequence[str]) -> Dict[str, Any]:
    """The data's class imbalance under the table's base config, cached in the run folder.

    Uses ``focal_plugin.analysis.imbalance`` (``imbalance_stats``/``coco_reference``); when that
    module cannot be imported or the data is missing, ``{"available": False, "reason"}``.
    """
    config_file, opts = spec.table_config(scale, base_config, extra_opts)
    key = {"config": config_file, "opts": opts, "images": IMBALANCE_IMAGES}
    cache = os.path.join(run_dir, "imbalance.json")
    cached = read_json(cache)
    if cached and cached.get("key") == key and cached.get("available"):
        return cached
    try:
        from focal_plugin.analysis.imbalance import coco_reference, imbalance_stats
    except ImportError as e:
        return {"available": False, "key": key,
                "reason": f"focal_plugin.analysis.imbalance is not importable ({e})"}
    try:
        from focal_plugin.engine import setup_cfg

        cfg = setup_cfg(config_file, opts)
        ours = imbalance_stats(cfg, cfg.DATASETS.TRAIN[0], max_images=IMBALANCE_IMAGES, with_coco=False)
        coco = coco_reference()
    except Exception as e:  # missing dataset (COCO at paper scale), etc.
        return {"available": False, "key": key, "reason": f"{type(e).__name__}: {e}"[:500]}
    out = {"available": True, "key": key, "ours": _imbalance_row(ours), "coco": _imbalance_row(coco)}
    write_json_atomic(cache, out)
    return out


def _imbalance_row(s: Dict[str, Any]) -> Dict[str, Any]:
    pos = s.get("positive_anchors_per_image") or 0.0
    anchors, k = s.get("anchors_per_image"), s.get("num_classes")
    return {"dataset": s.get("dataset"), "anchors_per_image": anchors, "num_classes": k,
            "positive_anchors_per_image": pos,
            "anchor_classes_per_positive": anchors * k / pos if pos and anchors and k else None,
            "negatives_per_positive": s.get("negatives_per_positive"),
            "images": s.get("num_images_used")}


# ---------------------------------------------------------------------------------- report
def build_report(spec: Spec, scale: str, run_dir: str, rows: Sequence[RowPlan],
                 base_config: Optional[str] = None, extra_opts: Sequence[str] = (),
                 with_imbalance: bool = True, label: Optional[str] = None) -> Dict[str, Any]:
    """The report as a plain dict (what ``report.json`` holds)."""
    metrics = spec.metrics
    found = collect(run_dir, rows, metrics)
    stats = {r: found[r]["stats"] for r in found}
    paper = {row.id: row.paper for row in rows}
    best_ours = {m: _best({r: stats[r].mean(m) if not stats[r].all_diverged else None for r in stats}, m)
                 for m in metrics}
    best_paper = {m: _best({r: paper[r].get(m) for r in paper}, m) for m in metrics}
    table = []
    for row in rows:
        s = stats[row.id]
        entry: Dict[str, Any] = {"row": row.id, "settings": row.settings, "paper_note": row.paper_note,
                                 **s.as_dict(metrics), "metrics": {}}
        for m in metrics:
            mean, p = s.mean(m), row.paper.get(m)
            entry["metrics"][m] = {
                "ours": None if s.all_diverged else mean, "std": s.std(m), "n": s.n(m),
                "ours_text": _ours_text(s, m), "paper": p,
                "delta": (mean - p) if mean is not None and p is not None and not s.all_diverged else None,
                "best_ours": row.id in best_ours[m], "best_paper": row.id in best_paper[m]}
        table.append(entry)
    claims = [judge(c, stats, paper) for c in spec.claims]
    history = _history(run_dir)
    starts = [h for h in history if h.get("event") == "start"]
    cells = [c for r in rows for c in found[r.id]["cells"]]
    env = {
        "scale": scale, "run_dir": run_dir,
        "seeds": max((stats[r.id].planned for r in rows), default=0),
        "base_config_override": base_config, "extra_opts": list(extra_opts),
        "launchers": sorted({f"{h.get('launcher')} (workers {h.get('workers')})" for h in starts}),
        "label": label or next((h["label"] for h in reversed(starts) if h.get("label")), None),
        "invocations": _invocations(history, spec.name, scale),
        "devices": sorted({_device_text(c["status"]) for c in cells if c["status"].get("device")}),
        "commits": sorted({c["status"].get("commit", "?") for c in cells if c["status"]}),
        "hosts": sorted({c["status"].get("host", "?") for c in cells if c["status"]}),
        "cells": [{"cell": c["cell"], "state": c["status"].get("state", "pending"),
                   "wall_time_s": c["status"].get("wall_time_s"), "attempts": c["status"].get("attempts"),
                   "resumed_from_iter": c["status"].get("resumed_from_iter"),
                   "iterations": c["status"].get("iterations"),
                   "device": _device_text(c["status"]) if c["status"].get("device") else None,
                   "commit": c["status"].get("commit"), "finished": c["status"].get("finished"),
                   "reused_from": c["status"].get("reused_from"), "trained_by": c["status"].get("trained_by")}
                  for c in cells],
        "runs": history[-20:],
    }
    return {"spec": spec.name, "spec_file": spec.path, "title": spec.title, "source": spec.source,
            "note": spec.note, "columns": spec.columns, "metrics": metrics, "table": table, "claims": claims,
            "imbalance": imbalance(spec, scale, run_dir, base_config, extra_opts) if with_imbalance
            else {"available": False, "reason": "not computed"},
            "environment": env}


def _history(run_dir: str) -> List[Dict[str, Any]]:
    import json

    path = os.path.join(run_dir, "runs.jsonl")
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut by a kill: skip it
                continue
    return out


def ablate_command(start: Dict[str, Any], spec: str, scale: str) -> str:
    """The ``tools/ablate.py`` command equivalent to a runner start event of ``runs.jsonl``
    (events written before the runner recorded spec, scale and output folder fall back to the
    report's spec and scale, and omit the folder)."""
    parts = ["python", "tools/ablate.py", "--spec", start.get("spec") or spec,
             "--scale", start.get("scale") or scale]
    if (start.get("seeds") or 1) != 1:
        parts += ["--seeds", str(start["seeds"])]
    if start.get("only"):
        parts += ["--only", *start["only"]]
    if start.get("launcher", "local") != "local":
        parts += ["--launcher", start["launcher"]]
    if start.get("workers") is not None:
        parts += ["--workers", str(start["workers"])]
    if (start.get("gpus_per_cell") or 1) != 1:
        parts += ["--gpus-per-cell", str(start["gpus_per_cell"])]
    if start.get("output_dir"):
        parts += ["--output-dir", start["output_dir"]]
    if start.get("base_config"):
        parts += ["--base-config", start["base_config"]]
    if start.get("label"):
        parts += ["--label", start["label"]]
    if start.get("reuse") is False:
        parts.append("--no-reuse")
    if start.get("train_fn"):  # a callable (tests, in-process runs) is named, not importable
        parts += ["--train-fn", start["train_fn"]]
    if start.get("keep_checkpoints"):
        parts.append("--keep-checkpoints")
    if start.get("imbalance") is False:
        parts.append("--no-imbalance")
    if start.get("submitit_cluster"):
        parts += ["--submitit-cluster", start["submitit_cluster"]]
    for key, value in sorted((start.get("submitit_params") or {}).items()):
        parts += ["--submitit-param", f"{key}={value}"]
    if start.get("export"):
        parts += ["--export", start["export"]]
    return shlex.join(parts + [str(o) for o in start.get("extra_opts") or []])


def _invocations(history: List[Dict[str, Any]], spec: str, scale: str) -> List[Dict[str, Any]]:
    """One entry per runner start: when, how (the equivalent command), how many cells, and how it
    ended (an interrupted runner — killed, crashed — left a start without an end)."""
    out = []
    for i, h in enumerate(history):
        if h.get("event") != "start":
            continue
        end = next((e for e in history[i + 1:] if e.get("event") == "end" and e.get("pid") == h.get("pid")
                    and e.get("host") == h.get("host")), None)
        out.append({"started": h.get("time"), "host": h.get("host"), "pid": h.get("pid"),
                    "launcher": h.get("launcher"), "workers": h.get("workers"), "to_run": h.get("to_run"),
                    "cells": h.get("cells"), "ended": end.get("time") if end else None,
                    "states": end.get("states") if end else None,
                    "command": ablate_command(h, spec, scale)})
    return out


def _device_text(status: Dict[str, Any]) -> str:
    d = status.get("device") or {}
    if d.get("gpu"):
        return f"{d['gpu']} x{d.get('gpus', 1)}"
    return f"CPU {d.get('cpu', '?')} ({len(d.get('cpus', []))} core(s), {d.get('torch_threads')} thread(s))"


# -------------------------------------------------------------------------------- renderers
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
    if env["scale"] != "paper":
        lines.append("- Δ compares our synthetic-data numbers with the paper's COCO numbers: read the "
                     "trends and the verdicts, not the size of Δ.")
    lines.append("")
    header = [*report["columns"], *labels, *[f"{x} (paper)" for x in labels], *[f"Δ{x}" for x in labels]]
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
        lines.append("| " + " | ".join([*settings, *ours, *paper, *delta]) + " |")
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
    else:
        lines.append(f"n/a: {imb.get('reason', 'not computed')}")
    lines += ["", "## Environment", "",
              f"- Scale: {env['scale']}; seeds: {env['seeds']}; "
              f"launcher(s): {', '.join(env['launchers']) or '—'}",
              f"- Device(s): {'; '.join(env['devices']) or '—'}",
              f"- Commit(s): {', '.join(env['commits']) or '—'}; host(s): {', '.join(env['hosts']) or '—'}",
              ""]
    if env.get("invocations"):
        lines += ["| runner started | launcher | cells to run | outcome | command |", "|---|---|---|---|---|"]
        for r in env["invocations"]:
            outcome = (", ".join(f"{n} {s}" for s, n in sorted(r["states"].items())) if r["states"]
                       else "none recorded") if r["ended"] else "no end recorded: killed (or still running)"
            lines.append(f"| {r['started']} (pid {r['pid']}) | {r['launcher']} (workers {r['workers']}) | "
                         f"{r['to_run']} of {r['cells']} | {outcome} | {_md_code(r['command'])} |")
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
    header = ["row", *report["columns"]]
    for m in metrics:
        header += [f"{m}_ours", f"{m}_std", f"{m}_n", f"{m}_paper", f"{m}_delta"]
    header += ["seeds_finished", "seeds_planned", "diverged_at", "best_ours", "best_paper", "paper_note"]
    w.writerow(header)
    for e in report["table"]:
        line = [e["row"], *[e["settings"].get(c, "") for c in report["columns"]]]
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


def write_reports(spec: Spec, scale: str, run_dir: str, rows: Sequence[RowPlan],
                  base_config: Optional[str] = None, extra_opts: Sequence[str] = (),
                  with_imbalance: bool = True, label: Optional[str] = None) -> Dict[str, str]:
    """Write ``report.{md,csv,json}`` into ``run_dir`` atomically; returns their paths."""
    report = build_report(spec, scale, run_dir, rows, base_config, extra_opts, with_imbalance, label)
    paths = {ext: os.path.join(run_dir, f"report.{ext}") for ext in ("md", "csv", "json")}
    write_text_atomic(paths["md"], to_markdown(report))
    write_text_atomic(paths["csv"], to_csv(report))
    write_json_atomic(paths["json"], report)
    return paths
