"""Backbone pre-training on a synthetic *classification* task: the mini protocol's "ImageNet".

The paper starts every RetinaNet from an ImageNet-pre-trained ResNet. The mini protocol
(``configs/mini/protocol``) does the same at CPU scale: a ResNet is trained once, deterministically,
to classify crops of ``dense_shapes`` scenes (80 object classes + 1 "no object" class), and cached
like a model-zoo file. Its recipe is :data:`RECIPES` (in the repo), its file name carries the
recipe's fingerprint, and detectron2 configs refer to it as ``focal-pretrained://<recipe name>``
(``MODEL.WEIGHTS``), resolved by a ``PathManager`` handler registered on import.

What the pre-training is and is not:
- Source images: ``focal_plugin.protocol.PRETRAIN_SOURCE``: the protocol's generator with another
  seed, so not one pixel of the detection train/val images is seen.
- Task: softmax cross-entropy over 81 crop labels (a crop centred on an annotated object, with
  context, is labelled with its class; a random crop that overlaps no object at IoU >= 0.1 is
  "no object"), like ImageNet classification. None of the detection losses compared in the tables
  (sigmoid CE, alpha-CE, FL, FL*, OHEM) is used, and no box is regressed.
- Output: the ResNet's weights (BatchNorm statistics included, loaded into FrozenBN by detectron2)
  under ``backbone.bottom_up.*``: ``DetectionCheckpointer`` loads them by name into
  ``build_retinanet_resnet_fpn_backbone``; FPN and heads stay at their paper initialization.

Build: ``python tools/pretrain_backbone.py [--recipe NAME]`` (idempotent; ``--force`` rebuilds).
Cache: ``$FOCAL_PLUGIN_CACHE`` or ``~/.cache/focal_plugin``, in ``pretrained/<name>-<fingerprint>/``
(the exported ``model_final_rms*.pth``, the raw ``backbone_raw.pth`` and ``RECIPE.json`` with the
recipe, accuracy and wall time).

Modules: ``recipe`` (what determines the weights), ``classifier`` (the crops and the training),
``rescale`` (the export at unit feature scale), ``zoo`` (cache, URIs, ``build``).
"""

from focal_plugin.pretrain.classifier import build_classifier, build_crops, train_classifier
from focal_plugin.pretrain.recipe import (
    KEY_PREFIX,
    PRETRAIN_VERSION,
    RECIPES,
    SOURCES,
    PretrainRecipe,
    get_recipe,
)
from focal_plugin.pretrain.rescale import STAGES, rescale_stages, stage_rms
from focal_plugin.pretrain.zoo import (  # registers the focal-pretrained:// handler
    PREFIX,
    build,
    cache_root,
    file_sha256,
    raw_weights_path,
    register_path_handler,
    resolve,
    weights_dir,
    weights_path,
)

__all__ = ["KEY_PREFIX", "PREFIX", "PRETRAIN_VERSION", "RECIPES", "SOURCES", "STAGES", "PretrainRecipe",
           "build", "build_classifier", "build_crops", "cache_root", "file_sha256", "get_recipe",
           "raw_weights_path",
           "register_path_handler", "rescale_stages", "resolve", "stage_rms", "train_classifier",
           "weights_dir", "weights_path"]
