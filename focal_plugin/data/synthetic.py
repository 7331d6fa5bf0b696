"""The ``dense_shapes`` generator: seeded, layout sampling separate from rendering.

Every image ``i`` of split ``s`` has two private random streams seeded by
``(config.seed, s, i, 0)`` (layout) and ``(config.seed, s, i, 1)`` (pixels), so an image does not
depend on the others, on the order of generation or on the number of worker processes, and the
annotation statistics can be sampled without drawing a pixel (:func:`sample_layout`).

See ``focal_plugin/data/README.md`` for the parameters, their defaults and the presets.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

# Bumped whenever the generator's output for the same parameters changes (part of the fingerprint).
GENERATOR_VERSION = 1

SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}

#: Shape kinds that define classes, in the order classes use them.
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon")
#: Shape kinds that are never a class: drawn only as unlabeled distractors ("other_shape").
DISTRACTOR_SHAPES = ("semicircle", "ell", "arrow", "crescent")
#: Color families (name, hue in degrees), ordered so that the first classes get far-apart hues.
#: The hues are 36 degrees apart; an instance's hue is jittered by at most +-5 degrees.
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
    """(shape index, color-family index) of class ``k``: ``(k mod 8, (9*(k div 8) + k mod 8) mod 10)``.

    Classes 0-7 differ in shape and color; the map is a bijection onto the 80 combinations.
    """
    r, q = k % len(SHAPES), k // len(SHAPES)
    return r, (9 * q + r) % len(COLOR_FAMILIES)


def class_names(num_classes: int) -> List[str]:
    """``"<color>_<shape>"`` for each class, e.g. ``["red_circle", "azure_square", ...]``."""
    out = []
    for k in range(num_classes):
        s, c = class_shape_color(k)
        out.append(f"{COLOR_FAMILIES[c][0]}_{SHAPES[s]}")
    return out


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a ``dense_shapes`` dataset (see ``focal_plugin/data/README.md``).

    Sizes: an object's *scale* is ``sqrt(w*h) / sqrt(W*H)`` (box vs image), drawn log-uniformly
    from ``scale_range``; its aspect ``w/h`` is log-uniform in ``[1/max_aspect, max_aspect]``.
    Classes: class ``k`` (0-based) has frequency proportional to ``(k+1) ** -class_zipf_exponent``.
    Counts: an image is empty with probability ``empty_fraction``; otherwise it gets
    ``min(max_objects, 1 + Poisson(mean_objects - 1))`` objects (before the occlusion rule).
    """

    name: str = "custom"  # folder prefix; not part of the fingerprint
    seed: int = 0
    num_train: int = 2000
    num_val: int = 300
    image_size: Tuple[int, int] = (160, 224)  # width and height each uniform in [lo, hi] pixels
    num_classes: int = 6  # 1..80; class k = (shape, color family), see class_shape_color
    class_zipf_exponent: float = 0.5  # frequency of class k ~ (k+1)^-s; 0 = balanced
    mean_objects: float = 4.0  # mean objects per non-empty image (before truncation at max)
    max_objects: int = 10
    empty_fraction: float = 0.05  # images with no object (distractors and clutter only)
    scale_range: Tuple[float, float] = (0.10, 0.55)  # sqrt(box area / image area), log-uniform
    max_aspect: float = 2.0  # box w/h log-uniform in [1/max_aspect, max_aspect]
    min_object_size: int = 4  # pixels, each side
    mean_distractors: float = 2.0  # Poisson mean of unlabeled distractor shapes per image
    max_distractors: int = 8
    # relative weights of the distractor kinds (gray, faint, other_shape, recolored):
    #   gray: a class shape in an achromatic color; faint: a class (shape, color) blended into the
    #   background at opacity faint_alpha; other_shape: a never-a-class shape in a class color;
    #   recolored: a class shape in a class color that makes no class (falls back to other_shape
    #   when every combination is a class).
    distractor_weights: Tuple[float, float, float, float] = (0.35, 0.35, 0.3, 0.0)
    faint_alpha: Tuple[float, float] = (0.15, 0.35)
    # objects are drawn in random order (with the distractors); one whose visible pixels are less
    # than this fraction of its own pixels is left unannotated (but stays drawn)
    min_visible_fraction: float = 0.3
    texture_fraction: float = 0.5  # share of objects/distractors with a gradient/stripes/speckle fill
    background_lines: float = 4.0  # Poisson mean of clutter lines
    background_blobs: float = 3.0  # Poisson mean of clutter ellipses
    background_max_saturation: float = 0.3  # background colors are this unsaturated or less
    noise_std: float = 6.0  # per-pixel Gaussian noise (0-255 scale)
    image_format: str = "jpg"  # "jpg" or "png"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ValueError(f"SyntheticConfig.{field} = {getattr(self, field)!r} is invalid: {why}")

        if not 1 <= self.num_classes <= MAX_CLASSES:
            bad("num_classes", f"expected 1..{MAX_CLASSES}")
        if self.num_train < 0 or self.num_val < 0:
            bad("num_train", "image counts must be >= 0")
        lo, hi = self.image_size
        if not 32 <= lo <= hi:
            bad("image_size", "expected (lo, hi) with 32 <= lo <= hi")
        s0, s1 = self.scale_range
        if not 0 < s0 <= s1 <= 1:
            bad("scale_range", "expected 0 < lo <= hi <= 1")
        if self.max_aspect < 1:
            bad("max_aspect", "expected >= 1")
        if self.mean_objects < 1 or self.max_objects < 1:
            bad("mean_objects", "mean_objects and max_objects must be >= 1")
        if not 0 <= self.empty_fraction <= 1:
            bad("empty_fraction", "expected a probability")
        if len(self.distractor_weights) != 4 or min(self.distractor_weights) < 0:
            bad("distractor_weights", "expected 4 weights >= 0 (gray, faint, other_shape, recolored)")
        if self.mean_distractors > 0 and sum(self.distractor_weights) <= 0:
            bad("distractor_weights", "need a positive weight when mean_distractors > 0")
        if self.image_format not in ("jpg", "png"):
            bad("image_format", 'expected "jpg" or "png"')
        if not 0 <= self.min_visible_fraction <= 1:
            bad("min_visible_fraction", "expected a fraction")

    # ------------------------------------------------------------------ derived
    def class_probabilities(self) -> np.ndarray:
        w = np.arange(1, self.num_classes + 1, dtype=np.float64) ** -float(self.class_zipf_exponent)
        return w / w.sum()

    def thing_classes(self) -> List[str]:
        return class_names(self.num_classes)

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]

    def fingerprint(self) -> str:
        """12 hex digits of sha256 over the generator version and every parameter but ``name``."""
        params = dataclasses.asdict(self)
        params.pop("name")
        blob = json.dumps({"generator_version": GENERATOR_VERSION, "params": params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- presets
PRESETS: Dict[str, SyntheticConfig] = {
    # Quick CPU demo: 160-192 px images, 6 classes that differ in shape AND color, mostly medium
    # objects (~26% small, ~70% medium, a few large), light clutter: learnable from scratch in
    # minutes. ~8k anchors/image (9 per location), ~620 binary negatives per positive anchor.
    "demo": SyntheticConfig(
        name="demo", seed=0, num_train=2000, num_val=300, image_size=(160, 192), num_classes=6,
        class_zipf_exponent=0.5, mean_objects=4.0, max_objects=8, empty_fraction=0.05,
        scale_range=(0.12, 0.6), mean_distractors=1.5, max_distractors=6,
        distractor_weights=(0.4, 0.4, 0.2, 0.0), min_visible_fraction=0.4, texture_fraction=0.3,
        background_lines=3.0, background_blobs=3.0, noise_std=5.0,
    ),
    # Reproduction: the imbalance pushed towards COCO's within CPU budgets: 288-352 px images
    # (~21k anchors), COCO's 80 classes with a Zipf(1) long tail, COCO-like size mix (~41% small /
    # 39% medium / 20% large by COCO's absolute area ranges), up to 30 objects per image, and all
    # hard-negative kinds.
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


# --------------------------------------------------------------------------- layout
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


def _rng(config: SyntheticConfig, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, _SPLIT_CODE[split], index, stream])


def _hsv_rgb(h_deg: float, s: float, v: float) -> Tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _family_color(rng: np.random.Generator, family: int) -> Tuple[int, int, int]:
    hue = COLOR_FAMILIES[family][1] + rng.uniform(-HUE_JITTER, HUE_JITTER)
    return _hsv_rgb(hue, rng.uniform(*OBJECT_SATURATION), rng.uniform(*OBJECT_VALUE))


def _sample_boxes(
    rng: np.random.Generator, config: SyntheticConfig, n: int, width: int, height: int
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


def sample_layout(config: SyntheticConfig, split: str, index: int) -> ImageLayout:
    """The annotation-level content of image ``index`` of ``split`` (no pixels drawn)."""
    rng = _rng(config, split, index, 0)
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

    used_shapes = sorted({class_shape_color(k)[0] for k in range(config.num_classes)})
    used_families = sorted({class_shape_color(k)[1] for k in range(config.num_classes)})
    class_combos = {class_shape_color(k) for k in range(config.num_classes)}
    free_combos = [(s, c) for s in used_shapes for c in used_families if (s, c) not in class_combos]
    weights = np.asarray(config.distractor_weights, dtype=np.float64)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(4, 0.25)
    for j in range(n_dis):
        kind = DISTRACTOR_KINDS[int(rng.choice(4, p=weights))]
        if kind == "recolored" and not free_combos:
            kind = "other_shape"
        alpha = 1.0
        if kind == "gray":
            shape = SHAPES[used_shapes[int(rng.integers(len(used_shapes)))]]
            rgb = _hsv_rgb(rng.uniform(0, 360), rng.uniform(0, 0.1), rng.uniform(0.2, 0.95))
        elif kind == "faint":
            s, c = class_shape_color(int(rng.integers(config.num_classes)))
            shape, rgb = SHAPES[s], _family_color(rng, c)
            alpha = float(rng.uniform(*config.faint_alpha))
        elif kind == "other_shape":
            shape = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
            rgb = _family_color(rng, used_families[int(rng.integers(len(used_families)))])
        else:  # recolored
            s, c = free_combos[int(rng.integers(len(free_combos)))]
            shape, rgb = SHAPES[s], _family_color(rng, c)
        tex, param = _texture(rng, config)
        x, y, w, h = (int(v) for v in boxes[n_obj + j])
        items.append(Item(-1, shape, x, y, w, h, rgb, alpha, tex, param))

    order = rng.permutation(len(items))
    return ImageLayout(width, height, tuple(items[int(i)] for i in order))


# --------------------------------------------------------------------------- rendering
def _unit_polygon(shape: str) -> np.ndarray:
    if shape == "triangle":
        return np.array([[0.5, 0], [1, 1], [0, 1]])
    if shape == "diamond":
        return np.array([[0.5, 0], [1, 0.5], [0.5, 1], [0, 0.5]])
    if shape == "hexagon":
        return np.array([[0.25, 0], [0.75, 0], [1, 0.5], [0.75, 1], [0.25, 1], [0, 0.5]])
    if shape == "cross":
        t = 0.34
        a, b = (1 - t) / 2, (1 + t) / 2
        return np.array([[a, 0], [b, 0], [b, a], [1, a], [1, b], [b, b], [b, 1], [a, 1], [a, b],
                         [0, b], [0, a], [a, a]])
    if shape == "star":
        ang = np.deg2rad(-90 + 36 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
        return (pts - pts.min(0)) / (pts.max(0) - pts.min(0))
    if shape == "ell":
        t = 0.38
        return np.array([[0, 0], [t, 0], [t, 1 - t], [1, 1 - t], [1, 1], [0, 1]])
    if shape == "arrow":
        return np.array([[0, 0.32], [0.55, 0.32], [0.55, 0], [1, 0.5], [0.55, 1], [0.55, 0.68], [0, 0.68]])
    raise KeyError(shape)


def _ellipse(mask: np.ndarray, cx: float, cy: float, ax: float, ay: float, value: int,
             start: int = 0, end: int = 360) -> None:
    f = 16  # 4 fractional bits
    cv2.ellipse(mask, (int(round(cx * f)), int(round(cy * f))),
                (max(0, int(round(ax * f))), max(0, int(round(ay * f)))),
                0, start, end, value, thickness=-1, lineType=cv2.LINE_8, shift=4)


@lru_cache(maxsize=8192)
def shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """A read-only (h, w) bool mask of ``shape`` fitted to a w x h box."""
    m = np.zeros((h, w), np.uint8)
    cx, cy, ax, ay = (w - 1) / 2, (h - 1) / 2, (w - 1) / 2, (h - 1) / 2
    if shape == "square":
        m[:] = 1
    elif shape == "circle":
        _ellipse(m, cx, cy, ax, ay, 1)
    elif shape == "ring":
        _ellipse(m, cx, cy, ax, ay, 1)
        _ellipse(m, cx, cy, ax * 0.5, ay * 0.5, 0)
    elif shape == "semicircle":
        _ellipse(m, cx, h - 1, ax, h - 1, 1, 180, 360)
    elif shape == "crescent":
        _ellipse(m, cx, cy, ax, ay, 1)
        _ellipse(m, cx + 0.4 * w, cy, ax, ay, 0)
    else:
        pts = _unit_polygon(shape) * np.array([w - 1, h - 1])
        cv2.fillPoly(m, [np.rint(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    out = m.astype(bool)
    if not out.any():
        out[h // 2, w // 2] = True
    out.setflags(write=False)
    return out


def _fill(item: Item, h: int, w: int) -> np.ndarray:
    base = np.asarray(item.rgb, np.float32)
    if item.texture == "flat":
        return np.broadcast_to(base.astype(np.uint8), (h, w, 3))
    trng = np.random.default_rng(item.texture_param)
    if item.texture == "gradient":
        lo, hi = trng.uniform(0.6, 0.85), trng.uniform(1.0, 1.2)
        horizontal = trng.random() < 0.5
        t = np.linspace(lo, hi, w if horizontal else h, dtype=np.float32)
        t = t[None, :, None] if horizontal else t[:, None, None]
        patch = np.broadcast_to(base * t, (h, w, 3))
    elif item.texture == "stripes":
        period = int(trng.integers(2, 5))
        yy, xx = np.mgrid[0:h, 0:w]
        sel = ((xx + yy * int(trng.integers(0, 2))) // period) % 2 == 1
        patch = np.where(sel[..., None], base * 0.6, base)
    else:  # speckle
        patch = base + trng.normal(0.0, 22.0, size=(h, w, 1)).astype(np.float32)
    return np.clip(np.rint(patch), 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, config: SyntheticConfig, width: int, height: int) -> np.ndarray:
    smax = config.background_max_saturation

    def muted() -> np.ndarray:
        return np.asarray(_hsv_rgb(rng.uniform(0, 360), rng.uniform(0, smax), rng.uniform(0.25, 0.85)),
                          np.float32)

    # gradient + low-frequency color noise on a coarse grid, upsampled in one resize
    c1, c2 = muted(), muted()
    theta = rng.uniform(0, 2 * math.pi)
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    gy = np.linspace(0, height, gh, dtype=np.float32)[:, None] * math.sin(theta)
    gx = np.linspace(0, width, gw, dtype=np.float32)[None, :] * math.cos(theta)
    t = gy + gx
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    grid = c1 + t[..., None] * (c2 - c1) + rng.normal(0.0, 14.0, size=(gh, gw, 3)).astype(np.float32)
    grid = np.clip(np.rint(grid), 0, 255).astype(np.uint8)
    img = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    diag = math.hypot(width, height)
    for _ in range(int(rng.poisson(config.background_blobs))):
        color = tuple(int(v) for v in muted())
        center = (int(rng.integers(width)), int(rng.integers(height)))
        axes = (int(rng.uniform(0.04, 0.3) * diag), int(rng.uniform(0.04, 0.3) * diag))
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, color, thickness=-1)
    for _ in range(int(rng.poisson(config.background_lines))):
        color = _hsv_rgb(rng.uniform(0, 360), rng.uniform(0, min(0.7, 2 * smax)), rng.uniform(0.15, 0.95))
        p1 = (int(rng.integers(width)), int(rng.integers(height)))
        p2 = (int(rng.integers(width)), int(rng.integers(height)))
        cv2.line(img, p1, p2, color, thickness=int(rng.integers(1, 4)))
    return img


_NOISE_BANK_SIZE = 1024


@lru_cache(maxsize=4)
def _noise_bank(std: float) -> Tuple[np.ndarray, np.ndarray]:
    """Positive and negative parts (uint8) of a fixed-seed Gaussian noise field."""
    g = np.random.default_rng(12345).standard_normal((_NOISE_BANK_SIZE, _NOISE_BANK_SIZE, 3), np.float32)
    g = np.rint(g * std)
    pos = np.clip(g, 0, 255).astype(np.uint8)
    neg = np.clip(-g, 0, 255).astype(np.uint8)
    pos.setflags(write=False)
    neg.setflags(write=False)
    return pos, neg


def _add_noise(img: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """Add Gaussian pixel noise: a random crop of a fixed noise field (cheap, deterministic)."""
    H, W = img.shape[:2]
    pos, neg = _noise_bank(float(std))
    y = int(rng.integers(_NOISE_BANK_SIZE - H + 1)) if H <= _NOISE_BANK_SIZE else 0
    x = int(rng.integers(_NOISE_BANK_SIZE - W + 1)) if W <= _NOISE_BANK_SIZE else 0
    if H > _NOISE_BANK_SIZE or W > _NOISE_BANK_SIZE:
        reps = (H // _NOISE_BANK_SIZE + 1, W // _NOISE_BANK_SIZE + 1, 1)
        pos, neg = np.tile(pos, reps), np.tile(neg, reps)
    out = cv2.add(img, np.ascontiguousarray(pos[y:y + H, x:x + W]))
    return cv2.subtract(out, np.ascontiguousarray(neg[y:y + H, x:x + W]))


def render_layout(
    config: SyntheticConfig, layout: ImageLayout, split: str, index: int
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Draw ``layout``; return the RGB uint8 image and its annotations.

    Annotations (one per object whose visible fraction is >= ``min_visible_fraction``) hold
    ``category_id`` (0-based), ``bbox`` (tight XYWH of the visible pixels, ints), ``area``
    (w*h of that box) and ``visible_fraction``.
    """
    rng = _rng(config, split, index, 1)
    W, H = layout.width, layout.height
    img = _background(rng, config, W, H)
    label = np.zeros((H, W), np.uint16)  # 1 + object number; 0 = no object
    objects: List[Tuple[int, Item, int]] = []  # (label value, item, full pixel count)
    for it in layout.items:
        m = shape_mask(it.shape, it.w, it.h)
        region = img[it.y:it.y + it.h, it.x:it.x + it.w]
        patch = _fill(it, it.h, it.w)
        m3 = m[..., None]
        if it.alpha >= 1.0:
            np.copyto(region, patch, where=m3)
        else:
            mixed = cv2.addWeighted(np.ascontiguousarray(patch), it.alpha, region, 1.0 - it.alpha, 0.0)
            np.copyto(region, mixed, where=m3)
        if it.class_id >= 0:
            value = len(objects) + 1
            np.copyto(label[it.y:it.y + it.h, it.x:it.x + it.w], value, where=m)
            objects.append((value, it, int(np.count_nonzero(m))))
        elif it.alpha >= 1.0:  # opaque distractors occlude objects
            np.copyto(label[it.y:it.y + it.h, it.x:it.x + it.w], 0, where=m)
    if config.noise_std > 0:
        img = _add_noise(img, rng, config.noise_std)

    annotations: List[Dict[str, Any]] = []
    if objects:
        visible = np.bincount(label.ravel(), minlength=len(objects) + 1)
        for value, it, full in objects:
            frac = visible[value] / max(full, 1)
            if visible[value] == 0 or frac < config.min_visible_fraction:
                continue
            sub = label[it.y:it.y + it.h, it.x:it.x + it.w] == value
            rows = np.flatnonzero(sub.any(axis=1))
            cols = np.flatnonzero(sub.any(axis=0))
            x0, y0 = it.x + int(cols[0]), it.y + int(rows[0])
            bw, bh = int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
            annotations.append({
                "category_id": it.class_id, "bbox": [x0, y0, bw, bh], "area": bw * bh,
                "visible_fraction": round(float(frac), 4),
            })
    return img, annotations


def encode_image(img: np.ndarray, config: SyntheticConfig) -> bytes:
    """PNG (compression 3) or JPEG (``jpeg_quality``, 4:2:0) bytes of an RGB image; deterministic
    for a given OpenCV build."""
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if config.image_format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def image_file_name(config: SyntheticConfig, index: int) -> str:
    return f"{index:06d}.{config.image_format}"


def make_image(
    config: SyntheticConfig, split: str, index: int
) -> Tuple[bytes, int, int, List[Dict[str, Any]]]:
    """Encoded bytes, width, height and annotations of one image."""
    layout = sample_layout(config, split, index)
    img, anns = render_layout(config, layout, split, index)
    return encode_image(img, config), layout.width, layout.height, anns


def categories(config: SyntheticConfig) -> List[Dict[str, Any]]:
    """COCO categories; ids are 1-based (category k of the generator is id k + 1)."""
    out = []
    for k, name in enumerate(config.thing_classes()):
        out.append({"id": k + 1, "name": name, "supercategory": SHAPES[class_shape_color(k)[0]]})
    return out


def coco_dict(
    config: SyntheticConfig, split: str, images: Sequence[Tuple[str, int, int, List[Dict[str, Any]]]]
) -> Dict[str, Any]:
    """The COCO instances dict of a split from (file_name, width, height, annotations) per image."""
    out_images, out_anns = [], []
    for i, (file_name, width, height, anns) in enumerate(images):
        image_id = i + 1
        out_images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for a in anns:
            out_anns.append({
                "id": len(out_anns) + 1, "image_id": image_id, "category_id": a["category_id"] + 1,
                "bbox": a["bbox"], "area": a["area"], "iscrowd": 0,
                "visible_fraction": a["visible_fraction"],
            })
    return {
        "info": {
            "description": f"dense_shapes synthetic detection dataset, preset {config.name!r}, "
                           f"split {split!r} (focal_plugin.data)",
            "version": str(GENERATOR_VERSION),
            "fingerprint": config.fingerprint(),
        },
        "licenses": [],
        "images": out_images,
        "annotations": out_anns,
        "categories": categories(config),
    }


def layout_statistics(config: SyntheticConfig, split: str = "train", num_images: Optional[int] = None
                      ) -> Dict[str, np.ndarray]:
    """Per-object class ids, scales (sqrt(w*h/(W*H))) and aspects, and per-image object counts,
    from layouts only (fast: nothing is drawn)."""
    n = config.num_images(split) if num_images is None else num_images
    cls, scale, aspect, counts = [], [], [], []
    for i in range(n):
        lay = sample_layout(config, split, i)
        objs = lay.objects
        counts.append(len(objs))
        for o in objs:
            cls.append(o.class_id)
            scale.append(math.sqrt(o.w * o.h / (lay.width * lay.height)))
            aspect.append(o.w / o.h)
    return {"class_id": np.asarray(cls, np.int64), "scale": np.asarray(scale),
            "aspect": np.asarray(aspect), "objects_per_image": np.asarray(counts, np.int64)}
