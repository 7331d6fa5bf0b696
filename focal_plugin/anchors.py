"""The paper's anchor densities (§4, Table 1c) written as detectron2's own anchor keys.

detectron2 reads anchors from ``MODEL.ANCHOR_GENERATOR.SIZES`` / ``ASPECT_RATIOS`` (explicit
per-level lists, as its ``Base-RetinaNet.yaml``); the paper describes them as octave base sizes
with ``#sc`` sub-octave scales ``2^(k/#sc)`` and ``#ar`` aspect ratios. These helpers turn the
paper's description into those keys, so every reader of the config (detectron2's RetinaNet,
visualisers, analysis code) sees the anchors the model really uses.
"""

from __future__ import annotations

from typing import List, Sequence

#: Octave base sizes of P3..P7 in the paper (areas 32^2 ... 512^2).
PAPER_BASE_SIZES = (32, 64, 128, 256, 512)
#: Aspect ratios (height / width) of the paper's 3-aspect setting; 1 aspect = the square only.
PAPER_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def anchor_sizes(scales_per_octave: int, base_sizes: Sequence[float] = PAPER_BASE_SIZES) -> List[List[float]]:
    """Per-level sizes ``base * 2**(k / n)`` for k < n (Table 1c's ``#sc`` = n).

    Raises ``ValueError`` unless ``scales_per_octave`` is an int >= 1 and every base is > 0.
    ``anchor_sizes(3)[0] == [32.0, 40.31747359663594, 50.79683366298238]``.
    """
    n = scales_per_octave
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"scales_per_octave = {n!r} is invalid: expected an integer >= 1")
    if not base_sizes or any(not float(b) > 0 for b in base_sizes):
        raise ValueError(f"base_sizes = {list(base_sizes)!r} is invalid: expected positive numbers")
    return [[float(b) * 2 ** (k / n) for k in range(n)] for b in base_sizes]


def aspect_ratios(num_aspects: int) -> List[List[float]]:
    """``[[1.0]]`` for 1 aspect, ``[[0.5, 1.0, 2.0]]`` for 3 (Table 1c's ``#ar``)."""
    if num_aspects == 1 and not isinstance(num_aspects, bool):
        return [[1.0]]
    if num_aspects == 3 and not isinstance(num_aspects, bool):
        return [list(PAPER_ASPECT_RATIOS)]
    raise ValueError(f"num_aspects = {num_aspects!r} is invalid: expected 1 or 3 (Table 1c)")


def anchor_overrides(scales_per_octave: int, num_aspects: int,
                     base_sizes: Sequence[float] = PAPER_BASE_SIZES) -> List[str]:
    """``KEY VALUE`` config overrides (for ``cfg.merge_from_list``/the CLI) setting
    ``MODEL.ANCHOR_GENERATOR.SIZES`` and ``ASPECT_RATIOS`` to a Table 1c density."""
    return [
        "MODEL.ANCHOR_GENERATOR.SIZES", repr(anchor_sizes(scales_per_octave, base_sizes)),
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", repr(aspect_ratios(num_aspects)),
    ]
