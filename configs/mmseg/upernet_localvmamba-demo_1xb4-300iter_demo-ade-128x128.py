# Demo: UperNet with a small LocalVMamba on the synthetic ADE20K-format dataset of
# tools/make_demo_data.py (5 classes, label 0 = "other" ignored via reduce_zero_label), trained
# from scratch on CPU in a few minutes and evaluated with the real IoUMetric, also with
# multi-scale + flip test-time augmentation (--tta).
#
#   NAME=upernet_localvmamba-demo_1xb4-300iter_demo-ade-128x128
#   python tools/make_demo_data.py
#   python tools/train.py configs/mmseg/$NAME.py
#   python tools/test.py configs/mmseg/$NAME.py work_dirs/$NAME/iter_300.pth --tta
#
# Inherits the LocalVMamba-T UperNet recipe (upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py)
# and changes what a small CPU run needs: backbone and head sizes, data, crop size, schedule.
_base_ = ['./upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py']

crop_size = (128, 128)
norm_cfg = dict(type='BN')  # single-process CPU run: plain BN instead of SyncBN

# The same small LocalVMamba as the detection demo (dims 32-256, 1-1-2-1 blocks, SSM width 1x,
# 8 state dimensions); narrower UperNet heads.
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(
            _delete_=True,
            dims=32,
            depths=[1, 1, 2, 1],
            ssm_ratio=1.0,
            d_state=8,
            directions=[['h', 'h_flip', 'w7', 'w7_flip'], ['v', 'v_flip', 'w2', 'w2_flip'],
                        ['h', 'v_flip', 'w2_flip', 'w7'], ['h_flip', 'v', 'w2', 'w7_flip'],
                        ['h', 'h_flip', 'v', 'v_flip']]),
        init_cfg=None),  # from scratch: no ImageNet weights exist for this size
    decode_head=dict(
        in_channels=[32, 64, 128, 256], channels=128, num_classes=5, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=64, num_classes=5, norm_cfg=norm_cfg))

# Synthetic data (classes as mmlocalmamba.datasets.demo_data.ADE_DEMO_CLASSES/_PALETTE).
# mmseg's ADE20KDataset hard-codes the 150 ADE classes, so the generic BaseSegDataset reads the
# same layout with the ADE20K conventions (.jpg images, .png labels, reduce_zero_label).
dataset_type = 'BaseSegDataset'
data_root = 'data/demo/ade'
metainfo = dict(
    classes=('sky', 'ground', 'disc', 'box', 'stripes'),
    palette=[(110, 160, 220), (120, 90, 50), (200, 40, 160), (240, 140, 20), (230, 230, 230)])
img_scale = (256, 256)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.5, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
_dataset = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True)
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(**_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(**_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

# Multi-scale (0.75, 1.0, 1.25 x the image size) x flip test-time augmentation for --tta.
img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
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

# Short schedule: 300 iterations of batch 4, evaluated at the end; poly decay after warm-up.
max_iters = 300
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=50, end=max_iters, by_epoch=False)
]
# From scratch on a tiny dataset: a higher learning rate than the ImageNet-initialised recipe.
optim_wrapper = dict(optimizer=dict(lr=6e-4))
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
randomness = dict(seed=0)
