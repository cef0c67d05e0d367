# Cascade Mask R-CNN with a LocalVim-T backbone and a ViTDet simple feature pyramid on COCO,
# large-scale-jitter training (1024x1024 crops of images rescaled by 0.1-2.0), 100 epochs.
#
# ViTDet recipe as in the paper's config: the backbone's last layer (stride 16, 192 channels)
# -> SimpleFeaturePyramid (strides 4, 8, 16, 32 + 64 by subsampling, 256 channels, channel
# LayerNorm); RPN with 2 convs; the three cascade stages use 4-conv + 1-fc box heads, and the
# mask head, with LayerNorm (LN2d). Inputs are padded to 1024x1024 in training; test images are
# resized to 1333x800 and padded to multiples of 32 (e.g. 800x1344: 50x84 tokens, the position
# embedding and rope tables are resized on the fly from the 64x64 grid of img_size 1024).
#
# Optimisation: AdamW (lr 1e-4, betas 0.9/0.999, weight decay 0.05, none for norms, biases,
# position embedding and the SSM parameters A_log/D) with layer-wise lr decay 0.7 over the 20
# layers (LayerDecayOptimWrapperConstructor; the official config leaves num_layers at ViT-B's 12,
# which gives its last 7 layers lr multipliers above 1), gradient clipping at 35, fp32 as the
# official config; batch 64 (e.g. 16 GPUs x 4 or 32 x 2). Schedule of mmdet's
# common/lsj-100e_coco-instance.py: 25 epochs over the dataset repeated 4 times, lr steps at
# 88 and 96 epochs, with a 250-iteration linear warm-up.
#
# Backbone initialised from the released LocalVim-T ImageNet checkpoint (RMSNorm blocks, as it
# was trained; the official config builds LayerNorm, see docs/models.md).
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::common/lsj-100e_coco-instance.py',
]

custom_imports = dict(imports=['mmlocalmamba'], allow_failed_imports=False)

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vim_tiny.ckpt'  # noqa: E501
embed_dim = 192
depth = 20
norm_cfg = dict(type='LN2d', requires_grad=True)
# Training inputs are padded to the LSJ crop size of the mmdet base (image_size, 1024x1024).
batch_augments = [dict(type='BatchFixedSizePad', size=_base_.image_size, pad_mask=True)]


def _cascade_box_head(target_stds):
    return dict(
        type='Shared4Conv1FCBBoxHead',
        in_channels=256,
        conv_out_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=80,
        norm_cfg=norm_cfg,
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=target_stds),
        reg_class_agnostic=True,
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))


model = dict(
    data_preprocessor=dict(batch_augments=batch_augments),
    backbone=dict(
        _delete_=True,
        type='LocalVim',
        arch='tiny',
        img_size=_base_.image_size,
        drop_path_rate=0.1,
        out_indices=(depth - 1, ),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        _delete_=True,
        type='SimpleFeaturePyramid',
        in_channels=embed_dim,
        out_channels=256,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        num_outs=5,
        norm_cfg=norm_cfg),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=[
            _cascade_box_head([0.1, 0.1, 0.2, 0.2]),
            _cascade_box_head([0.05, 0.05, 0.1, 0.1]),
            _cascade_box_head([0.033, 0.033, 0.067, 0.067]),
        ],
        mask_head=dict(norm_cfg=norm_cfg)))
del _cascade_box_head  # configs may only hold data

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(num_layers=depth, layer_decay_rate=0.7),
    clip_grad=dict(max_norm=35, norm_type=2))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=25, by_epoch=True, milestones=[22, 24], gamma=0.1)
]

custom_hooks = [dict(type='RNGStateHook')]
