"""Run a spec's cells (rows x seeds): locally in pinned workers, in this process, or as submitit jobs.

The output folder (default ``results/<scale>``: the mini runs are written where they are
committed) holds ``cells/<key>/`` (:mod:`~focal_plugin.ablation.cell`, shared by every spec that
reaches its config) and per spec ``<spec>/`` (reports, ``runs.jsonl``, the runner's lock); the
layout: ``configs/ablations/README.md``. A finished cell (done or diverged) is never trained
again; an interrupted or failed one resumes from its last checkpoint. A timed table (metric
``ms``) times each finished cell's final weights once (``timing.json`` beside its results).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shlex
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from focal_plugin.ablation.cell import (
    CELL_FILE,
    CellJob,
    State,
    cell_state,
    read_status,
    run_cell,
    timing_current,
    train_opts,
)
from focal_plugin.ablation.identity import cell_key, resolved_identity
from focal_plugin.ablation.launch import run_pool, run_submitit
from focal_plugin.ablation.report import HISTORY_FILE, RUNNER_LOCK, read_history, write_reports
from focal_plugin.ablation.spec import RowPlan, Spec
from focal_plugin.analysis.seed_stats import METRIC_LABELS
from focal_plugin.configs import config_name
from focal_plugin.io import read_json, write_json_atomic
from focal_plugin.locks import FileLock, now_iso
from focal_plugin.processes import available_cpus

CELLS_DIR = "cells"


def _opt(help: str, **cli: Any) -> Dict[str, Any]:
    return {"help": help, "cli": cli}


@dataclasses.dataclass
class RunOptions:
    """How a spec is run: every option of ``tools/ablate.py`` (its flags are built from these
    fields), recorded in ``runs.jsonl`` and shown in the report. Adding an option is one field."""

    scale: str = dataclasses.field(default="mini", metadata=_opt(
        "paper: COCO + configs/paper; mini: synthetic data + configs/mini", choices=("paper", "mini")))
    output_dir: Optional[str] = dataclasses.field(default=None, metadata=_opt(
        "root of cells and reports (default: results/<scale>)"))
    seeds: Optional[List[int]] = dataclasses.field(default=None, metadata=_opt(
        "run these seeds on every row instead of the spec's", nargs="+", type=int, metavar="SEED"))
    only: Optional[List[str]] = dataclasses.field(default=None, metadata=_opt(
        "run only these rows (ids from --dry-run)", nargs="+", metavar="ROW"))
    launcher: str = dataclasses.field(default="local", metadata=_opt(
        "local processes or submitit jobs (one per cell)", choices=("local", "submitit")))
    workers: int = dataclasses.field(default=1, metadata=_opt(
        "local: cells at a time, each on CPUs of its own; 0 = in this process", type=int))
    threads: int = dataclasses.field(default=1, metadata=_opt(
        "local: torch threads (and CPUs) of every cell, whatever --workers is", type=int))
    gpus_per_cell: int = dataclasses.field(default=1, metadata=_opt(
        "training processes per cell (detectron2's launch; on CPU, gloo processes)", type=int))
    submitit_cluster: Optional[str] = dataclasses.field(default=None, metadata=_opt(
        "submitit executor (default: auto-detect, SLURM when available)",
        choices=("slurm", "local", "debug")))
    submitit_param: List[str] = dataclasses.field(default_factory=list, metadata=_opt(
        "submitit update_parameters KEY=VALUE, e.g. slurm_partition=dev", action="append",
        metavar="KEY=VALUE"))
    base_config: Optional[str] = dataclasses.field(default=None, metadata=_opt(
        "replace the spec's base config of this scale"))
    label: Optional[str] = dataclasses.field(default=None, metadata=_opt(
        "a label printed at the top of the report"))
    train_fn: Any = dataclasses.field(default=None, metadata=_opt(
        "training function MODULE:FUNCTION fn(config_file, opts, resume, num_gpus) -> engine.train's dict",
        metavar="MODULE:FUNCTION"))
    imbalance: bool = dataclasses.field(default=True, metadata=_opt("skip the class-imbalance section"))
    keep_checkpoints: bool = dataclasses.field(default=False, metadata=_opt(
        "keep a finished cell's intermediate checkpoints (default: only model_final.pth stays)"))
    progress: bool = dataclasses.field(default=True, metadata=_opt("no progress bar (one line per cell)"))
    other_weights: bool = dataclasses.field(default=False, metadata=_opt(
        "run cells although their MODEL.WEIGHTS have other bytes (sha256) than the finished cells of "
        "this output folder started from (another build of the backbone: its rows then mix draws)"))
    opts: List[str] = dataclasses.field(default_factory=list, metadata=_opt(
        "KEY VALUE config overrides for every cell (after the flags, as train_net.py takes them)",
        nargs="...", positional=True))

    def __post_init__(self) -> None:
        checks = [(self.workers >= 0, f"workers = {self.workers}: expected >= 0 (0 = in this process)"),
                  (self.threads >= 1, f"threads = {self.threads}: expected >= 1"),
                  (self.gpus_per_cell >= 1, f"gpus_per_cell = {self.gpus_per_cell}: expected >= 1"),
                  (not self.seeds or min(self.seeds) >= 0, f"seeds = {self.seeds}: expected seeds >= 0"),
                  (not callable(self.train_fn) or (self.launcher == "local" and self.workers == 0)
                   or self.submitit_cluster == "debug", "a callable train_fn runs only in this process "
                   "(workers 0 or the debug executor); name it 'module:function' for worker processes")]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ValueError(bad[0])
        self.submitit_params()  # a malformed KEY=VALUE is a usage error now, not after training

    def submitit_params(self) -> Dict[str, Any]:
        import ast

        out = {}
        for item in self.submitit_param:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--submitit-param {item!r}: expected KEY=VALUE")
            try:
                out[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                out[key] = value
        return out

    def record(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        if callable(self.train_fn):  # (in-process runs) named, not importable
            out["train_fn"] = getattr(self.train_fn, "__qualname__", repr(self.train_fn))
        return out


class PlanMismatch(RuntimeError):
    """A cell folder holds a different definition than the one planned now."""


@dataclasses.dataclass
class Cell:
    """A row at one seed, and the folder of its config (:func:`identity.cell_key`)."""

    row: RowPlan
    seed: int
    key: str
    dir: str
    definition: Dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.row.id}/seed{self.seed}"

    def state(self) -> State:
        return cell_state(self.dir)

    def command(self) -> str:
        """The equivalent ``train_net.py`` command line (copy-pasteable)."""
        return "python train_net.py --config-file " + shlex.join([self.row.base, *train_opts(self.definition,
                                                                                              self.dir)])


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def check_weights(cells: Sequence[Cell]) -> None:
    """Raise ``FileNotFoundError`` naming every ``MODEL.WEIGHTS`` the cells would start from that is
    not on this machine (a ``focal-pretrained://`` backbone not built yet, a missing local file),
    with the cells that need it and how to build it: one message before any cell starts, instead
    of every cell failing alone. Remote URIs (``detectron2://``, ``https://``) are detectron2's."""
    from focal_plugin.pretrain.zoo import PREFIX, resolve

    missing: Dict[str, List[str]] = {}
    for c in cells:
        uri = str(c.definition["identity"].get("MODEL.WEIGHTS") or "")
        if uri.startswith(PREFIX):
            try:
                resolve(uri)
                continue
            except FileNotFoundError:
                pass
        elif not uri or "://" in uri or os.path.isfile(uri):
            continue
        missing.setdefault(uri, []).append(c.id)
    if not missing:
        return
    lines = [f"  {uri}: needed by {len(ids)} cell(s) ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
             for uri, ids in missing.items()]
    recipes: Dict[str, List[str]] = {}
    for name in sorted(u[len(PREFIX):] for u in missing if u.startswith(PREFIX)):
        base, _, seed = name.partition("@")
        recipes.setdefault(base, []).extend([seed] if seed else [])
    hint = "".join(f"\nBuild them once with `python tools/pretrain_backbone.py --recipe {base}"
                   + (f" --seeds {' '.join(seeds)}`" if seeds else "`") for base, seeds in recipes.items())
    raise FileNotFoundError("weights the cells start from are not on this machine (no cell started):\n"
                            + "\n".join(lines) + hint)


class WeightsMismatch(RuntimeError):
    """Weights a cell would start from differ, by their bytes, from those finished cells recorded."""


def check_weight_bytes(cells: Sequence[Cell], cells_root: str) -> None:
    """Raise :class:`WeightsMismatch` when a ``MODEL.WEIGHTS`` file the cells would start from has
    other bytes (sha256) than the same URI had for every finished cell under ``cells_root``
    (``status.json`` ``weights``): a table whose rows started from two builds of one backbone (a
    ``focal-pretrained://`` recipe trained on another CPU, a file replaced) would compare backbone
    draws, not its rows. The message names each URI, both digests, cells on each side and the ways
    on (rebuild and ``tools/pretrain_backbone.py --check``, another ``--output-dir``, or
    ``--other-weights``). Weights that are not local files (``detectron2://``, URLs) are not checked."""
    from focal_plugin.pretrain.zoo import PREFIX, file_sha256, resolve

    recorded: Dict[str, Dict[str, List[str]]] = {}
    for key in sorted(os.listdir(cells_root)) if os.path.isdir(cells_root) else ():
        status = read_status(os.path.join(cells_root, key))
        weights = status.get("weights")
        if weights and State(status.get("state", State.PENDING)).finished:
            recorded.setdefault(weights["uri"], {}).setdefault(weights["sha256"], []).append(key)
    bad = []
    uris = {str(c.definition["identity"].get("MODEL.WEIGHTS") or "") for c in cells}
    for uri in sorted(uris & set(recorded)):
        if "://" in uri and not uri.startswith(PREFIX):
            continue
        here = file_sha256(resolve(uri) if uri.startswith(PREFIX) else uri)
        if here not in recorded[uri]:
            theirs = "; ".join(f"{sha[:16]} ({len(keys)} cell(s): {', '.join(keys[:3])}"
                               f"{', ...' if len(keys) > 3 else ''})" for sha, keys in recorded[uri].items())
            bad.append(f"  {uri}: here {here[:16]}, finished cells started from {theirs}")
    if bad:
        raise WeightsMismatch(
            "weights on this machine have other bytes than the finished cells of this output folder "
            "started from (no cell started):\n" + "\n".join(bad) + "\nA focal-pretrained:// backbone "
            "built on another CPU differs (tools/pretrain_backbone.py --check <backbones.json> says "
            "which): bring the recorded file, use another --output-dir, or pass --other-weights to mix "
            "the two builds in these tables (the report lists every digest).")


class Runner:
    """Plans and runs the cells of one spec (see the module docstring)."""

    def __init__(self, spec: Spec, options: Optional[RunOptions] = None, log: Callable[[str], None] = print,
                 argv: Optional[Sequence[str]] = None):
        self.spec, self.options, self.log = spec, options or RunOptions(), log
        self.argv = list(argv) if argv is not None else None
        o = self.options
        self.output_dir = os.path.abspath(o.output_dir or os.path.join("results", o.scale))
        self.run_dir = os.path.join(self.output_dir, spec.name)
        self.all_rows = spec.resolve(o.scale, o.base_config, o.opts, o.seeds)
        unknown = [r for r in o.only or () if r not in spec.row_ids]
        if unknown:
            raise ValueError(f"--only: unknown row(s) {unknown} of {spec.path}; rows: {spec.row_ids}")
        self.rows = [r for r in self.all_rows if not o.only or r.id in o.only]

    # ------------------------------------------------------------------------------ planning
    def cells(self, rows: Optional[Sequence[RowPlan]] = None) -> List[Cell]:
        train_fn = self.options.record()["train_fn"]
        out = []
        for row in self.rows if rows is None else rows:
            for seed in row.seeds:
                identity = resolved_identity(row.base, row.opts, seed)
                key = cell_key(identity, train_fn)
                definition = {"key": key, "seed": seed, "base": config_name(row.base), "opts": list(row.opts),
                              "identity": identity, "train_fn": train_fn,
                              "planned_by": f"{self.spec.name}/{row.id}"}
                out.append(Cell(row, seed, key, os.path.join(self.output_dir, CELLS_DIR, key), definition))
        return out

    def check_definitions(self, cells: Sequence[Cell]) -> None:
        """Raise :class:`PlanMismatch` if a cell folder holds another definition (a folder
        written by other code, or edited)."""
        bad = []
        for c in cells:
            old = read_json(os.path.join(c.dir, CELL_FILE))
            diff = [k for k in ("identity", "seed", "train_fn") if old and old.get(k) != c.definition[k]]
            if diff:
                bad.append(f"  {c.id} ({c.dir}): {', '.join(diff)} differ")
        if bad:
            raise PlanMismatch(f"{self.output_dir} holds cells with other definitions:\n"
                               + "\n".join(bad[:10])
                               + "\nUse another --output-dir (or delete those cell folders).")

    def dry_run(self) -> str:
        """The cells with their state, folder and full command, as text (nothing is written)."""
        cells = self.cells()
        lines = [f"{self.spec.title} — scale {self.options.scale}: {len(self.rows)} row(s), {len(cells)} "
                 f"cell(s) in {_shown(self.output_dir)}"]
        for c in cells:
            paper = " ".join(f"{METRIC_LABELS[m]} {v:.1f}" if v is not None else f"{METRIC_LABELS[m]} —"
                             for m, v in c.row.paper.items())
            settings = ", ".join(f"{k}={v}" for k, v in c.row.settings.items())
            shared = (read_json(os.path.join(c.dir, CELL_FILE)) or {}).get("planned_by")
            lines.append(f"[{c.state().value:11s}] {c.id:28s} {settings:30s} paper: {paper}"
                         + (f" ({c.row.paper_note})" if c.row.paper_note else ""))
            lines.append(f"    cell {c.key}" + (f" (shared with {shared})" if shared and not
                                                shared.startswith(self.spec.name + "/") else ""))
            lines.append(f"    {c.command()}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------- running
    def run(self) -> Dict[str, Any]:
        """Run every unfinished cell (and missing timings), then write the report.

        Raises :class:`~focal_plugin.locks.LockHeld` (naming the other runner's pid and
        host) when another runner uses this spec's folder, :class:`PlanMismatch` when a cell
        folder holds another definition.
        """
        os.makedirs(self.run_dir, exist_ok=True)
        self._check_scale()
        lock = FileLock(os.path.join(self.run_dir, RUNNER_LOCK), what=f"run folder {self.run_dir}")
        lock.acquire(spec=self.spec.name, scale=self.options.scale)
        try:
            return self._run_locked()
        finally:
            lock.release()

    def _run_locked(self) -> Dict[str, Any]:
        cells = self.cells()
        self.check_definitions(cells)
        to_run = [c for c in cells if self._needs_run(c)]
        check_weights(to_run)
        if not self.options.other_weights:
            check_weight_bytes(to_run, os.path.join(self.output_dir, CELLS_DIR))
        for c in cells:
            if not os.path.isfile(os.path.join(c.dir, CELL_FILE)):
                write_json_atomic(os.path.join(c.dir, CELL_FILE), c.definition)
        todo = list({c.key: c for c in cells if self._needs_run(c)}.values())
        started = time.time()
        self._history({"event": "start", "argv": self.argv, "options": self.options.record(),
                       "spec": self.spec.name, "cells": len(cells), "to_run": len(todo)})
        if len(cells) > len(todo):
            self.log(f"[ablate] {len(cells) - len(todo)} finished cell(s) kept, {len(todo)} to run")
        results = self._launch(todo)
        states = {c.id: State(results.get(c.key, {}).get("state") or c.state()) for c in cells}
        summary = {"cells": len(cells), "skipped": len(cells) - len(todo), "ran": len(todo), "states": states,
                   "wall_time_s": time.time() - started, "run_dir": self.run_dir}
        counts = collections.Counter(s.value for s in states.values())
        self._history({"event": "end", "wall_time_s": summary["wall_time_s"], "states": dict(counts)})
        summary["report"] = self.report()
        return summary

    def _needs_run(self, c: Cell) -> bool:
        state = c.state()
        if state is State.RUNNING:  # another process's
            return False
        if not state.finished:
            return True
        return bool(self.spec.timing) and state is State.DONE and not timing_current(c.dir, self.spec.timing)

    def _check_scale(self) -> None:
        for event in read_history(self.run_dir):
            scale = (event.get("options") or {}).get("scale", event.get("scale"))
            if event.get("event") == "start" and scale and scale != self.options.scale:
                raise ValueError(f"{self.run_dir} holds runs of scale {scale!r}, this one is "
                                 f"{self.options.scale!r}: use another --output-dir per scale")

    def job(self, c: Cell) -> CellJob:
        o = self.options
        return CellJob(c.dir, num_gpus=o.gpus_per_cell, prune_checkpoints=not o.keep_checkpoints,
                       timing=self.spec.timing, train_fn=o.train_fn)

    def report(self) -> Dict[str, str]:
        """(Re)write ``report.{md,csv,json}`` from the finished cells; returns their paths."""
        return write_reports(self)

    def _report_quietly(self) -> None:
        """The report between cells: a failure is logged, never stops the cells still to run."""
        try:
            self.report()
        except Exception as e:  # rebuilt again at the end of the run
            self.log(f"[ablate] the report could not be rewritten ({type(e).__name__}: {e}); "
                     f"the cells' results stay in {self.output_dir}")

    def _history(self, event: Dict[str, Any]) -> None:
        event = {"time": now_iso(), "pid": os.getpid(), "host": socket.gethostname(), **event}
        with open(os.path.join(self.run_dir, HISTORY_FILE), "a") as f:
            f.write(json.dumps(event, default=str) + "\n")

    def _bar(self, total: int):
        from tqdm import tqdm

        return tqdm(total=total, unit="cell", desc=f"{self.spec.name} [{self.options.scale}]",
                    dynamic_ncols=True, disable=not self.options.progress or total == 0, file=sys.stderr)

    def _finished(self, bar, c: Cell, status: Dict[str, Any]) -> Dict[str, Any]:
        state = State(status.get("state") or State.PENDING)
        if state is State.RUNNING:  # the process died without recording an outcome
            state = State.INTERRUPTED
        m = status.get("metrics") or {}
        detail = {State.DONE: " ".join(f"{METRIC_LABELS[k]} {m[k]:.1f}" for k in self.spec.metrics
                                       if m.get(k) is not None),
                  State.DIVERGED: f"at iteration {status.get('diverged_at')}",
                  State.FAILED: str(status.get("error", ""))[:200],
                  State.BUSY: str(status.get("message", ""))[:300]}.get(state, "")
        if not self.spec.timing:  # (timing cells measure speed: no extra load while they run)
            self._report_quietly()
        wall = status.get("wall_time_s")
        msg = f"[{state.value}] {c.id} {detail}" + (f" ({wall:.0f} s)" if wall else "")
        bar.write(msg) if not bar.disable else self.log(msg)
        bar.update(1)
        return {**status, "state": state}

    def _launch(self, todo: Sequence[Cell]) -> Dict[str, Dict[str, Any]]:
        """Run ``todo`` with the chosen launcher; each outcome is logged as it lands."""
        o, jobs, out = self.options, [self.job(c) for c in todo], {}
        if o.workers * o.threads > len(available_cpus()) and o.launcher == "local":
            self.log(f"[ablate] warning: {o.workers} worker(s) x {o.threads} thread(s) on "
                     f"{len(available_cpus())} CPU(s): workers share CPUs")
        with self._bar(len(todo)) as bar:
            def finished(i: int, status: Dict[str, Any]) -> None:
                out[todo[i].key] = self._finished(bar, todo[i], status)

            if o.launcher == "submitit":
                params = {"name": f"ablate-{self.spec.name}-{o.scale}", **o.submitit_params()}
                run_submitit(jobs, os.path.join(self.run_dir, "submitit"), o.submitit_cluster,
                             o.gpus_per_cell, params, finished, self.log)
            elif o.workers == 0:  # in this process
                for i, job in enumerate(jobs):
                    finished(i, run_cell(job))
            else:
                run_pool(jobs, o.workers, o.threads, finished)
        return out
