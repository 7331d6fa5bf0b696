"""``dense_shapes``: a seeded synthetic dense-detection dataset in COCO format, registered with
detectron2 (see ``focal_plugin/data/README.md`` for every parameter and both presets).

Importing this package registers, cheaply (nothing is generated or read)::

    dense_shapes_train / dense_shapes_val              preset "demo"  (quick CPU demo)
    dense_shapes_repro_train / dense_shapes_repro_val  preset "repro" (imbalance pushed to COCO's)

``DatasetCatalog.get(name)`` (or :func:`prepare_dataset`) generates the dataset on first use, with a
progress bar, under ``$DETECTRON2_DATASETS`` (default ``./datasets``) in
``dense_shapes/<preset>-<fingerprint>/``; it is regenerated only when a parameter (or the generator
version) changes, and a directory left incomplete or corrupted is detected and regenerated.

Scenes: objects of ``num_classes`` classes, class = (shape, color family), 8 shapes x 10 color
families = up to 80 classes, Zipf class frequencies ``p_k ~ (k+1)^-class_zipf_exponent``;
object scale ``sqrt(box area / image area)`` log-uniform in ``scale_range``, aspect log-uniform
in ``[1/max_aspect, max_aspect]``; ``1 + Poisson(mean_objects - 1)`` objects (at most
``max_objects``) per non-empty image, ``empty_fraction`` of images empty; gradient + low-frequency
noise backgrounds with clutter lines and blobs and pixel noise; unlabeled distractors (class
shapes in gray, faint class-colored ghosts, never-a-class shapes in class colors, and class shapes
in non-class colors); random drawing order, so objects occlude each other; an object with less
than ``min_visible_fraction`` of its pixels visible is not annotated; every box is the tight box
of the object's visible pixels.

Presets (all parameters: ``SyntheticConfig`` and ``focal_plugin/data/README.md``)::

    demo : 2000/300 images, 160-192 px, 6 classes (Zipf 0.5), 4 objects/image (max 8),
           scale 0.12-0.60, 1.5 distractors; ~6.9k anchors, ~525 binary negatives per positive
    repro: 6000/500 images, 288-352 px, 80 classes (Zipf 1.0), 6 objects/image (max 30),
           scale 0.03-0.55 (COCO-like 41/38/20 % small/medium/large), 4 distractors;
           ~21k anchors, ~16k negatives per positive (COCO at 600 px: ~56k, estimated)

Public API::

    SyntheticConfig, PRESETS, get_config          parameters and the "demo"/"repro" presets
    prepare_dataset(config="demo", root=None)     -> Path of the verified dataset directory
    dataset_dir, split_paths, verify_dataset      paths and checks, without generating
    register_dense_shapes(name, config, split)    register any config (idempotent)
    register_coco_json(name, json_file, image_root)  a user COCO file, errors naming the file
    load_coco_dicts(json_file, image_root)        detectron2 dicts, errors naming the file
    dataset_info(name) -> dict                    num_classes, thing_classes, json_file, ...
    imbalance_stats(cfg, name, max_images=200)    positives / negatives per image vs COCO
    coco_reference(), format_table(stats)
    sample_layout, render_layout, layout_statistics   the generator's two stages
"""

from focal_plugin.data.catalog import (
    BUILTIN_DATASETS,
    DatasetFormatError,
    data_root,
    dataset_dir,
    dataset_info,
    load_coco_dicts,
    prepare_dataset,
    register_all,
    register_coco_json,
    register_dense_shapes,
    split_paths,
    verify_dataset,
    write_dataset,
)
from focal_plugin.data.imbalance import coco_reference, format_table, imbalance_stats
from focal_plugin.data.synthetic import (
    GENERATOR_VERSION,
    PRESETS,
    SyntheticConfig,
    class_names,
    get_config,
    layout_statistics,
    render_layout,
    sample_layout,
)

register_all()

__all__ = [
    "BUILTIN_DATASETS", "DatasetFormatError", "GENERATOR_VERSION", "PRESETS", "SyntheticConfig",
    "class_names", "coco_reference", "data_root", "dataset_dir", "dataset_info", "format_table",
    "get_config", "imbalance_stats", "layout_statistics", "load_coco_dicts", "prepare_dataset",
    "register_all", "register_coco_json", "register_dense_shapes", "render_layout",
    "sample_layout", "split_paths", "verify_dataset", "write_dataset",
]
