# Mask R-CNN + FPN with a LocalVMamba-S backbone on COCO, 1x schedule (12 epochs).
#
# Same recipe as mask-rcnn_localvmamba-t_fpn_1x_coco.py (inherited from mmdet's Swin-T Mask
# R-CNN config: AdamW lr 1e-4, weight decay 0.05, batch 16 = 8 GPUs x 2 images); the backbone is
# LocalVMamba-S with drop path 0.2 as in the paper's config, initialised from the released
# ImageNet checkpoint (downloaded on first use into $TORCH_HOME/hub/checkpoints/). Offline:
# download it elsewhere and pass --cfg-options model.backbone.init_cfg.checkpoint=/path/to/it
_base_ = ['./mask-rcnn_localvmamba-t_fpn_1x_coco.py']

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_small.ckpt'  # noqa: E501

model = dict(backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)))
