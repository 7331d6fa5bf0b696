"""The plugin's configs, shipped inside the package (as ``detectron2.model_zoo`` ships its own).

The repository's top-level ``configs/`` is a link to this folder, so ``configs/mini/x.yaml`` on
the command line and ``get_config_file("mini/x.yaml")`` name the same file, in a checkout and in
an installed (non-editable) copy alike.
"""

from __future__ import annotations

import os

CONFIG_ROOT = os.path.dirname(os.path.abspath(__file__))


def get_config_file(config_path: str) -> str:
    """Absolute path of a shipped config, e.g. ``get_config_file("mini/demo_focal_R18_dense_shapes.yaml")``.

    A leading ``configs/`` is accepted. Raises ``FileNotFoundError`` naming the path and the
    folder searched.
    """
    rel = config_path[len("configs/"):] if config_path.startswith("configs/") else config_path
    path = os.path.join(CONFIG_ROOT, rel)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"config {config_path!r} is not shipped with focal_plugin (looked in {CONFIG_ROOT})"
        )
    return path


def resolve_config_file(path: str) -> str:
    """``path`` if it names an existing file, else the shipped config of that name."""
    return path if os.path.isfile(path) else get_config_file(path)


def config_name(path: str) -> str:
    """A shipped config's name relative to the configs folder (``mini/x.yaml``), else ``path``."""
    rel = os.path.relpath(os.path.abspath(path), CONFIG_ROOT)
    return path if rel.startswith(os.pardir) else rel
