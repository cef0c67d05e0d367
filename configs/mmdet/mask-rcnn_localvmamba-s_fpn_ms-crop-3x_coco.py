# Mask R-CNN + FPN with a LocalVMamba-S backbone on COCO, 3x schedule (36 epochs) with
# multi-scale training: mask-rcnn_localvmamba-t_fpn_ms-crop-3x_coco.py with the LocalVMamba-S
# backbone (drop path 0.2) initialised from the released ImageNet checkpoint.
_base_ = ['./mask-rcnn_localvmamba-t_fpn_ms-crop-3x_coco.py']

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_small.ckpt'  # noqa: E501

model = dict(backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)))
