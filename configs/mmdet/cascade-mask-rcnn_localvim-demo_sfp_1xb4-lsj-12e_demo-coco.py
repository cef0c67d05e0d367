# Demo: Cascade Mask R-CNN + simple feature pyramid with a small LocalVim on the synthetic
# COCO-format dataset of tools/make_demo_data.py (4 shape classes, 256x256 images), trained from
# scratch on CPU and evaluated with the real CocoMetric (bbox + segm).
#
#   NAME=cascade-mask-rcnn_localvim-demo_sfp_1xb4-lsj-12e_demo-coco
#   python tools/make_demo_data.py
#   python tools/train.py configs/mmdet/$NAME.py
#   python tools/test.py configs/mmdet/$NAME.py work_dirs/$NAME/epoch_12.pth
#
# Inherits the full LocalVim-T recipe (cascade-mask-rcnn_localvim-t_sfp_lsj-100e_coco.py: LSJ,
# simple feature pyramid, LN heads, layer-decay AdamW) and changes only what a small CPU run
# needs: backbone size, neck/head width (128) and number of proposals, data, image size (LSJ at
# 256), schedule and learning rate.
_base_ = ['./cascade-mask-rcnn_localvim-t_sfp_lsj-100e_coco.py']

image_size = (256, 256)
depth = 4
num_classes = 4
width = 128  # neck and head channels (256 in the full recipe)


def _cascade_box_head(target_stds):  # the base's heads with 4 classes (lists do not merge)
    return dict(
        type='Shared4Conv1FCBBoxHead',
        in_channels=width,
        conv_out_channels=width,
        fc_out_channels=512,
        roi_feat_size=7,
        num_classes=num_classes,
        norm_cfg=_base_.norm_cfg,  # LN2d
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=target_stds),
        reg_class_agnostic=True,
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))


# A small LocalVim: embed 64, 4 layers, the 8 scan directions spread over the layers.
model = dict(
    data_preprocessor=dict(
        batch_augments=[dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]),
    backbone=dict(
        arch=dict(
            _delete_=True,
            embed_dim=64,
            depth=depth,
            directions=[['h', 'h_flip', 'w7', 'w7_flip'], ['v', 'v_flip', 'w2', 'w2_flip'],
                        ['h', 'v_flip', 'w2_flip', 'w7'], ['h_flip', 'v', 'w2', 'w7_flip']]),
        img_size=image_size,
        out_indices=(depth - 1, ),
        init_cfg=None),  # from scratch: no ImageNet weights exist for this size
    neck=dict(in_channels=64, out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        mask_roi_extractor=dict(out_channels=width),
        bbox_head=[
            _cascade_box_head([0.1, 0.1, 0.2, 0.2]),
            _cascade_box_head([0.05, 0.05, 0.1, 0.1]),
            _cascade_box_head([0.033, 0.033, 0.067, 0.067]),
        ],
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=num_classes)),
    # at most 128 proposals per image into the cascade in training (2000 in the full recipe)
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=128)),
    test_cfg=dict(rpn=dict(max_per_img=200), rcnn=dict(max_per_img=50)))
del _cascade_box_head  # configs may only hold data

# Synthetic data (classes as mmlocalmamba.datasets.demo_data.COCO_DEMO_CLASSES/_PALETTE).
data_root = 'data/demo/coco/'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star'),
    palette=[(220, 50, 50), (50, 170, 60), (40, 90, 220), (235, 200, 30)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    # LSJ with a smaller jitter range than (0.1, 2.0): at 256 pixels, 0.1 would leave crops
    # smaller than the RPN's anchors.
    dict(type='RandomResize', scale=image_size, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(
        type='RandomCrop',
        crop_type='absolute_range',
        crop_size=image_size,
        recompute_bbox=True,
        allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,
        type='CocoDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# Short schedule: 12 epochs of 16 iterations (64 images, batch 4), evaluated at the end. From
# scratch there is nothing to preserve in the early layers: no layer-wise decay (rate 1).
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[9, 11],
         gamma=0.1)
]
optim_wrapper = dict(
    optimizer=dict(lr=4e-4),
    paramwise_cfg=dict(num_layers=depth, layer_decay_rate=1.0),
    clip_grad=dict(max_norm=10.0))
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(
    logger=dict(interval=8),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)
