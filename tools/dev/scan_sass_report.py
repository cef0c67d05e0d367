"""Compile the Triton scan kernels for an H100 (sm_90) on a machine WITHOUT a GPU and report each
kernel's registers, spills and the instruction mix of its loops (SASS), at a LocalVMamba-T stage.

Triton compiles through a stand-in driver; ptxas and cuobjdump come with the triton wheel. Use
the device's triton version (3.6.0 on the H100 machines) for register counts that match there:

    pip download --no-deps -d /tmp/tri triton==3.6.0 && \
        pip install --no-deps --target /tmp/tri36 /tmp/tri/triton-3.6.0-*.whl
    PYTHONPATH=/tmp/tri36 python tools/dev/scan_sass_report.py --stage 1 [--dump work_dirs/sass]

Other launch configurations: ``--config "ScanConfig(...)"`` (mmlocalmamba/ops/triton/config.py).
"""
import argparse
import math

import torch

from sass_report import capture_compiles, report  # tools/dev/ (the script's folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--stage', type=int, default=1, help='LocalVMamba-T stage 1..4')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--dump', help='folder for .sass / .ttgir / .ptx of each kernel')
    parser.add_argument('--config', default='ScanConfig()',
                        help='launch configuration, e.g. "ScanConfig(bwd=Tile(T=2), '
                        'ck_every=2)"')
    args = parser.parse_args()

    def run():
        from mmlocalmamba.ops.scan_orders import kernel_tables
        from mmlocalmamba.ops.triton import ScanConfig, Tile
        from mmlocalmamba.ops.triton.scan import local_selective_scan_triton

        i = args.stage - 1
        height = width = 56 >> i
        chans, rank, nstate, dirs = 192 << i, math.ceil((96 << i) / 16), 16, 4
        bf16 = torch.bfloat16
        params = [torch.randn(args.batch, chans, height, width, dtype=bf16),
                  torch.randn(dirs, rank + 2 * nstate, chans, dtype=bf16),
                  torch.randn(dirs, chans, rank, dtype=bf16), torch.randn(dirs, chans),
                  torch.randn(dirs * chans, nstate), torch.randn(dirs * chans)]
        params = [p.requires_grad_(True) for p in params]
        tables = kernel_tables(height, width, ('h', 'h_flip', 'w7', 'w7_flip'))
        config = eval(args.config, {'ScanConfig': ScanConfig, 'Tile': Tile})  # noqa: S307 (dev tool)
        y = local_selective_scan_triton(*params, tables, config=config)
        y.backward(torch.randn_like(y))

    report(capture_compiles(run), args.dump)


if __name__ == '__main__':
    main()
