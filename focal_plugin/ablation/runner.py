"""Run a spec's cells (rows x seeds): locally, in parallel pinned workers, or as submitit jobs.

Layout of a run (``RUN_DIR = OUTPUT/<spec name>/<scale>``)::

    RUN_DIR/.runner.lock           held by the runner for the whole run (names its pid and host)
    RUN_DIR/runs.jsonl             one line per runner invocation (launcher, workers, seeds, times)
    RUN_DIR/<row>/seed<k>/         one cell (see focal_plugin.ablation.cell)
    RUN_DIR/report.{md,csv,json}   the table against the paper (focal_plugin.ablation.report)
    RUN_DIR/submitit/              submitit's job files (submitit launcher)

A finished cell (done or diverged) is never run again; an interrupted or failed one is run again
and resumes from its last checkpoint. A cell identical to a finished cell of another spec in the
same output folder (the same resolved config and seed: e.g. Table 3's FL row and Table 1b's
γ = 2 row) takes that cell's result, or only its final weights when just the inference timing
differs, instead of training again (focal_plugin.ablation.twins). A cell folder already holding
a different definition (other overrides, base config or seed) is refused, so one output folder
never mixes two settings.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shlex
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from focal_plugin.ablation import cell as cell_mod
from focal_plugin.ablation import twins
from focal_plugin.ablation.export import ExportConflict, export_cell, export_run
from focal_plugin.ablation.files import FileLock, LockHeld, now_iso, read_json, write_json_atomic
from focal_plugin.ablation.history import RUNNER_LOCK
from focal_plugin.ablation.launch import core_shares, run_pool, visible_gpus
from focal_plugin.ablation.spec import ABLATIONS_DIR, METRIC_LABELS, RowPlan, Spec

LAUNCHERS = ("local", "submitit")


class PlanMismatch(RuntimeError):
    """A cell folder holds a different definition than the one planned now."""


@dataclasses.dataclass
class CellPlan:
    row: RowPlan
    seed: int
    dir: str

    @property
    def id(self) -> str:
        return f"{self.row.id}/seed{self.seed}"

    def state(self) -> str:
        """pending | running | interrupted | failed | done | diverged (:func:`cell.cell_state`)."""
        return cell_mod.cell_state(self.dir)

    def command(self) -> str:
        """The equivalent ``train_net.py`` command line (copy-pasteable)."""
        opts = [*self.row.opts, "SEED", str(self.seed), "OUTPUT_DIR", self.dir]
        return "python train_net.py --config-file " + " ".join(
            shlex.quote(x) for x in [self.row.base, *opts])


class Runner:
    """Plans and runs the cells of one spec at one scale (see the module docstring).

    ``workers``: 0 = in this process (sequential; for debugging and tests with ``train_fn``),
    N >= 1 = N worker processes at a time, each pinned to its share of the CPUs (and GPUs).
    ``gpus_per_cell``: training processes per cell (detectron2's launch; gloo processes on CPU).
    ``train_fn``: the training function, ``"module:function"`` (any launcher) or a callable
    (``workers=0`` or submitit's debug executor only); default :func:`cell.train_cell`.
    ``imbalance``: compute the data's class imbalance for the report. ``keep_checkpoints``: keep
    a finished cell's intermediate checkpoints (default: only ``model_final.pth`` stays).
    ``reuse``: take the result of an identical finished cell of another spec (module docstring).
    ``export_dir``: copy each finished cell's small files there as it finishes, and the report when
    written (:mod:`focal_plugin.ablation.export`; e.g. ``results/mini``, kept in git).
    """

    def __init__(self, spec: Spec, scale: str, output_dir: str, seeds: int = 1,
                 only: Optional[Sequence[str]] = None, base_config: Optional[str] = None,
                 extra_opts: Sequence[str] = (), launcher: str = "local", workers: int = 1,
                 gpus_per_cell: int = 1, submitit_cluster: Optional[str] = None,
                 submitit_params: Optional[Dict[str, Any]] = None, train_fn: Optional[Callable] = None,
                 progress: bool = True, poll_s: float = 5.0, log: Callable[[str], None] = print,
                 label: Optional[str] = None, imbalance: bool = True, keep_checkpoints: bool = False,
                 reuse: bool = True, export_dir: Optional[str] = None):
        if launcher not in LAUNCHERS:
            raise ValueError(f"launcher {launcher!r} is invalid: expected one of {list(LAUNCHERS)}")
        if seeds < 1:
            raise ValueError(f"seeds = {seeds} is invalid: expected >= 1")
        if workers < 0:
            raise ValueError(f"workers = {workers} is invalid: expected >= 0 (0 = in this process)")
        self.spec, self.scale, self.seeds = spec, scale, seeds
        self.output_dir = os.path.abspath(output_dir)
        self.run_dir = os.path.join(self.output_dir, spec.name, scale)
        self.base_config = base_config
        self.extra_opts = list(extra_opts)
        self.all_rows = spec.resolve(scale, base_config, extra_opts)
        if only:
            unknown = [r for r in only if r not in spec.row_ids]
            if unknown:
                raise ValueError(f"--only: unknown row(s) {unknown} of {spec.path}; rows: {spec.row_ids}")
        self.rows = [r for r in self.all_rows if not only or r.id in only]
        self.launcher, self.workers, self.gpus_per_cell = launcher, workers, gpus_per_cell
        self.submitit_cluster = submitit_cluster
        self.submitit_params = dict(submitit_params or {})
        self.train_fn, self.progress, self.poll_s, self.log = train_fn, progress, poll_s, log
        self.label = label
        self.imbalance = imbalance
        self.keep_checkpoints = keep_checkpoints
        self.reuse = reuse
        self.export_dir = os.path.abspath(export_dir) if export_dir else None
        if self.export_dir:  # before any training: a bad folder is a usage error, not a lost run
            try:
                os.makedirs(self.export_dir, exist_ok=True)
            except OSError as e:
                raise ValueError(f"--export {export_dir!r} is not a usable folder: {e}") from e
        if callable(train_fn) and (launcher != "local" or workers != 0) and submitit_cluster != "debug":
            raise ValueError("a callable train_fn runs only in this process (workers=0 or the debug "
                             "executor); name it as 'module:function' for worker processes")

    # ------------------------------------------------------------------------------ planning
    def plan(self) -> List[CellPlan]:
        return [CellPlan(row, seed, os.path.join(self.run_dir, row.id, f"seed{seed}"))
                for row in self.rows for seed in range(self.seeds)]

    def definition(self, cell: CellPlan) -> Dict[str, Any]:
        """The content of the cell's ``cell.json``."""
        return {"spec": self.spec.name, "spec_file": self.spec.path, "scale": self.scale, "row": cell.row.id,
                "seed": cell.seed, "base": cell.row.base, "base_name": cell.row.base_name,
                "opts": list(cell.row.opts), "settings": cell.row.settings,
                "timing": self.spec.timing if "ms" in self.spec.metrics else None,
                "num_gpus": self.gpus_per_cell,
                "train_fn": self.train_fn if isinstance(self.train_fn, str) else None,
                "trainer": _train_fn_name(self.train_fn),  # None: detectron2's (train_cell)
                "prune_checkpoints": not self.keep_checkpoints}

    _IDENTITY = ("base_name", "opts", "seed", "timing")

    def check_definitions(self, cells: Sequence[CellPlan]) -> None:
        """Raise :class:`PlanMismatch` if a cell folder was planned with other settings."""
        bad = []
        for c in cells:
            old = read_json(os.path.join(c.dir, cell_mod.CELL_FILE))
            if old is None:
                continue
            new = self.definition(c)
            diff = [k for k in self._IDENTITY if old.get(k) != new.get(k)]
            if diff:
                bad.append(f"  {c.id}: {', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in diff)}")
        if bad:
            raise PlanMismatch(
                f"{self.run_dir} holds cells planned with different settings:\n" + "\n".join(bad[:10])
                + "\nUse another --output-dir (or delete those cell folders) to run the new settings.")

    def dry_run(self) -> str:
        """The cells with their state and full overrides, as text (nothing is written)."""
        cells = self.plan()
        lines = [f"{self.spec.title} — scale {self.scale}: {len(self.rows)} row(s) x {self.seeds} seed(s) "
                 f"= {len(cells)} cell(s) in {self.run_dir}"]
        for c in cells:
            paper = " ".join(f"{METRIC_LABELS[m]} {v:.1f}" if v is not None else f"{METRIC_LABELS[m]} —"
                             for m, v in c.row.paper.items())
            settings = ", ".join(f"{k}={v}" for k, v in c.row.settings.items())
            state = c.state()
            lines.append(f"[{state:11s}] {c.id:28s} {settings:30s} paper: {paper}"
                         + (f" ({c.row.paper_note})" if c.row.paper_note else ""))
            twin, exact = (twins.planned_twin(c.dir, self.definition(c), self.output_dir, self.scale,
                                              self.run_dir)
                           if self.reuse and state not in (*cell_mod.FINISHED, "running") else (None, False))
            if twin:  # what the run will do instead of training
                rel = os.path.relpath(twin, self.output_dir)
                lines.append(f"    takes the result of {rel}" if exact else
                             f"    takes the weights of {rel} (evaluated and timed, not trained)")
            lines.append(f"    {c.command()}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------- running
    def run(self) -> Dict[str, Any]:
        """Run every unfinished cell, then write the report; returns a summary dict.

        Raises :class:`~focal_plugin.ablation.files.LockHeld` (naming the other runner's pid and
        host) when another runner uses this run folder, :class:`PlanMismatch` when its cells were
        planned with other settings.
        """
        os.makedirs(self.run_dir, exist_ok=True)
        lock = FileLock(os.path.join(self.run_dir, RUNNER_LOCK), what=f"run folder {self.run_dir}")
        lock.acquire(spec=self.spec.name, scale=self.scale)
        try:
            cells = self.plan()
            self.check_definitions(cells)
            twins.clear_cache()
            states = {c.id: c.state() for c in cells}
            for c in cells:  # a finished (or running) cell keeps the definition it runs with
                path = os.path.join(c.dir, cell_mod.CELL_FILE)
                if states[c.id] not in (*cell_mod.FINISHED, "running") or not os.path.isfile(path):
                    write_json_atomic(path, self.definition(c))
            reused = 0
            for c in cells:
                if states[c.id] in (*cell_mod.FINISHED, "running"):  # running: another process's
                    continue
                if not self.reuse:
                    twins.forget_weights(c.dir)
                elif twins.reuse(c.dir, self.definition(c), self.output_dir, self.scale, self.run_dir,
                                 self.log, c.id):
                    states[c.id] = c.state()
                    reused += 1
            todo = [c for c in cells if states[c.id] not in cell_mod.FINISHED]
            started = time.time()
            self._history({"event": "start", "spec": self._spec_arg(), "scale": self.scale,
                           "output_dir": _shown_path(self.output_dir), "gpus_per_cell": self.gpus_per_cell,
                           "reuse": self.reuse, "launcher": self.launcher, "workers": self.workers,
                           "train_fn": _train_fn_name(self.train_fn),
                           "keep_checkpoints": self.keep_checkpoints, "imbalance": self.imbalance,
                           "submitit_cluster": self.submitit_cluster, "submitit_params": self.submitit_params,
                           "export": _shown_path(self.export_dir) if self.export_dir else None,
                           "seeds": self.seeds, "cells": len(cells), "to_run": len(todo), "reused": reused,
                           "only": [r.id for r in self.rows] if len(self.rows) < len(self.all_rows) else None,
                           "base_config": self.base_config, "extra_opts": self.extra_opts,
                           "label": self.label})
            skipped = len(cells) - len(todo)
            if skipped:
                self.log(f"[ablate] {skipped} finished cell(s) kept, {len(todo)} to run")
            if self.launcher == "submitit":
                results = self._run_submitit(todo)
            elif self.workers == 0:
                results = self._run_in_process(todo)
            else:
                results = self._run_local(todo)
            summary = {"cells": len(cells), "skipped": skipped, "ran": len(todo),
                       "states": {c.id: results.get(c.id, states[c.id]) for c in cells},
                       "wall_time_s": time.time() - started, "run_dir": self.run_dir}
            self._history({"event": "end", "wall_time_s": summary["wall_time_s"],
                           "states": _count(summary["states"].values())})
            summary["report"] = self.report()
            return summary
        finally:
            lock.release()

    def _spec_arg(self) -> str:
        """How --spec names this spec: a shipped spec by name, any other by its path."""
        shipped = os.path.join(ABLATIONS_DIR, f"{self.spec.name}.yaml")
        same = os.path.isfile(shipped) and os.path.samefile(shipped, self.spec.path)
        return self.spec.name if same else _shown_path(self.spec.path)

    def report(self) -> Dict[str, str]:
        """(Re)write ``report.{md,csv,json}`` from the finished cells; returns their paths."""
        from focal_plugin.ablation.report import write_reports

        paths = write_reports(self.spec, self.scale, self.run_dir, self.all_rows,
                              base_config=self.base_config, extra_opts=self.extra_opts,
                              with_imbalance=self.imbalance, label=self.label)
        if self.export_dir:
            for row in self.all_rows:  # every seed on disk, finished earlier or taken from another spec
                for cell_dir in sorted(glob.glob(os.path.join(self.run_dir, row.id, "seed*"))):
                    self._export(export_cell, cell_dir, self.run_dir)
            self._export(export_run, self.run_dir)
        return paths

    def _report_quietly(self) -> None:
        """:meth:`report` between cells: a failure is logged, it never stops the cells still to run."""
        try:
            self.report()
        except Exception as e:  # the report is rebuilt again at the end of the run
            self.log(f"[ablate] the report could not be rewritten ({type(e).__name__}: {e}); "
                     f"the cells' results stay in {self.run_dir}")

    def _export(self, fn: Callable, *args) -> None:
        """Export without ever stopping the run: a failure is logged, the results stay in run_dir."""
        try:
            fn(*args, self.export_dir, self.spec.name)
        except (OSError, ExportConflict, ValueError) as e:  # ValueError: a corrupt exported file
            self.log(f"[ablate] export to {self.export_dir} failed ({type(e).__name__}: {e}); "
                     f"the results stay in {self.run_dir}")

    def _history(self, event: Dict[str, Any]) -> None:
        event = {"time": now_iso(), "pid": os.getpid(), "host": socket.gethostname(), **event}
        with open(os.path.join(self.run_dir, "runs.jsonl"), "a") as f:
            f.write(json.dumps(event) + "\n")

    def _bar(self, total: int):
        from tqdm import tqdm

        return tqdm(total=total, unit="cell", desc=f"{self.spec.name} [{self.scale}]", dynamic_ncols=True,
                    disable=not self.progress or total == 0, file=sys.stderr)

    def _finished(self, bar, c: CellPlan, status: Dict[str, Any]) -> str:
        state = status.get("state", "?")
        if state == "running":  # the process died without recording an outcome
            state = "interrupted"
        detail = ""
        if state == "done":
            m = status.get("metrics", {})
            detail = " ".join(f"{METRIC_LABELS[k]} {m[k]:.1f}" for k in self.spec.metrics
                              if m.get(k) is not None)
        elif state == "diverged":
            detail = f"at iteration {status.get('diverged_at')}"
        elif state == "failed":
            detail = str(status.get("error", ""))[:200]
        elif state == "busy":
            detail = str(status.get("message", ""))[:300]
        wall = status.get("wall_time_s")
        if self.export_dir:
            self._export(export_cell, c.dir, self.run_dir)
        if not self.spec.timing:  # (a timed table's cells may be timing inference: no extra load now)
            self._report_quietly()  # a long run's report (and its export) is never older than its last cell
        msg = f"[{state}] {c.id} {detail}" + (f" ({wall:.0f} s)" if wall else "")
        if bar.disable:
            self.log(msg)
        else:
            bar.write(msg)
        bar.update(1)
        bar.set_postfix_str(f"last: {c.id} {state}")
        return state

    def _run_in_process(self, todo: Sequence[CellPlan]) -> Dict[str, str]:
        out = {}
        with self._bar(len(todo)) as bar:
            for c in todo:
                fn = self.train_fn if callable(self.train_fn) else None
                out[c.id] = self._finished(bar, c, cell_mod.run_cell(c.dir, train_fn=fn))
        return out

    def _run_local(self, todo: Sequence[CellPlan]) -> Dict[str, str]:
        if self.workers > len(core_shares(1)[0]) and self.log:
            self.log(f"[ablate] warning: {self.workers} workers on fewer CPUs: workers share CPUs")
        out: Dict[str, str] = {}
        with self._bar(len(todo)) as bar:
            def finished(i: int, status: Dict[str, Any]) -> None:
                out[todo[i].id] = self._finished(bar, todo[i], status)

            # lending needs the built-in trainer in one process per cell (its hook takes the CPUs)
            # and no inference timing (thread counts must stay equal across a timed table's rows)
            lend = not self.spec.timing and self.train_fn is None and self.gpus_per_cell <= 1
            run_pool([c.dir for c in todo], self.workers, finished, lend_cpus=lend)
        return out

    def _run_submitit(self, todo: Sequence[CellPlan]) -> Dict[str, str]:
        try:
            import submitit
        except ImportError as e:  # pragma: no cover
            raise RuntimeError("--launcher submitit needs submitit: pip install 'focal_plugin[slurm]'") from e
        executor = submitit.AutoExecutor(folder=os.path.join(self.run_dir, "submitit", "%j"),
                                         cluster=self.submitit_cluster)
        gpus = self.gpus_per_cell if executor.cluster == "slurm" or visible_gpus() else 0
        params = {"timeout_min": 60 * 24, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": gpus,
                  "name": f"ablate-{self.spec.name}-{self.scale}"}
        params.update(self.submitit_params)
        if executor.cluster == "debug":
            params = {k: v for k, v in params.items() if k in ("timeout_min",)}
        executor.update_parameters(**params)
        jobs = []
        for c in todo:
            job = executor.submit(cell_mod.CellJob(c.dir, self.train_fn if callable(self.train_fn) else None))
            write_json_atomic(os.path.join(c.dir, "submitit.json"),
                              {"job_id": job.job_id, "cluster": executor.cluster, "submitted": now_iso()})
            jobs.append((c, job))
        self.log(f"[ablate] submitted {len(jobs)} job(s) to {executor.cluster} "
                 f"(logs: {os.path.join(self.run_dir, 'submitit')})")
        out: Dict[str, str] = {}
        with self._bar(len(jobs)) as bar:
            pending = list(jobs)
            while pending:
                still = []
                for c, job in pending:
                    if not job.done():
                        still.append((c, job))
                        continue
                    try:
                        status = job.result()
                    except Exception as e:  # a failed job: its status.json says why
                        status = cell_mod.read_status(c.dir) or {"state": "failed", "error": str(e)}
                        if status.get("state") == "running":
                            status = {"state": "interrupted", "error": str(e)[-500:]}
                    out[c.id] = self._finished(bar, c, status)
                pending = still
                if pending:
                    time.sleep(self.poll_s)
        return out


def _train_fn_name(train_fn) -> Optional[str]:
    """As --train-fn names it ("module:function"); a callable by its name (not importable)."""
    if train_fn is None or isinstance(train_fn, str):
        return train_fn
    return getattr(train_fn, "__qualname__", repr(train_fn))


def _shown_path(path: str) -> str:
    """``path`` relative to the working directory when inside it (as a user would type it)."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def _count(states) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for s in states:
        out[s] = out.get(s, 0) + 1
    return out


__all__ = ["Runner", "CellPlan", "PlanMismatch", "LockHeld", "core_shares"]
