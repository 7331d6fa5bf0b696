"""``dense_shapes``: a seeded synthetic dense-detection dataset in COCO format, registered with
detectron2. Importing this package registers :data:`BUILTIN_DATASETS` (nothing is generated);
``DatasetCatalog.get(name)`` or :func:`prepare_dataset` generates a dataset on first use.
Parameters, presets and the on-disk layout: ``focal_plugin/data/README.md``.
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
    split_paths,
    verify_dataset,
    write_dataset,
)
from focal_plugin.data.render import make_image, render_layout
from focal_plugin.data.synthetic import (
    GENERATOR_VERSION,
    PRESETS,
    SyntheticConfig,
    class_names,
    get_config,
    sample_layout,
)

register_all()

__all__ = [
    "BUILTIN_DATASETS", "DatasetFormatError", "GENERATOR_VERSION", "PRESETS", "SyntheticConfig",
    "class_names", "dataset_dir", "get_config", "load_coco_dicts", "make_image", "prepare_dataset",
    "register_all", "register_coco_json", "register_dense_shapes", "render_layout", "sample_layout",
    "split_paths", "verify_dataset", "write_dataset",
]
