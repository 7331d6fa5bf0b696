"""One ablation cell (a spec row at one seed): train, evaluate, time, record — resumably.

A cell lives in its own folder, which is also the detectron2 ``OUTPUT_DIR``::

    cell.json      what to run (written by the runner): base config, overrides, seed, timing
    status.json    what happened (written here, atomically): state, metrics, wall time, device
    config.yaml    the resolved config (detectron2's ``default_setup``)
    log.txt        detectron2's per-iteration log;  run.log: the process's stdout/stderr
    last_checkpoint, model_*.pth, results.json     detectron2's checkpoints, the engine's result
    cpus.json      CPUs the runner lends the cell once other workers are idle (cpu_share_hook)

States: ``running`` (or interrupted, when no process holds the cell's lock), ``done``,
``diverged`` (a non-finite loss: "diverged at iteration N"; finished, never rerun) and
``failed`` (any other error; rerun by the next run). A finished cell (done / diverged) is never
run again; an interrupted one resumes from its last checkpoint (detectron2's ``last_checkpoint``).
A lock in the folder (``.cell.lock``) keeps two processes from running the same cell.

Run as ``python -m focal_plugin.ablation.cell CELL_DIR [--cpus 0,1] [--parent-pid PID]`` by the
local launcher, or through :class:`CellJob` by submitit.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from focal_plugin.ablation.files import FileLock, LockHeld, now_iso, read_json, write_json_atomic

CELL_FILE = "cell.json"
STATUS_FILE = "status.json"
LOCK_FILE = ".cell.lock"
CPU_SHARE_FILE = "cpus.json"
FINISHED = ("done", "diverged")
EXIT_FAILED, EXIT_BUSY = 1, 3

#: ``train_fn(config_file, opts, resume, num_gpus) -> engine.train's dict`` (default
#: :func:`train_cell`). Another one can be named in ``cell.json`` as "module:function" (the
#: runner's ``train_fn``), e.g. a different trainer, or a fake in tests.
TrainFn = Callable[[str, Sequence[str], bool, int], Dict[str, Any]]


def import_train_fn(name: str) -> TrainFn:
    """The function named ``"package.module:function"``."""
    import importlib

    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"train_fn {name!r} is invalid: expected 'package.module:function'")
    return getattr(importlib.import_module(module), attr)


def cell_opts(cell: Dict[str, Any], cell_dir: str) -> List[str]:
    """The cell's full ``KEY VALUE`` overrides: the row's, then its seed and output folder."""
    return [*cell["opts"], "SEED", str(cell["seed"]), "OUTPUT_DIR", os.path.abspath(cell_dir)]


def divergence_iteration(exc: BaseException) -> Optional[int]:
    """The iteration of a non-finite-loss error (-1 if not stated), or None for other errors.

    Recognises the model's ``FloatingPointError("... at iteration N ...")``, detectron2's
    "Loss became infinite or NaN at iteration=N!", also when re-raised from a spawned worker.
    """
    text = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, FloatingPointError) and "FloatingPointError" not in text:
        return None
    m = re.search(r"iteration\s*=?\s*(\d+)", text)
    return int(m.group(1)) if m else -1


# ------------------------------------------------------------------------ training in a cell
def _train_worker(config_file: str, opts: Sequence[str], resume: bool) -> Dict[str, Any]:
    """One training process: what ``train_net.py``'s ``main`` does, for this cell's config."""
    import argparse as _argparse

    from detectron2.engine import default_setup
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    import focal_plugin  # noqa: F401  (registrations in spawned workers)
    from focal_plugin.engine import setup_cfg, train

    cfg = setup_cfg(config_file, list(opts))
    default_setup(cfg, _argparse.Namespace(config_file=config_file, opts=list(opts), resume=resume,
                                           eval_only=False))
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="focal_plugin")
    token = CPU_SHARE["token"]
    hooks = [cpu_share_hook(cfg.OUTPUT_DIR, token)] if token and comm.get_world_size() == 1 else []
    return train(cfg, resume=resume, hooks=hooks)


#: this cell process's CPU lending: the token of the pool that spawned it (``--share-token``; None:
#: no lending, e.g. in-process, submitit or multi-GPU cells) and the offers taken so far
CPU_SHARE: Dict[str, Any] = {"token": None, "lent": []}


def cpu_share_hook(output_dir: str, token: str, period: int = 20):
    """A detectron2 hook: every ``period`` iterations, re-pin the training process (affinity and
    torch threads, in the training thread, where torch sizes its intra-op pool) to the CPUs that
    its runner's pool offers in ``OUTPUT_DIR/cpus.json`` (``launch.offer_cpus``: a finished worker
    lends its CPUs to a cell still running). Offers of another pool (``token``: a killed earlier
    run) are ignored; an offer that cannot be applied is logged, never fatal. More threads change
    floating-point summation order, so a cell that took CPUs is not bitwise reproducible: each
    offer taken is logged and recorded in ``status.json`` (``device.cpus_lent``)."""
    from detectron2.engine import HookBase

    log = logging.getLogger(__name__)

    class CpuShareHook(HookBase):
        seen = None

        def after_step(self):
            if (self.trainer.iter + 1) % period:
                return
            path = os.path.join(output_dir, CPU_SHARE_FILE)
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                return
            if mtime == self.seen:
                return
            self.seen = mtime
            offer = read_json(path) or {}
            cpus = offer.get("cpus")
            if offer.get("token") != token or not cpus or not hasattr(os, "sched_getaffinity") \
                    or set(cpus) == os.sched_getaffinity(0):
                return
            it = self.trainer.iter + 1
            try:
                pin_to(cpus)
            except (OSError, ValueError, RuntimeError) as e:
                log.warning(f"iteration {it}: could not take the CPUs {cpus} the runner offered: {e}")
                return
            CPU_SHARE["lent"].append({"iteration": it, "cpus": list(cpus)})
            log.info(f"iteration {it}: the runner lent idle CPUs: now on CPUs {cpus}")

    return CpuShareHook()


def train_cell(config_file: str, opts: Sequence[str], resume: bool, num_gpus: int = 1) -> Dict[str, Any]:
    """Train (and evaluate) one cell on ``num_gpus`` workers; the engine's result dict.

    The only place the runner starts training: one process directly, several through the
    plugin's ``launch`` (detectron2's on CUDA, gloo processes on CPU).
    """
    if num_gpus <= 1:
        return _train_worker(config_file, opts, resume)
    from focal_plugin.compat import launch

    launch(_train_worker, num_gpus, dist_url="auto", args=(config_file, list(opts), resume))
    out = opts[list(opts).index("OUTPUT_DIR") + 1]
    result = read_json(os.path.join(out, "results.json"))
    if result is None:
        raise RuntimeError(f"training on {num_gpus} workers wrote no results.json in {out}")
    return result


def _time_cell(config_file: str, opts: Sequence[str], timing: Dict[str, int]) -> Dict[str, Any]:
    from focal_plugin.ablation.timing import measure_ms_per_image
    from focal_plugin.engine import setup_cfg

    cfg = setup_cfg(config_file, list(opts))
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    return measure_ms_per_image(cfg, weights, images=timing["images"], warmup=timing["warmup"])


# ------------------------------------------------------------------------------ environment
CODE_PATHS = ("focal_plugin", "tools", "train_net.py", "setup.py")


def _git_commit(repo: Optional[str] = None) -> str:
    """This checkout's commit, "+dirty" with uncommitted changes to :data:`CODE_PATHS`."""
    repo = repo or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        # "+dirty": uncommitted changes to what a cell runs (code, configs, specs) — not to the
        # results/ and docs that runs such as `make reproduce-mini` themselves update
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no", "--",
                                *CODE_PATHS], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown (not a git checkout)"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(num_gpus: int = 1) -> Dict[str, Any]:
    """The device a cell ran on, for the report's environment section."""
    import torch

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    info: Dict[str, Any] = {"host": socket.gethostname(), "cpu": _cpu_name(), "cpus": cpus,
                            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = min(max(num_gpus, 1), torch.cuda.device_count())
    return info


# ------------------------------------------------------------------------------------ a cell
def read_status(cell_dir: str) -> Dict[str, Any]:
    return read_json(os.path.join(cell_dir, STATUS_FILE)) or {}


def cell_state(cell_dir: str, status: Optional[Dict[str, Any]] = None) -> str:
    """pending | running | interrupted | failed | done | diverged | ...: the status file's state,
    except that "running" without a live holder of the cell's lock (its process was killed) is
    "interrupted"."""
    status = read_status(cell_dir) if status is None else status
    state = status.get("state")
    if state is None:
        return "pending"
    if state == "running" and not FileLock(os.path.join(cell_dir, LOCK_FILE)).is_held():
        return "interrupted"
    return state


def run_cell(cell_dir: str, train_fn: Optional[TrainFn] = None) -> Dict[str, Any]:
    """Run the cell in ``cell_dir`` unless it is finished; return its status dict.

    Resumes from the cell's last checkpoint when there is one. A non-finite loss is recorded as
    ``{"state": "diverged", "diverged_at": N}``; other errors as ``{"state": "failed", "error"}``
    (the next run retries them). Returns ``{"state": "busy", "holder": {...}}`` without touching
    the cell when another process is running it.
    """
    cell = read_json(os.path.join(cell_dir, CELL_FILE))
    if cell is None:
        raise FileNotFoundError(f"{cell_dir} has no {CELL_FILE}: not an ablation cell folder")
    lock = FileLock(os.path.join(cell_dir, LOCK_FILE), what=f"cell {cell['row']}/seed{cell['seed']}")
    try:
        lock.acquire()
    except LockHeld as e:
        return {"state": "busy", "holder": e.holder, "message": str(e)}
    if train_fn is None:
        train_fn = import_train_fn(cell["train_fn"]) if cell.get("train_fn") else train_cell
    try:
        return _run_locked(cell_dir, cell, train_fn)
    finally:
        lock.release()


def _run_locked(cell_dir: str, cell: Dict[str, Any], train_fn: TrainFn) -> Dict[str, Any]:
    previous = read_status(cell_dir)
    if previous.get("state") in FINISHED:
        return previous
    path = os.path.join(cell_dir, STATUS_FILE)
    resume = os.path.isfile(os.path.join(cell_dir, "last_checkpoint"))
    num_gpus = int(cell.get("num_gpus", 1))
    status: Dict[str, Any] = {
        "state": "running", "cell": f"{cell['row']}/seed{cell['seed']}", "pid": os.getpid(),
        "host": socket.gethostname(), "started": now_iso(),
        "first_started": previous.get("first_started") or now_iso(),
        "attempts": int(previous.get("attempts", 0)) + 1, "resumed": resume,
        "commit": _git_commit(), "device": describe_device(num_gpus), "python": sys.version.split()[0],
    }
    if previous.get("trained_by") and resume:  # resumes weights copied from a twin (ablation.twins)
        status["trained_by"] = previous["trained_by"]
    write_json_atomic(path, status)
    opts = cell_opts(cell, cell_dir)
    start = time.perf_counter()
    try:
        result = train_fn(cell["base"], opts, resume, num_gpus)
        metrics = _pick_metrics(result, cell)
        if cell.get("timing"):
            timing = _time_cell(cell["base"], opts, cell["timing"])
            metrics["ms"] = timing["ms"]
            status["timing"] = timing
        status.update(state="done", metrics=metrics, iterations=result.get("iterations"),
                      max_iter=result.get("max_iter"), resumed_from_iter=result.get("resumed_from_iter"))
        if result.get("iterations"):  # it trained steps of its own: not only the twin's weights
            status.pop("trained_by", None)
        if cell.get("prune_checkpoints", True):
            status["pruned_checkpoints"] = prune_checkpoints(cell_dir)
    except Exception as exc:  # recorded; the run goes on with the next cell
        at = divergence_iteration(exc)
        if at is not None:
            status.update(state="diverged", diverged_at=at, error=str(exc).strip().splitlines()[-1][:500])
        else:
            status.update(state="failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                          traceback=traceback.format_exc()[-4000:])
    status["finished"] = now_iso()
    status["wall_time_s"] = time.perf_counter() - start
    if CPU_SHARE["lent"]:  # CPUs taken while training (cpu_share_hook): the device changed
        status["device"]["cpus_lent"] = list(CPU_SHARE["lent"])
    write_json_atomic(path, status)
    return status


def prune_checkpoints(cell_dir: str) -> List[str]:
    """Delete the intermediate ``model_NNNNNNN.pth`` of a finished cell (it is never resumed),
    keeping ``model_final.pth``; returns the names deleted. Diverged cells keep theirs."""
    if not os.path.isfile(os.path.join(cell_dir, "model_final.pth")):
        return []
    gone = []
    for name in sorted(os.listdir(cell_dir)):
        if re.fullmatch(r"model_\d+\.pth", name):
            os.remove(os.path.join(cell_dir, name))
            gone.append(name)
    return gone


def _pick_metrics(result: Dict[str, Any], cell: Dict[str, Any]) -> Dict[str, Any]:
    """COCO bbox metrics of the cell's test dataset (the first, if there are several)."""
    per_dataset = result.get("metrics") or {}
    if not per_dataset:
        raise RuntimeError("training finished without evaluation results (DATASETS.TEST empty?)")
    name = cell.get("test_dataset") or next(iter(per_dataset))
    bbox = per_dataset[name].get("bbox", per_dataset[name])
    return {k: (float(v) if v is not None else None) for k, v in bbox.items() if not k.startswith("AP-")}


# ------------------------------------------------------------------------------------ submitit
class CellJob:
    """A submitit job running one cell (one job per cell; ``num_gpus`` from ``cell.json``).

    Checkpointable in submitit's sense: on pre-emption or time-out the job is requeued and the
    cell resumes from its last detectron2 checkpoint.
    """

    def __init__(self, cell_dir: str, train_fn: Optional[TrainFn] = None):
        self.cell_dir = cell_dir
        self.train_fn = train_fn  # a callable: debug executor only (else named in cell.json)

    def __call__(self) -> Dict[str, Any]:
        status = run_cell(self.cell_dir, train_fn=self.train_fn)
        if status.get("state") == "failed":
            raise RuntimeError(f"cell {self.cell_dir} failed: {status.get('error')}")
        return status

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(CellJob(self.cell_dir, self.train_fn))


# ------------------------------------------------------------------------ process entry point
def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the runner dies (even by SIGKILL), so an
    interrupted runner leaves no orphan training; elsewhere, best effort."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover
        pass
    if os.getppid() != parent_pid:  # the runner died before prctl took effect
        os._exit(75)


def pin_to(cpus: Sequence[int]) -> None:
    """Pin this process to ``cpus`` and size torch's thread pools to them."""
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    torch.set_num_threads(len(cpus))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run one ablation cell (used by tools/ablate.py).")
    parser.add_argument("cell_dir")
    parser.add_argument("--cpus", default="", help="comma-separated CPU ids to pin to")
    parser.add_argument("--parent-pid", type=int, default=0, help="die with this process")
    parser.add_argument("--share-token", default=None, help="take CPUs offered with this token")
    args = parser.parse_args(argv)
    CPU_SHARE["token"] = args.share_token
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    if args.cpus:
        pin_to([int(c) for c in args.cpus.split(",")])
    status = run_cell(args.cell_dir)
    state = status.get("state")
    print(f"[ablate] cell {args.cell_dir}: {state}", flush=True)
    return {"failed": EXIT_FAILED, "busy": EXIT_BUSY}.get(state, 0)


if __name__ == "__main__":
    # Run the canonical module's main, not this __main__ copy, so that CellJob pickles by its
    # real name and there is one module state.
    from focal_plugin.ablation.cell import main as _main

    sys.exit(_main())
