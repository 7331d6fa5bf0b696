"""Child processes with fixed shares of the machine: CPU and GPU shares, pinning, and a child that
dies with its parent.

Every worker gets the same thread count on CPUs of its own, whatever the number of workers, so a
job's result is bitwise the same at one worker and at two: torch's summation order depends on its
thread count. Nothing is re-pinned while a job runs.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from typing import List, Optional, Sequence


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


def die_with_parent(parent_pid: int, period_s: float = 1.0) -> None:
    """End this process when its parent dies (even by SIGKILL): an interrupted runner leaves no
    orphan training behind to race the next run for the same output."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(period_s)
        os._exit(75)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def pin_to(cpus: Sequence[int], threads: int) -> None:
    """Pin this process to ``cpus`` and fix torch's intra-op threads (results depend on them)."""
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    torch.set_num_threads(threads)


def cpu_name() -> str:
    """The CPU model (/proc/cpuinfo's "model name"; else the platform's processor or machine)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
