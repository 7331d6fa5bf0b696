#!/usr/bin/env python
"""Figure 2-style speed vs accuracy (ms/image vs AP) from a Table 1e / Table 2 report of the
ablation runner, the paper's Table 1e points drawn beside ours and labelled as such.

    python tools/plot_speed_accuracy.py --report results/mini/table1e/report.json
    python tools/plot_speed_accuracy.py --report my_runs.csv --same-axes --formats png,pdf
    python tools/plot_speed_accuracy.py            # the paper's points only

--report takes report.json / report.csv (focal_plugin.ablation.report) or a CSV with columns
depth, scale, AP, ms (ms_per_image / time accepted). Writes <out-dir>/fig2_speed_accuracy.<fmt>.
"""

from __future__ import annotations

import argparse
import os
import sys

from focal_plugin.analysis.speed_accuracy import plot_speed_accuracy, read_points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", default=None, help="report.json / report.csv / depth,scale,AP,ms CSV")
    parser.add_argument("--out-dir", default="docs/figures", help="output folder (default docs/figures)")
    parser.add_argument("--formats", default="png", help="comma-separated: png, svg, pdf (default png)")
    parser.add_argument("--same-axes", action="store_true", help="ours and the paper's on one axes")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args(argv)
    ours, info = ([], {})
    if args.report:
        if not os.path.isfile(args.report):
            parser.error(f"report not found: {args.report}")
        ours, info = read_points(args.report)
        print(f"{len(ours)} point(s) with AP and ms/img in {args.report}")
    note = ", ".join(x for x in [f"{info['scale']} scale" if info.get("scale") else "",
                                 "; ".join(info.get("devices") or [])] if x)
    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    for path in plot_speed_accuracy(ours, os.path.join(args.out_dir, "fig2_speed_accuracy"), formats,
                                    same_axes=args.same_axes, ours_note=note, title=args.title):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
