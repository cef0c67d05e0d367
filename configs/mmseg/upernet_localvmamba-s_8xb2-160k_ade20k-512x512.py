# UperNet with a LocalVMamba-S backbone on ADE20K, 512x512 crops, 160k iterations:
# upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py with the LocalVMamba-S backbone (drop path
# 0.2 as in the paper's config) initialised from the released ImageNet checkpoint (downloaded
# on first use; offline: --cfg-options model.backbone.init_cfg.checkpoint=/path/to/it).
# Multi-scale + flip evaluation: python tools/test.py THIS_CONFIG CHECKPOINT --tta
_base_ = ['./upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py']

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_small.ckpt'  # noqa: E501

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
