# Cascade Mask R-CNN + simple feature pyramid with a LocalVim-S backbone, LSJ 100 epochs:
# cascade-mask-rcnn_localvim-t_sfp_lsj-100e_coco.py with LocalVim-S (embed 384).
#
# Pretrained weights: no correct LocalVim-S checkpoint link was ever published (the official
# README's LocalVim-S link is local_vssm_small.ckpt, a LocalVMamba file; the official detection
# config uses no checkpoint at all). This config names the file the release would use
# (local_vim_small.ckpt); if it cannot be downloaded, start-up stops with an error that says what
# to do: --cfg-options model.backbone.init_cfg.checkpoint=/path/to/local_vim_small.ckpt, or
# model.backbone.init_cfg=None to train from scratch.
#
# Directions: arch='small' is what the official local_vim_small factory builds
# ([h, h_flip, w2, w2_flip] in every layer); the official detection config passes the searched
# LocalVim-T lists instead (arch='small_searched').
_base_ = ['./cascade-mask-rcnn_localvim-t_sfp_lsj-100e_coco.py']

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vim_small.ckpt'  # noqa: E501 (no published link)

model = dict(
    backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=384))
