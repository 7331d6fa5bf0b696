"""Where the runner's local cells run: a fixed CPU (and GPU) share per worker, a child process
per cell, and the pool that runs cells in parallel.

Every cell runs with the same thread count (``threads``) on CPUs of its own, whatever the number
of workers, so a cell's result is bitwise the same at ``--workers 1`` and ``--workers 2``: torch's
summation order depends on its thread count. Nothing is re-pinned while a cell runs.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence

from focal_plugin.ablation.cell import EXIT_BUSY, LOCK_FILE, CellJob, State, read_status
from focal_plugin.locks import FileLock, now_iso

#: the folder holding the focal_plugin package: put on the child's PYTHONPATH
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def available_cpus() -> List[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_shares(workers: int, threads: int, cpus: Optional[Sequence[int]] = None) -> List[List[int]]:
    """``workers`` disjoint shares of ``threads`` CPUs each; with too few CPUs, shares wrap
    around and overlap (workers then compete for CPUs, but each keeps its thread count)."""
    cpus = sorted(cpus) if cpus is not None else available_cpus()
    return [[cpus[(i * threads + j) % len(cpus)] for j in range(threads)] for i in range(workers)]


def visible_gpus() -> List[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # pragma: no cover
        return []


def gpu_shares(workers: int, gpus: Sequence[str]) -> List[List[str]]:
    if not gpus:
        return [[] for _ in range(workers)]
    if len(gpus) < workers:
        return [[gpus[i % len(gpus)]] for i in range(workers)]
    return [list(gpus[i * len(gpus) // workers:(i + 1) * len(gpus) // workers]) for i in range(workers)]


def spawn_cell(job: CellJob, cpus: Sequence[int], threads: int, gpus: Sequence[str]) -> Dict[str, Any]:
    """Run one cell in a child process pinned to ``cpus`` with ``threads`` torch threads (and
    ``gpus``); its output goes to ``run.log`` in the cell. Returns the cell's status (or a busy
    or interrupted one)."""
    cmd = [sys.executable, "-m", "focal_plugin.ablation.cell", "--job", job.to_json(),
           "--parent-pid", str(os.getpid()), "--cpus", ",".join(map(str, cpus)), "--threads", str(threads)]
    path = os.pathsep.join(p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
               PYTHONPATH=path, **({"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {}))
    with open(os.path.join(job.cell_dir, "run.log"), "a") as log:
        log.write(f"==== {now_iso()} runner pid {os.getpid()} on {socket.gethostname()}: "
                  f"cpus {list(cpus)} threads {threads} gpus {list(gpus)}\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    status = read_status(job.cell_dir)
    if rc == EXIT_BUSY:
        h = FileLock(os.path.join(job.cell_dir, LOCK_FILE)).holder() or {}
        return {"state": State.BUSY,
                "message": f"another process runs it (pid {h.get('pid')} on {h.get('host')})"}
    if rc != 0 and status.get("state") in (None, State.RUNNING):
        return {"state": State.INTERRUPTED, "error": f"cell process exited with code {rc}; see "
                f"{job.cell_dir}/run.log"}
    return status


def run_pool(jobs: Sequence[CellJob], workers: int, threads: int,
             on_finished: Callable[[int, Dict[str, Any]], None]) -> None:
    """Run ``jobs`` in ``workers`` parallel child processes, each on its fixed share of the CPUs
    (:func:`cpu_shares`) and GPUs; ``on_finished(index, status)`` after each (under a lock)."""
    if not jobs:
        return
    cpus, gpus = cpu_shares(workers, threads), gpu_shares(workers, visible_gpus())
    slots: queue.Queue[int] = queue.Queue()
    for i in range(workers):
        slots.put(i)
    lock = threading.Lock()

    def one(i: int) -> None:
        slot = slots.get()
        try:
            status = spawn_cell(jobs[i], cpus[slot], threads, gpus[slot])
        finally:
            slots.put(slot)
        with lock:
            on_finished(i, status)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(one, i) for i in range(len(jobs))]:
            f.result()
