"""Compile the fused LocalVim kernels for an H100 / H200 (sm_90) on a machine WITHOUT a GPU and
report each kernel's registers, spills and the instruction mix of its loops (SASS), for one
LocalVim layer (bf16 autocast: bf16 xz and conv output, fp32 parameters).

Same machinery and set-up as ``tools/dev/scan_sass_report.py`` (triton 3.6.0, the device's
version, in /tmp/tri36):

    PYTHONPATH=/tmp/tri36 python tools/dev/vim_sass_report.py --arch tiny --grid 14 --batch 128
    PYTHONPATH=/tmp/tri36 python tools/dev/vim_sass_report.py --grid 64 --batch 2  # 1024^2 LSJ

Other launch configurations: ``--config "VimConfig(scan=ScanConfig(...), conv=ConvTile(...))"``
(mmlocalmamba/ops/triton/config.py).
"""
import argparse
import math
import os
import sys

import torch

from sass_report import capture_compiles, report  # tools/dev/ (the script's folder)

ARCHS = {'tiny': 192, 'small': 384}  # embed dims; Di = 2 C, rank = ceil(C / 16), N = 16


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', choices=sorted(ARCHS), default='tiny')
    parser.add_argument('--grid', default='14', help='token grid, H or HxW (224^2: 14)')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--middle-cls', action='store_true', help='a middle class token')
    parser.add_argument('--official', action='store_true',
                        help='official v reverse (a separate scatter table on HxW, H != W)')
    parser.add_argument('--directions', default='h,v_flip,w7,w7_flip')
    parser.add_argument('--dump', help='folder for .sass / .ttgir / .ptx of each kernel')
    parser.add_argument('--config', default='VimConfig()',
                        help='launch configuration, a VimConfig(...) expression')
    args = parser.parse_args()

    def run():
        from mmlocalmamba.ops.scan_orders import vim_kernel_tables
        from mmlocalmamba.ops.triton import config
        from mmlocalmamba.ops.triton.vim import vim_scan_triton

        dim = ARCHS[args.arch]
        d_inner, rank, nstate, d_conv = 2 * dim, math.ceil(dim / 16), 16, 4
        dirs = tuple(args.directions.split(','))
        k = len(dirs)
        height, width = (int(v) for v in (args.grid + 'x' + args.grid).split('x')[:2])
        cls_pos = height * width // 2 if args.middle_cls else None
        tokens = height * width + args.middle_cls
        tables = vim_kernel_tables(height, width, dirs, args.official, cls_pos)
        xz = torch.randn(args.batch, tokens, 2 * d_inner, dtype=torch.bfloat16).transpose(1, 2)
        params = [xz, torch.randn(k, d_inner, d_conv), torch.randn(k, d_inner),
                  torch.randn(k, rank + 2 * nstate, d_inner), torch.randn(k, d_inner, rank),
                  torch.randn(k, d_inner), torch.randn(k, d_inner, nstate),
                  torch.randn(k, d_inner)]
        params = [p.requires_grad_(True) for p in params]
        y = vim_scan_triton(*params, tables, torch.bfloat16, eval(args.config, vars(config)))
        y.backward(torch.randn_like(y))

    report(capture_compiles(run), args.dump)


if __name__ == '__main__':
    main()
