# Direction search on ADE20K with UperNet, in the paper's search space: the LocalVMamba search
# supernet `tiny_search` (dims 32-256, depths 2-2-9-2 like LocalVMamba-T, all 8 candidate
# directions in every block, mixed by the softmax of the architecture weights).
#
#   NAME=upernet_localvmamba-t-search_8xb2-160k_ade20k-512x512
#   bash tools/dist_train.sh configs/mmseg/$NAME.py 8
#   python tools/search_directions.py work_dirs/$NAME/iter_160000.pth
#
# The exported list has one entry per block of depths 2-2-9-2, so it fits LocalVMamba-T: train the
# found architecture with upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py and
#   model.backbone.arch=dict(dims=96, depths=[2, 2, 9, 2], directions=[...])
# (see docs/search.md). For a supernet of the final width instead, set
#   model.backbone.arch=dict(dims=96, depths=[2, 2, 9, 2], directions=None),
#   model.decode_head.in_channels=[96, 192, 384, 768], model.auxiliary_head.in_channels=384.
# Everything else (data, 160k schedule, AdamW lr 6e-5) is
# upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py; a shorter schedule is usually enough for a
# search (--cfg-options train_cfg.max_iters=...). The supernet starts from random weights: no
# ImageNet-trained supernet was released.
_base_ = ['./upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(arch='tiny_search', init_cfg=None),
    decode_head=dict(in_channels=[32, 64, 128, 256]),
    auxiliary_head=dict(in_channels=128))

# Architecture weights: own learning rate, no weight decay.
arch_lr_mult = 10.0
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={'multi_scan.weights': dict(lr_mult=arch_lr_mult, decay_mult=0.)}))

custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='ArchWeightsLoggerHook', interval=50, table_interval=2000)
]
