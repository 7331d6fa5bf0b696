"""FocalRetinaNet as a detectron2 LazyConfig: no YAML, no add_focal_config.

    from detectron2.config import LazyConfig, instantiate
    cfg = LazyConfig.load("configs/lazy/focal_retinanet_R_50_FPN_600_90k.py")
    model = instantiate(cfg.model)

or detectron2's ``tools/lazyconfig_train_net.py --config-file`` this file. Built on detectron2's
model-zoo RetinaNet with the paper's settings (R50-FPN, 600 px, 16 images, lr .01, 90k iterations,
steps 60k/80k). ``model.head.softmax`` must be True exactly when the loss is "softmax_focal".
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

import focal_plugin  # noqa: F401  (compat + registrations)
from focal_plugin.losses import build_classification_loss
from focal_plugin.modeling import FocalRetinaNet, FocalRetinaNetHead

model = model_zoo.get_config("common/models/retinanet.py").model
model._target_ = FocalRetinaNet
model.head._target_ = FocalRetinaNetHead
model.head.bias_init = "prior"  # or "zero" (init ablation); pi below
model.head.prior_prob = 0.01
model.head.softmax = False
model.classification_loss = L(build_classification_loss)(name="sigmoid_focal", gamma=2.0, alpha=0.25)
model.normalizer = "num_pos"  # the paper; "ema" = detectron2's
model.smooth_l1_beta = 0.11  # Detectron's RetinaNet
model.backbone.bottom_up.freeze_at = 2

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(600,), max_size=1000, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=600, max_size=1000),
]
dataloader.train.total_batch_size = 16

optimizer = model_zoo.get_config("common/optim.py").SGD
optimizer.lr = 0.01

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[60000, 80000], num_updates=90000
    ),
    warmup_length=500 / 90000,
    warmup_factor=1.0 / 3,
)

train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = 90000
train.output_dir = "./output/lazy/focal_retinanet_R_50_FPN_600_90k"
