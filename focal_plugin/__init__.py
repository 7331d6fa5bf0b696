"""focal_plugin: Focal Loss for Dense Object Detection (RetinaNet) as a detectron2 plugin.

``import focal_plugin`` registers everything, by plain decorators on import: the
``FocalRetinaNet`` meta-architecture, the classification losses, the initializers and the
synthetic datasets. It patches nothing: detectron2 itself is made to work in this environment by
``tools/install_detectron2.py``.
"""

__version__ = "0.1.0"

# registration on import: models, losses, initializers, datasets (builtin and the mini protocol's),
# the focal-pretrained:// weights handler
from focal_plugin import data, init, losses, modeling, pretrain, protocol  # noqa: E402,F401
from focal_plugin.config import add_focal_config  # noqa: E402

__all__ = ["add_focal_config", "data", "init", "losses", "modeling"]
