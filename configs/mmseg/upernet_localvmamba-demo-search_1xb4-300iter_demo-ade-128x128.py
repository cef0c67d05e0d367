# Direction search on the demo segmentation data: UperNet with a LocalVMamba *supernet* backbone
# (every block runs all 8 candidate scan directions and mixes them with the softmax of its
# learnable architecture weights `multi_scan.weights`).
#
#   NAME=upernet_localvmamba-demo-search_1xb4-300iter_demo-ade-128x128
#   python tools/make_demo_data.py
#   python tools/train.py configs/mmseg/$NAME.py
#   python tools/search_directions.py work_dirs/$NAME/iter_300.pth --out-dir work_dirs/searched
#
# The last command writes the top-4 directions per block (directions.json / directions.py /
# directions.png); paste `directions=[...]` into the backbone arch of
# upernet_localvmamba-demo_1xb4-300iter_demo-ade-128x128.py to train the found architecture (see
# docs/search.md).
_base_ = ['./upernet_localvmamba-demo_1xb4-300iter_demo-ade-128x128.py']

# The demo model's sizes are kept; directions=None builds the supernet. Add candidates=[...] to
# the arch to search over another list of directions.
model = dict(backbone=dict(arch=dict(directions=None)))

# Architecture weights: their own learning rate (x10 here, so that a short search moves them)
# and no weight decay (decay would pull every layer back to the uniform mixture).
arch_lr_mult = 10.0
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={'multi_scan.weights': dict(lr_mult=arch_lr_mult, decay_mult=0.)}))

# Logs arch_entropy / arch_max_prob with the losses, per-layer probabilities to the visualizer,
# tables in the log, and stores the candidate lists in the checkpoints for the exporter.
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='ArchWeightsLoggerHook', interval=10, table_interval=100)
]
