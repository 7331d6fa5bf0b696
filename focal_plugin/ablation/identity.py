"""A cell's identity: the hash of the config it trains (and its seed), whatever spec reached it.

The identity is the resolved config — base file and overrides merged onto the defaults
(``focal_plugin.engine.setup_cfg``) — minus ``OUTPUT_DIR``, written as the keys whose values
differ from the defaults (``SEED`` included), plus the training function when it is not the
built-in one. Two routes to one config (Table 3's FL row and Table 1b's γ = 2 row; a base file
and its copy) give one key, so one folder: ``OUTPUT/cells/<key>/``.

Keys at their default value are left out, so adding a config key whose default keeps the old
behaviour keeps every cell's identity; changing a default's value is a protocol change and
belongs in the protocol's YAML, where it changes the identities of the cells it affects.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Dict, Optional, Sequence

from focal_plugin.config import get_focal_cfg
from focal_plugin.modeling.config_keys import flat_items

KEY_LENGTH = 16
_NOT_IDENTITY = ("OUTPUT_DIR",)


def _flat(node: Any) -> Dict[str, Any]:
    # tuples as lists, as a YAML file has them
    return {k: json.loads(json.dumps(v)) for k, v in flat_items(node).items()}


@functools.lru_cache(maxsize=1)
def _defaults() -> Dict[str, Any]:
    return _flat(get_focal_cfg())


def config_identity(cfg) -> Dict[str, Any]:
    """The dotted keys of ``cfg`` (a ``CfgNode`` or nested dict) that differ from the defaults,
    ``OUTPUT_DIR`` aside."""
    defaults = _defaults()
    return {k: v for k, v in sorted(_flat(cfg).items())
            if k not in _NOT_IDENTITY and (k not in defaults or defaults[k] != v)}


def resolved_identity(config_file: str, opts: Sequence[str], seed: int) -> Dict[str, Any]:
    """:func:`config_identity` of ``config_file`` with ``opts`` and ``SEED seed``."""
    from focal_plugin.engine import setup_cfg

    return config_identity(setup_cfg(config_file, [*opts, "SEED", str(seed)], freeze=False))


def cell_key(identity: Dict[str, Any], train_fn: Optional[str] = None) -> str:
    """The folder name of the cell training ``identity`` (16 hex digits of a SHA-256)."""
    payload = {"config": identity, **({"train_fn": train_fn} if train_fn else {})}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]
