"""The ``dense_shapes`` parameters, presets and layouts (what is in each image, no pixels).

Image ``i`` of split ``s`` draws from two private random streams seeded by
``(config.seed, s, i, 0)`` (layout, here) and ``(config.seed, s, i, 1)`` (pixels, ``render.py``),
so it does not depend on the other images or on the order or parallelism of generation.
Parameters, defaults and presets: ``focal_plugin/data/README.md``.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

# Bumped whenever the generator's output for the same parameters changes (part of the fingerprint).
GENERATOR_VERSION = 1

SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}

#: Shape kinds that define classes, in the order classes use them.
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon")
#: Shape kinds that are never a class: drawn only as unlabeled distractors ("other_shape").
DISTRACTOR_SHAPES = ("semicircle", "ell", "arrow", "crescent")
#: Color families (name, hue in degrees), 36 degrees apart, ordered so that the first classes get
#: far-apart hues; an instance's hue is jittered by at most +-HUE_JITTER degrees.
COLOR_FAMILIES = (
    ("red", 0), ("azure", 216), ("green", 108), ("violet", 288), ("orange", 36),
    ("cyan", 180), ("yellow", 72), ("indigo", 252), ("mint", 144), ("pink", 324),
)
MAX_CLASSES = len(SHAPES) * len(COLOR_FAMILIES)  # 80, COCO's count
DISTRACTOR_KINDS = ("gray", "faint", "other_shape", "recolored")
TEXTURES = ("flat", "gradient", "stripes", "speckle")
HUE_JITTER = 5.0
OBJECT_SATURATION = (0.75, 1.0)
OBJECT_VALUE = (0.7, 1.0)


def class_shape_color(k: int) -> Tuple[int, int]:
    """(shape index, color-family index) of class ``k``: ``(k mod 8, (9*(k div 8) + k mod 8) mod 10)``,
    a bijection onto the 80 combinations; classes 0-7 differ in shape and color."""
    r, q = k % len(SHAPES), k // len(SHAPES)
    return r, (9 * q + r) % len(COLOR_FAMILIES)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a ``dense_shapes`` dataset; each is described in ``focal_plugin/data/README.md``.

    Raises ``ValueError`` naming the field when a value is out of range.
    """

    name: str = "custom"  # folder prefix; not part of the fingerprint
    seed: int = 0
    num_train: int = 2000
    num_val: int = 300
    image_size: Tuple[int, int] = (160, 224)  # width and height each uniform in [lo, hi] pixels
    num_classes: int = 6  # 1..80; class k = (shape, color family), see class_shape_color
    class_zipf_exponent: float = 0.5  # frequency of class k ~ (k+1)^-s; 0 = balanced
    mean_objects: float = 4.0  # per non-empty image: min(max_objects, 1 + Poisson(mean - 1))
    max_objects: int = 10
    empty_fraction: float = 0.05  # images with no object (distractors and clutter only)
    scale_range: Tuple[float, float] = (0.10, 0.55)  # sqrt(box area / image area), log-uniform
    max_aspect: float = 2.0  # box w/h log-uniform in [1/max_aspect, max_aspect]
    min_object_size: int = 4  # pixels, each side
    mean_distractors: float = 2.0  # Poisson mean of unlabeled distractor shapes per image
    max_distractors: int = 8
    # relative weights of the distractor kinds (gray, faint, other_shape, recolored); see README
    distractor_weights: Tuple[float, float, float, float] = (0.35, 0.35, 0.3, 0.0)
    faint_alpha: Tuple[float, float] = (0.15, 0.35)  # opacity of "faint" distractors
    # an object with fewer visible pixels than this fraction of its own is not annotated
    min_visible_fraction: float = 0.3
    texture_fraction: float = 0.5  # share of objects/distractors with a gradient/stripes/speckle fill
    background_lines: float = 4.0  # Poisson mean of clutter lines
    background_blobs: float = 3.0  # Poisson mean of clutter ellipses
    background_max_saturation: float = 0.3  # background colors are this unsaturated or less
    noise_std: float = 6.0  # per-pixel Gaussian noise (0-255 scale)
    image_format: str = "jpg"  # "jpg" or "png"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        (lo, hi), (s0, s1), weights = self.image_size, self.scale_range, self.distractor_weights
        checks = (
            ("num_classes", 1 <= self.num_classes <= MAX_CLASSES, f"expected 1..{MAX_CLASSES}"),
            ("num_train", self.num_train >= 0 and self.num_val >= 0, "image counts must be >= 0"),
            ("image_size", 32 <= lo <= hi, "expected (lo, hi) with 32 <= lo <= hi"),
            ("scale_range", 0 < s0 <= s1 <= 1, "expected 0 < lo <= hi <= 1"),
            ("max_aspect", self.max_aspect >= 1, "expected >= 1"),
            ("mean_objects", self.mean_objects >= 1 and self.max_objects >= 1,
             "mean_objects and max_objects must be >= 1"),
            ("empty_fraction", 0 <= self.empty_fraction <= 1, "expected a probability"),
            ("distractor_weights", len(weights) == 4 and min(weights) >= 0,
             "expected 4 weights >= 0 (gray, faint, other_shape, recolored)"),
            ("distractor_weights", self.mean_distractors <= 0 or sum(weights) > 0,
             "need a positive weight when mean_distractors > 0"),
            ("image_format", self.image_format in ("jpg", "png"), 'expected "jpg" or "png"'),
            ("min_visible_fraction", 0 <= self.min_visible_fraction <= 1, "expected a fraction"),
        )
        for field, ok, why in checks:
            if not ok:
                raise ValueError(f"SyntheticConfig.{field} = {getattr(self, field)!r} is invalid: {why}")

    def class_probabilities(self) -> np.ndarray:
        w = np.arange(1, self.num_classes + 1, dtype=np.float64) ** -float(self.class_zipf_exponent)
        return w / w.sum()

    def thing_classes(self) -> List[str]:
        """``"<color>_<shape>"`` for each class, e.g. ``["red_circle", "azure_square", ...]``."""
        pairs = [class_shape_color(k) for k in range(self.num_classes)]
        return [f"{COLOR_FAMILIES[c][0]}_{SHAPES[s]}" for s, c in pairs]

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]

    def fingerprint(self) -> str:
        """12 hex digits of sha256 over the generator version and every parameter but ``name``."""
        params = dataclasses.asdict(self)
        params.pop("name")
        blob = json.dumps({"generator_version": GENERATOR_VERSION, "params": params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


PRESETS: Dict[str, SyntheticConfig] = {
    # Quick CPU demo: 6 classes that differ in shape AND color, mostly medium objects, light
    # clutter: learnable from scratch in minutes.
    "demo": SyntheticConfig(
        name="demo", seed=0, num_train=2000, num_val=300, image_size=(160, 192), num_classes=6,
        class_zipf_exponent=0.5, mean_objects=4.0, max_objects=8, empty_fraction=0.05,
        scale_range=(0.12, 0.6), mean_distractors=1.5, max_distractors=6,
        distractor_weights=(0.4, 0.4, 0.2, 0.0), min_visible_fraction=0.4, texture_fraction=0.3,
        background_lines=3.0, background_blobs=3.0, noise_std=5.0,
    ),
    # Reproduction: the imbalance pushed towards COCO's within CPU budgets: ~21k anchors, COCO's 80
    # classes with a Zipf(1) tail, COCO-like size mix, up to 30 objects, all hard-negative kinds.
    "repro": SyntheticConfig(
        name="repro", seed=0, num_train=6000, num_val=500, image_size=(288, 352), num_classes=80,
        class_zipf_exponent=1.0, mean_objects=6.0, max_objects=30, empty_fraction=0.05,
        scale_range=(0.03, 0.55), mean_distractors=4.0, max_distractors=16,
        distractor_weights=(0.3, 0.3, 0.4, 0.0),
    ),
    # Smoke runs (tests, `--num-gpus 2` checks): the demo's classes and look, 24/12 images.
    "tiny": SyntheticConfig(
        name="tiny", seed=0, num_train=24, num_val=12, image_size=(96, 128), num_classes=6,
        class_zipf_exponent=0.5, mean_objects=3.0, max_objects=6, empty_fraction=0.1,
        scale_range=(0.15, 0.6), mean_distractors=1.0, max_distractors=3,
        distractor_weights=(0.4, 0.4, 0.2, 0.0),
    ),
}


def get_config(config: Union[SyntheticConfig, str]) -> SyntheticConfig:
    """A preset by name, or ``config`` itself."""
    if isinstance(config, SyntheticConfig):
        return config
    if config in PRESETS:
        return PRESETS[config]
    raise KeyError(f"unknown dense_shapes preset {config!r}; known: {sorted(PRESETS)}")


@dataclass(frozen=True)
class Item:
    """One drawn shape. ``class_id`` is -1 for distractors; (x, y, w, h) is its full box."""

    class_id: int
    shape: str
    x: int
    y: int
    w: int
    h: int
    rgb: Tuple[int, int, int]
    alpha: float  # 1 = opaque; < 1 = blended (faint distractors; never occlude)
    texture: str
    texture_param: int


@dataclass(frozen=True)
class ImageLayout:
    width: int
    height: int
    items: Tuple[Item, ...]  # drawing order (later items occlude earlier ones)

    @property
    def objects(self) -> List[Item]:
        return [it for it in self.items if it.class_id >= 0]


def image_rng(config: SyntheticConfig, split: str, index: int, stream: int) -> np.random.Generator:
    """Stream 0 (layout) or 1 (pixels) of image ``index`` of ``split``."""
    return np.random.default_rng([config.seed, _SPLIT_CODE[split], index, stream])


def hsv_rgb(h_deg: float, s: float, v: float) -> Tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _family_color(rng: np.random.Generator, family: int) -> Tuple[int, int, int]:
    hue = COLOR_FAMILIES[family][1] + rng.uniform(-HUE_JITTER, HUE_JITTER)
    return hsv_rgb(hue, rng.uniform(*OBJECT_SATURATION), rng.uniform(*OBJECT_VALUE))


def _sample_boxes(rng: np.random.Generator, config: SyntheticConfig, n: int, width: int, height: int
                  ) -> np.ndarray:
    """(n, 4) int boxes x, y, w, h inside the image, sizes per the documented distribution."""
    s0, s1 = config.scale_range
    scale = np.exp(rng.uniform(math.log(s0), math.log(s1), size=n)) * math.sqrt(width * height)
    la = math.log(config.max_aspect)
    aspect = np.exp(rng.uniform(-la, la, size=n))
    w = np.clip(np.rint(scale * np.sqrt(aspect)), config.min_object_size, width).astype(np.int64)
    h = np.clip(np.rint(scale / np.sqrt(aspect)), config.min_object_size, height).astype(np.int64)
    x = np.floor(rng.random(n) * (width - w + 1)).astype(np.int64)
    y = np.floor(rng.random(n) * (height - h + 1)).astype(np.int64)
    return np.stack([x, y, w, h], axis=1)


def _texture(rng: np.random.Generator, config: SyntheticConfig) -> Tuple[str, int]:
    if rng.random() >= config.texture_fraction:
        return "flat", 0
    kind = TEXTURES[1 + int(rng.integers(3))]
    return kind, int(rng.integers(1 << 30))


@lru_cache(maxsize=8)
def _palette(num_classes: int) -> Tuple[List[int], List[int], List[Tuple[int, int]]]:
    """Shapes and color families the classes use, and the (shape, family) pairs that are no class."""
    classes = {class_shape_color(k) for k in range(num_classes)}
    shapes, families = sorted({s for s, _ in classes}), sorted({c for _, c in classes})
    return shapes, families, [(s, c) for s in shapes for c in families if (s, c) not in classes]


def _distractor(rng: np.random.Generator, config: SyntheticConfig, weights: np.ndarray
                ) -> Tuple[str, Tuple[int, int, int], float]:
    """(shape, rgb, alpha) of one unlabeled distractor (kinds: README)."""
    shapes, families, free = _palette(config.num_classes)
    kind = DISTRACTOR_KINDS[int(rng.choice(4, p=weights))]
    if kind == "recolored" and not free:
        kind = "other_shape"
    if kind == "gray":
        shape = SHAPES[shapes[int(rng.integers(len(shapes)))]]
        return shape, hsv_rgb(rng.uniform(0, 360), rng.uniform(0, 0.1), rng.uniform(0.2, 0.95)), 1.0
    if kind == "faint":
        s, c = class_shape_color(int(rng.integers(config.num_classes)))
        return SHAPES[s], _family_color(rng, c), float(rng.uniform(*config.faint_alpha))
    if kind == "other_shape":
        shape = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
        return shape, _family_color(rng, families[int(rng.integers(len(families)))]), 1.0
    s, c = free[int(rng.integers(len(free)))]  # recolored
    return SHAPES[s], _family_color(rng, c), 1.0


def sample_layout(config: SyntheticConfig, split: str, index: int) -> ImageLayout:
    """The annotation-level content of image ``index`` of ``split`` (no pixels drawn)."""
    rng = image_rng(config, split, index, 0)
    lo, hi = config.image_size
    width, height = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    empty = rng.random() < config.empty_fraction
    n_obj = 0 if empty else min(config.max_objects, 1 + int(rng.poisson(config.mean_objects - 1)))
    n_dis = min(config.max_distractors, int(rng.poisson(config.mean_distractors)))

    classes = rng.choice(config.num_classes, size=n_obj, p=config.class_probabilities())
    boxes = _sample_boxes(rng, config, n_obj + n_dis, width, height)
    items: List[Item] = []
    for j in range(n_obj):
        k = int(classes[j])
        shape, family = class_shape_color(k)
        tex, param = _texture(rng, config)
        x, y, w, h = (int(v) for v in boxes[j])
        items.append(Item(k, SHAPES[shape], x, y, w, h, _family_color(rng, family), 1.0, tex, param))
    weights = np.asarray(config.distractor_weights, dtype=np.float64)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(4, 0.25)
    for j in range(n_dis):
        shape, rgb, alpha = _distractor(rng, config, weights)
        tex, param = _texture(rng, config)
        x, y, w, h = (int(v) for v in boxes[n_obj + j])
        items.append(Item(-1, shape, x, y, w, h, rgb, alpha, tex, param))

    order = rng.permutation(len(items))
    return ImageLayout(width, height, tuple(items[int(i)] for i in order))


def coco_dict(config: SyntheticConfig, split: str,
              images: Sequence[Tuple[str, int, int, List[Dict[str, Any]]]]) -> Dict[str, Any]:
    """The COCO instances dict of a split from (file_name, width, height, annotations) per image;
    image and category ids are 1-based (generator class k is category k + 1)."""
    out_images, out_anns = [], []
    for image_id, (file_name, width, height, anns) in enumerate(images, start=1):
        out_images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for a in anns:
            out_anns.append({
                "id": len(out_anns) + 1, "image_id": image_id, "category_id": a["category_id"] + 1,
                "bbox": a["bbox"], "area": a["area"], "iscrowd": 0,
                "visible_fraction": a["visible_fraction"],
            })
    categories = [{"id": k + 1, "name": name, "supercategory": SHAPES[class_shape_color(k)[0]]}
                  for k, name in enumerate(config.thing_classes())]
    return {
        "info": {
            "description": f"dense_shapes synthetic detection dataset, preset {config.name!r}, "
                           f"split {split!r} (focal_plugin.data)",
            "version": str(GENERATOR_VERSION),
            "fingerprint": config.fingerprint(),
        },
        "licenses": [], "images": out_images, "annotations": out_anns, "categories": categories,
    }
