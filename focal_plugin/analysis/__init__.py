"""Analyses of datasets and models: the foreground/background imbalance that focal loss addresses,
and the paper's figures (loss curves, Fig. 4 loss CDFs, Fig. 2 speed vs accuracy)."""

from focal_plugin.analysis.curves import (
    FIG1_GAMMAS,
    FIG5_LOSSES,
    derivatives_vs_xt,
    focal_loss_vs_pt,
    losses_vs_xt,
    plot_fig1,
    plot_fig5,
    plot_fig6,
)
from focal_plugin.analysis.imbalance import (
    AnchorCounter,
    coco_reference,
    feature_sizes,
    format_table,
    imbalance_stats,
    paper_cfg,
)
from focal_plugin.analysis.loss_cdf import (
    FIG4_GAMMAS,
    LossCDF,
    cumulative_loss,
    hardest_share,
    plot_cdf,
    window_losses,
)
from focal_plugin.analysis.speed_accuracy import PAPER_TABLE1E, paper_points, plot_speed_accuracy, read_points

__all__ = [
    "AnchorCounter", "coco_reference", "feature_sizes", "format_table", "imbalance_stats", "paper_cfg",
    "FIG1_GAMMAS", "FIG5_LOSSES", "derivatives_vs_xt", "focal_loss_vs_pt", "losses_vs_xt",
    "plot_fig1", "plot_fig5", "plot_fig6",
    "FIG4_GAMMAS", "LossCDF", "cumulative_loss", "hardest_share", "plot_cdf", "window_losses",
    "PAPER_TABLE1E", "paper_points", "plot_speed_accuracy", "read_points",
]
