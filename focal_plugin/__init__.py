"""focal_plugin: Focal Loss for Dense Object Detection (RetinaNet) as a detectron2 plugin.

``import focal_plugin`` applies the detectron2 compatibility layer and registers everything:
the ``FocalRetinaNet`` meta-architecture, the classification losses, the initializers and the
synthetic datasets.
"""

from focal_plugin import compat

compat.apply()

__version__ = "0.1.0"

# Registration on import (decorators in these modules): datasets, losses, initializers, models.
from focal_plugin import data, init, losses, modeling  # noqa: E402,F401
from focal_plugin.config import add_focal_config  # noqa: E402

__all__ = ["add_focal_config", "compat", "data", "init", "losses", "modeling"]
