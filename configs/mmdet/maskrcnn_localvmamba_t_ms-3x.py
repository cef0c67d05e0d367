# Mask R-CNN + FPN with a LocalVMamba-T backbone on COCO, 3x schedule (36 epochs) with
# multi-scale training.
#
# Inherited from mmdet's Swin-T "ms-crop-3x" config: random flip, then either a random short
# side in 480..800 (long side <= 1333) or a random 400..600 resize + 384..600 crop + the same
# multi-scale resize; AdamW lr 1e-4, weight decay 0.05, steps at epochs 27 and 33, batch 16
# (8 GPUs x 2 images). Only the backbone and the decay-free parameters differ.
#
# The LocalVMamba-T ImageNet checkpoint was never published: see maskrcnn_localvmamba_t.py for
# how to give your own (--cfg-options model.backbone.init_cfg.checkpoint=/path) or train from
# scratch (--cfg-options model.backbone.init_cfg=None).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']

custom_imports = dict(imports=['mmlocalmamba', 'mmlocalmamba.engine'],
                      allow_failed_imports=False)

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_tiny.ckpt'  # noqa: E501 (never published)

model = dict(
    backbone=dict(
        _delete_=True,
        type='LocalVMamba',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            '.A_logs': dict(decay_mult=0.),
            '.Ds': dict(decay_mult=0.)
        }))

custom_hooks = [dict(type='RNGStateHook')]
