"""Where the runner's local cells run: CPU/GPU shares per worker and the cell's child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

from focal_plugin.ablation import cell as cell_mod
from focal_plugin.ablation.files import FileLock, now_iso

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


def spawn_cell(cell_dir: str, cpus: Sequence[int], gpus: Sequence[str]) -> Dict[str, Any]:
    """Run one cell in a child process pinned to ``cpus`` (threads = their count) and ``gpus``;
    its log goes to ``cell_dir/run.log``. Returns the cell's status (or a busy / interrupted one)."""
    cmd = [sys.executable, "-m", "focal_plugin.ablation.cell", cell_dir, "--parent-pid", str(os.getpid()),
           "--cpus", ",".join(map(str, cpus))]
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
