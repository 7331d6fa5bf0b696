"""From config keys to constructor arguments, and back in errors.

The rules live in the constructors (losses, initializers, OHEM sampler, FocalRetinaNet); these
helpers only name the ``cfg`` keys an argument came from when a constructor refuses it
(``modeling.validate.check_focal_config`` applies them to a whole config).
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator

from focal_plugin.losses import ClassificationLoss, build_classification_loss
from focal_plugin.losses.modules import loss_class


def cfg_value(cfg, key: str):
    """``cfg.A.B.C`` for ``key`` "A.B.C"."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def flat_items(node, prefix: str = "") -> Dict[str, Any]:
    """``{"A.B.C": value}`` for every leaf of ``node`` (a ``CfgNode`` or nested dict)."""
    out: Dict[str, Any] = {}
    for k, v in node.items():
        out.update(flat_items(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@contextlib.contextmanager
def config_keys(cfg, *keys: str) -> Iterator[None]:
    """Re-raise a constructor's ``ValueError`` naming the config keys its arguments came from.

    The rules live in the constructors (losses, initializers, OHEM sampler, this model); this
    only says which ``cfg`` keys to change, e.g. "cfg.MODEL.FOCAL.GAMMA = -1.0: ...".
    """
    try:
        yield
    except ValueError as e:
        named = ", ".join(f"cfg.{k} = {cfg_value(cfg, k)!r}" for k in keys)
        raise ValueError(f"{named}: {e}") from e


def build_loss_from_cfg(cfg) -> ClassificationLoss:
    """The classification loss ``cfg.MODEL.FOCAL.LOSS`` with the hyperparameters it takes from
    ``cfg.MODEL.FOCAL``; a bad value raises ``ValueError`` naming its key."""
    focal = cfg.MODEL.FOCAL
    with config_keys(cfg, "MODEL.FOCAL.LOSS"):
        names = loss_class(focal.LOSS).hyperparameters
    with config_keys(cfg, *(f"MODEL.FOCAL.{p.upper()}" for p in names), "MODEL.FOCAL.FUSED_LOSS"):
        return build_classification_loss(
            focal.LOSS, fused=focal.FUSED_LOSS, **{p: focal[p.upper()] for p in names}
        )
