"""Reports of a run laid out like the paper's tables: settings | ours | paper | Δ.

``write_reports`` reads the finished cells of a spec (never trains) and writes ``report.md``,
``report.csv`` and ``report.json`` atomically into ``OUTPUT/<spec>/``:

- the table: each row's settings, our metrics (mean ± std over the finished seeds; "diverged at
  iteration N" for a row whose seeds all diverged), the paper's, and Δ = ours − paper;
- the paper's qualitative claims with our verdict (:mod:`focal_plugin.analysis.claims`);
- the class imbalance of the data (:mod:`focal_plugin.analysis.imbalance`) next to COCO's;
- the environment: scale, seeds, device(s), commit(s), the runner invocations, each cell.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from typing import Any, Dict, List, Optional, Sequence

from focal_plugin.ablation.cell import CELL_FILE, TIMING_FILE, State, cell_state, read_status
from focal_plugin.ablation.render import to_csv, to_markdown
from focal_plugin.analysis.claims import judge
from focal_plugin.analysis.seed_stats import LOWER_IS_BETTER, RowStats, fmt_stat
from focal_plugin.io import read_json, read_jsonl, write_json_atomic, write_text_atomic
from focal_plugin.locks import FileLock

#: a spec's run folder: the runner's lock, the run record (one start and one end line per runner)
RUNNER_LOCK, HISTORY_FILE = ".runner.lock", "runs.jsonl"


def collect(rows: Sequence[Any], cells: Sequence[Any], metrics: Sequence[str]) -> Dict[str, RowStats]:
    """Per row id: the :class:`RowStats` of its cells' finished seeds (``planned``: the cells a
    runner has planned so far, i.e. with a ``cell.json``)."""
    stats = {r.id: RowStats(r.id) for r in rows}
    for c in cells:
        s = stats[c.row.id]
        planned = os.path.isfile(os.path.join(c.dir, CELL_FILE))
        status = read_status(c.dir) if planned else {}
        state = State(status.get("state", State.PENDING))
        s.planned, s.seeds = s.planned + planned, s.seeds + state.finished
        if state is State.DIVERGED:
            s.diverged_at.append(int(status.get("diverged_at", -1)))
        if state is not State.DONE:
            continue
        values = dict(status.get("metrics") or {})
        if "ms" in metrics:
            values["ms"] = (read_json(os.path.join(c.dir, TIMING_FILE)) or {}).get("ms")
        for m in metrics:
            if values.get(m) is not None and math.isfinite(values[m]):
                s.values.setdefault(m, []).append(float(values[m]))
                s.by_seed.setdefault(m, {})[c.seed] = float(values[m])
    return stats


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
        return f"diverged at iteration {', '.join(str(i) for i in s.diverged_at)}"
    text = fmt_stat(s, metric)
    if s.diverged_at:
        text += f" ({len(s.diverged_at)}/{s.seeds} diverged)"
    if s.seeds < s.planned:
        text += f" ({s.seeds}/{s.planned} seeds)"
    return text


def _table(rows, stats: Dict[str, RowStats], metrics: Sequence[str]) -> List[Dict[str, Any]]:
    ours = {m: _best({r.id: stats[r.id].mean(m) if not stats[r.id].all_diverged else None for r in rows}, m)
            for m in metrics}
    paper = {m: _best({r.id: r.paper.get(m) for r in rows}, m) for m in metrics}
    table = []
    for row in rows:
        s = stats[row.id]
        entry: Dict[str, Any] = {"row": row.id, "settings": row.settings, "paper_note": row.paper_note,
                                 **s.as_dict(metrics), "metrics": {}}
        for m in metrics:
            mean, p = (None if s.all_diverged else s.mean(m)), row.paper.get(m)
            entry["metrics"][m] = {"ours": mean, "std": s.std(m), "n": s.n(m), "ours_text": _ours_text(s, m),
                                   "paper": p,
                                   "delta": mean - p if mean is not None and p is not None else None,
                                   "best_ours": row.id in ours[m], "best_paper": row.id in paper[m]}
        table.append(entry)
    return table


def build_report(runner, with_imbalance: Optional[bool] = None) -> Dict[str, Any]:
    """The report of ``runner``'s spec (every row, not only ``--only``'s) as a plain dict."""
    spec, rows = runner.spec, runner.all_rows
    cells = runner.cells(rows)
    stats = collect(rows, cells, spec.metrics)
    paper = {row.id: row.paper for row in rows}
    imbalance_on = runner.options.imbalance if with_imbalance is None else with_imbalance
    return {"spec": spec.name, "spec_file": spec.path, "title": spec.title, "source": spec.source,
            "note": spec.note, "columns": spec.columns, "metrics": spec.metrics,
            "table": _table(rows, stats, spec.metrics),
            "claims": [judge(c, stats, paper, runner.options.scale) for c in spec.claims],
            "imbalance": imbalance(runner) if imbalance_on else {"available": False,
                                                                  "reason": "not computed"},
            "environment": _environment(runner, cells, invocations(runner.run_dir))}


def _environment(runner, cells, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    statuses = [(c, read_status(c.dir)) for c in cells]
    o = runner.options
    return {
        "scale": o.scale, "seeds": max((len(r.seeds) for r in runner.all_rows), default=0),
        "base_config_override": o.base_config, "extra_opts": list(o.opts), "label": o.label,
        "invocations": runs,
        "devices": sorted({_device_text(s) for _, s in statuses if s.get("device")}),
        "commits": sorted({s.get("commit", "?") for _, s in statuses if s}),
        "hosts": sorted({s.get("host", "?") for _, s in statuses if s}),
        "weights": sorted({f"{w['uri']} sha256 {w['sha256'][:16]}"
                           for _, s in statuses if (w := s.get("weights"))}),
        "cells": [{"cell": c.id, "key": c.key, "state": cell_state(c.dir, s).value,
                   "wall_time_s": s.get("wall_time_s"), "attempts": s.get("attempts"),
                   "resumed_from_iter": s.get("resumed_from_iter"), "iterations": s.get("iterations"),
                   "device": _device_text(s) if s.get("device") else None, "commit": s.get("commit"),
                   "finished": s.get("finished"), "command": c.command()} for c, s in statuses],
    }


def _device_text(status: Dict[str, Any]) -> str:
    d = status.get("device") or {}
    if d.get("gpu"):
        return f"{d['gpu']} x{d.get('gpus', 1)}"
    text = f"CPU {d.get('cpu', '?')} ({len(d.get('cpus', []))} core(s), {d.get('torch_threads')} thread(s)"
    if d.get("cpus_lent"):  # cells of an earlier runner that lent idle CPUs mid-run
        text += f"; up to {max(len(x['cpus']) for x in d['cpus_lent'])} lent mid-run"
    return text + ")"


def imbalance(runner) -> Dict[str, Any]:
    """The class imbalance of the table's base config and of each row's
    (:func:`~focal_plugin.analysis.imbalance_table.table_imbalance`), cached in the spec's folder
    (``imbalance.json``, committed with the report)."""
    from focal_plugin.analysis.imbalance_table import table_imbalance

    o = runner.options
    rows = {row.id: (row.base, row.opts) for row in runner.all_rows}
    return table_imbalance(runner.spec.table_config(o.scale, o.base_config, o.opts), rows,
                           os.path.join(runner.run_dir, "imbalance.json"))


def write_reports(runner, with_imbalance: Optional[bool] = None) -> Dict[str, str]:
    """Write ``report.{md,csv,json}`` into the spec's folder atomically; returns their paths."""
    report = build_report(runner, with_imbalance)
    paths = {ext: os.path.join(runner.run_dir, f"report.{ext}") for ext in ("md", "csv", "json")}
    write_text_atomic(paths["md"], to_markdown(report))
    write_text_atomic(paths["csv"], to_csv(report))
    write_json_atomic(paths["json"], report)
    return paths


# ------------------------------------------------------------------------------------ history
def read_history(run_dir: str) -> List[Dict[str, Any]]:
    """The events of ``runs.jsonl`` (a line cut by a kill is skipped)."""
    return read_jsonl(os.path.join(run_dir, HISTORY_FILE))


def invocations(run_dir: str) -> List[Dict[str, Any]]:
    """One entry per runner start: when, the command as typed, how many cells, how it ended (an
    interrupted runner — killed, crashed — left a start without an end; ``running`` tells it
    from the runner at work now)."""
    history = read_history(run_dir)
    lock = FileLock(os.path.join(run_dir, RUNNER_LOCK))
    live = lock.holder() if lock.is_held() else {}
    starts = [i for i, h in enumerate(history) if h.get("event") == "start"]
    out = []
    for i in starts:
        h, nxt = history[i], (history[i + 1:] or [{}])[0]
        end = nxt if nxt.get("event") == "end" and _who(nxt) == _who(h) else {}
        options = h.get("options") or {}
        command = (("(v2 runner) " if options.get("migrated_from") else "") + shlex.join(h["argv"])
                   if h.get("argv") else "(Python API) " + json.dumps(options, default=str))
        out.append({"started": h.get("time"), "host": h.get("host"), "pid": h.get("pid"),
                    "launcher": f"{options.get('launcher')} (workers {options.get('workers')})",
                    "to_run": h.get("to_run"), "cells": h.get("cells"), "ended": end.get("time"),
                    "states": end.get("states"), "command": command,
                    "running": not end and i == starts[-1] and _who(live) == _who(h)})
    return out


def _who(event: Dict[str, Any]):
    return (event.get("host"), event.get("pid")) if event else None
