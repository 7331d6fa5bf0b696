"""The CPU mini protocol's datasets: registered on import, generated on first use.

The protocol (``configs/mini/protocol/``, rationale and measurements in ``configs/mini/README.md``)
trains on small synthetic images with COCO's 80 classes, so that one cell fits a 2-core CPU while
the foreground/background imbalance per positive anchor stays within ~3x of COCO's at 600 px
(``tools/dataset_stats.py``). Only the public ``focal_plugin.data`` API is used.

Registered names::

    dense_shapes_proto_train / dense_shapes_proto_val   the protocol's detection data (seed 0)
    dense_shapes_proto_pretrain                         same generator, seed 1000 (disjoint images):
                                                        the source of the backbone pre-training crops
    dense_shapes_proto_c{8,16,40}_train / _val          the imbalance scan: the
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


__all__ = ["DATASETS", "MERGED_CLASS_COUNTS", "PRETRAIN_SOURCE", "PROTOCOL_DATA", "SPARSE_DATA",
           "register_protocol_datasets"]
