# UperNet with a LocalVim-T backbone on ADE20K, 512x512 crops, 160k iterations.
#
# Recipe of the paper's (official) config, which inherits mmseg's ViT-B UperNet: AdamW (lr 6e-5,
# weight decay 0.01, none for position embedding and norms), linear warm-up over 1500 iterations
# then poly decay to 160k, batch 16 (8 GPUs x 2 images), auxiliary FCN head, drop path 0.1.
# Multi-level outputs as in the paper: the mixer outputs of layers 4, 9, 14 and 19 (stride 16,
# each with its own LayerNorm) go through mmseg's MultiLevelNeck (x4, x2, x1, x0.5 -> strides
# 4..32). (The official config sets neck=None, i.e. UperNet on four stride-16 maps.)
#
# Backbone: LocalVim-T with RMSNorm, as the released ImageNet checkpoint was trained (the
# official config builds LayerNorm blocks, so the checkpoint's norms do not fit; see
# docs/models.md). Its position embedding and rope tables are resized from 14x14 to 32x32 when
# loading, and on the fly for other input sizes (test images are resized to 512 on the short
# side, e.g. 512x683: 32x43 tokens).
#
# Multi-scale + flip evaluation (mmseg's ADE20K test-time augmentation, inherited: ratios
# 0.5 ... 1.75 of the image size, with and without horizontal flip):
#   python tools/test.py THIS_CONFIG CHECKPOINT --tta
_base_ = ['mmseg::vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py']

custom_imports = dict(imports=['mmlocalmamba'], allow_failed_imports=False)

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vim_tiny.ckpt'  # noqa: E501
embed_dim = 192

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,  # drop the ViT keys
        type='LocalVim',
        arch='tiny',
        img_size=(512, 512),
        drop_path_rate=0.1,
        out_indices=(4, 9, 14, 19),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dim] * 4, out_channels=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4),
    auxiliary_head=dict(in_channels=embed_dim))

# mmseg's ViT recipe (no weight decay for pos_embed, cls_token and norms, inherited) plus none
# for the SSM parameters A_log_* and D_* (as in Mamba/Vim); plain-dict parameter groups, so that
# `compile=True` can trace the optimizer step.
optim_wrapper = dict(
    constructor='PlainGroupsOptimWrapperConstructor',
    paramwise_cfg=dict(custom_keys={
        '.A_log_': dict(decay_mult=0.),
        '.D_': dict(decay_mult=0.)
    }))

custom_hooks = [dict(type='RNGStateHook')]
