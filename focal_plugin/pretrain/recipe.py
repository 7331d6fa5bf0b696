"""What determines a pre-trained backbone: the recipe (every field in its fingerprint), the source
images it is trained on, and the detectron2 ResNet it builds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

#: Bumped when the training code changes what a recipe produces (part of the fingerprint).
PRETRAIN_VERSION = 1
#: Key prefix of the saved weights: the ResNet inside detectron2's FPN backbone.
KEY_PREFIX = "backbone.bottom_up."


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the pre-trained weights (all of it is in the fingerprint)."""

    name: str
    source: str = "proto-pretrain"  # a key of SOURCES: the SyntheticConfig of the source images
    depth: int = 18  # detectron2 ResNet depth (18 or 34: BasicBlock, 64 stem channels)
    crop_size: int = 48  # crops are resized to crop_size x crop_size
    context: float = 1.5  # object crops: square of side context * max(w, h), centred on the box
    background_per_image: int = 1  # "no object" crops per source image (label = num_classes)
    val_fraction: float = 0.1  # held-out crops for the reported accuracy (not used in training)
    iterations: int = 1000
    batch_size: int = 32
    base_lr: float = 0.1  # SGD, cosine decay to 0 after a linear warm-up
    warmup_iters: int = 50
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    # image normalization (detectron2's defaults: BGR, MSRA-style mean, std 1)
    pixel_mean: Tuple[float, float, float] = (103.530, 116.280, 123.675)
    pixel_std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Export: res3/res4/res5 outputs rescaled to this RMS on the source images by an exact
    # reparametrization of the FrozenBN layers (0 = the raw classifier backbone); see rescale_stages.
    feature_rms: float = 1.0
    rms_images: int = 64  # source images (native size) over which the RMS is measured

    def fingerprint(self) -> str:
        """Of the *training* fields (the cache folder); the export fields name the file in it."""
        params = dataclasses.asdict(self)
        for key in ("name", "feature_rms", "rms_images"):
            params.pop(key)
        source = SOURCES[self.source]() if self.source in SOURCES else self.source
        blob = json.dumps({"version": PRETRAIN_VERSION, "params": params,
                           "source": source.fingerprint() if hasattr(source, "fingerprint") else source},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _protocol_source():
    from focal_plugin.protocol import PRETRAIN_SOURCE

    return PRETRAIN_SOURCE


#: Source datasets by name (lazy, so this module imports nothing heavy).
SOURCES = {"proto-pretrain": _protocol_source}

#: The recipes in use. ``proto-r18``: the mini protocol's backbone; ``proto-r34``: the same recipe at
#: depth 34, for Table 1e's ResNet-34 rows (configs/ablations/table1e.yaml; built with
#: ``tools/pretrain_backbone.py --recipe proto-r34``).
RECIPES: Dict[str, PretrainRecipe] = {
    "proto-r18": PretrainRecipe(name="proto-r18"),
    "proto-r34": PretrainRecipe(name="proto-r34", depth=34),
}


def get_recipe(name_or_recipe) -> PretrainRecipe:
    """A recipe by name (a key of :data:`RECIPES`), ``"<name>@<seed>"`` (that recipe pre-trained
    with another seed: a draw of the backbone's own variance), or the recipe itself; ``KeyError``
    naming the known recipes otherwise, ``ValueError`` for a seed that is not an integer >= 0."""
    if isinstance(name_or_recipe, PretrainRecipe):
        return name_or_recipe
    name, at, seed = str(name_or_recipe).partition("@")
    if name not in RECIPES:
        raise KeyError(f"unknown pre-training recipe {name!r}; known: {sorted(RECIPES)} "
                       "(optionally with @<seed>)")
    if not at:
        return RECIPES[name]
    if not seed.isdigit():
        raise ValueError(f"pre-training recipe {name_or_recipe!r}: the seed after '@' must be an "
                         "integer >= 0")
    return dataclasses.replace(RECIPES[name], seed=int(seed))


def source_images(recipe: PretrainRecipe) -> Tuple[Path, Dict[str, Any]]:
    """(root, COCO dict of its train split) of the recipe's source dataset, generated if missing
    (images under ``root / "train"``)."""
    from focal_plugin.data import prepare_dataset

    root = prepare_dataset(SOURCES[recipe.source](), progress=False)
    with open(root / "annotations" / "instances_train.json") as f:
        return root, json.load(f)


def build_resnet(recipe: PretrainRecipe, norm: str, out_features: Sequence[str]):
    """detectron2's ResNet of the recipe's depth (BasicBlocks: 64 res2 channels, no stride in 1x1)
    with ``norm`` ("BN" to train it, "FrozenBN" as detection uses it), nothing frozen."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = recipe.depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out_features)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


__all__ = ["KEY_PREFIX", "PRETRAIN_VERSION", "RECIPES", "SOURCES", "PretrainRecipe", "build_resnet",
           "get_recipe", "source_images"]
