"""Analyses of datasets and models: the foreground/background imbalance that focal loss addresses."""

from focal_plugin.analysis.imbalance import (
    AnchorCounter,
    coco_reference,
    feature_sizes,
    format_table,
    imbalance_stats,
    paper_cfg,
)

__all__ = ["AnchorCounter", "coco_reference", "feature_sizes", "format_table", "imbalance_stats", "paper_cfg"]
