"""Where the GPU time of LocalVMamba-T goes: a torch-profiler kernel table per workload.

Runs the benchmark workloads (bf16 autocast, random weights; ``mmlocalmamba.apis.benchmark``)
under ``torch.profiler`` and prints, for each, the wall time of one step, the summed kernel time,
the time per kernel group (scan, merge, GEMM, norm, elementwise, copy, conv, other) and the
kernels that take the most time. ``tools/benchmark.py --profile`` writes the same to the JSON::

    python tools/dev/profile_backbone.py                       # infer, train, det_fwd_bwd
    python tools/dev/profile_backbone.py --what train --rows 40
    python tools/dev/profile_backbone.py --what det_fwd_bwd --host   # + where the host time goes
"""
import argparse

import torch

from mmlocalmamba.apis.benchmark.profiling import format_profile, profile_step
from mmlocalmamba.apis.benchmark.workloads import (backbone_step, build_backbone,
                                                   build_classifier, cls_step)

#: workload -> (classification or backbone, train)
WORKLOADS = {'infer': ('cls', False), 'train': ('cls', True), 'det_fwd': ('backbone', False),
             'det_fwd_bwd': ('backbone', True)}
DET_SIZE = (800, 1344)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='LocalVMamba-T',
                        help='LocalVMamba-T, Swin-T, ... (backbones: LocalVMamba-T, Swin-T, '
                        'LocalVim-T, ViT-Ti)')
    parser.add_argument('--what', default='infer,train,det_fwd_bwd',
                        help=f'comma-separated, from {", ".join(WORKLOADS)}')
    parser.add_argument('--batch', type=int, default=128, help='classification batch')
    parser.add_argument('--det-batch', type=int, default=1, help='batch at 800x1344')
    parser.add_argument('--rows', type=int, default=30)
    parser.add_argument('--host', action='store_true',
                        help='also print host time per op and the Python functions (cProfile)')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error('needs a CUDA device')
    torch.backends.cudnn.benchmark = True
    device = torch.device('cuda')
    for what in args.what.split(','):
        if what not in WORKLOADS:
            parser.error(f'--what {what!r}: expected one of {", ".join(WORKLOADS)}')
        kind, train = WORKLOADS[what]
        if kind == 'cls':
            model = build_classifier(args.model).to(device)
            step = cls_step(model, args.batch, 224, device, 'bf16', train)
            batch = args.batch
        else:
            model = build_backbone(args.model, DET_SIZE).to(device)
            step = backbone_step(model, args.det_batch, DET_SIZE, device, 'bf16', train)
            batch = args.det_batch
        prof = profile_step(step, device, warmup=3, rows=args.rows, host=args.host)
        print()
        print(format_profile(f'{args.model} {what} (batch {batch})', prof, rows=args.rows))
        del model, step
        torch.cuda.empty_cache()


if __name__ == '__main__':
    main()
