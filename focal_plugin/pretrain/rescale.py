"""Export at unit feature scale: the classifier's stage outputs rescaled by an exact
reparametrization of its FrozenBN layers, so the FPN and head initializations of the paper see
inputs of the scale they were designed for (configs/mini/README.md, "The pre-trained backbone")."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from focal_plugin.pretrain.recipe import KEY_PREFIX, PretrainRecipe, build_resnet, source_images

STAGES = ("res3", "res4", "res5")


def frozen_resnet(recipe: PretrainRecipe, state: Dict[str, Any]):
    """The recipe's ResNet with FrozenBN (as detection uses it), ``state``'s
    ``backbone.bottom_up.*`` weights loaded, in eval mode, returning res3–res5.
    ``RuntimeError`` naming the keys when the weights do not fit."""
    resnet = build_resnet(recipe, "FrozenBN", STAGES)
    own = {k[len(KEY_PREFIX):]: v for k, v in state.items() if k.startswith(KEY_PREFIX)}
    own = {k: v for k, v in own.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = resnet.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"backbone weights do not fit: missing {missing}, unexpected {unexpected}")
    return resnet.eval().requires_grad_(False)


def stage_rms(recipe: PretrainRecipe, state: Dict[str, Any]) -> Dict[str, float]:
    """RMS of the res3/res4/res5 outputs (FrozenBN, as detection uses them) over the first
    ``recipe.rms_images`` source images at native size."""
    import cv2
    import torch

    resnet = frozen_resnet(recipe, state)
    root, coco = source_images(recipe)
    images = sorted(coco["images"], key=lambda im: im["id"])[: recipe.rms_images]
    mean = torch.tensor(recipe.pixel_mean).view(3, 1, 1)
    std = torch.tensor(recipe.pixel_std).view(3, 1, 1)
    sums = {k: 0.0 for k in STAGES}
    counts = {k: 0 for k in STAGES}
    with torch.no_grad():
        for im in images:
            img = cv2.imread(str(root / "train" / im["file_name"]), cv2.IMREAD_COLOR)
            x = (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() - mean) / std
            out = resnet(x[None])
            for k in STAGES:
                sums[k] += float((out[k].double() ** 2).sum())
                counts[k] += out[k].numel()
    return {k: (sums[k] / counts[k]) ** 0.5 for k in STAGES}


def rescale_stages(state: Dict[str, Any], scales: Dict[str, float]) -> Dict[str, Any]:
    """Multiply the outputs of stages res3/res4/res5 by ``scales[stage]``, exactly, for FrozenBN.

    In every block of a stage scaled by s the last norm's affine (``conv2.norm`` weight and bias)
    and the projection shortcut's norm are multiplied by s; every norm that reads a scaled input
    (a block's ``conv1.norm`` and a projection ``shortcut.norm``) gets running_mean x s_in and
    running_var x s_in^2, so it normalizes to what it did before. ReLU is positively homogeneous,
    so each stage's output is its old output times its own s (up to BN's eps: exact while
    s_in^2 x running_var >> eps; the proto-r18 export lands within 0.3 % of its target RMS).
    """
    out = {k: v.clone() for k, v in state.items()}
    p = KEY_PREFIX
    blocks = sorted({k[len(p):].split(".conv")[0].split(".shortcut")[0] for k in state
                     if k.startswith(p + "res")})
    prev = 1.0  # scale of the stage input (res2 is not rescaled)
    for stage in ["res2", *STAGES]:
        s = 1.0 if stage == "res2" else float(scales[stage])
        for b in sorted((b for b in blocks if b.startswith(stage + ".")), key=lambda b: int(b.split(".")[1])):
            s_in = prev if b.endswith(".0") else s
            for norm in (f"{b}.conv1.norm", f"{b}.shortcut.norm"):
                if p + norm + ".running_mean" in out:
                    sc_in = prev if norm.endswith("shortcut.norm") else s_in
                    out[p + norm + ".running_mean"] *= sc_in
                    out[p + norm + ".running_var"] *= sc_in ** 2
            for norm in (f"{b}.conv2.norm", f"{b}.shortcut.norm"):
                if p + norm + ".weight" in out:
                    out[p + norm + ".weight"] *= s
                    out[p + norm + ".bias"] *= s
        prev = s
    return out


__all__ = ["STAGES", "frozen_resnet", "rescale_stages", "stage_rms"]
