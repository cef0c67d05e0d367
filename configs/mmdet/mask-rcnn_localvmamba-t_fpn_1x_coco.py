# Mask R-CNN + FPN with a LocalVMamba-T backbone on COCO, 1x schedule (12 epochs).
#
# Everything except the backbone is inherited from mmdet's Swin-T Mask R-CNN config, as the
# paper's detection configs do: AdamW (lr 1e-4, weight decay 0.05, betas 0.9/0.999), linear
# warm-up over 1000 iterations, steps at epochs 8 and 11, batch 16 (8 GPUs x 2 images),
# single-scale 1333x800 training; the FPN already takes Swin-T's (and LocalVMamba-T's) widths
# 96-768. The backbone block and its decay-free parameters are in ../_base_/localvmamba-t.py,
# which also says how to give the (unpublished) LocalVMamba-T ImageNet checkpoint or train
# from scratch.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', '../_base_/localvmamba-t.py']

pretrained = _base_.localvmamba_t.init_cfg.checkpoint  # in place of the Swin-T checkpoint

model = dict(backbone=dict(_base_.localvmamba_t, _delete_=True))  # drop the Swin keys
optim_wrapper = dict(constructor=_base_.localvmamba_optim_constructor,
                     paramwise_cfg=_base_.localvmamba_paramwise_cfg)
