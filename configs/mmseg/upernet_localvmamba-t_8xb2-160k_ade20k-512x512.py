# UperNet with a LocalVMamba-T backbone on ADE20K, 512x512 crops, 160k iterations.
#
# Everything except the backbone is inherited from mmseg's Swin-T UperNet config, as the
# paper's segmentation configs do: AdamW (lr 6e-5, weight decay 0.01), linear warm-up over 1500
# iterations then poly decay (power 1) to 160k, batch 16 (8 GPUs x 2 images), auxiliary FCN
# head on stage 3 (the heads already take Swin-T's and LocalVMamba-T's widths 96-768).
# Drop path 0.1 as in the paper's config.
#
# Multi-scale + flip evaluation (mmseg's ADE20K test-time augmentation, inherited: ratios 0.5,
# 0.75, ..., 1.75 of the image size, each with and without horizontal flip):
#   python tools/test.py THIS_CONFIG CHECKPOINT --tta
#
# Pretrained weights: the LocalVMamba-T ImageNet checkpoint was never published, see
# ../_base_/localvmamba-t.py for how to give your own or train from scratch.
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    '../_base_/localvmamba-t.py'
]

pretrained = _base_.localvmamba_t.init_cfg.checkpoint  # in place of the Swin-T checkpoint

model = dict(backbone=dict(_base_.localvmamba_t, _delete_=True, drop_path_rate=0.1))
optim_wrapper = dict(constructor=_base_.localvmamba_optim_constructor,
                     paramwise_cfg=_base_.localvmamba_paramwise_cfg)
