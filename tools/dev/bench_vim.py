"""Time the fused LocalVim path on one GPU (bf16 autocast, random weights): one layer's scan,
fused against the reference (PyTorch gathers, convs and einsums around the plain Triton scan,
i.e. the path before the fused kernels), and the whole LocalVim backbone.

    python tools/dev/bench_vim.py [--what layer,model] [--arch tiny] [--iters 10]

``layer``: ``local_vim_scan`` of one LocalVim-T/-S layer (directions ``h, v_flip, w7, w7_flip``)
at batch 128 on 14 x 14 tokens (224^2) and batch 2 on 64 x 64 (1024^2 LSJ): forward and forward
+ backward ms, peak GiB of the forward + backward. ``model``: the LocalVim backbone with the
fused path, inference and training img/s at batch 128, 224^2, their peak memory, and the
forward + backward time and peak of batch 2 at 1024^2 (the issue's rows; DeiT / ViT are in
``tools/benchmark.py``'s scope).
"""
import argparse
import math

import torch

from mmlocalmamba.apis.benchmark.measure import peak_gib, time_calls

CUDA = torch.device('cuda')


def cuda_time(fn, iters):
    """Median ms of ``iters`` calls of ``fn`` after two warm-up calls."""
    return time_calls(fn, CUDA, iters, warmup=2)['ms']


def peak_memory(fn):
    """Peak GiB of one call of ``fn``."""
    return peak_gib(fn, CUDA)

WIDTHS = {'tiny': 192, 'small': 384}
DIRECTIONS = ('h', 'v_flip', 'w7', 'w7_flip')


def layer_inputs(dim, batch, side):
    """xz (B, 2Di, T) as the in-projection gives it (bf16, channels-last) and the parameters."""
    d_inner, rank, nstate, k = 2 * dim, math.ceil(dim / 16), 16, len(DIRECTIONS)
    dev = 'cuda'
    xz = torch.randn(batch, side * side, 2 * d_inner, device=dev, dtype=torch.bfloat16)
    params = [torch.randn(k, d_inner, 4, device=dev) * 0.5, torch.randn(k, d_inner, device=dev),
              torch.randn(k, rank + 2 * nstate, d_inner, device=dev) * d_inner**-0.5,
              torch.randn(k, d_inner, rank, device=dev) * rank**-0.5,
              torch.randn(k, d_inner, device=dev) - 4.0,
              torch.log(torch.arange(1, nstate + 1, device=dev, dtype=torch.float32)).expand(
                  k, d_inner, nstate).contiguous(), torch.ones(k, d_inner, device=dev)]
    return [xz.transpose(1, 2).requires_grad_(True)] + [p.requires_grad_(True) for p in params]


def bench_layer(dim, iters):
    from mmlocalmamba.ops.vim_scan import _vim_scan_reference, local_vim_scan
    rows = []
    for batch, side in ((128, 14), (2, 64)):
        args = layer_inputs(dim, batch, side)
        paths = {
            'fused': lambda a: local_vim_scan(a[0], side, side, DIRECTIONS, *a[1:],
                                              backend='triton'),
            'reference': lambda a: _vim_scan_reference(a[0], side, side, DIRECTIONS, *a[1:], None,
                                                       False, 'triton'),
        }
        for name, fn in paths.items():
            def fwd():
                with torch.autocast('cuda', dtype=torch.bfloat16), torch.no_grad():
                    fn(args)

            def fwd_bwd():
                with torch.autocast('cuda', dtype=torch.bfloat16):
                    y = fn(args)
                y.backward(torch.ones_like(y))

            rows.append((f'b{batch} {side}x{side}', name, cuda_time(fwd, iters),
                         cuda_time(fwd_bwd, iters), peak_memory(fwd_bwd)))
    print(f'{"shape":<12} {"path":<10} {"fwd ms":>8} {"fwd+bwd ms":>11} {"peak GiB":>9}')
    for shape, name, f, fb, mem in rows:
        print(f'{shape:<12} {name:<10} {f:8.2f} {fb:11.2f} {mem:9.2f}')


def bench_model(arch, iters):
    from mmlocalmamba.models import LocalVim
    model = LocalVim(arch=arch, scan_backend='triton', out_indices=(4, 9, 14, 19)).cuda()
    x = torch.randn(128, 3, 224, 224, device='cuda')

    def infer():
        with torch.autocast('cuda', dtype=torch.bfloat16), torch.no_grad():
            model(x)

    def train(inp=x):
        with torch.autocast('cuda', dtype=torch.bfloat16):
            outs = model(inp)
        sum(o.float().square().mean() for o in outs).backward()

    t_inf, t_train = cuda_time(infer, iters), cuda_time(train, iters)
    print(f'LocalVim-{arch[0].upper()} b128 224^2: inference {128e3 / t_inf:.0f} img/s, '
          f'training {128e3 / t_train:.0f} img/s, training peak {peak_memory(train):.2f} GiB')
    det = torch.randn(2, 3, 1024, 1024, device='cuda')
    t_det = cuda_time(lambda: train(det), iters)
    print(f'LocalVim-{arch[0].upper()} b2 1024^2 fwd+bwd: {t_det:.1f} ms, peak '
          f'{peak_memory(lambda: train(det)):.2f} GiB')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--what', default='layer,model')
    parser.add_argument('--arch', choices=sorted(WIDTHS), default='tiny')
    parser.add_argument('--iters', type=int, default=10)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    if 'layer' in args.what:
        bench_layer(WIDTHS[args.arch], args.iters)
    if 'model' in args.what:
        bench_model(args.arch, args.iters)


if __name__ == '__main__':
    main()
