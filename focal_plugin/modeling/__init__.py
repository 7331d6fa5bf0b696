from focal_plugin.modeling.config_keys import build_loss_from_cfg
from focal_plugin.modeling.focal_retinanet import FocalRetinaNet
from focal_plugin.modeling.head import FocalRetinaNetHead
from focal_plugin.modeling.sampler import AllAnchorsSampler, OhemSampler

__all__ = ["FocalRetinaNet", "FocalRetinaNetHead", "AllAnchorsSampler", "OhemSampler", "build_loss_from_cfg"]
