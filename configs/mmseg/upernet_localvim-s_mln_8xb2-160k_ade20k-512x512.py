# UperNet with a LocalVim-S backbone on ADE20K, 512x512 crops, 160k iterations:
# upernet_localvim-t_mln_8xb2-160k_ade20k-512x512.py with LocalVim-S (embed 384, drop path 0.1
# as the official config).
#
# Pretrained weights: no correct LocalVim-S checkpoint link was ever published. The official
# README's LocalVim-S "ckpt" link and the official UperNet config both point at
# local_vssm_small.ckpt, which is the LocalVMamba-S checkpoint: none of its tensors fits LocalVim,
# so the official run silently starts from random weights. This config names the file the
# release would use for LocalVim-S (local_vim_small.ckpt, next to log_local_vim_small.txt); if it
# cannot be downloaded, start-up stops with an error that says what to do: give your own
# checkpoint with --cfg-options model.backbone.init_cfg.checkpoint=/path/to/local_vim_small.ckpt,
# or train from scratch with --cfg-options model.backbone.init_cfg=None.
#
# Directions: arch='small' is what the official local_vim_small factory builds (and so what an
# S checkpoint was trained with): [h, h_flip, w2, w2_flip] in every layer. The official det/seg
# configs instead pass the searched LocalVim-T lists (arch='small_searched' here); the shapes are
# identical, so a checkpoint loads into either, but only the matching one computes what was
# trained.
_base_ = ['./upernet_localvim-t_mln_8xb2-160k_ade20k-512x512.py']

pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vim_small.ckpt'  # noqa: E501 (no published link)
embed_dim = 384

model = dict(
    backbone=dict(arch='small', init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dim] * 4, out_channels=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4),
    auxiliary_head=dict(in_channels=embed_dim))
