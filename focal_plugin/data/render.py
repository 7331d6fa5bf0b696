"""The ``dense_shapes`` pixels: draws a layout (``synthetic.sample_layout``) with occlusion,
textures, cluttered backgrounds and pixel noise, and derives the annotations from what is visible."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np

from focal_plugin.data.synthetic import ImageLayout, Item, SyntheticConfig, hsv_rgb, image_rng, sample_layout


def _star() -> np.ndarray:
    ang = np.deg2rad(-90 + 36 * np.arange(10))
    rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    return (pts - pts.min(0)) / (pts.max(0) - pts.min(0))


_A, _B = (1 - 0.34) / 2, (1 + 0.34) / 2  # the cross's arm edges
#: Polygon shapes in the unit square (x, y); the others are ellipse-based (see shape_mask).
_POLYGONS = {
    "triangle": np.array([[0.5, 0], [1, 1], [0, 1]]),
    "diamond": np.array([[0.5, 0], [1, 0.5], [0.5, 1], [0, 0.5]]),
    "hexagon": np.array([[0.25, 0], [0.75, 0], [1, 0.5], [0.75, 1], [0.25, 1], [0, 0.5]]),
    "cross": np.array([[_A, 0], [_B, 0], [_B, _A], [1, _A], [1, _B], [_B, _B], [_B, 1], [_A, 1],
                       [_A, _B], [0, _B], [0, _A], [_A, _A]]),
    "star": _star(),
    "ell": np.array([[0, 0], [0.38, 0], [0.38, 1 - 0.38], [1, 1 - 0.38], [1, 1], [0, 1]]),
    "arrow": np.array([[0, 0.32], [0.55, 0.32], [0.55, 0], [1, 0.5], [0.55, 1], [0.55, 0.68], [0, 0.68]]),
}


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
        pts = _POLYGONS[shape] * np.array([w - 1, h - 1])
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
    """Gradient + low-frequency color noise (a coarse grid, upsampled), clutter blobs and lines."""
    smax = config.background_max_saturation

    def muted() -> np.ndarray:
        return np.asarray(hsv_rgb(rng.uniform(0, 360), rng.uniform(0, smax), rng.uniform(0.25, 0.85)),
                          np.float32)

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
        color = hsv_rgb(rng.uniform(0, 360), rng.uniform(0, min(0.7, 2 * smax)), rng.uniform(0.15, 0.95))
        p1 = (int(rng.integers(width)), int(rng.integers(height)))
        p2 = (int(rng.integers(width)), int(rng.integers(height)))
        cv2.line(img, p1, p2, color, thickness=int(rng.integers(1, 4)))
    return img


_NOISE_BANK_SIZE = 1024


@lru_cache(maxsize=4)
def _noise_bank(std: float) -> Tuple[np.ndarray, np.ndarray]:
    """Positive and negative parts (uint8, read-only) of a fixed-seed Gaussian noise field."""
    g = np.random.default_rng(12345).standard_normal((_NOISE_BANK_SIZE, _NOISE_BANK_SIZE, 3), np.float32)
    g = np.rint(g * std)
    pos, neg = np.clip(g, 0, 255).astype(np.uint8), np.clip(-g, 0, 255).astype(np.uint8)
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


def render_layout(config: SyntheticConfig, layout: ImageLayout, split: str, index: int
                  ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Draw ``layout``; return the RGB uint8 image and its annotations.

    Annotations (one per object whose visible fraction is >= ``min_visible_fraction``) hold
    ``category_id`` (0-based), ``bbox`` (tight XYWH of the visible pixels, ints), ``area``
    (w*h of that box) and ``visible_fraction``.
    """
    rng = image_rng(config, split, index, 1)
    W, H = layout.width, layout.height
    img = _background(rng, config, W, H)
    label = np.zeros((H, W), np.uint16)  # 1 + object number; 0 = no object
    objects: List[Tuple[int, Item, int]] = []  # (label value, item, full pixel count)
    for it in layout.items:
        m = shape_mask(it.shape, it.w, it.h)
        region = img[it.y:it.y + it.h, it.x:it.x + it.w]
        patch = _fill(it, it.h, it.w)
        if it.alpha < 1.0:
            patch = cv2.addWeighted(np.ascontiguousarray(patch), it.alpha, region, 1.0 - it.alpha, 0.0)
        np.copyto(region, patch, where=m[..., None])
        if it.class_id >= 0:
            value = len(objects) + 1
            np.copyto(label[it.y:it.y + it.h, it.x:it.x + it.w], value, where=m)
            objects.append((value, it, int(np.count_nonzero(m))))
        elif it.alpha >= 1.0:  # opaque distractors occlude objects
            np.copyto(label[it.y:it.y + it.h, it.x:it.x + it.w], 0, where=m)
    if config.noise_std > 0:
        img = _add_noise(img, rng, config.noise_std)

    annotations: List[Dict[str, Any]] = []
    visible = np.bincount(label.ravel(), minlength=len(objects) + 1)
    for value, it, full in objects:
        frac = visible[value] / max(full, 1)
        if visible[value] == 0 or frac < config.min_visible_fraction:
            continue
        sub = label[it.y:it.y + it.h, it.x:it.x + it.w] == value
        rows, cols = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
        x0, y0 = it.x + int(cols[0]), it.y + int(rows[0])
        bw, bh = int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
        annotations.append({"category_id": it.class_id, "bbox": [x0, y0, bw, bh], "area": bw * bh,
                            "visible_fraction": round(float(frac), 4)})
    return img, annotations


def make_image(config: SyntheticConfig, split: str, index: int
               ) -> Tuple[bytes, int, int, List[Dict[str, Any]]]:
    """Encoded bytes, width, height and annotations of one image: PNG (compression 3) or JPEG
    (``jpeg_quality``), deterministic for a given OpenCV build."""
    layout = sample_layout(config, split, index)
    img, anns = render_layout(config, layout, split, index)
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if config.image_format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes(), layout.width, layout.height, anns
