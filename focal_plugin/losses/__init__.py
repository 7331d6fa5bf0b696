"""Classification losses of *Focal Loss for Dense Object Detection*: CE, alpha-balanced CE, FL,
FL* and softmax FL, exact (log-sigmoid space) and fused (loss and gradient in one pass).

Public API::

    from focal_plugin.losses import (LOSS_REGISTRY, ClassificationLoss, build_classification_loss,
        sigmoid_ce_loss, sigmoid_focal_loss, sigmoid_focal_loss_star, softmax_focal_loss)

Each function mirrors one library (``functional.py`` has the table): ``sigmoid_focal_loss``
torchvision's, ``sigmoid_focal_loss_star`` fvcore's. One switch, ``fused`` (a function argument;
the modules' constructor argument, set from ``cfg.MODEL.FOCAL.FUSED_LOSS``), chooses between the
fused kernels and the reference formulas; results are the same.
"""

from focal_plugin.losses.functional import (
    sigmoid_ce_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
    sigmoid_loss_per_anchor,
    softmax_focal_loss,
)
from focal_plugin.losses.modules import (
    LOSS_REGISTRY,
    ClassificationLoss,
    SigmoidCELoss,
    SigmoidFocalLoss,
    SigmoidFocalStarLoss,
    SoftmaxFocalLoss,
    build_classification_loss,
)

__all__ = [
    "LOSS_REGISTRY",
    "ClassificationLoss",
    "SigmoidCELoss",
    "SigmoidFocalLoss",
    "SigmoidFocalStarLoss",
    "SoftmaxFocalLoss",
    "build_classification_loss",
    "sigmoid_ce_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "sigmoid_loss_per_anchor",
    "softmax_focal_loss",
]
