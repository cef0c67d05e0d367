# Direction search on COCO with Mask R-CNN + FPN, in the paper's search space: the LocalVMamba
# search supernet `tiny_search` (dims 32-256, depths 2-2-9-2 like LocalVMamba-T, all 8 candidate
# directions in every block, mixed by the softmax of the architecture weights).
#
#   NAME=mask-rcnn_localvmamba-t-search_fpn_1x_coco
#   bash tools/dist_train.sh configs/mmdet/$NAME.py 8
#   python tools/search_directions.py work_dirs/$NAME/epoch_12.pth
#
# The exported list has one entry per block of depths 2-2-9-2, so it fits LocalVMamba-T: train the
# found architecture with mask-rcnn_localvmamba-t_fpn_1x_coco.py and
#   model.backbone.arch=dict(dims=96, depths=[2, 2, 9, 2], directions=[...])
# (see docs/search.md). For a supernet of the final width instead, set
#   model.backbone.arch=dict(dims=96, depths=[2, 2, 9, 2], directions=None) and
#   model.neck.in_channels=[96, 192, 384, 768].
# Everything else (data, 1x schedule, AdamW lr 1e-4) is mask-rcnn_localvmamba-t_fpn_1x_coco.py.
# The supernet starts from random weights: no ImageNet-trained supernet was released.
_base_ = ['./mask-rcnn_localvmamba-t_fpn_1x_coco.py']

model = dict(
    backbone=dict(arch='tiny_search', drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256]))

# Architecture weights: own learning rate, no weight decay.
arch_lr_mult = 10.0
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={'multi_scan.weights': dict(lr_mult=arch_lr_mult, decay_mult=0.)}))

custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='ArchWeightsLoggerHook', interval=50, table_interval=1000)
]
