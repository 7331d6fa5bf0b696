"""Peak memory of one call, shared by the benchmarks: CUDA allocator peak on a GPU; on the CPU the
rise of the process's peak resident set size (Linux VmHWM, reset through /proc/self/clear_refs)
above the resident size just before the call, with glibc told (mallopt M_MMAP_THRESHOLD) to serve
every allocation >= 128 KiB by mmap and the free heap handed back (malloc_trim) before the call,
so that freed buffers leave the resident set and the figure is the call's real high-water mark.
Not an allocator-level count (torch has none on the CPU)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
from typing import Callable, Optional

import torch


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def mmap_small_allocations() -> bool:
    """glibc: serve allocations >= 128 KiB by mmap, so that freeing them shrinks the RSS. Call it
    after the timings (it slows allocation-heavy code down)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _trim_heap() -> None:
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """MiB the call ``fn()`` needs above what is allocated before it (None: cannot measure)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    _trim_heap()
    if not _reset_cpu_peak():
        return None
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024
