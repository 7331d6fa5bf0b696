#!/usr/bin/env python
"""Run one of the paper's tables (an ablation spec) and report it against the paper.

    python tools/ablate.py --list
    python tools/ablate.py --spec table1b --dry-run                 # cells, folders, full commands
    python tools/ablate.py --spec table1b --workers 2               # the spec's seeds, 2 cells at a time
    python tools/ablate.py --spec table1b --scale paper --launcher submitit --gpus-per-cell 8 \\
        --submitit-param slurm_partition=learnfair --submitit-param timeout_min=4320
    python tools/ablate.py --spec table1b --report                  # rebuild the report only
    python tools/ablate.py --campaign mini --workers 2              # configs/ablations/campaigns/mini.yaml
    python tools/ablate.py --spec table1a --base-config configs/mini/smoke_tiny.yaml \\
        --output-dir /tmp/smoke SOLVER.MAX_ITER 20                  # KEY VALUE on every cell

Cells run in OUTPUT/cells/<key> (OUTPUT: results/<scale> by default), one folder per config and
seed, shared by every spec that reaches it; a finished cell is never rerun, an interrupted one
resumes from its last checkpoint, so the same command continues a run. The report
(OUTPUT/<spec>/report.md / .csv / .json) is rewritten after every cell.
Exit status: 0 all cells finished, 1 some failed, 2 usage or spec error / folder in use,
3 some cells were interrupted or are running elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, _REPO)

import focal_plugin  # noqa: E402,F401  (compat + registrations before detectron2 is used)
from focal_plugin.ablation import LockHeld, PlanMismatch, Runner, RunOptions, SpecError, list_specs, load_spec  # noqa: E402
from focal_plugin.ablation.campaign import load_campaign, run_campaign, run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The actions, then one flag per :class:`RunOptions` field (its metadata)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", help="a spec name (configs/ablations/<name>.yaml) or a spec file")
    p.add_argument("--campaign", help="run a campaign's steps in order (name or file)")
    p.add_argument("--list", action="store_true", help="list the shipped specs and exit")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their commands; run nothing")
    p.add_argument(
        "--report", action="store_true", help="rebuild the report from finished cells; run nothing"
    )
    for f in dataclasses.fields(RunOptions):
        cli = dict(f.metadata["cli"])
        if f.type in ("bool", bool):  # a flag that flips the default
            flag = f"--{'no-' if f.default else ''}{f.name.replace('_', '-')}"
            p.add_argument(
                flag,
                dest=f.name,
                action="store_false" if f.default else "store_true",
                help=f.metadata["help"],
            )
            continue
        if cli.pop("positional", False):
            p.add_argument(f.name, help=f.metadata["help"], **cli)
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, help=f.metadata["help"], **cli)
    return p


def parse_args(argv) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.only:  # `--only a b KEY VALUE`: what follows the rows is overrides, not rows
        keys = [
            i for i, item in enumerate(args.only) if re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", item)
        ]
        if keys:
            args.opts = args.only[keys[0] :] + args.opts
            args.only = args.only[: keys[0]]
    return args


def options_of(args: argparse.Namespace, **changes) -> RunOptions:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunOptions)}
    values = {k: v for k, v in values.items() if v is not None or k in ("seeds", "only")}
    for k in ("submitit_param", "opts"):
        values[k] = values.get(k) or []
    return RunOptions(**{**values, **changes})


def run_spec(spec_name: str, options: RunOptions, args: argparse.Namespace, argv) -> int:
    try:
        runner = Runner(load_spec(spec_name), options, argv=argv)
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
    except (LockHeld, PlanMismatch, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts: dict = {}
    for state in summary["states"].values():
        counts[state.value] = counts.get(state.value, 0) + 1
    print(
        f"[ablate] {runner.spec.name} [{options.scale}]: {summary['cells']} cell(s): "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f" ({summary['skipped']} kept from earlier runs); {summary['wall_time_s']:.0f} s"
    )
    print(f"[ablate] report: {summary['report']['md']}")
    return 1 if counts.get("failed") else 3 if set(counts) - {"done", "diverged"} else 0


def main(argv=None) -> int:
    typed = ["tools/ablate.py", *(sys.argv[1:] if argv is None else argv)]  # the command as typed
    args = parse_args(typed[1:])
    if args.list:
        for name in list_specs():
            spec = load_spec(name)
            print(f"{name:24s} {len(spec.rows):3d} rows  {spec.title}")
        return 0
    if bool(args.spec) == bool(args.campaign):
        print("error: give one of --spec or --campaign (see --list)", file=sys.stderr)
        return 2
    try:
        options = options_of(args)
        if args.spec:
            return run_spec(args.spec, options, args, typed)
        campaign, steps = load_campaign(args.campaign)
        clash = [f"--{k.replace('_', '-')} {getattr(args, k)} (the campaign sets {v})"
                 for k, v in campaign.items() if getattr(args, k) not in (None, v)]
        if clash:
            raise ValueError(f"campaign {args.campaign} sets what the command line changes: {clash}")
        options = options_of(args, **campaign)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_campaign(
        steps,
        lambda step: run_spec(
            step.spec,
            dataclasses.replace(options, only=list(step.only) if step.only else options.only),
            args,
            typed,
        ),
        tool=None if args.dry_run else run_tool,
    )


if __name__ == "__main__":
    sys.exit(main())
