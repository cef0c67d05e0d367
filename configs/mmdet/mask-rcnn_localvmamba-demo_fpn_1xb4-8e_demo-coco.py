# Demo: Mask R-CNN + FPN with a small LocalVMamba on the synthetic COCO-format dataset of
# tools/make_demo_data.py (4 shape classes, 256x256 images), trained from scratch on CPU in a few
# minutes and evaluated with the real CocoMetric (bbox + segm).
#
#   NAME=mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco
#   python tools/make_demo_data.py
#   python tools/train.py configs/mmdet/$NAME.py
#   python tools/test.py configs/mmdet/$NAME.py work_dirs/$NAME/epoch_8.pth
#
# Inherits the full LocalVMamba-T recipe (mask-rcnn_localvmamba-t_fpn_1x_coco.py) and changes
# only what a small CPU run needs: backbone size, data, image size, schedule and learning rate.
_base_ = ['./mask-rcnn_localvmamba-t_fpn_1x_coco.py']

# A small LocalVMamba: dims 32-256, 1-1-2-1 blocks, the 8 scan directions spread over blocks,
# SSM width 1x the block width and 8 state dimensions (4x cheaper scans than ssm_ratio 2 /
# d_state 16, which matters on CPU).
model = dict(
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
        drop_path_rate=0.1,
        init_cfg=None),  # from scratch: no ImageNet weights exist for this size
    # Lighter neck and heads for CPU: 128-channel FPN, 512-wide box head, 256 RoIs per image
    # (the images hold 1-5 objects).
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=128),
    rpn_head=dict(in_channels=128, feat_channels=128),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=128),
        bbox_head=dict(in_channels=128, fc_out_channels=512, num_classes=4),
        mask_roi_extractor=dict(out_channels=128),
        mask_head=dict(in_channels=128, conv_out_channels=128, num_classes=4)),
    train_cfg=dict(rcnn=dict(sampler=dict(num=256))))

# Synthetic data (classes as mmlocalmamba.datasets.demo_data.COCO_DEMO_CLASSES/_PALETTE).
data_root = 'data/demo/coco/'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star'),
    palette=[(220, 50, 50), (50, 170, 60), (40, 90, 220), (235, 200, 30)])
img_scale = (192, 192)  # the 256x256 demo images, downscaled (objects ~20-70 px)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
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

# Short schedule: 8 epochs of 16 iterations (64 images, batch 4), evaluated at the end;
# tools/train_demo_long.sh stretches it to 24 epochs with validation after every epoch.
max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[6, 7],
         gamma=0.1)
]
# From scratch on a tiny dataset: a higher learning rate than the ImageNet-initialised recipe.
optim_wrapper = dict(optimizer=dict(lr=4e-4), clip_grad=dict(max_norm=10.0, norm_type=2))
auto_scale_lr = dict(base_batch_size=4)

default_hooks = dict(
    logger=dict(interval=8),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)
