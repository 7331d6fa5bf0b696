#!/usr/bin/env python
"""The imbalance scan's curve: FL minus the best α-balanced CE against the
binary negatives per positive anchor, from the scan's ablation report (or against a numeric
settings column with --x-column: the schedule scan's iterations).

    python tools/ablate.py --spec imbalance_scan --scale mini --workers 2    # the cells + report
    python tools/imbalance_scan.py                        # -> <report folder>/gap_vs_imbalance.*

Works on any report whose claims are of type ``best`` (each gives one point: its row minus the
strongest rival). Writes ``gap_vs_imbalance.{md,csv,json,png}`` next to the report.
"""

from __future__ import annotations

import argparse
import os
import sys

from focal_plugin.analysis.imbalance_scan import coco_reference_line, gap_points, write_outputs
from focal_plugin.io import read_json

DEFAULT_REPORT = os.path.join("results", "mini", "imbalance_scan", "report.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", default=DEFAULT_REPORT,
                        help=f"report.json, or the run folder holding it (default: {DEFAULT_REPORT})")
    parser.add_argument("--out", default=None, help="output stem (default: <report folder>/gap_vs_imbalance, "
                                                    "or gap_vs_<column> with --x-column)")
    parser.add_argument("--x-column", default=None,
                        help="a numeric settings column as x instead of the imbalance "
                             "(schedule_scan: iterations)")
    args = parser.parse_args(argv)
    if os.path.isdir(args.report):
        args.report = os.path.join(args.report, "report.json")  # a run folder: its report
    if not os.path.isfile(args.report):
        print(f"error: report not found: {args.report} (run tools/ablate.py --spec imbalance_scan first)",
              file=sys.stderr)
        return 2
    try:
        report = read_json(args.report)  # CorruptJSON (a ValueError) names the file
        points = gap_points(report, args.x_column)
    except ValueError as e:
        print(f"error: {args.report}: {e}", file=sys.stderr)
        return 2
    name = f"gap_vs_{args.x_column}" if args.x_column else "gap_vs_imbalance"
    stem = args.out or os.path.join(os.path.dirname(os.path.abspath(args.report)), name)
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    x_label = args.x_column or "binary negatives per positive anchor"
    reference = None if args.x_column else coco_reference_line(report)
    for p in write_outputs(points, stem, report.get("title", report.get("spec", "")), x_label, reference):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
