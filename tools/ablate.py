#!/usr/bin/env python
"""Run one of the paper's tables (an ablation spec) and report it against the paper.

    python tools/ablate.py --list
    python tools/ablate.py --spec table1b --scale mini --dry-run          # cells + full overrides
    python tools/ablate.py --spec table1b --scale mini --seeds 3 --workers 2
    python tools/ablate.py --spec table1b --scale paper --launcher submitit --gpus-per-cell 8 \\
        --submitit-param slurm_partition=learnfair --submitit-param timeout_min=4320
    python tools/ablate.py --spec table1b --scale mini --report           # rebuild the report only
    python tools/ablate.py --spec table1a --scale mini --base-config configs/mini/smoke_tiny.yaml \\
        SOLVER.MAX_ITER 20                                                # any KEY VALUE, every cell

Cells (rows x seeds) run in OUTPUT/<spec>/<scale>/<row>/seed<k>; a finished cell is never rerun,
an interrupted one resumes from its last checkpoint, so the same command continues a run. The
report (report.md / .csv / .json in the run folder) is rewritten at the end of every run.
Exit status: 0 all cells finished, 1 some failed, 2 usage or spec error / folder in use,
3 some cells were interrupted or are running elsewhere.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, _REPO)

import focal_plugin  # noqa: E402,F401  (compat + registrations before detectron2 is used)
from focal_plugin.ablation import LockHeld, PlanMismatch, Runner, SpecError, list_specs, load_spec  # noqa: E402
from focal_plugin.ablation.spec import SCALES  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", help="a spec name (configs/ablations/<name>.yaml) or a spec file")
    p.add_argument("--list", action="store_true", help="list the shipped specs and exit")
    p.add_argument("--scale", choices=SCALES, default="mini", help="paper: COCO + configs/paper; "
                   "mini: synthetic data + configs/mini (default)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per row (SEED 0..N-1); mean ± std")
    p.add_argument("--only", nargs="+", metavar="ROW", help="run only these rows (ids from --dry-run)")
    p.add_argument("--output-dir", default=os.path.join("output", "ablations"),
                   help="root of the run folders (default: output/ablations)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their overrides; run nothing")
    p.add_argument("--report", action="store_true",
                   help="rebuild the report from finished cells; run nothing")
    p.add_argument("--launcher", choices=("local", "submitit"), default="local")
    p.add_argument("--workers", type=int, default=1, help="local: cells at a time, each pinned to its "
                   "share of the CPUs (and GPUs); 0 = in this process")
    p.add_argument("--gpus-per-cell", type=int, default=1, help="training processes per cell "
                   "(detectron2's launch; on CPU, gloo processes)")
    p.add_argument("--submitit-cluster", default=None, choices=("slurm", "local", "debug"),
                   help="submitit executor (default: auto-detect, SLURM when available)")
    p.add_argument("--submitit-param", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit update_parameters, e.g. slurm_partition=dev timeout_min=4320")
    p.add_argument("--base-config", default=None, help="replace the spec's base config of this scale")
    p.add_argument("--label", default=None, help="a label printed at the top of the report")
    p.add_argument("--train-fn", default=None, metavar="MODULE:FUNCTION",
                   help="training function fn(config_file, opts, resume, num_gpus) -> engine.train's "
                   "dict (default: focal_plugin.ablation.cell:train_cell)")
    p.add_argument("--no-imbalance", action="store_true", help="skip the class-imbalance section")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep a finished cell's "
                   "intermediate checkpoints (default: only model_final.pth stays)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per cell)")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="copy each finished cell's small files (cell/status/results/metrics/config) "
                   "to DIR/<spec>/<row>/seed<k> as it finishes, and the report to DIR/<spec>/ "
                   "(e.g. results/mini)")
    p.add_argument("--no-reuse", action="store_true", help="train every cell, even one that trains the "
                   "same config as a finished cell of another spec in the same output folder (default: "
                   "take its result, or its weights to evaluate and time when only the timing differs)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every cell")
    args = p.parse_args(argv)
    if args.only:  # `--only a b KEY VALUE`: the overrides after the rows are overrides, not rows
        for i, item in enumerate(args.only):
            if re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", item):
                args.opts = args.only[i:] + args.opts
                args.only = args.only[:i]
                break
    return args


def _submitit_params(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--submitit-param {item!r}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for name in list_specs():
            spec = load_spec(name)
            print(f"{name:24s} {len(spec.rows):3d} rows  {spec.title}")
        return 0
    if not args.spec:
        print("error: --spec is required (see --list)", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec)
        runner = Runner(spec, args.scale, args.output_dir, seeds=args.seeds, only=args.only,
                        base_config=args.base_config, extra_opts=args.opts, launcher=args.launcher,
                        workers=args.workers, gpus_per_cell=args.gpus_per_cell,
                        submitit_cluster=args.submitit_cluster,
                        submitit_params=_submitit_params(args.submitit_param),
                        progress=not args.no_progress, label=args.label, train_fn=args.train_fn,
                        imbalance=not args.no_imbalance, keep_checkpoints=args.keep_checkpoints,
                        reuse=not args.no_reuse, export_dir=args.export)
    except (SpecError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(runner.dry_run())
        return 0
    if args.report:
        paths = runner.report()
        print(open(paths["md"]).read())
        print(f"[ablate] report: {paths['md']} {paths['csv']} {paths['json']}")
        return 0
    try:
        summary = runner.run()
    except (LockHeld, PlanMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts: dict = {}
    for state in summary["states"].values():
        counts[state] = counts.get(state, 0) + 1
    print(f"[ablate] {spec.name} [{args.scale}]: {summary['cells']} cell(s): "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f" ({summary['skipped']} kept from earlier runs); {summary['wall_time_s']:.0f} s")
    print(f"[ablate] report: {summary['report']['md']}")
    if counts.get("failed"):
        return 1
    if set(counts) - {"done", "diverged"}:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
