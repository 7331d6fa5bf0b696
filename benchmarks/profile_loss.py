#!/usr/bin/env python
"""torch.profiler over the fused FL's forward + backward: where a call's time goes (host vs device).

    python benchmarks/profile_loss.py                          # 200k x 80, CPU
    python benchmarks/profile_loss.py --device cuda --size 2000000x80

Prints the wall time per call (synchronized, as bench_loss.py measures it), the host (CPU) time
per call spent in the call, the device time of its kernels, and the operators sorted by host time.
On a GPU a call whose host time exceeds its kernels' time is launch-bound: the kernels wait for
Python, dispatch and torch.compile's guards, not for memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_loss import ALPHA, GAMMA, _inputs  # noqa: E402

from focal_plugin.losses import sigmoid_focal_loss  # noqa: E402


def _sync(x):
    if x.is_cuda:
        torch.cuda.synchronize()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="200000x80", help="MxK logits")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    m, k = (int(v) for v in args.size.split("x"))
    x, t, _ = _inputs(m, k, args.device)

    def call():
        x.grad = None
        with record_function("focal:call"):
            sigmoid_focal_loss(x, t, ALPHA, GAMMA, "sum").backward()

    for _ in range(3):  # compilation and first-touch allocations
        call()
    _sync(x)
    start = time.perf_counter()
    for _ in range(args.calls):
        call()
        _sync(x)
    wall = (time.perf_counter() - start) / args.calls
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.calls):
            call()
            _sync(x)
    avg = prof.key_averages()
    host = max((e.cpu_time_total for e in avg if e.key == "focal:call"), default=0.0)
    # the kernels themselves: device-side events, not the CPU ops that launched them (which carry
    # the same time as their "device time") nor the GPU copy of the "focal:call" annotation
    device_us = sum(e.time_range.elapsed_us() for e in prof.events()
                    if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                    and not e.name.startswith("focal:"))
    print(f"== fused FL fwd+bwd, {m} x {k}, {args.device}, {args.calls} calls, torch {torch.__version__} ==")
    print(f"wall {1e3 * wall:.3f} ms/call (synchronized); host time in the call "
          f"{host / 1e3 / args.calls:.3f} ms/call (profiled)"
          + (f"; device kernels {device_us / 1e3 / args.calls:.3f} ms/call" if x.is_cuda else ""))
    sort = "self_cpu_time_total"
    print(avg.table(sort_by=sort, row_limit=args.top))
    if x.is_cuda:
        print(avg.table(sort_by="self_cuda_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
