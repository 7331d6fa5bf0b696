"""Where the runner's cells run: locally, a child process per cell, each on a fixed CPU (and GPU)
share with a fixed thread count (:mod:`focal_plugin.processes`: bitwise the same result whatever
``--workers`` is); or one submitit job per cell. Every launcher calls ``on_finished(index, status)``
as each cell ends.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional, Sequence

from focal_plugin.ablation.cell import EXIT_BUSY, LOCK_FILE, CellJob, State, read_status
from focal_plugin.io import write_json_atomic
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


def run_submitit(jobs: Sequence[CellJob], folder: str, cluster: Optional[str], gpus_per_cell: int,
                 params: Dict[str, Any], on_finished: Callable[[int, Dict[str, Any]], None],
                 log: Callable[[str], None]) -> None:
    """Submit ``jobs`` in one batch (a job array on SLURM), one job per cell, and report each as
    it completes (``submitit.helpers.as_completed``). ``params``: submitit's ``update_parameters``."""
    try:
        import submitit
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("--launcher submitit needs submitit: pip install 'focal_plugin[slurm]'") from e
    executor = submitit.AutoExecutor(folder=os.path.join(folder, "%j"), cluster=cluster)
    gpus = gpus_per_cell if executor.cluster == "slurm" or visible_gpus() else 0
    params = {"timeout_min": 60 * 24, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": gpus, **params}
    executor.update_parameters(**({"timeout_min": params["timeout_min"]} if executor.cluster == "debug"
                                  else params))
    with executor.batch():
        submitted = [executor.submit(job) for job in jobs]
    for job, sub in zip(jobs, submitted):
        write_json_atomic(os.path.join(job.cell_dir, "submitit.json"),
                          {"job_id": sub.job_id, "cluster": executor.cluster, "submitted": now_iso()})
    log(f"[ablate] submitted {len(jobs)} job(s) to {executor.cluster} (logs: {folder})")
    index = {sub.job_id: i for i, sub in enumerate(submitted)}
    for sub in submitit.helpers.as_completed(submitted, poll_frequency=5):
        on_finished(index[sub.job_id], _job_status(sub, jobs[index[sub.job_id]].cell_dir))


def _job_status(job, cell_dir: str) -> Dict[str, Any]:
    try:
        return job.result()
    except Exception as e:  # a failed job: its status.json says why
        status = read_status(cell_dir) or {"state": State.FAILED, "error": str(e)}
        if status.get("state") == State.RUNNING:
            status = {"state": State.INTERRUPTED, "error": str(e)[-500:]}
        return status
