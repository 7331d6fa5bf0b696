"""Checkpoints that are never poisoned and never half-written.

``SafeCheckpointer`` is detectron2's ``DetectionCheckpointer`` with two rules for every save
(periodic, final, manual): the model state (parameters **and** buffers, e.g. BatchNorm
statistics) must be finite, else ``FloatingPointError`` names the first offending tensor and
nothing is written, so ``last_checkpoint`` keeps naming the last finite checkpoint; and files are
written to a temporary name and renamed, so a kill during a save never leaves a file that
``last_checkpoint`` points to but that cannot be loaded.

Loading never runs code from a file: ``.pth`` files are read with ``torch.load(weights_only=True)``
(tensors, numbers, strings and containers — everything detectron2's own checkpoints hold,
optimizer and scheduler state included, on every torch version). A file whose pickle holds
anything else is refused with an error naming the file. (detectron2's model-zoo ``.pkl`` files are
read by detectron2's own loader, as detectron2 always does.)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from focal_plugin.io import atomic_write, write_text_atomic


def first_non_finite(module: torch.nn.Module) -> Optional[str]:
    """Name of the first parameter or buffer of ``module`` holding a NaN/Inf, else None.

    One host sync for the whole model (a stacked check), then a search only when something is bad.
    """
    tensors = [(n, t) for n, t in module.state_dict().items() if t.is_floating_point() and t.numel()]
    if not tensors:
        return None
    flags = torch.stack([torch.isfinite(t).all() for _, t in tensors])
    if bool(flags.all()):
        return None
    return tensors[int((~flags).nonzero()[0])][0]


class UntrustedCheckpointError(ValueError):
    """A checkpoint whose pickle holds more than tensors and plain containers (it could run code)."""


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that refuses non-finite model state, writes atomically and
    loads ``.pth`` files with ``weights_only=True``."""

    def _load_file(self, filename: str) -> Any:
        if filename.endswith((".pkl", ".pyth")):
            return super()._load_file(filename)
        import pickle

        with self.path_manager.open(filename, "rb") as f:
            try:
                return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
            except pickle.UnpicklingError as e:
                raise UntrustedCheckpointError(
                    f"refusing to load {filename}: its pickle holds objects other than tensors and "
                    f"plain containers, and unpickling them could run code ({str(e).splitlines()[0]}). "
                    "If you trust the file, load it yourself with torch.load(..., weights_only=False) "
                    "and save its state_dict."
                ) from e

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        bad = first_non_finite(self.model)
        if bad is not None:
            iteration = kwargs.get("iteration")
            raise FloatingPointError(
                f"model state is not finite: '{bad}' holds NaN/Inf"
                + (f" after iteration {iteration}" if iteration is not None else "")
                + f"; checkpoint '{name}' was NOT written. Every checkpoint written before is finite "
                "and last_checkpoint names the last of them (lower SOLVER.BASE_LR or enable "
                "SOLVER.CLIP_GRADIENTS)."
            )
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_write(path, lambda f: torch.save(data, f), binary=True)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        write_text_atomic(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)


def weights_record(weights: str) -> Optional[dict]:
    """``{"uri", "sha256"}`` of ``MODEL.WEIGHTS`` as a run loads it (a ``focal-pretrained://`` or
    other ``PathManager`` URI resolved to its local file), or None for no weights: what a result
    records so that two runs can tell whether they started from the same bytes."""
    from detectron2.utils.file_io import PathManager

    from focal_plugin.pretrain import file_sha256

    if not weights:
        return None
    return {"uri": weights, "sha256": file_sha256(PathManager.get_local_path(weights))}


def load_for_inference(model: torch.nn.Module, weights: str, config: str) -> None:
    """Load ``weights`` into ``model`` for evaluation, prediction or timing, strictly: a
    ``ValueError`` naming ``weights`` and ``config`` (the model's config file, or a description)
    when any model key is missing from the weights, any key of the weights is not in the model,
    or a shape differs — a partly fitting checkpoint would give the metrics of a partly random
    model. ``FileNotFoundError`` when the file does not exist; empty ``weights``: the model as
    initialized, with a warning (detectron2's convention). (Fine-tuning from
    ``MODEL.WEIGHTS`` keeps detectron2's lenient load, which logs what it skipped.)"""
    from detectron2.utils.file_io import PathManager

    if not weights:  # detectron2's convention: no weights, the model as initialized (logged)
        logging.getLogger(__name__).warning("no weights given for %s: the model runs as initialized", config)
        return
    if not PathManager.exists(weights):
        raise FileNotFoundError(f"weights file not found: {weights}")
    ckpt = SafeCheckpointer(model)
    checkpoint = ckpt._load_file(weights)
    bad = ckpt._load_model(checkpoint if "model" in checkpoint else {"model": checkpoint})
    problems = []
    if bad.incorrect_shapes:
        shapes = ", ".join(f"{k} {tuple(c)} in the weights vs {tuple(m)} in the model"
                           for k, c, m in bad.incorrect_shapes[:5])
        problems.append(f"{len(bad.incorrect_shapes)} shapes differ: {shapes}")
    if bad.missing_keys:
        problems.append(f"{len(bad.missing_keys)} model keys missing from the weights, e.g. "
                        f"{bad.missing_keys[:3]}")
    if bad.unexpected_keys:
        problems.append(f"{len(bad.unexpected_keys)} keys of the weights not in the model, e.g. "
                        f"{bad.unexpected_keys[:3]}")
    if problems:
        raise ValueError(f"weights {weights} do not match the model of {config}: " + "; ".join(problems))
