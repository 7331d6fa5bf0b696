"""``dense_shapes``: a seeded synthetic dense-detection dataset in COCO format, registered with
detectron2. Importing this package registers :data:`BUILTIN_DATASETS` (nothing is generated);
``DatasetCatalog.get(name)`` or :func:`prepare_dataset` generates a dataset on first use.
Parameters, presets and the on-disk layout: ``focal_plugin/data/README.md``; the generator's two
stages: ``synthetic.sample_layout`` (what is where) and ``render.render_layout`` (pixels).
"""

from focal_plugin.data.catalog import (
    BUILTIN_DATASETS,
    DatasetFormatError,
    dataset_dir,
    load_coco_dicts,
    prepare_dataset,
    register_all,
    register_coco_json,
    register_dense_shapes,
    register_merged_classes,
    split_paths,
    verify_dataset,
)
from focal_plugin.data.synthetic import PRESETS, SyntheticConfig

register_all()

__all__ = [
    "BUILTIN_DATASETS", "DatasetFormatError", "PRESETS", "SyntheticConfig", "dataset_dir", "load_coco_dicts",
    "prepare_dataset", "register_coco_json", "register_dense_shapes", "register_merged_classes",
    "split_paths", "verify_dataset",
]
