"""Where the runner's local cells run: CPU/GPU shares per worker, the cell's child process, and
the pool that runs cells in parallel — lending a finished worker's CPUs to a cell still running
once nothing is left to start (an odd last cell no longer trains on one core while another idles).
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Dict, List, Optional, Sequence

from focal_plugin.ablation import cell as cell_mod
from focal_plugin.ablation.files import FileLock, now_iso, write_json_atomic

#: the folder holding the focal_plugin package: put on the child's PYTHONPATH
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def core_shares(workers: int, cpus: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Split the CPUs this process may use into ``workers`` contiguous, disjoint shares.

    With more workers than CPUs, workers share CPUs round-robin (one each).
    """
    cpus = sorted(cpus if cpus is not None else (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity")
                                                  else range(os.cpu_count() or 1)))
    n = len(cpus)
    if workers <= n:
        return [cpus[i * n // workers:(i + 1) * n // workers] for i in range(workers)]
    return [[cpus[i % n]] for i in range(workers)]


def visible_gpus() -> List[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # pragma: no cover
        return []


def spawn_cell(cell_dir: str, cpus: Sequence[int], gpus: Sequence[str],
               share_token: Optional[str] = None) -> Dict[str, Any]:
    """Run one cell in a child process pinned to ``cpus`` (threads = their count) and ``gpus``;
    its log goes to ``cell_dir/run.log``. With ``share_token``, the cell takes CPUs offered with
    it (:func:`offer_cpus`). Returns the cell's status (or a busy / interrupted one)."""
    cmd = [sys.executable, "-m", "focal_plugin.ablation.cell", cell_dir, "--parent-pid", str(os.getpid()),
           "--cpus", ",".join(map(str, cpus))] + (["--share-token", share_token] if share_token else [])
    threads = str(len(cpus))
    path = os.pathsep.join(p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1",
               PYTHONPATH=path)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    with open(os.path.join(cell_dir, "run.log"), "a") as log:
        log.write(f"==== {now_iso()} runner pid {os.getpid()} on {socket.gethostname()}: "
                  f"cpus {list(cpus)} gpus {list(gpus)}\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    status = cell_mod.read_status(cell_dir)
    if rc == cell_mod.EXIT_BUSY:
        lock = FileLock(os.path.join(cell_dir, cell_mod.LOCK_FILE))
        h = lock.holder() or {}
        return {"state": "busy",
                "message": f"another process runs it (pid {h.get('pid')} on {h.get('host')})"}
    if rc != 0 and status.get("state") in (None, "running"):
        return {"state": "interrupted",
                "error": f"cell process exited with code {rc}; see {cell_dir}/run.log"}
    return status


# ------------------------------------------------------------------------------ CPU lending
def offer_cpus(cell_dir: str, cpus: Sequence[int], token: str) -> None:
    """Offer ``cpus`` to the cell running in ``cell_dir``, spawned with ``share_token=token``
    (taken by its ``cell.cpu_share_hook``; a cell of another pool ignores it)."""
    write_json_atomic(os.path.join(cell_dir, cell_mod.CPU_SHARE_FILE),
                      {"cpus": sorted(int(c) for c in cpus), "token": token, "offered": now_iso()})


def run_pool(cell_dirs: Sequence[str], workers: int, on_finished: Callable[[int, Dict[str, Any]], None],
             lend_cpus: bool = True, cpus: Optional[Sequence[int]] = None) -> None:
    """Run ``cell_dirs`` in ``workers`` parallel child processes, each pinned to its share of the
    CPUs (and GPUs); ``on_finished(index, status)`` after each (called under a lock).

    With ``lend_cpus`` (CPU-only runs of the built-in trainer on one process per cell, without
    inference timing, where thread counts must stay equal across rows): fewer cells than workers
    split all CPUs; the last cell to start also takes the shares of workers already idle; and a
    worker that finishes when nothing is left to start offers its CPUs to the running cell with
    the fewest, which takes them within its ``cell.cpu_share_hook``'s period.
    """
    if not cell_dirs:
        return
    gpus = visible_gpus()
    gpu_shares = [gpus[i * len(gpus) // workers:(i + 1) * len(gpus) // workers]
                  if len(gpus) >= workers else [gpus[i % len(gpus)]] if gpus else []
                  for i in range(workers)]
    lend_cpus = lend_cpus and not gpus
    # fewer cells than workers: each takes a larger share, unless thread counts must stay equal
    shares = core_shares(min(workers, len(cell_dirs)) if lend_cpus else workers, cpus)
    lend_cpus = lend_cpus and len({c for s in shares for c in s}) == sum(map(len, shares))
    workers = max(1, min(workers, len(cell_dirs)))
    slots: queue.Queue[int] = queue.Queue()
    for i in range(workers):
        slots.put(i)
    lock = threading.Lock()
    running: Dict[int, List[int]] = {}  # index -> its CPUs now
    started = [0]
    token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}" if lend_cpus else None

    def one(i: int) -> None:
        slot = slots.get()
        taken = [slot]
        with lock:
            started[0] += 1
            if lend_cpus and started[0] == len(cell_dirs):  # the last cell: idle workers' CPUs too
                while True:
                    try:
                        taken.append(slots.get_nowait())
                    except queue.Empty:
                        break
            running[i] = sorted({c for t in taken for c in shares[t]})
        try:
            status = spawn_cell(cell_dirs[i], running[i], gpu_shares[slot], share_token=token)
        finally:
            with lock:
                mine = running.pop(i)
                if lend_cpus and running and started[0] == len(cell_dirs):
                    j = min(running, key=lambda k: len(running[k]))
                    running[j] = sorted(set(running[j]) | set(mine))
                    offer_cpus(cell_dirs[j], running[j], token)
            for t in taken:
                slots.put(t)
        with lock:
            on_finished(i, status)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in as_completed([pool.submit(one, i) for i in range(len(cell_dirs))]):
            f.result()
