"""Where the runner's local cells run: a child process per cell, each on a fixed CPU (and GPU)
share with a fixed thread count (:mod:`focal_plugin.processes`: bitwise the same result whatever
``--workers`` is), and the pool that runs cells in parallel.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Sequence

from focal_plugin.ablation.cell import EXIT_BUSY, LOCK_FILE, CellJob, State, read_status
from focal_plugin.locks import FileLock, now_iso
from focal_plugin.processes import cpu_shares, gpu_shares, visible_gpus

#: the folder holding the focal_plugin package: put on the child's PYTHONPATH
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
