# Direction search on the demo detection data: Mask R-CNN + FPN with a LocalVMamba *supernet*
# backbone (every block runs all 8 candidate scan directions and mixes them with the softmax of
# its learnable architecture weights `multi_scan.weights`).
#
#   NAME=mask-rcnn_localvmamba-demo-search_fpn_1xb4-8e_demo-coco
#   python tools/make_demo_data.py
#   python tools/train.py configs/mmdet/$NAME.py
#   python tools/search_directions.py work_dirs/$NAME/epoch_8.pth --out-dir work_dirs/searched
#
# The last command writes the top-4 directions per block (directions.json / directions.py /
# directions.png); paste `directions=[...]` into the backbone arch of
# mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py to train the found architecture (see
# docs/search.md).
_base_ = ['./mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py']

# The demo model's sizes (dims 32, depths 1-1-2-1) are kept; directions=None builds the supernet.
# Add candidates=[...] to the arch to search over another list of directions.
model = dict(backbone=dict(arch=dict(directions=None)))

# Architecture weights: their own learning rate (x10 here, so that a short search moves them)
# and no weight decay (decay would pull every layer back to the uniform mixture).
arch_lr_mult = 10.0
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={'multi_scan.weights': dict(lr_mult=arch_lr_mult, decay_mult=0.)}))

# Logs arch_entropy / arch_max_prob with the losses, per-layer probabilities to the visualizer,
# a table per epoch, and stores the candidate lists in the checkpoints for the exporter.
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='ArchWeightsLoggerHook', interval=8)
]
