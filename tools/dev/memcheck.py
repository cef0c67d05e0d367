"""Run every Triton kernel of the package once under ``compute-sanitizer --tool memcheck``.

    compute-sanitizer --tool memcheck --error-exitcode 1 python tools/dev/memcheck.py [--compile]

Small LocalVMamba and LocalVim models forward + backward in fp32 and under bf16 autocast at
odd sizes (37x53, 70x45: window padding, sequence segments), 64x96, batch 1 and 2; the
LocalVMamba scan launcher alone at 67,200 tokens (stage 1 of an 800x1344 image, D = 16); the
fused merge with its output gate; the plain scan; and, with ``--compile``, the same models
through ``compile()`` (``--only-compiled``: only that part; ``--models``: a subset). The
sanitizer's summary line ("ERROR SUMMARY: 0 errors") is the
result; this script only runs the work.
"""
import argparse
import time

import torch

_START = time.time()


def progress(what):
    """One line per finished piece of work (the sanitizer slows everything; the log shows how
    far a run that hit its time limit got)."""
    print(f'[{time.time() - _START:7.1f} s] {what}', flush=True)


MODELS = ('vmamba', 'vim', 'vim_cls')


def models(compile_models, names=MODELS):
    from mmlocalmamba.models import LocalVim, LocalVMamba
    dirs = ['h', 'v_flip', 'w2', 'w7_flip']
    build = dict(
        vmamba=lambda: LocalVMamba(arch=dict(dims=16, depths=[1, 1, 1, 1], directions=[dirs] * 4),
                                   drop_path_rate=0.),
        vim=lambda: LocalVim(arch=dict(embed_dim=32, depth=2, directions=[dirs] * 2), img_size=64,
                             out_indices=(0, 1), drop_path_rate=0.),
        vim_cls=lambda: LocalVim(arch=dict(embed_dim=32, depth=2, if_rope=False,
                                           middle_cls_token=True),
                                 img_size=64, out_indices=(1, ), drop_path_rate=0.))
    out = [build[name]().cuda() for name in names]
    if compile_models:  # through the backbones' compile(): the Inductor options they need
        for m in out:
            m.compile()
    return out


def run_models(compile_models, names=MODELS):
    for name, model in zip(names, models(compile_models, names)):
        for batch, (height, width) in ((2, (37, 53)), (1, (64, 96)), (2, (70, 45))):
            for amp in (False, True):
                x = torch.randn(batch, 3, height, width, device='cuda', requires_grad=True)
                with torch.autocast('cuda', dtype=torch.bfloat16, enabled=amp):
                    loss = sum(o.float().square().mean() for o in model(x))
                loss.backward()
                torch.cuda.synchronize()
                progress(f'{name} compiled={compile_models} batch {batch} '
                         f'{height}x{width} amp={amp}')


def run_long_scan():
    from mmlocalmamba.ops.local_scan import local_selective_scan
    dirs = ('h', 'v_flip', 'w7', 'w2_flip')
    k, d, n, r = 4, 16, 16, 2
    x = torch.randn(1, d, 200, 336, device='cuda', requires_grad=True)
    params = [torch.randn(k, r + 2 * n, d, device='cuda') * 0.25,
              torch.randn(k, d, r, device='cuda') * 0.5, torch.randn(k, d, device='cuda') - 3,
              torch.log(torch.rand(k * d, n, device='cuda') * 8 + 0.5),
              torch.randn(k * d, device='cuda')]
    params = [p.requires_grad_(True) for p in params]
    y = local_selective_scan(x, *params, dirs, True)
    y.square().mean().backward()
    torch.cuda.synchronize()


def run_plain_scan():
    from mmlocalmamba.ops.selective_scan import selective_scan
    u = torch.randn(2, 64, 301, device='cuda', requires_grad=True)
    delta = torch.rand(2, 64, 301, device='cuda', requires_grad=True)
    a = -torch.rand(64, 16, device='cuda')
    b = torch.randn(2, 4, 16, 301, device='cuda', requires_grad=True)
    c = torch.randn(2, 4, 16, 301, device='cuda', requires_grad=True)
    y = selective_scan(u, delta, a, b, c, torch.randn(64, device='cuda'),
                       torch.randn(64, device='cuda'), softplus=True, backend='triton')
    y.sum().backward()
    torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--compile', action='store_true', help='also through torch.compile')
    parser.add_argument('--only-compiled', action='store_true',
                        help='only the torch.compile part (under the sanitizer it takes the '
                        'longest: Inductor compiles and autotunes there too)')
    parser.add_argument('--models', default=','.join(MODELS),
                        help=f'comma-separated subset of {",".join(MODELS)}')
    args = parser.parse_args()
    names = [n for n in args.models.split(',') if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f'unknown --models {unknown}; valid: {list(MODELS)}')
    torch.manual_seed(0)
    if not args.only_compiled:
        run_models(False, names)
        run_long_scan()
        progress('local scan at 67,200 tokens')
        run_plain_scan()
        progress('plain scan')
    if args.compile or args.only_compiled:
        run_models(True, names)
    print('memcheck workload done')


if __name__ == '__main__':
    main()
