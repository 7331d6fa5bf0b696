"""What one ablation cell of the CPU mini protocol costs, v3 against v2, measured in the same run.

    python benchmarks/bench_protocol_cell.py                    # 300 iterations on 400 images
    python benchmarks/bench_protocol_cell.py --iters 60 --train-images 80 --repeats 1   # a quick look

A cell is 3,000 iterations of batch 8 on 4,000 images (6 epochs), then one evaluation of the 300
validation images. Here each version trains ``--iters`` iterations on the first ``--train-images``
training images (by default the cell's 6 epochs, so the feature cache of v3 hits as often as in a
cell), then evaluates the final weights on the whole validation set; the cell's cost is estimated
as ``train time x 3000 / iters + evaluation time``. One torch thread, as a cell runs; the versions
alternate, ``--repeats`` times. Prints seconds and the ratio v2 / v3 (how many times cheaper v3 is).
Run it on a quiet machine: both cores are shared with whatever else runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

import focal_plugin  # noqa: F401  (datasets, compat)
from focal_plugin import engine
from focal_plugin.io import write_json_atomic

VERSIONS = {"v2": "configs/mini/protocol/fl_default.yaml", "v3": "configs/mini/protocol_v3/fl_default.yaml"}
CELL_ITERS, SOURCE = 3000, "dense_shapes_proto_train"


def register_subset(n: int) -> str:
    """``SOURCE``'s first ``n`` images as a dataset of their own (same classes); its name."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = f"{SOURCE}_first{n}"
    if name not in DatasetCatalog.list():
        DatasetCatalog.get(SOURCE)  # fills the source's metadata
        DatasetCatalog.register(name, lambda: DatasetCatalog.get(SOURCE)[:n])
        MetadataCatalog.get(name).set(thing_classes=MetadataCatalog.get(SOURCE).thing_classes)
    return name


def measure(version: str, iters: int, train_set: str, out: str) -> dict:
    """Train ``iters`` iterations of ``version`` on ``train_set``, then evaluate: seconds of each."""
    steps = f"({round(iters * 2 / 3)}, {round(iters * 8 / 9)})"
    opts = ["DATASETS.TRAIN", f"('{train_set}',)", "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps,
            "SOLVER.CHECKPOINT_PERIOD", str(10 * iters), "SEED", "0", "OUTPUT_DIR", out]
    trained = engine.train(engine.setup_cfg(VERSIONS[version], opts + ["DATASETS.TEST", "()"]))
    evaluated = engine.evaluate(engine.setup_cfg(VERSIONS[version], opts),
                                os.path.join(out, "model_final.pth"))
    train_s, eval_s = trained["train_wall_time_s"], evaluated["eval_wall_time_s"]
    return {"train_s": train_s, "eval_s": eval_s, "cell_s": train_s * CELL_ITERS / iters + eval_s,
            "AP": evaluated["metrics"]["dense_shapes_proto_val"]["bbox"]["AP"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train_set = register_subset(args.train_images)
    runs = {v: [] for v in VERSIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for v in (list(VERSIONS) if r % 2 == 0 else list(VERSIONS)[::-1]):
                runs[v].append(measure(v, args.iters, train_set, os.path.join(tmp, f"{v}_{r}")))
    med = {v: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for v, rs in runs.items()}
    epochs = args.iters * 8 / args.train_images
    print(f"\n== one protocol cell, estimated from {args.iters} iterations on {args.train_images} images "
          f"({epochs:.1f} epochs; a cell: 6), 1 thread, median of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.2f} ==")
    print(f"{'version':8s} {'train s/it':>10s} {'eval s':>8s} {'cell min':>9s} {'AP (short run)':>15s}")
    for v, m in med.items():
        print(f"{v:8s} {m['train_s'] / args.iters:10.3f} {m['eval_s']:8.1f} {m['cell_s'] / 60:9.1f} "
              f"{m['AP']:15.2f}")
    ratio = med["v2"]["cell_s"] / med["v3"]["cell_s"]
    print(f"v3 is {ratio:.2f}x cheaper per cell than v2 (v2 cell / v3 cell)")
    if args.json:
        write_json_atomic(args.json, {"runs": runs, "median": med, "v2_over_v3": ratio,
                                      "iters": args.iters, "train_images": args.train_images}, indent=1)


if __name__ == "__main__":
    main()
