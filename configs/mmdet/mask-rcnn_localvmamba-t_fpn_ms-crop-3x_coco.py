# Mask R-CNN + FPN with a LocalVMamba-T backbone on COCO, 3x schedule (36 epochs) with
# multi-scale training.
#
# Inherited from mmdet's Swin-T "ms-crop-3x" config: random flip, then either a random short
# side in 480..800 (long side <= 1333) or a random 400..600 resize + 384..600 crop + the same
# multi-scale resize; AdamW lr 1e-4, weight decay 0.05, steps at epochs 27 and 33, batch 16
# (8 GPUs x 2 images). The backbone and its decay-free parameters are the 1x config's
# (../_base_/localvmamba-t.py, where the unpublished T checkpoint is explained).
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py', '../_base_/localvmamba-t.py'
]

pretrained = _base_.localvmamba_t.init_cfg.checkpoint  # in place of the Swin-T checkpoint

model = dict(backbone=dict(_base_.localvmamba_t, _delete_=True))  # drop the Swin keys
optim_wrapper = dict(constructor=_base_.localvmamba_optim_constructor,
                     paramwise_cfg=_base_.localvmamba_paramwise_cfg)
