"""The pre-trained backbones as a model zoo: cached files named by their recipe's fingerprint,
``focal-pretrained://<recipe>`` URIs for ``MODEL.WEIGHTS`` (a ``PathManager`` handler registered on
import), and :func:`build`, which trains and exports a recipe's weights once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List

from iopath.common.file_io import PathHandler, file_lock

from focal_plugin.io import atomic_dir, atomic_write, write_json_atomic
from focal_plugin.pretrain.classifier import train_classifier
from focal_plugin.pretrain.recipe import PretrainRecipe, get_recipe
from focal_plugin.pretrain.rescale import rescale_stages, stage_rms

PREFIX = "focal-pretrained://"


def cache_root() -> Path:
    """``$FOCAL_PLUGIN_CACHE`` or ``~/.cache/focal_plugin``."""
    env = os.environ.get("FOCAL_PLUGIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "focal_plugin"


def weights_dir(recipe: PretrainRecipe) -> Path:
    return cache_root() / "pretrained" / f"{recipe.name}-{recipe.fingerprint()}"


def raw_weights_path(recipe: PretrainRecipe) -> Path:
    """The classifier's backbone as trained (no export reparametrization)."""
    return weights_dir(recipe) / "backbone_raw.pth"


def weights_path(recipe: PretrainRecipe) -> Path:
    """The file ``focal-pretrained://<recipe>`` resolves to."""
    if not recipe.feature_rms:
        return raw_weights_path(recipe)
    return weights_dir(recipe) / f"model_final_rms{recipe.feature_rms:g}_n{recipe.rms_images}.pth"


def resolve(uri: str) -> str:
    """Local path of ``focal-pretrained://<recipe>``; a clear error naming the build command when
    the weights have not been built yet."""
    name = uri[len(PREFIX):] if uri.startswith(PREFIX) else uri
    path = weights_path(get_recipe(name))
    if not path.is_file():
        raise FileNotFoundError(
            f"{uri}: pre-trained backbone not built yet (expected {path}). Build it once with "
            f"`python tools/pretrain_backbone.py --recipe {name}` (deterministic; see "
            "focal_plugin/pretrain/)")
    return str(path)


def register_path_handler() -> None:
    """Let detectron2 (``PathManager``) open ``focal-pretrained://<recipe>`` (idempotent)."""
    from detectron2.utils.file_io import PathManager

    class _PretrainedHandler(PathHandler):
        def _get_supported_prefixes(self) -> List[str]:
            return [PREFIX]

        def _get_local_path(self, path: str, **kwargs: Any) -> str:
            return resolve(path)

        def _open(self, path: str, mode: str = "r", **kwargs: Any):
            return PathManager.open(resolve(path), mode, **kwargs)

        def _isfile(self, path: str, **kwargs: Any) -> bool:
            return Path(resolve(path)).is_file()

    if PREFIX not in getattr(PathManager, "_path_handlers", {}):
        PathManager.register_handler(_PretrainedHandler())


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes (hex): what identifies a backbone across machines, whose CPU
    kernels (AVX-512 or AVX2, ``torch.backends.cpu.get_cpu_capability()``) round differently, so
    the same recipe trains to other bytes elsewhere."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save(obj: Any, path: Path) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def build(recipe="proto-r18", force: bool = False) -> Path:
    """Path of the recipe's weights, training them first if missing (or if ``force``).

    Written atomically (temporary folder renamed into place) under a file lock."""
    import torch

    recipe = get_recipe(recipe)
    final = weights_dir(recipe)
    if weights_path(recipe).is_file() and not force:
        return weights_path(recipe)
    author = "focal_plugin.pretrain " + recipe.name
    # iopath's lock (.<folder>.lock), as the dataset cache; a second build waits (up to portalocker's
    # 1-hour timeout)
    with file_lock(str(final.parent / f".{final.name}")):
        if weights_path(recipe).is_file() and not force:
            return weights_path(recipe)
        if force or not raw_weights_path(recipe).is_file():
            state, report = train_classifier(recipe)
            with atomic_dir(final) as tmp:
                torch.save({"model": state, "__author__": author}, tmp / raw_weights_path(recipe).name)
                write_json_atomic(tmp / "RECIPE.json", report, indent=1)
        if recipe.feature_rms:
            raw = torch.load(raw_weights_path(recipe))["model"]
            rms = stage_rms(recipe, raw)
            scales = {k: recipe.feature_rms / v for k, v in rms.items()}
            state = rescale_stages(raw, scales)
            after = stage_rms(recipe, state)
            _save({"model": state, "__author__": author}, weights_path(recipe))
            with open(final / "RECIPE.json") as f:
                report = json.load(f)
            report.setdefault("exports", {})[weights_path(recipe).name] = {
                "feature_rms": recipe.feature_rms, "rms_images": recipe.rms_images,
                "rms_raw": rms, "scales": scales, "rms_exported": after,
                "sha256": file_sha256(weights_path(recipe))}
            write_json_atomic(final / "RECIPE.json", report, indent=1)
    return weights_path(recipe)


__all__ = ["PREFIX", "build", "cache_root", "file_sha256", "raw_weights_path", "register_path_handler",
           "resolve",
           "weights_dir", "weights_path"]

register_path_handler()  # MODEL.WEIGHTS "focal-pretrained://<recipe>" works once the package is imported
