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

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from focal_plugin.ablation import cell as cell_mod
from focal_plugin.ablation.files import read_json, write_json_atomic, write_text_atomic
from focal_plugin.ablation.history import invocations, live_runner, read_history
from focal_plugin.ablation.render import to_csv, to_markdown
from focal_plugin.ablation.spec import LOWER_IS_BETTER, RowPlan, Spec
from focal_plugin.ablation.verdict import RowStats, fmt_stat, judge

# images per data setting: as many as the imbalance figures quoted in configs/mini/README.md (500)
IMBALANCE_IMAGES = 500


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


# --------------------------------------------------------------------------------- imbalance
def _dataset_identity(name: str) -> Dict[str, Any]:
    """What a registered dataset's content depends on, as far as its metadata says: the generator
    fingerprint (dense_shapes), the annotation file and its mtime, the classes, a merged view's source."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    out: Dict[str, Any] = {"classes": list(meta.get("thing_classes") or []),
                           "fingerprint": meta.get("fingerprint"), "json_file": meta.get("json_file")}
    if out["json_file"] and os.path.isfile(out["json_file"]):
        out["json_mtime"] = os.path.getmtime(out["json_file"])
    if meta.get("merged_from"):
        out["from"] = _dataset_identity(meta.merged_from)
    return out


def _data_key(cfg) -> str:
    """What the imbalance depends on: training data, anchors, test-time size and matching."""
    r, a = cfg.MODEL.RETINANET, cfg.MODEL.ANCHOR_GENERATOR
    return json.dumps({"dataset": cfg.DATASETS.TRAIN[0], "data": _dataset_identity(cfg.DATASETS.TRAIN[0]),
                       "backbone": cfg.MODEL.BACKBONE.NAME,
                       "features": list(r.IN_FEATURES), "sizes": a.SIZES, "ratios": a.ASPECT_RATIOS,
                       "offset": a.OFFSET, "input": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST],
                       "match": [r.IOU_THRESHOLDS, r.IOU_LABELS, cfg.MODEL.FOCAL.ALLOW_LOW_QUALITY_MATCHES]},
                      sort_keys=True, default=list)


def imbalance(spec: Spec, scale: str, run_dir: str, base_config: Optional[str],
              extra_opts: Sequence[str], rows: Sequence[RowPlan] = ()) -> Dict[str, Any]:
    """The data's class imbalance under the table's base config, cached in the run folder.

    When ``rows`` train on different data, anchors, test size or matching (the imbalance scan's
    datasets, Table 1c's anchors), also each such setting's: ``by_row`` maps a row to its
    :func:`_imbalance_row`. Uses ``focal_plugin.analysis.imbalance`` (``imbalance_stats``/
    ``coco_reference``); when that module cannot be imported or the data is missing,
    ``{"available": False, "reason"}``.
    """
    config_file, opts = spec.table_config(scale, base_config, extra_opts)
    key = {"config": config_file, "opts": opts, "images": IMBALANCE_IMAGES}
    cache = os.path.join(run_dir, "imbalance.json")
    try:
        cached = read_json(cache) or {}
    except ValueError:  # a damaged cache is recomputed
        cached = {}
    computed = dict(cached.get("computed") or {}) if cached.get("images") == IMBALANCE_IMAGES else {}
    try:
        from focal_plugin.analysis.imbalance import coco_reference, imbalance_stats
    except ImportError as e:
        return {"available": False, "key": key,
                "reason": f"focal_plugin.analysis.imbalance is not importable ({e})"}

    def stats_of(cfg) -> Dict[str, Any]:
        k = _data_key(cfg)
        if k not in computed:  # a setting is measured once per run folder
            computed[k] = _imbalance_row(imbalance_stats(cfg, cfg.DATASETS.TRAIN[0],
                                                         max_images=IMBALANCE_IMAGES, with_coco=False))
        return computed[k]

    from focal_plugin.engine import setup_cfg

    def reason(e: Exception) -> str:
        return f"{type(e).__name__}: {e}"[:500]

    try:
        ours = stats_of(setup_cfg(config_file, opts))
        coco = _imbalance_row(coco_reference())
    except Exception as e:  # missing dataset (COCO at paper scale), etc.
        return {"available": False, "key": key, "reason": reason(e)}
    by_row: Dict[str, Any] = {}
    for row in rows:  # a row whose data cannot be measured does not hide the others'
        try:
            by_row[row.id] = stats_of(setup_cfg(row.base, row.opts))
        except Exception as e:
            by_row[row.id] = {"error": reason(e)}
    write_json_atomic(cache, {"images": IMBALANCE_IMAGES, "computed": computed})
    out = {"available": True, "key": key, "ours": ours, "coco": coco}
    if len({json.dumps(v, sort_keys=True) for v in by_row.values()}) > 1:
        out["by_row"] = by_row
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
    history = read_history(run_dir)
    starts = [h for h in history if h.get("event") == "start"]
    cells = [c for r in rows for c in found[r.id]["cells"]]
    env = {
        "scale": scale, "run_dir": run_dir,
        "seeds": max((stats[r.id].planned for r in rows), default=0),
        "base_config_override": base_config, "extra_opts": list(extra_opts),
        "launchers": sorted({f"{h.get('launcher')} (workers {h.get('workers')})" for h in starts}),
        "label": label or next((h["label"] for h in reversed(starts) if h.get("label")), None),
        "invocations": invocations(history, spec.name, scale, live_runner(run_dir)),
        "devices": sorted({_device_text(c["status"]) for c in cells if c["status"].get("device")}),
        "commits": sorted({c["status"].get("commit", "?") for c in cells if c["status"]}),
        "hosts": sorted({c["status"].get("host", "?") for c in cells if c["status"]}),
        "cells": [{"cell": c["cell"], "state": cell_mod.cell_state(c["dir"], c["status"]),
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
            "imbalance": imbalance(spec, scale, run_dir, base_config, extra_opts, rows) if with_imbalance
            else {"available": False, "reason": "not computed"},
            "environment": env}


def _device_text(status: Dict[str, Any]) -> str:
    d = status.get("device") or {}
    if d.get("gpu"):
        return f"{d['gpu']} x{d.get('gpus', 1)}"
    text = f"CPU {d.get('cpu', '?')} ({len(d.get('cpus', []))} core(s), {d.get('torch_threads')} thread(s)"
    if d.get("cpus_lent"):  # CPUs an idle worker lent while it trained (launch.run_pool)
        text += f"; up to {max(len(x['cpus']) for x in d['cpus_lent'])} when others idled"
    return text + ")"


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
