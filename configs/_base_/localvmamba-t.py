# LocalVMamba-T pieces shared by the Mask R-CNN (1x and ms-crop-3x) and UperNet configs.
#
# mmengine does not let two bases of one config set the same key, so this file sets no `model`
# and no `optim_wrapper`: the configs inherit it beside their mmdet/mmseg base and take the
# blocks by name, e.g.
#   model = dict(backbone=dict(_base_.localvmamba_t, _delete_=True))
#   optim_wrapper = dict(constructor=_base_.localvmamba_optim_constructor,
#                        paramwise_cfg=_base_.localvmamba_paramwise_cfg)
custom_imports = dict(imports=['mmlocalmamba'], allow_failed_imports=False)

# LocalVMamba-T, drop path 0.2 as in the paper's detection configs, all four stages out.
# Pretrained weights: the authors never published the LocalVMamba-T ImageNet checkpoint (the URL
# answers 404), so as shipped the T configs stop at start-up with an error that says what to do:
#   * give your own LocalVMamba-T ImageNet checkpoint (official format or mmlocalmamba's):
#       --cfg-options model.backbone.init_cfg.checkpoint=/path/to/local_vssm_tiny.ckpt
#     (or copy it to $TORCH_HOME/hub/checkpoints/local_vssm_tiny.ckpt), or
#   * train the backbone from scratch (random init; far below the paper's pretrained numbers):
#       --cfg-options model.backbone.init_cfg=None
localvmamba_t = dict(
    type='LocalVMamba',
    arch='tiny',
    drop_path_rate=0.2,
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(
        type='Pretrained',
        checkpoint='https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_tiny.ckpt'))  # noqa: E501 (never published)

# Added to the Swin recipes' paramwise rules: no weight decay for normalisation layers
# (norm_decay_mult also covers the patch-embedding LayerNorm) nor for the SSM parameters A_logs
# and Ds (as in Mamba/VMamba).
localvmamba_paramwise_cfg = dict(
    norm_decay_mult=0., custom_keys={
        '.A_logs': dict(decay_mult=0.),
        '.Ds': dict(decay_mult=0.)
    })

# mmengine's default constructor with plain-dict parameter groups, so that `compile=True`
# (torch.compile of the training step, optimizer step included) can trace the optimizer.
localvmamba_optim_constructor = 'PlainGroupsOptimWrapperConstructor'

# Saves Python/NumPy/torch generator states in checkpoints: --resume continues exactly.
custom_hooks = [dict(type='RNGStateHook')]
