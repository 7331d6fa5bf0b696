"""Classification losses of *Focal Loss for Dense Object Detection*: CE, alpha-balanced CE, FL,
FL* and softmax FL, exact (log-sigmoid space) and fused (loss and gradient in one pass).

Public API::

    from focal_plugin.losses import (LOSS_REGISTRY, ClassificationLoss, build_classification_loss,
        sigmoid_ce_loss, sigmoid_focal_loss, sigmoid_focal_loss_star, softmax_focal_loss)

The functions are drop-in replacements for ``fvcore.nn.sigmoid_focal_loss`` /
``sigmoid_focal_loss_star`` and ``torchvision.ops.sigmoid_focal_loss``. Switches:
``FOCAL_PLUGIN_REFERENCE_LOSS=1`` (or ``fused=False``) forces the reference formulas;
``FOCAL_PLUGIN_COMPILE=0`` keeps the fused path but runs its kernels without ``torch.compile``.
"""

from focal_plugin.losses._common import COMPILE_ENV, REFERENCE_ENV
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
    describe_losses,
)

__all__ = [
    "COMPILE_ENV",
    "REFERENCE_ENV",
    "LOSS_REGISTRY",
    "ClassificationLoss",
    "SigmoidCELoss",
    "SigmoidFocalLoss",
    "SigmoidFocalStarLoss",
    "SoftmaxFocalLoss",
    "build_classification_loss",
    "describe_losses",
    "sigmoid_ce_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "sigmoid_loss_per_anchor",
    "softmax_focal_loss",
]
