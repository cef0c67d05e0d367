# UperNet with a LocalVMamba-T backbone on ADE20K, 512x512 crops, 160k iterations.
#
# Everything except the backbone is inherited from mmseg's Swin-T UperNet config, as the
# paper's segmentation configs do: AdamW (lr 6e-5, weight decay 0.01), linear warm-up over 1500
# iterations then poly decay (power 1) to 160k, batch 16 (8 GPUs x 2 images), auxiliary FCN
# head on stage 3. Drop path 0.1 as in the paper's config.
#
# Multi-scale + flip evaluation (ratios 0.5, 0.75, ..., 1.75 of the image size, each with
# and without horizontal flip): python tools/test.py THIS_CONFIG CHECKPOINT --tta
#
# Pretrained weights: the LocalVMamba-T ImageNet checkpoint was never published (the URL below
# answers 404), so as shipped this config stops at start-up with an error that says what to do:
# give your own checkpoint with --cfg-options model.backbone.init_cfg.checkpoint=/path/to/ckpt
# or train from scratch with --cfg-options model.backbone.init_cfg=None.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']

custom_imports = dict(imports=['mmlocalmamba', 'mmlocalmamba.engine'],
                      allow_failed_imports=False)

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_tiny.ckpt'  # noqa: E501 (never published)

model = dict(
    backbone=dict(
        _delete_=True,  # drop the Swin keys (the official configs silently ignore them)
        type='LocalVMamba',
        arch='tiny',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

# No weight decay for normalisation layers (norm_decay_mult also covers the patch-embedding
# LayerNorm) nor for the SSM parameters A_logs and Ds (as in Mamba/VMamba).
optim_wrapper = dict(
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            '.A_logs': dict(decay_mult=0.),
            '.Ds': dict(decay_mult=0.)
        }))

# Test-time augmentation (used by --tta): mmseg's SegTTAModel averages the predictions over
# 6 scales x 2 flips. As in mmseg 1.x's ADE20K config (which the official configs use), the
# ratios scale the original image. LoadAnnotations takes reduce_zero_label from the dataset.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_model = dict(type='SegTTAModel')
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal')
            ],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ])
]

custom_hooks = [dict(type='RNGStateHook')]
