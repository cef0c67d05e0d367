# Mask R-CNN + FPN with a LocalVMamba-T backbone on COCO, 1x schedule (12 epochs).
#
# Everything except the backbone is inherited from mmdet's Swin-T Mask R-CNN config, as the
# paper's detection configs do: AdamW (lr 1e-4, weight decay 0.05, betas 0.9/0.999), linear
# warm-up over 1000 iterations, steps at epochs 8 and 11, batch 16 (8 GPUs x 2 images),
# single-scale 1333x800 training.
#
# Pretrained weights: the authors never published the LocalVMamba-T ImageNet checkpoint
# (`pretrained` below answers 404), so as shipped this config stops at start-up with an error
# that says what to do. Either
#   * give your own LocalVMamba-T ImageNet checkpoint (official format or mmlocalmamba's):
#       --cfg-options model.backbone.init_cfg.checkpoint=/path/to/local_vssm_tiny.ckpt
#     (or copy it to $TORCH_HOME/hub/checkpoints/local_vssm_tiny.ckpt), or
#   * train the backbone from scratch (random init; far below the paper's pretrained mAP):
#       --cfg-options model.backbone.init_cfg=None
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']

custom_imports = dict(imports=['mmlocalmamba', 'mmlocalmamba.engine'],
                      allow_failed_imports=False)

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_tiny.ckpt'  # noqa: E501 (never published)

model = dict(
    backbone=dict(
        _delete_=True,  # drop the Swin keys (the official configs silently ignore them)
        type='LocalVMamba',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# No weight decay for normalisation layers (Swin recipe; norm_decay_mult also covers the
# patch-embedding LayerNorm) nor for the SSM parameters A_logs and Ds (as in Mamba/VMamba).
optim_wrapper = dict(
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            '.A_logs': dict(decay_mult=0.),
            '.Ds': dict(decay_mult=0.)
        }))

# Saves Python/NumPy/torch generator states in checkpoints: --resume continues exactly.
custom_hooks = [dict(type='RNGStateHook')]
