"""The on-disk ``dense_shapes`` datasets and their detectron2 registration.

A dataset lives in ``<root>/dense_shapes/<preset>-<fingerprint>/`` (``root``:
``$DETECTRON2_DATASETS`` or ``./datasets``); it is generated into a temporary folder beside it,
manifest last, and renamed into place, under an ``fcntl`` lock so that concurrent processes
generate it once. Each use verifies it against its manifest; a corrupt one is regenerated.

Registration generates nothing; ``DatasetCatalog.get`` generates on first use and records in the
metadata the COCO file it read (``json_file``, ``image_root``, as ``register_coco_instances`` does),
so that detectron2's ``COCOEvaluator`` evaluates against that file, as for COCO itself. They are
recorded on load, not at registration, because the root (``$DETECTRON2_DATASETS``) is the one at
the time of use. A merged-class view writes its relabelled COCO file beside its source's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from iopath.common.file_io import file_lock

from focal_plugin.data.render import make_image
from focal_plugin.data.synthetic import (
    GENERATOR_VERSION,
    PRESETS,
    SPLITS,
    SyntheticConfig,
    coco_dict,
    get_config,
)
from focal_plugin.io import atomic_dir, write_json_atomic

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
ConfigLike = Union[SyntheticConfig, str]

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1

#: Builtin names -> (preset, split).
BUILTIN_DATASETS: Dict[str, Tuple[str, str]] = {
    "dense_shapes_train": ("demo", "train"),
    "dense_shapes_val": ("demo", "val"),
    "dense_shapes_repro_train": ("repro", "train"),
    "dense_shapes_repro_val": ("repro", "val"),
    "dense_shapes_tiny_train": ("tiny", "train"),
    "dense_shapes_tiny_val": ("tiny", "val"),
}

_MARKER = "focal_plugin.data.dense_shapes"  # metadata ``registered_by`` of the names registered here


class DatasetFormatError(ValueError):
    """A COCO JSON file that cannot be parsed or is not in COCO instances format."""


def dataset_dir(config: ConfigLike, root: Optional[PathLike] = None) -> Path:
    """Where ``config``'s dataset lives (whether or not it exists yet); ``root`` defaults to
    ``$DETECTRON2_DATASETS``, else ``./datasets``, as in detectron2."""
    config = get_config(config)
    if root is None:
        root = os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    return Path(root) / "dense_shapes" / f"{config.name}-{config.fingerprint()}"


def split_paths(config: ConfigLike, split: str, root: Optional[PathLike] = None) -> Tuple[Path, Path]:
    """(json_file, image_root) of a split (whether or not they exist yet)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = dataset_dir(config, root)
    return d / "annotations" / f"instances_{split}.json", d / split


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_dataset(directory: PathLike, config: Optional[SyntheticConfig] = None) -> Tuple[bool, str]:
    """(ok, reason): is ``directory`` a complete dataset (of ``config`` if given)?"""
    d = Path(directory)
    if not (d / MANIFEST).is_file():
        return False, "missing" if not d.is_dir() else f"no {MANIFEST} (generation did not complete)"
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            return False, f"{MANIFEST} format {manifest.get('format')!r} != {MANIFEST_FORMAT}"
        if config is not None and manifest.get("fingerprint") != config.fingerprint():
            return False, f"fingerprint {manifest.get('fingerprint')!r} != {config.fingerprint()!r}"
        splits = [manifest["splits"][split] for split in SPLITS]
        expected = {d / info["json"]: info["json_size"] for info in splits}
        expected.update({d / info["image_dir"] / name: size for info in splits
                         for name, size in info["files"].items()})
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        return False, f"unreadable {MANIFEST}: {type(e).__name__}: {e}"
    for path, size in expected.items():
        if not path.is_file() or path.stat().st_size != size:
            return False, f"{path} {'is missing' if not path.is_file() else 'has the wrong size'}"
    for info in splits:
        if _sha256(d / info["json"]) != info["json_sha256"]:
            return False, f"{d / info['json']} does not match the manifest (modified)"
    return True, "ok"


def write_dataset(config: SyntheticConfig, directory: PathLike, *, progress: bool = True,
                  workers: Optional[int] = None) -> Dict[str, Any]:
    """Generate ``config``'s dataset into ``directory`` (created if missing, else empty), manifest last.

    Not atomic by itself: :func:`prepare_dataset` calls it on a temporary directory. Output is
    byte-identical whatever ``workers`` (threads, default min(4, CPUs); each image has its own
    random streams).
    """
    from tqdm import tqdm

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "annotations").mkdir()
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    manifest: Dict[str, Any] = {
        "format": MANIFEST_FORMAT, "generator_version": GENERATOR_VERSION,
        "fingerprint": config.fingerprint(), "preset": config.name,
        "config": dataclasses.asdict(config), "splits": {},
    }
    t0 = time.perf_counter()
    for split in SPLITS:
        n = config.num_images(split)
        (d / split).mkdir()

        def one(i: int, split: str = split) -> Tuple[str, int, int, List, int]:
            data, width, height, anns = make_image(config, split, i)
            name = f"{i:06d}.{config.image_format}"
            (d / split / name).write_bytes(data)
            return name, width, height, anns, len(data)

        bar = tqdm(total=n, desc=f"dense_shapes[{config.name}] {split}", unit="img",
                   disable=not progress or n == 0)
        ex, records = ThreadPoolExecutor(workers), []
        try:
            for r in ex.map(one, range(n)):
                records.append(r)
                bar.update(1)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
            bar.close()
        coco = coco_dict(config, split, [r[:4] for r in records])
        jpath = d / "annotations" / f"instances_{split}.json"
        jpath.write_text(json.dumps(coco, separators=(",", ":")))
        manifest["splits"][split] = {
            "num_images": n, "num_annotations": len(coco["annotations"]),
            "json": f"annotations/instances_{split}.json",
            "json_size": jpath.stat().st_size, "json_sha256": _sha256(jpath),
            "image_dir": split, "files": {r[0]: r[4] for r in records},
        }
    (d / MANIFEST).write_text(json.dumps(manifest, indent=1))
    logger.info("Generated dense_shapes[%s] (%d+%d images) in %.1f s", config.name, config.num_train,
                config.num_val, time.perf_counter() - t0)
    return manifest


def prepare_dataset(config: ConfigLike = "demo", root: Optional[PathLike] = None,
                    *, progress: bool = True, workers: Optional[int] = None) -> Path:
    """The directory of a complete, verified dataset for ``config`` (a preset name or a
    :class:`SyntheticConfig`), generating it first if it is missing, incomplete or corrupt."""
    config = get_config(config)
    final = dataset_dir(config, root)
    if verify_dataset(final, config)[0]:
        return final
    logger.info("Generating dense_shapes[%s] in %s, or waiting for the process that is", config.name, final)
    with file_lock(str(final.parent / f".{final.name}")):  # detectron2's lock: .<name>.lock
        ok, reason = verify_dataset(final, config)  # another process may have finished it
        if ok:
            return final
        if final.exists():
            logger.warning("Dataset %s is incomplete or corrupt (%s): regenerating it", final, reason)
        with atomic_dir(final) as tmp:  # also removes what killed runs left
            write_dataset(config, tmp, progress=progress, workers=workers)
        ok, reason = verify_dataset(final, config)
        if not ok:  # pragma: no cover - would be a generator bug
            raise RuntimeError(f"freshly generated dataset {final} failed verification: {reason}")
    return final


def _check_coco_content(path: Path, data: Any, image_root: PathLike) -> Tuple[set, str]:
    """The rules detectron2's loader does not enforce. Errors (:class:`DatasetFormatError`,
    ``FileNotFoundError``) name the file and the image or annotation id; annotations whose boxes
    cannot be trained on are returned as (ids to skip, a log line)."""
    images, anns = data["images"], data.get("annotations") or []
    seen: Dict[Any, str] = {}
    for img in images:
        if img["id"] in seen:
            raise DatasetFormatError(
                f"{path}: image id {img['id']!r} appears more than once ({seen[img['id']]!r} and "
                f"{img['file_name']!r}); image ids must be unique (pycocotools would keep one and "
                "give it the annotations of both)")
        seen[img["id"]] = img["file_name"]
    if images and not anns:
        raise DatasetFormatError(
            f"{path}: {len(images)} images but no annotations: nothing to train or evaluate on "
            "(to run a model on unlabeled images use tools/predict.py)")
    categories = {c["id"] for c in data.get("categories") or []}
    sizes = {img["id"]: (img["width"], img["height"]) for img in images}
    degenerate, outside = [], []
    for a in anns:
        if a["category_id"] not in categories:
            raise DatasetFormatError(
                f"{path}: annotation id {a['id']!r} (image id {a['image_id']!r}) has category_id "
                f"{a['category_id']!r}, which is not among the file's categories {sorted(categories)}")
        x, y, w, h = (float(v) for v in a["bbox"])
        if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
            degenerate.append(a["id"])
        elif a["image_id"] in sizes:
            width, height = sizes[a["image_id"]]
            if x >= width or y >= height or x + w <= 0 or y + h <= 0:
                outside.append(a["id"])
    missing = [(img["id"], img["file_name"]) for img in images
               if not os.path.isfile(os.path.join(image_root, img["file_name"]))]
    if missing:
        raise FileNotFoundError(
            f"{path}: {len(missing)} of {len(images)} image files are missing under {image_root}, e.g. "
            + ", ".join(f"image id {i!r}: {f}" for i, f in missing[:3]))
    skipped = set(degenerate) | set(outside)
    note = ""
    if skipped:
        note = (f"{path}: skipped {len(skipped)} of {len(anns)} annotations whose boxes cannot be "
                f"trained on: {len(degenerate)} with zero, negative or non-finite width/height, "
                f"{len(outside)} entirely outside their image (e.g. annotation ids "
                f"{sorted(skipped, key=str)[:5]}); boxes partly outside are clipped to the image")
    return skipped, note


def load_coco_dicts(json_file: PathLike, image_root: PathLike,
                    dataset_name: Optional[str] = None) -> List[Dict[str, Any]]:
    """detectron2's ``load_coco_json``, with errors that name the file, and the checks it lacks.

    A missing file raises ``FileNotFoundError``; malformed JSON or a file that is not in COCO
    instances format raises :class:`DatasetFormatError` (a ``ValueError``) naming ``json_file``.
    Errors naming the file and the id: duplicate image ids, an annotation whose ``category_id``
    is not in ``categories``, images but no annotations (``DatasetFormatError``), image files
    missing under ``image_root`` (``FileNotFoundError``). Annotations with a zero, negative or
    non-finite width or height, or a box entirely outside its image, are skipped and counted in a
    warning (evaluation reads ``json_file`` itself, as the official COCO evaluation does).
    """
    path = Path(json_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:  # parsed once more by pycocotools below
            skipped, note = _check_coco_content(path, json.load(f), image_root)
        dicts = load_coco_json(str(path), str(image_root), dataset_name, extra_annotation_keys=["id"])
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"malformed JSON in COCO annotation file {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"COCO annotation file {path} is not UTF-8 text: {e}") from e
    except (KeyError, TypeError, AttributeError, IndexError, AssertionError, ValueError) as e:
        if isinstance(e, DatasetFormatError):
            raise
        raise DatasetFormatError(f"{path} is not a valid COCO instances file ({type(e).__name__}: {e})"
                                 ) from e
    for record in dicts:  # "id" was loaded only to skip by it: the dicts stay detectron2's
        record["annotations"] = [a for a in record["annotations"] if a.pop("id") not in skipped]
    if note:
        logger.warning(note)
    return dicts


def _register(name: str, load, **metadata: Any) -> None:
    """Register ``name``, replacing an earlier registration by this module (reloads), never another's."""
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("registered_by") != _MARKER:
            raise ValueError(f"dataset name {name!r} is already registered by other code")
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(evaluator_type="coco", registered_by=_MARKER, **metadata)


def _record_files(name: str, json_file: PathLike, image_root: PathLike) -> None:
    """Set ``name``'s ``json_file`` / ``image_root`` metadata (replacing other values: detectron2's
    ``Metadata`` refuses to change a set attribute, and the root may differ between loads)."""
    meta = MetadataCatalog.get(name)
    for key, value in (("json_file", str(json_file)), ("image_root", str(image_root))):
        if meta.get(key) != value:
            if hasattr(meta, key):
                delattr(meta, key)
            setattr(meta, key, value)


def coco_file(name: str) -> Optional[str]:
    """The COCO file registered dataset ``name`` is read from (its ``json_file`` metadata), or None.
    A dataset registered here records it when loaded: it is loaded first if it has not been."""
    meta = MetadataCatalog.get(name)
    if not meta.get("json_file") and meta.get("registered_by") == _MARKER:
        DatasetCatalog.get(name)
    return meta.get("json_file")


def register_dense_shapes(name: str, config: ConfigLike, split: str, root: Optional[PathLike] = None) -> None:
    """Register split ``split`` of ``config`` as ``name`` (idempotent; cheap: nothing generated).

    ``DatasetCatalog.get(name)`` generates the dataset on first use (:func:`prepare_dataset`) and
    returns detectron2 dicts. Metadata: ``thing_classes``, ``thing_dataset_id_to_contiguous_id``,
    ``evaluator_type="coco"``, ``preset``, ``split``, ``fingerprint`` (of the generator config).
    ``root=None`` follows ``$DETECTRON2_DATASETS`` at the time of use.
    """
    config = get_config(config)
    split_paths(config, split)  # checks the split name

    def load() -> List[Dict[str, Any]]:
        prepare_dataset(config, root)
        json_file, image_root = split_paths(config, split, root)
        dicts = load_coco_dicts(json_file, image_root, name)
        _record_files(name, json_file, image_root)
        return dicts

    classes = config.thing_classes()
    _register(name, load, thing_classes=classes, preset=config.name, split=split,
              fingerprint=config.fingerprint(),
              thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(classes))})


def register_merged_classes(name: str, source: str, num_classes: int) -> None:
    """Register ``name``: registered dataset ``source`` with its labels merged, contiguous class
    ``k`` becoming ``k mod num_classes`` (idempotent; cheap: ``source`` is loaded on first use).

    Images, boxes, anchors and positive anchors stay those of ``source``; only the number of
    classes changes, so the binary negatives per positive anchor (anchors x classes - positives,
    per positive) scale with ``num_classes`` — the class-count lever of the mini imbalance scan.
    With ``dense_shapes`` (class ``k`` has shape ``k mod 8``), a multiple of 8 keeps
    the shape and merges colour families. Class names join the merged classes' with ``"|"``.

    Raises ``KeyError`` if ``source`` is not registered, ``ValueError`` if ``num_classes`` is not in
    [1, number of classes of ``source``).
    """
    if source not in DatasetCatalog.list():
        raise KeyError(f"register_merged_classes({name!r}): source dataset {source!r} is not registered")
    classes = list(MetadataCatalog.get(source).thing_classes)
    if not (isinstance(num_classes, int) and 1 <= num_classes < len(classes)):
        raise ValueError(f"register_merged_classes({name!r}): num_classes must be an int in "
                         f"[1, {len(classes)}) for {source!r}, got {num_classes!r}")
    merged = ["|".join(classes[k::num_classes]) for k in range(num_classes)]

    def load() -> List[Dict[str, Any]]:
        dicts = [dict(r, annotations=[dict(a, category_id=a["category_id"] % num_classes)
                                      for a in r["annotations"]])
                 for r in DatasetCatalog.get(source)]
        source_meta = MetadataCatalog.get(source)
        if source_meta.get("json_file"):  # a source read from a COCO file: so is the view
            json_file = _write_merged_json(source_meta, num_classes, merged)
            _record_files(name, json_file, source_meta.image_root)
        return dicts

    _register(name, load, thing_classes=merged, merged_from=source,
              thing_dataset_id_to_contiguous_id={k + 1: k for k in range(num_classes)})


def _write_merged_json(source_meta, num_classes: int, merged: List[str]) -> Path:
    """``source_meta.json_file`` relabelled as :func:`register_merged_classes` does (category id of
    merged class ``k`` is ``k + 1``), written atomically beside it as ``<stem>_c<num_classes>.json``."""
    source_json = Path(source_meta.json_file)
    coco = json.loads(source_json.read_text())
    to_contiguous = source_meta.thing_dataset_id_to_contiguous_id
    for a in coco["annotations"]:
        a["category_id"] = to_contiguous[a["category_id"]] % num_classes + 1
    coco["categories"] = [{"id": k + 1, "name": n} for k, n in enumerate(merged)]
    path = source_json.with_name(f"{source_json.stem}_c{num_classes}.json")
    try:
        unchanged = json.loads(path.read_text()) == coco
    except (OSError, ValueError):
        unchanged = False
    if not unchanged:  # written once per content, not per load
        write_json_atomic(path, coco, indent=None)
    return path


def register_coco_json(name: str, json_file: PathLike, image_root: PathLike,
                       thing_classes: Optional[List[str]] = None) -> None:
    """Register a user's COCO-format dataset like detectron2's ``register_coco_instances``, but
    loading through :func:`load_coco_dicts` (a malformed file fails naming the file)."""
    json_file, image_root = str(json_file), str(image_root)
    extra = {} if thing_classes is None else {"thing_classes": list(thing_classes)}
    _register(name, lambda: load_coco_dicts(json_file, image_root, name),
              json_file=json_file, image_root=image_root, **extra)


def register_all(root: Optional[PathLike] = None) -> None:
    """Register :data:`BUILTIN_DATASETS` (lazily: nothing is generated)."""
    for name, (preset, split) in BUILTIN_DATASETS.items():
        register_dense_shapes(name, PRESETS[preset], split, root)
