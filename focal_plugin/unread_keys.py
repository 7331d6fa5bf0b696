"""Config keys the configured meta-architecture never reads: a value set there has no effect, so it
is refused, naming the key that does what was meant.

detectron2's config tree holds every model's keys; each meta-architecture reads its own subtrees.
Under FocalRetinaNet and detectron2's RetinaNet nothing reads the two-stage keys (``MODEL.RPN``,
``MODEL.ROI_HEADS``, ``MODEL.ROI_BOX_HEAD``, ``MODEL.PROPOSAL_GENERATOR``); FocalRetinaNet takes
its loss and prior from ``MODEL.FOCAL`` instead of ``MODEL.RETINANET.FOCAL_LOSS_*`` /
``PRIOR_PROB``; detectron2's RetinaNet and GeneralizedRCNN read no ``MODEL.FOCAL``;
GeneralizedRCNN reads no ``MODEL.RETINANET``; only FocalRetinaNet reads ``TEST.AMP`` (inference
autocast, a key of ours). Other meta-architectures (a user's own, which may
read ``MODEL.FOCAL`` through our losses) are left alone.

What counts as set: a value that differs from the defaults (detectron2's plus ``MODEL.FOCAL``'s)
after merging, and any key given on the command line (typed, so meant, even at its default; a
config file may be a full dump of every key, so its keys count by value only). The Faster R-CNN
configs inherit a RetinaNet config's schedule and input, so for GeneralizedRCNN
``MODEL.RETINANET`` counts only where given on the command line (inherited values are the base's).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Set

from focal_plugin.config import get_focal_cfg
from focal_plugin.modeling.config_keys import flat_items

_TWO_STAGE = {
    "MODEL.ROI_HEADS.NUM_CLASSES": "MODEL.RETINANET.NUM_CLASSES",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": "MODEL.RETINANET.NMS_THRESH_TEST",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": "MODEL.RETINANET.SCORE_THRESH_TEST",
    "MODEL.ROI_HEADS": None,
    "MODEL.ROI_BOX_HEAD": None,
    "MODEL.RPN": None,
    "MODEL.PROPOSAL_GENERATOR": None,
}

#: meta-architecture -> {unread key or subtree: the key that works instead (None: none)}
UNREAD: Dict[str, Dict[str, Optional[str]]] = {
    "FocalRetinaNet": {
        "MODEL.RETINANET.FOCAL_LOSS_GAMMA": "MODEL.FOCAL.GAMMA",
        "MODEL.RETINANET.FOCAL_LOSS_ALPHA": "MODEL.FOCAL.ALPHA",
        "MODEL.RETINANET.PRIOR_PROB": "MODEL.FOCAL.PRIOR_PROB",
        **_TWO_STAGE,
    },
    "RetinaNet": {
        "MODEL.FOCAL.GAMMA": "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
        "MODEL.FOCAL.ALPHA": "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
        "MODEL.FOCAL.PRIOR_PROB": "MODEL.RETINANET.PRIOR_PROB",
        "MODEL.FOCAL": "MODEL.META_ARCHITECTURE 'FocalRetinaNet'",
        "TEST.AMP": "MODEL.META_ARCHITECTURE 'FocalRetinaNet'",
        **_TWO_STAGE,
    },
    "GeneralizedRCNN": {
        "MODEL.FOCAL": None,
        "TEST.AMP": None,
        "MODEL.RETINANET.NUM_CLASSES": "MODEL.ROI_HEADS.NUM_CLASSES",
        "MODEL.RETINANET.NMS_THRESH_TEST": "MODEL.ROI_HEADS.NMS_THRESH_TEST",
        "MODEL.RETINANET.SCORE_THRESH_TEST": "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "MODEL.RETINANET": None,
    },
}
#: meta-architecture -> subtrees that count as set only where written (inherited from a base)
_WRITTEN_ONLY = {"GeneralizedRCNN": ("MODEL.RETINANET",)}


def written_keys(opts: Sequence[str] = ()) -> Set[str]:
    """The dotted keys of command-line ``KEY VALUE`` overrides."""
    return {str(k) for k in opts[0::2]}


def _rule(table: Dict[str, Optional[str]], key: str) -> Optional[str]:
    """The longest entry of ``table`` that is ``key`` or a subtree above it."""
    hits = [k for k in table if key == k or key.startswith(k + ".")]
    return max(hits, key=len) if hits else None


def check_read(cfg, written: Iterable[str] = ()) -> None:
    """Refuse (``ValueError`` naming the key, its value, the meta-architecture and what works) a
    key set in ``cfg`` that ``cfg.MODEL.META_ARCHITECTURE`` does not read (see the module
    docstring); ``written``: the keys given on the command line."""
    arch = cfg.MODEL.META_ARCHITECTURE
    table = UNREAD.get(arch)
    if not table:
        return
    values, defaults = flat_items(cfg), flat_items(get_focal_cfg())
    written = set(written)
    written_only = _WRITTEN_ONLY.get(arch, ())
    changed: List[str] = [k for k, v in values.items() if k in defaults and v != defaults[k]
                          and not any(k == w or k.startswith(w + ".") for w in written_only)]
    for key in sorted(changed) + sorted((written & set(values)) - set(changed)):
        rule = _rule(table, key)
        if rule is None:
            continue
        instead = table[rule]
        what = f"set cfg.{instead} instead" if instead and " " not in instead else (
            f"set cfg.{instead} to use it" if instead else "nothing in this model reads it")
        leave = (f"leave {key} at its default {defaults.get(key)!r}" if key in changed else
                 f"remove {key} from the command line")
        raise ValueError(f"cfg.{key} = {values[key]!r} has no effect on {arch}: {what}, and {leave}")
