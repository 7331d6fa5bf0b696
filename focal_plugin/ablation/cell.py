"""One ablation cell (a config at one seed): train, evaluate, time, record — resumably.

A cell lives in ``OUTPUT/cells/<key>/`` (:mod:`focal_plugin.ablation.identity`), which is also
its detectron2 ``OUTPUT_DIR``; its files (``cell.json`` what it trains, ``status.json`` what
happened, ``timing.json``, detectron2's config and logs): ``configs/ablations/README.md``.
A finished cell (done / diverged) is never trained again; an interrupted or failed one resumes
from its last checkpoint (detectron2's ``last_checkpoint``). A lock in the folder
(``.cell.lock``) keeps two processes from running the same cell.

Run as ``python -m focal_plugin.ablation.cell --job JSON`` by the local launcher, or through
:class:`CellJob` by submitit.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import pkgutil
import re
import socket
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from focal_plugin.collect_env import describe_device, git_commit
from focal_plugin.engine import divergence_iteration, train_from_files
from focal_plugin.io import read_json, write_json_atomic
from focal_plugin.locks import FileLock, LockHeld, now_iso
from focal_plugin.processes import die_with_parent, pin_to

CELL_FILE, STATUS_FILE, TIMING_FILE, LOCK_FILE = "cell.json", "status.json", "timing.json", ".cell.lock"
FINAL_CHECKPOINT = "model_final.pth"
EXIT_FAILED, EXIT_BUSY = 1, 3


class State(str, enum.Enum):
    """A cell's state (``status.json``'s ``state``; a ``str``, so it is written as its value)."""

    PENDING = "pending"
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # "running" on disk, but no process holds the cell's lock
    FAILED = "failed"
    DONE = "done"
    DIVERGED = "diverged"  # a non-finite loss: finished, never rerun
    BUSY = "busy"  # another process runs it now

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.DIVERGED)

    def __str__(self) -> str:
        return self.value


#: ``train_fn(config_file, opts, resume, num_gpus) -> engine.train's dict`` (default
#: :func:`focal_plugin.engine.train_from_files`); another one is named "module:function" (a fake in tests).
TrainFn = Callable[[str, Sequence[str], bool, int], Dict[str, Any]]


def import_train_fn(name: str) -> TrainFn:
    """The function named ``"package.module:function"``."""
    if not re.fullmatch(r"[\w.]+:[\w.]+", name):
        raise ValueError(f"train_fn {name!r} is invalid: expected 'package.module:function'")
    return pkgutil.resolve_name(name)


# ------------------------------------------------------------------------------------ a cell
def read_status(cell_dir: str) -> Dict[str, Any]:
    return read_json(os.path.join(cell_dir, STATUS_FILE)) or {}


def train_opts(cell: Dict[str, Any], cell_dir: str) -> List[str]:
    """The ``KEY VALUE`` overrides a cell trains with: its ``opts``, its seed and its folder."""
    return [*cell["opts"], "SEED", str(cell["seed"]), "OUTPUT_DIR", os.path.abspath(cell_dir)]


def cell_state(cell_dir: str, status: Optional[Dict[str, Any]] = None) -> State:
    """The status file's state, except that "running" without a live holder of the cell's lock
    (its process was killed) is :attr:`State.INTERRUPTED`."""
    status = read_status(cell_dir) if status is None else status
    state = State(status.get("state", State.PENDING))
    if state is State.RUNNING and not FileLock(os.path.join(cell_dir, LOCK_FILE)).is_held():
        return State.INTERRUPTED
    return state


@dataclasses.dataclass
class CellJob:
    """Run one cell (``cell_dir``) with the runner's execution options; submitit pickles it.

    Checkpointable in submitit's sense: on pre-emption or time-out the job is requeued and the
    cell resumes from its last detectron2 checkpoint.
    """

    cell_dir: str
    num_gpus: int = 1
    prune_checkpoints: bool = True
    timing: Optional[Dict[str, int]] = None  # {images, warmup}: time the final weights
    train_fn: Any = None  # "module:function", a callable (in-process runs), or None: engine.train_from_files

    def __call__(self) -> Dict[str, Any]:
        status = run_cell(self)
        if status.get("state") == State.FAILED:
            raise RuntimeError(f"cell {self.cell_dir} failed: {status.get('error')}")
        return status

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(dataclasses.replace(self))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))  # (a callable train_fn: refused by RunOptions)


def run_cell(job: CellJob) -> Dict[str, Any]:
    """Run the cell unless it is finished (then only its missing timing); its status dict.

    A non-finite loss is recorded as ``{"state": "diverged", "diverged_at": N}``; other errors as
    ``{"state": "failed", "error"}`` (the next run retries them). Returns ``{"state": "busy"}``
    without touching the cell when another process is running it.
    """
    cell = read_json(os.path.join(job.cell_dir, CELL_FILE))
    if cell is None:
        raise FileNotFoundError(f"{job.cell_dir} has no {CELL_FILE}: not an ablation cell folder")
    lock = FileLock(os.path.join(job.cell_dir, LOCK_FILE), what=f"cell {os.path.basename(job.cell_dir)}")
    try:
        lock.acquire()
    except LockHeld as e:
        return {"state": State.BUSY, "holder": e.holder, "message": str(e)}
    try:
        status = read_status(job.cell_dir)
        if not State(status.get("state", State.PENDING)).finished:
            status = _train(job, cell, status)
        if job.timing and status.get("state") == State.DONE:
            time_cell(job.cell_dir, cell, job.timing)
        return status
    finally:
        lock.release()


def _train(job: CellJob, cell: Dict[str, Any], previous: Dict[str, Any]) -> Dict[str, Any]:
    from focal_plugin.configs import resolve_config_file

    path = os.path.join(job.cell_dir, STATUS_FILE)
    resume = os.path.isfile(os.path.join(job.cell_dir, "last_checkpoint"))
    status: Dict[str, Any] = {
        "state": State.RUNNING, "cell": os.path.basename(job.cell_dir), "pid": os.getpid(),
        "host": socket.gethostname(), "started": now_iso(),
        "first_started": previous.get("first_started") or now_iso(),
        "attempts": int(previous.get("attempts", 0)) + 1, "resumed": resume,
        "commit": git_commit(), "device": describe_device(job.num_gpus), "python": sys.version.split()[0]}
    write_json_atomic(path, status)
    train_fn = job.train_fn if callable(job.train_fn) else \
        import_train_fn(job.train_fn) if job.train_fn else train_from_files
    start = time.perf_counter()
    try:
        config = resolve_config_file(cell["base"])
        result = train_fn(config, train_opts(cell, job.cell_dir), resume, job.num_gpus)
        first_test = ((cell.get("identity") or {}).get("DATASETS.TEST") or [None])[0]
        status.update(state=State.DONE, metrics=pick_metrics(result, first_test),
                      iterations=result.get("iterations"), weights=result.get("weights"),
                      max_iter=result.get("max_iter"), resumed_from_iter=result.get("resumed_from_iter"))
        if job.prune_checkpoints:
            status["pruned_checkpoints"] = prune_checkpoints(job.cell_dir)
    except Exception as exc:  # recorded; the run goes on with the next cell
        at = divergence_iteration(exc)
        if at is not None:
            status.update(state=State.DIVERGED, diverged_at=at, error=str(exc).strip().splitlines()[-1][:500])
        else:
            status.update(state=State.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000],
                          traceback=traceback.format_exc()[-4000:])
    status.update(finished=now_iso(), wall_time_s=time.perf_counter() - start)
    write_json_atomic(path, status)
    return status


def time_cell(cell_dir: str, cell: Dict[str, Any], timing: Dict[str, int]) -> Dict[str, Any]:
    """Time inference on the cell's final weights into ``timing.json`` unless it already holds a
    timing with these parameters (``{images, warmup}``); returns it. Weights that are not here
    (git keeps no checkpoints) are recorded as an error naming the file."""
    path = os.path.join(cell_dir, TIMING_FILE)
    if timing_current(cell_dir, timing):
        return read_json(path)
    weights = os.path.join(cell_dir, FINAL_CHECKPOINT)
    if not os.path.isfile(weights):
        out = {**timing, "ms": None, "error": f"{weights} is missing (git keeps no checkpoints): put the "
               "weights there and delete this file to time them"}
    else:
        from focal_plugin.analysis.inference_timing import measure_ms_per_image
        from focal_plugin.configs import resolve_config_file
        from focal_plugin.engine import setup_cfg

        cfg = setup_cfg(resolve_config_file(cell["base"]), train_opts(cell, cell_dir))
        out = {**measure_ms_per_image(cfg, weights, **timing), "timed": now_iso(),
               "host": socket.gethostname()}
    write_json_atomic(path, out)
    return out


def timing_current(cell_dir: str, timing: Dict[str, int]) -> bool:
    """Whether ``timing.json`` holds a timing with these parameters (or the error of weights that
    are not here: delete the file to time weights put there later)."""
    old = read_json(os.path.join(cell_dir, TIMING_FILE)) or {}
    same = all(old.get(k) == v for k, v in timing.items())
    return same and (old.get("ms") is not None or bool(old.get("error")))


def prune_checkpoints(cell_dir: str) -> List[str]:
    """Delete the intermediate ``model_NNNNNNN.pth`` of a finished cell (it is never resumed),
    keeping ``model_final.pth``; returns the names deleted. Diverged cells keep theirs."""
    if not os.path.isfile(os.path.join(cell_dir, FINAL_CHECKPOINT)):
        return []
    gone = []
    for name in sorted(os.listdir(cell_dir)):
        if re.fullmatch(r"model_\d+\.pth", name):
            os.remove(os.path.join(cell_dir, name))
            gone.append(name)
    return gone


def pick_metrics(result: Dict[str, Any], dataset: Optional[str] = None) -> Dict[str, Any]:
    """COCO bbox metrics of ``dataset`` (the cell's ``DATASETS.TEST[0]``), by name: a result
    read back from ``results.json`` (multi-process cells) has its datasets in sorted order."""
    per_dataset = result.get("metrics") or {}
    if not per_dataset:
        raise RuntimeError("training finished without evaluation results (DATASETS.TEST empty?)")
    first = per_dataset[dataset if dataset in per_dataset else next(iter(per_dataset))]
    bbox = first.get("bbox", first)
    return {k: (float(v) if v is not None else None) for k, v in bbox.items() if not k.startswith("AP-")}


# ------------------------------------------------------------------------ process entry point
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run one ablation cell (used by tools/ablate.py).")
    parser.add_argument("--job", required=True, help="CellJob as JSON")
    parser.add_argument("--cpus", default="", help="comma-separated CPU ids to pin to")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--parent-pid", type=int, default=0, help="die with this process")
    args = parser.parse_args(argv)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    if args.cpus:
        pin_to([int(c) for c in args.cpus.split(",")], args.threads or len(args.cpus.split(",")))
    job = CellJob(**json.loads(args.job))
    status = run_cell(job)
    print(f"[ablate] cell {job.cell_dir}: {status.get('state')}", flush=True)
    return {State.FAILED: EXIT_FAILED, State.BUSY: EXIT_BUSY}.get(State(status.get("state")), 0)


if __name__ == "__main__":
    # the canonical module's main, not this __main__ copy: CellJob pickles by its real name
    from focal_plugin.ablation.cell import main as _main

    sys.exit(_main())
