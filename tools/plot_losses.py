#!/usr/bin/env python
"""The paper's loss curves: Figure 1 (FL vs p_t), Figure 5 (CE, FL, FL* vs x_t) and Figure 6
(their derivatives), computed with focal_plugin.losses and autograd.

    python tools/plot_losses.py                       # docs/figures/fig{1,5,6}_*.png
    python tools/plot_losses.py --out-dir /tmp/f --formats png,svg,pdf --figures 1,6
"""

from __future__ import annotations

import argparse
import os
import sys

from focal_plugin.analysis.curves import plot_fig1, plot_fig5, plot_fig6

FIGURES = {"1": ("fig1_focal_loss_vs_pt", plot_fig1), "5": ("fig5_losses_vs_xt", plot_fig5),
           "6": ("fig6_derivatives_vs_xt", plot_fig6)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="docs/figures", help="output folder (default docs/figures)")
    parser.add_argument("--formats", default="png", help="comma-separated: png, svg, pdf (default png)")
    parser.add_argument("--figures", default="1,5,6", help="comma-separated figure numbers (default 1,5,6)")
    args = parser.parse_args(argv)
    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = [f for f in figures if f not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {unknown}: expected some of {sorted(FIGURES)}")
    for fig in figures:
        stem, plot = FIGURES[fig]
        for path in plot(os.path.join(args.out_dir, stem), formats):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
