#!/usr/bin/env python
"""Compare the cells two ablation output folders both finished (the same configs and seeds,
e.g. the committed cells and a re-run on another machine).

    python tools/compare_reruns.py results/mini/v3 results/mini/v3_rerun
    python tools/compare_reruns.py A B --rows schedule_scan/it3000_fl --out results/mini/v3_rerun/rerun

Writes ``<out>.md`` and ``<out>.json`` (default: ``<B>/rerun_comparison``): per cell both metrics,
whether the weights had the same bytes, both devices; per row the re-run's difference by Welch's
t with its 95 % interval; per pair of rows whether both sides give the same outcome.
"""

from __future__ import annotations

import argparse
import os
import sys

from focal_plugin.analysis.reruns import compare_folders, to_markdown
from focal_plugin.io import write_json_atomic, write_text_atomic


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="output folder of the first run (holding cells/)")
    parser.add_argument("b", help="output folder of the re-run")
    parser.add_argument("--metric", default="AP")
    parser.add_argument("--rows", nargs="+", default=None,
                        help="only these rows (spec/row, as cell.json's planned_by)")
    parser.add_argument("--out", default=None, help="output stem (default: <b>/rerun_comparison)")
    args = parser.parse_args(argv)
    for folder in (args.a, args.b):
        if not os.path.isdir(os.path.join(folder, "cells")):
            print(f"error: {folder} holds no cells/ folder", file=sys.stderr)
            return 2
    result = compare_folders(args.a, args.b, args.metric, args.rows)
    if not result["cells"]:
        print(f"error: no cell is finished in both {args.a} and {args.b}", file=sys.stderr)
        return 1
    stem = args.out or os.path.join(args.b, "rerun_comparison")
    md = to_markdown(result, "Re-run comparison")
    write_text_atomic(stem + ".md", md)
    write_json_atomic(stem + ".json", result, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
