"""On-disk cache of ``dense_shapes`` datasets and their detectron2 registration.

Directory of a dataset (``root`` = ``$DETECTRON2_DATASETS`` or ``./datasets``)::

    <root>/dense_shapes/<preset>-<fingerprint>/
        MANIFEST.json                      written last: the completion marker
        annotations/instances_{train,val}.json
        train/000000.jpg ...   val/000000.jpg ...

A dataset is generated into ``<root>/dense_shapes/.tmp-<preset>-<fingerprint>-<pid>`` and renamed
into place only when complete, under an exclusive ``fcntl`` lock (``.<preset>-<fingerprint>.lock``),
so concurrent processes (e.g. the ranks of a multi-process job) generate it once and the others
wait. Before use, a directory is verified against its manifest (fingerprint, file names and
sizes, sha256 of each JSON); a corrupt or incomplete one is removed and regenerated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import load_coco_json

from focal_plugin.data.synthetic import (
    GENERATOR_VERSION,
    PRESETS,
    SPLITS,
    SyntheticConfig,
    coco_dict,
    get_config,
    image_file_name,
    make_image,
)

try:  # POSIX only; elsewhere concurrent generation is not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
ConfigLike = Union[SyntheticConfig, str]

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1
DATASET_FOLDER = "dense_shapes"

#: Builtin names -> (preset, split).
BUILTIN_DATASETS: Dict[str, Tuple[str, str]] = {
    "dense_shapes_train": ("demo", "train"),
    "dense_shapes_val": ("demo", "val"),
    "dense_shapes_repro_train": ("repro", "train"),
    "dense_shapes_repro_val": ("repro", "val"),
    "dense_shapes_tiny_train": ("tiny", "train"),
    "dense_shapes_tiny_val": ("tiny", "val"),
}

_MARKER = "focal_plugin.data.dense_shapes"  # metadata attribute value identifying our registrations


class DatasetFormatError(ValueError):
    """A COCO JSON file that cannot be parsed or is not in COCO instances format."""


# --------------------------------------------------------------------------- paths
def data_root(root: Optional[PathLike] = None) -> Path:
    """``root`` if given, else ``$DETECTRON2_DATASETS``, else ``./datasets`` (as detectron2)."""
    if root is not None:
        return Path(root)
    return Path(os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")))


def dataset_dir(config: ConfigLike, root: Optional[PathLike] = None) -> Path:
    """Where ``config``'s dataset lives (whether or not it exists yet)."""
    config = get_config(config)
    return data_root(root) / DATASET_FOLDER / f"{config.name}-{config.fingerprint()}"


def split_paths(config: ConfigLike, split: str,
                root: Optional[PathLike] = None) -> Tuple[Path, Path]:
    """(json_file, image_root) of a split (whether or not they exist yet)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = dataset_dir(config, root)
    return d / "annotations" / f"instances_{split}.json", d / split


# --------------------------------------------------------------------------- verification
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_dataset(directory: PathLike, config: Optional[SyntheticConfig] = None
                   ) -> Tuple[bool, str]:
    """(ok, reason): is ``directory`` a complete dataset (of ``config`` if given)?"""
    d = Path(directory)
    if not d.is_dir():
        return False, "missing"
    mpath = d / MANIFEST
    if not mpath.is_file():
        return False, f"no {MANIFEST} (generation did not complete)"
    try:
        manifest = json.loads(mpath.read_text())
        splits = manifest["splits"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return False, f"unreadable {MANIFEST}: {e}"
    if manifest.get("format") != MANIFEST_FORMAT:
        return False, f"{MANIFEST} format {manifest.get('format')!r} != {MANIFEST_FORMAT}"
    if config is not None and manifest.get("fingerprint") != config.fingerprint():
        return False, f"fingerprint {manifest.get('fingerprint')!r} != {config.fingerprint()!r}"
    for split in SPLITS:
        info = splits.get(split)
        if not isinstance(info, dict):
            return False, f"{MANIFEST} lacks split {split!r}"
        jpath = d / info["json"]
        if not jpath.is_file():
            return False, f"missing {jpath}"
        if jpath.stat().st_size != info["json_size"] or _sha256(jpath) != info["json_sha256"]:
            return False, f"{jpath} does not match the manifest (truncated or modified)"
        img_dir = d / info["image_dir"]
        files: Dict[str, int] = info["files"]
        try:
            present = {e.name: e.stat().st_size for e in os.scandir(img_dir) if e.is_file()}
        except FileNotFoundError:
            return False, f"missing {img_dir}"
        if len(files) != info["num_images"]:
            return False, f"{MANIFEST} lists {len(files)} files for {info['num_images']} images"
        for name, size in files.items():
            if present.get(name) != size:
                what = "missing" if name not in present else "has the wrong size"
                return False, f"{img_dir / name} {what}"
    return True, "ok"


# --------------------------------------------------------------------------- generation
@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for another process to finish generating (%s)", path)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def write_dataset(config: SyntheticConfig, directory: PathLike, *, progress: bool = True,
                  workers: Optional[int] = None) -> Dict[str, Any]:
    """Generate ``config``'s dataset into ``directory`` (must not exist), manifest last.

    Not atomic by itself: :func:`prepare_dataset` calls it on a temporary directory. Output is
    byte-identical whatever ``workers`` (threads; each image has its own random streams).
    """
    from tqdm import tqdm

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=False)
    (d / "annotations").mkdir()
    workers = workers or _default_workers()
    manifest: Dict[str, Any] = {
        "format": MANIFEST_FORMAT, "generator_version": GENERATOR_VERSION,
        "fingerprint": config.fingerprint(), "preset": config.name,
        "config": dataclasses.asdict(config), "splits": {},
    }
    t0 = time.perf_counter()
    for split in SPLITS:
        n = config.num_images(split)
        img_dir = d / split
        img_dir.mkdir()

        def one(i: int, img_dir: Path = img_dir, split: str = split) -> Tuple[str, int, int, List, int]:
            data, width, height, anns = make_image(config, split, i)
            name = image_file_name(config, i)
            with open(img_dir / name, "wb") as f:
                f.write(data)
            return name, width, height, anns, len(data)

        records = []
        bar = tqdm(total=n, desc=f"dense_shapes[{config.name}] {split}", unit="img",
                   disable=not progress or n == 0)
        ex = ThreadPoolExecutor(workers) if workers > 1 and n > 1 else None
        try:
            for r in ex.map(one, range(n)) if ex is not None else map(one, range(n)):
                records.append(r)
                bar.update(1)
        finally:
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=True)
            bar.close()
        coco = coco_dict(config, split, [(r[0], r[1], r[2], r[3]) for r in records])
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


def _remove(path: Path) -> None:
    """Rename aside then delete, so a half-deleted directory never keeps the real name."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prepare_dataset(config: ConfigLike = "demo", root: Optional[PathLike] = None,
                    *, progress: bool = True, workers: Optional[int] = None) -> Path:
    """The directory of a complete, verified dataset for ``config`` (a preset name or a
    :class:`SyntheticConfig`), generating it first if it is missing, incomplete or corrupt."""
    config = get_config(config)
    final = dataset_dir(config, root)
    ok, reason = verify_dataset(final, config)
    if ok:
        return final
    parent = final.parent
    with _file_lock(parent / f".{final.name}.lock"):
        ok, reason = verify_dataset(final, config)  # another process may have finished it
        if ok:
            return final
        for stale in parent.glob(f".tmp-{final.name}-*"):  # left by killed generations
            shutil.rmtree(stale, ignore_errors=True)
        for stale in parent.glob(f".trash-{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            logger.warning("Dataset %s is incomplete or corrupt (%s): regenerating it", final, reason)
            _remove(final)
        else:
            logger.info("Generating dense_shapes[%s] in %s (first use)", config.name, final)
        tmp = parent / f".tmp-{final.name}-{os.getpid()}"
        try:
            write_dataset(config, tmp, progress=progress, workers=workers)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        ok, reason = verify_dataset(final, config)
        if not ok:  # pragma: no cover - would be a generator bug
            raise RuntimeError(f"freshly generated dataset {final} failed verification: {reason}")
    return final


# --------------------------------------------------------------------------- loading
def load_coco_dicts(json_file: PathLike, image_root: PathLike,
                    dataset_name: Optional[str] = None) -> List[Dict[str, Any]]:
    """detectron2's ``load_coco_json``, with errors that name the file.

    A missing file raises ``FileNotFoundError``; malformed JSON or a file that is not in COCO
    instances format raises :class:`DatasetFormatError` (a ``ValueError``) naming ``json_file``.
    """
    path = Path(json_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        return load_coco_json(str(path), str(image_root), dataset_name)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"malformed JSON in COCO annotation file {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"COCO annotation file {path} is not UTF-8 text: {e}") from e
    except (KeyError, TypeError, AttributeError, IndexError, AssertionError) as e:
        raise DatasetFormatError(
            f"{path} is not a valid COCO instances file ({type(e).__name__}: {e})"
        ) from e


def _unregister_if_ours(name: str) -> None:
    registered = name in DatasetCatalog.list()
    ours = name in MetadataCatalog.list() and MetadataCatalog.get(name).get("registered_by") == _MARKER
    if registered and not ours:
        raise ValueError(f"dataset name {name!r} is already registered by other code")
    if registered:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


class DenseShapesMetadata(Metadata):
    """Metadata whose ``json_file``/``image_root`` follow the data root at access time; reading
    ``json_file`` generates the dataset if needed (so ``COCOEvaluator`` works even when it is
    built before the data loader)."""

    @property
    def json_file(self) -> str:
        config, split, root = self.dense_shapes_config, self.split, self.dense_shapes_root
        prepare_dataset(config, root)
        return str(split_paths(config, split, root)[0])

    @property
    def image_root(self) -> str:
        return str(split_paths(self.dense_shapes_config, self.split, self.dense_shapes_root)[1])


def register_dense_shapes(name: str, config: ConfigLike, split: str,
                          root: Optional[PathLike] = None) -> None:
    """Register split ``split`` of ``config`` as ``name`` (idempotent; cheap: nothing generated).

    ``DatasetCatalog.get(name)`` generates the dataset on first use and returns detectron2 dicts;
    the metadata has ``thing_classes``, ``json_file``, ``image_root`` and ``evaluator_type="coco"``.
    ``root=None`` follows ``$DETECTRON2_DATASETS`` at the time of use.
    """
    config = get_config(config)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _unregister_if_ours(name)

    def load() -> List[Dict[str, Any]]:
        prepare_dataset(config, root)
        json_file, image_root = split_paths(config, split, root)
        return load_coco_dicts(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    meta = DenseShapesMetadata(name=name)
    MetadataCatalog[name] = meta
    meta.set(
        thing_classes=config.thing_classes(), evaluator_type="coco", registered_by=_MARKER,
        dense_shapes_config=config, dense_shapes_root=None if root is None else str(root), split=split,
    )


def register_coco_json(name: str, json_file: PathLike, image_root: PathLike,
                       thing_classes: Optional[List[str]] = None) -> None:
    """Register a user's COCO-format dataset like ``register_coco_instances``, but loading through
    :func:`load_coco_dicts` (a malformed file fails naming the file). Idempotent for names
    registered by this module."""
    _unregister_if_ours(name)
    json_file, image_root = str(json_file), str(image_root)
    DatasetCatalog.register(name, lambda: load_coco_dicts(json_file, image_root, name))
    meta = MetadataCatalog.get(name)
    meta.set(json_file=json_file, image_root=image_root, evaluator_type="coco", registered_by=_MARKER)
    if thing_classes is not None:
        meta.thing_classes = list(thing_classes)


def register_all(root: Optional[PathLike] = None) -> None:
    """Register the builtin names (``dense_shapes_{train,val}``, ``dense_shapes_repro_{train,val}``)."""
    for name, (preset, split) in BUILTIN_DATASETS.items():
        register_dense_shapes(name, PRESETS[preset], split, root)


def dataset_info(name: str) -> Dict[str, Any]:
    """Plain-dict facts about a registered dataset, without generating or loading it.

    Keys: ``name``, ``num_classes``, ``thing_classes``, ``json_file``, ``image_root``,
    ``num_images`` (None when unknown without loading), ``evaluator_type``; for ``dense_shapes``
    datasets also ``preset``, ``split``, ``fingerprint``, ``dataset_dir`` and ``prepared``.
    """
    if name not in DatasetCatalog.list():
        raise KeyError(f"dataset {name!r} is not registered")
    meta = MetadataCatalog.get(name)
    config = meta.get("dense_shapes_config") if meta.get("registered_by") == _MARKER else None
    if config is not None:
        root = meta.get("dense_shapes_root")
        json_file, image_root = split_paths(config, meta.split, root)
        d = dataset_dir(config, root)
        classes = config.thing_classes()
        return {
            "name": name, "num_classes": len(classes), "thing_classes": classes,
            "json_file": str(json_file), "image_root": str(image_root),
            "num_images": config.num_images(meta.split), "evaluator_type": "coco",
            "preset": config.name, "split": meta.split, "fingerprint": config.fingerprint(),
            "dataset_dir": str(d), "prepared": verify_dataset(d, config)[0],
        }
    classes = meta.get("thing_classes")
    return {
        "name": name, "num_classes": None if classes is None else len(classes),
        "thing_classes": None if classes is None else list(classes),
        "json_file": meta.get("json_file"), "image_root": meta.get("image_root"),
        "num_images": None, "evaluator_type": meta.get("evaluator_type"),
    }
