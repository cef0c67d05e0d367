#!/usr/bin/env python
"""Parameters and FLOPs of a LocalMamba model (a preset name or a config's backbone).

    python tools/get_flops.py local_vssm_tiny
    python tools/get_flops.py configs/mmdet/mask-rcnn_localvmamba-t_fpn_1x_coco.py --shape 800 1344

Counts with mmengine's FLOP counter (as get_model_complexity_info and mmdet's / mmseg's
get_flops.py do), whose handles for the selective scans use the 9*B*L*D*N rule of the official
code (see mmlocalmamba/models/flops.py); 1 multiply-accumulate = 1 FLOP. The counter runs one
forward pass (--device; on CPU about as long as one inference). For LocalVim models two numbers
are printed: the full count (all K per-direction projections) and the paper's count (the
official analytic VisionMamba.flops(), which counts one of the K per-direction
conv1d/x_proj/dt_proj).
"""
import argparse
import os.path as osp

import torch

import mmlocalmamba  # noqa: F401
from mmlocalmamba.models.flops import local_vim_paper_flops
from mmlocalmamba.utils.cli import positive_int
from mmlocalmamba.utils.flops import count_flops, count_params

PRESETS = {
    'local_vssm_tiny': dict(type='LocalVMambaClassifier', arch='tiny'),
    'local_vssm_small': dict(type='LocalVMambaClassifier', arch='small'),
    'localvmamba_t': dict(type='LocalVMamba', arch='tiny'),
    'localvmamba_s': dict(type='LocalVMamba', arch='small'),
    'local_vim_tiny': dict(type='LocalVimClassifier', arch='tiny'),
    'local_vim_small': dict(type='LocalVimClassifier', arch='small'),
    'local_vim_tiny_middle_cls': dict(type='LocalVimClassifier', arch='tiny_middle_cls'),
    'localvim_t': dict(type='LocalVim', arch='tiny'),
    'localvim_s': dict(type='LocalVim', arch='small'),
}


def build(target: str):
    from mmengine.registry import MODELS
    if target in PRESETS:
        return MODELS.build(PRESETS[target])
    if osp.isfile(target):
        from mmengine.config import Config
        cfg = Config.fromfile(target)
        backbone = dict(cfg.model.backbone)
        backbone.pop('init_cfg', None)
        backbone.pop('pretrained', None)
        return MODELS.build(backbone)
    raise SystemExit(f'{target!r} is neither a preset ({", ".join(PRESETS)}) nor a config file.')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('target', help=f'preset ({", ".join(PRESETS)}) or config file')
    parser.add_argument('--shape', type=positive_int, nargs='+', default=[224, 224], metavar='SIZE',
                        help='input H W (one number: square)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='where the counted forward pass runs (default: cuda if available)')
    args = parser.parse_args(argv)
    if len(args.shape) > 2:
        parser.error(f'--shape takes one or two numbers (H [W]), got '
                     f'{" ".join(map(str, args.shape))}')
    shape = args.shape * 2 if len(args.shape) == 1 else args.shape
    model = build(args.target)
    params = count_params(model)
    counts = count_flops(model.to(args.device), (1, 3, *shape))
    print(f'model: {args.target} ({type(model).__name__}), input 1x3x{shape[0]}x{shape[1]}')
    print(f'params: {params:,} ({params / 1e6:.2f} M)')
    print(f'FLOPs:  {counts["total"] / 1e9:.3f} G')
    if 'vim_scan' in counts:
        head = getattr(model, 'head', None)
        paper = local_vim_paper_flops(model, shape, getattr(head, 'out_features', 0))
        counts['paper'] = paper
        print(f'  (full count: all per-direction projections; the paper counts one of them: '
              f'{paper / 1e9:.3f} G, official VisionMamba.flops())')
    for name, value in sorted(counts.items()):
        if name not in ('total', 'paper'):
            print(f'  {name:<20s} {value / 1e9:8.3f} G')
    return counts, params


if __name__ == '__main__':
    with torch.no_grad():
        main()
