"""Forward+backward time and peak memory of our losses vs fvcore's and torchvision's focal loss.

    python benchmarks/bench_loss.py            # 200k x 80 and 2M x 80 logits
    python benchmarks/bench_loss.py --quick    # 200k x 80 only, fewer repetitions
    python benchmarks/bench_loss.py --device cuda --quick   # on a GPU (fused kernels compiled for it)

What is measured, per method and size (float32 logits on ``--device``, the CPU by default,
reduction "sum", as detectron2's RetinaNet calls ``sigmoid_focal_loss_jit``):

* time: one forward + backward (``loss.backward()`` into logits that require grad), median of
  ``--reps`` repetitions taken round-robin over the methods (so load from other processes hits
  every method alike), after warm-up calls that include torch.compile's compilation;
* peak memory: the rise of the process's peak resident set size (Linux VmHWM, reset through
  /proc/self/clear_refs) above the resident size just before the call, inputs already allocated.
  Measured after all timings, with glibc told (mallopt M_MMAP_THRESHOLD) to serve every
  allocation >= 128 KiB by mmap, so freed buffers leave the resident set and the figure is the
  real high-water mark of the call: saved activations, temporaries and the gradient (for the
  sizes here every tensor is > 32 MiB and mmapped by glibc anyway). It is not an allocator-level
  count (torch has none on the CPU). On a GPU: the CUDA allocator's peak above what was allocated.
* the floor: one elementwise pass over the same logits (``x * 2`` into a fresh tensor: read the
  logits once, write a tensor of their size once). A fused forward+backward cannot beat it by much:
  it must read the logits (and labels) and write the gradient, so it is memory-bound at ~1 such
  pass. "vs floor" = method time / floor time (the issue's limit: fused FL within 6x at 200k x 80).

Ratios are printed against fvcore's ``sigmoid_focal_loss`` measured in the same run:
speedup = fvcore time / method time; memory = method peak / fvcore peak.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fvcore.nn  # noqa: E402
import torchvision.ops  # noqa: E402

from focal_plugin.io import write_json_atomic  # noqa: E402
from focal_plugin.losses import (  # noqa: E402
    build_classification_loss,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
)
from focal_plugin.losses.fused import kernel_mode  # noqa: E402

# isort: split
from _peak_memory import mmap_small_allocations  # noqa: E402
from _peak_memory import peak_mib as _peak_mib  # noqa: E402

GAMMA, ALPHA, BETA = 2.0, 0.25, 1.0
#: the memory-bound floor: one elementwise pass over the logits (no backward)
FLOOR = "floor: one elementwise pass"


def methods(num_classes: int):
    """name -> (fn(x, targets, labels) -> scalar loss, baseline name for the ratio)."""
    fl_mod = build_classification_loss("sigmoid_focal", gamma=GAMMA, alpha=ALPHA)
    fl_mod_ref = build_classification_loss("sigmoid_focal", gamma=GAMMA, alpha=ALPHA, fused=False)
    return {
        "fvcore FL": lambda x, t, lab: fvcore.nn.sigmoid_focal_loss(x, t, ALPHA, GAMMA, "sum"),
        "fvcore FL (jit, detectron2)": lambda x, t, lab: fvcore.nn.sigmoid_focal_loss_jit(
            x, t, ALPHA, GAMMA, "sum"),
        "torchvision FL": lambda x, t, lab: torchvision.ops.sigmoid_focal_loss(x, t, ALPHA, GAMMA, "sum"),
        "ours FL fused": lambda x, t, lab: sigmoid_focal_loss(x, t, ALPHA, GAMMA, "sum"),
        "ours FL reference": lambda x, t, lab: sigmoid_focal_loss(x, t, ALPHA, GAMMA, "sum", fused=False),
        "ours FL* fused (g2 b1)": lambda x, t, lab: sigmoid_focal_loss_star(x, t, ALPHA, GAMMA, "sum", BETA),
        "fvcore FL* (g2 b0)": lambda x, t, lab: fvcore.nn.sigmoid_focal_loss_star(x, t, ALPHA, GAMMA, "sum"),
        "ours CE (torch BCE x alpha_t)": lambda x, t, lab: sigmoid_ce_loss(x, t, ALPHA, "sum"),
        "torch BCE-with-logits": lambda x, t, lab: F.binary_cross_entropy_with_logits(x, t, reduction="sum"),
        # what the detector runs: labels in, one-hot built by the caller for fvcore
        "detector: one_hot + fvcore jit": lambda x, t, lab: fvcore.nn.sigmoid_focal_loss_jit(
            x, F.one_hot(lab, num_classes + 1)[:, :-1].to(x.dtype), ALPHA, GAMMA, "sum"),
        "detector: ours per-anchor fused": lambda x, t, lab: fl_mod(x, lab).sum(),
        "detector: ours per-anchor ref": lambda x, t, lab: fl_mod_ref(x, lab).sum(),
        FLOOR: lambda x, t, lab: torch.mul(x.detach(), 2.0),
    }


def _call(fn, x, t, lab) -> None:
    out = fn(x, t, lab)
    if out.requires_grad:  # the floor has no backward
        out.backward()


def run_once(fn, x, t, lab) -> float:
    x.grad = None
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    _call(fn, x, t, lab)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_mib(fn, x, t, lab) -> float | None:
    x.grad = None
    peak = _peak_mib(lambda: _call(fn, x, t, lab), x.device)
    x.grad = None
    return peak


def _inputs(m: int, k: int, device: str = "cpu"):
    torch.manual_seed(0)
    x = (torch.randn(m, k) * 3).to(device).requires_grad_()
    lab = torch.randint(0, k + 1, (m,))
    lab[torch.rand(m) < 0.9] = k  # ~90% background anchors, as in detection
    t = F.one_hot(lab, k + 1)[:, :k].float().to(device)
    return x, t, lab.to(device)


def _table(k: int, selected, big: bool):
    table = {name: fn for name, fn in methods(k).items() if name in selected}
    if big:  # the reference/torchvision variants add minutes at 2M x 80
        table = {n: f for n, f in table.items() if "ref" not in n and "torchvision" not in n}
    return table


def time_size(m: int, k: int, reps: int, selected, big: bool, device: str = "cpu"):
    x, t, lab = _inputs(m, k, device)
    table = _table(k, selected, big)
    for fn in table.values():  # warm-up: compilation, first-touch allocations
        run_once(fn, x, t, lab)
        run_once(fn, x, t, lab)
    times = {name: [] for name in table}
    for _ in range(reps):
        for name, fn in table.items():
            times[name].append(run_once(fn, x, t, lab))
    return {name: {"time_ms": 1e3 * statistics.median(v), "times_ms": [round(1e3 * s, 2) for s in v]}
            for name, v in times.items()}


def memory_size(m: int, k: int, selected, big: bool, device: str = "cpu"):
    x, t, lab = _inputs(m, k, device)
    table = _table(k, selected, big)
    for fn in table.values():
        run_once(fn, x, t, lab)
    return {name: peak_mib(fn, x, t, lab) for name, fn in table.items()}


def print_table(m, k, res, device="cpu"):
    base = res["fvcore FL"]
    floor = res.get(FLOOR)
    print(f"\n== {m} x {k} logits ({m * k / 1e6:.1f}M elements, float32, reduction='sum', {device}) ==")
    print(f"{'method':34s} {'fwd+bwd ms':>11s} {'speedup':>8s} {'vs floor':>9s} {'peak MiB':>9s} "
          f"{'mem ratio':>9s}")
    for name, r in res.items():
        speed = base["time_ms"] / r["time_ms"]
        vs_floor = f"{r['time_ms'] / floor['time_ms']:.1f}x" if floor else "n/a"
        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        ratio = ("n/a" if r["peak_mib"] is None or not base["peak_mib"]
                 else f"{r['peak_mib'] / base['peak_mib']:.2f}")
        print(f"{name:34s} {r['time_ms']:11.2f} {speed:7.2f}x {vs_floor:>9s} {mem:>9s} {ratio:>9s}")
    ours = res.get("ours FL fused")
    if ours and floor:
        print(f"RATIO fused FL fwd+bwd vs one elementwise pass at {m}x{k}: "
              f"{ours['time_ms'] / floor['time_ms']:.1f}x the floor")
    if ours:
        print(f"RATIO fused FL vs fvcore FL at {m}x{k}: {base['time_ms'] / ours['time_ms']:.2f}x faster, "
              + ("peak memory n/a" if ours["peak_mib"] is None or not base["peak_mib"]
                 else f"{ours['peak_mib'] / base['peak_mib']:.2f}x the peak memory"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200k x 80 only, 3 repetitions")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions (default 7, 3 at >= 1e8 elements; 3 with --quick)")
    parser.add_argument("--sizes", default=None, help="comma-separated MxK, e.g. 200000x80,2000000x80")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the method names")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 7)
    sizes = args.sizes or ("200000x80" if args.quick else "200000x80,2000000x80")
    names = list(methods(80))
    selected = set(args.methods.split(",")) | {"fvcore FL", FLOOR} if args.methods else set(names)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, fused kernels: "
          f"{kernel_mode(device)}, load average at start: {os.getloadavg()[0]:.2f}")
    specs = [tuple(int(v) for v in spec.lower().split("x")) for spec in sizes.split(",")]
    out = {}
    for m, k in specs:  # all timings first, with the default allocator settings
        big = m * k >= 10**8  # fvcore takes ~10 s per repetition there on 2 cores
        out[f"{m}x{k}"] = time_size(m, k, max(3, reps // 2) if big and not args.reps else reps,
                                    selected, big, args.device)
    can_measure = device.type == "cuda" or mmap_small_allocations()
    for m, k in specs:
        mem = memory_size(m, k, selected, m * k >= 10**8, args.device) if can_measure else {}
        res = out[f"{m}x{k}"]
        for name in res:
            res[name]["peak_mib"] = mem.get(name)
        print_table(m, k, res, args.device)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (other processes on this machine add noise; "
          "all ratios come from the same run)")
    if args.json:
        write_json_atomic(args.json, {"threads": torch.get_num_threads(), "device": args.device,
                                      "kernel_mode": kernel_mode(device), "results": out}, indent=1)


if __name__ == "__main__":
    main()
