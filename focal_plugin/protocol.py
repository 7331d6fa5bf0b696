"""The CPU mini protocol's datasets (issue 12): registered on import, generated on first use.

The protocol (``configs/mini/protocol/``, rationale and measurements in ``configs/mini/README.md``)
trains on small synthetic images with COCO's 80 classes, so that one cell fits a 2-core CPU while
the foreground/background imbalance per positive anchor stays within ~3x of COCO's at 600 px
(``tools/dataset_stats.py``). Only the public ``focal_plugin.data`` API is used.

Registered names::

    dense_shapes_proto_train / dense_shapes_proto_val   the protocol's detection data (seed 0)
    dense_shapes_proto_pretrain                         same generator, seed 1000 (disjoint images):
                                                        the source of the backbone pre-training crops
    dense_shapes_proto_c{8,16,40}_train / _val          the imbalance scan (issue 12, point 3): the
                                                        protocol's images, labels merged to 8/16/40
                                                        classes (fewer negatives per positive)
    dense_shapes_proto_sparse_train / _val              the imbalance scan: the protocol's generator
                                                        with ~half the objects per image (more)
"""

from __future__ import annotations

import dataclasses

from focal_plugin.data import SyntheticConfig, register_dense_shapes, register_merged_classes

#: Detection data of the mini protocol: 80 classes (a Zipf 0.5 long tail: the rarest class has
#: half the uniform share, so every class is learnable in the budget while AP is averaged over all),
#: 160-192 px images (native size; trained and tested without resizing), ~4 objects per image (as
#: many as keep the imbalance per positive anchor within 3x of COCO's), objects of 8-60 % of the
#: image side (~13-115 px) so that every object can reach a positive anchor.
PROTOCOL_DATA = SyntheticConfig(
    name="proto", seed=0, num_train=4000, num_val=300, image_size=(160, 192), num_classes=80,
    class_zipf_exponent=0.5, mean_objects=4.0, max_objects=12, empty_fraction=0.05,
    scale_range=(0.08, 0.6), mean_distractors=3.0, max_distractors=10,
    distractor_weights=(0.3, 0.3, 0.4, 0.0), min_visible_fraction=0.3,
)

#: Source images of the backbone pre-training (classification crops of the annotated objects):
#: the same generator and classes with another seed, so no pre-training pixel is a detection
#: image. Pinned (not derived from PROTOCOL_DATA) so that the cached backbone stays valid when the
#: detection data's layout parameters are recalibrated.
PRETRAIN_SOURCE = SyntheticConfig(
    name="proto-pretrain", seed=1000, num_train=3000, num_val=0, image_size=(160, 192), num_classes=80,
    class_zipf_exponent=1.0, mean_objects=3.0, max_objects=12, empty_fraction=0.05,
    scale_range=(0.08, 0.6), mean_distractors=3.0, max_distractors=10,
    distractor_weights=(0.3, 0.3, 0.4, 0.0), min_visible_fraction=0.3,
)

#: The imbalance scan's sparse level: the protocol's data with 1 + Poisson(1) objects per image
#: instead of 1 + Poisson(3) — half the positive anchors per image for the same anchors and classes,
#: so about twice the negatives per positive (closer to COCO's; tools/dataset_stats.py measures it).
SPARSE_DATA = dataclasses.replace(PROTOCOL_DATA, name="proto-sparse", mean_objects=2.0)

DATASETS = {
    "dense_shapes_proto_train": (PROTOCOL_DATA, "train"),
    "dense_shapes_proto_val": (PROTOCOL_DATA, "val"),
    "dense_shapes_proto_pretrain": (PRETRAIN_SOURCE, "train"),
    "dense_shapes_proto_sparse_train": (SPARSE_DATA, "train"),
    "dense_shapes_proto_sparse_val": (SPARSE_DATA, "val"),
}

#: The imbalance scan's class-count levels: the protocol's images with labels merged k -> k mod C
#: (C a multiple of 8 keeps the shape, merges colour families): the same images, boxes and positive
#: anchors, negatives per positive scaled by C / 80. Registered as dense_shapes_proto_c{C}_{split}.
MERGED_CLASS_COUNTS = (8, 16, 40)


def register_protocol_datasets() -> None:
    """Register :data:`DATASETS` and the merged-class views (idempotent, cheap: nothing is generated)."""
    for name, (config, split) in DATASETS.items():
        register_dense_shapes(name, config, split)
    for c in MERGED_CLASS_COUNTS:
        for split in ("train", "val"):
            register_merged_classes(f"dense_shapes_proto_c{c}_{split}", f"dense_shapes_proto_{split}", c)


register_protocol_datasets()



def ap_curve(output_dir) -> list:
    """AP vs iteration of a run trained with ``TEST.EVAL_PERIOD`` (from its ``metrics.json``):
    ``[{"iter", "AP", "AP50", "AP75", "loss_cls", "total_loss"}]``, losses from the nearest logged
    iteration at or before each evaluation (detectron2's 20-iteration median)."""
    import json
    import os

    rows, last = [], {}
    max_iter = None
    results = os.path.join(output_dir, "results.json")
    if os.path.exists(results):  # the final evaluation is logged at max_iter, not max_iter - 1
        with open(results) as f:
            max_iter = json.load(f).get("max_iter")
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            m = json.loads(line)
            if "loss_cls" in m:
                last = m
            if "bbox/AP" in m:
                it = m["iteration"] + 1
                it = min(it, max_iter) if max_iter else it
                rows.append({"iter": it, "AP": m["bbox/AP"], "AP50": m["bbox/AP50"],
                             "AP75": m["bbox/AP75"], "loss_cls": last.get("loss_cls"),
                             "total_loss": last.get("total_loss")})
    return rows


def write_curves(runs: dict, csv_path, png_path=None, title: str = "") -> None:
    """``runs``: label -> output dir. One CSV (label, iter, AP, AP50, AP75, losses) and a PNG."""
    import csv

    curves = {label: ap_curve(d) for label, d in runs.items()}
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "iter", "AP", "AP50", "AP75", "loss_cls", "total_loss"])
        for label, rows in curves.items():
            for r in rows:
                w.writerow([label, r["iter"], r["AP"], r["AP50"], r["AP75"], r["loss_cls"], r["total_loss"]])
    if png_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for label, rows in curves.items():
            ax.plot([r["iter"] for r in rows], [r["AP"] for r in rows], marker="o", label=f"{label} AP")
            ax.plot([r["iter"] for r in rows], [r["AP50"] for r in rows], ls="--", alpha=0.6,
                    label=f"{label} AP50")
        ax.set_xlabel("iteration")
        ax.set_ylabel("COCO AP on dense_shapes_proto_val")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(png_path, dpi=110)
        plt.close(fig)


__all__ = ["DATASETS", "MERGED_CLASS_COUNTS", "PRETRAIN_SOURCE", "PROTOCOL_DATA", "SPARSE_DATA", "ap_curve",
           "register_protocol_datasets", "write_curves"]
