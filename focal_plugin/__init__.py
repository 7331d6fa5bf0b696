"""focal_plugin: Focal Loss for Dense Object Detection (RetinaNet) as a detectron2 plugin.

``import focal_plugin`` applies the detectron2 compatibility layer and registers everything:
the ``FocalRetinaNet`` meta-architecture, the classification losses, the initializers and the
synthetic datasets.
"""

from focal_plugin import compat

compat.apply()

__version__ = "0.1.0"
