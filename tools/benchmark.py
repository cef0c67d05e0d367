"""Throughput, latency and memory of LocalVMamba-T next to timm Swin-T and ConvNeXt-T (one GPU).

Measures, on the current CUDA device, with bf16 autocast and random weights (nothing is
downloaded):

* ``models``: inference img/s and training (forward + backward) img/s at 224x224, batch 128, the
  peak memory of a training step, and the forward / forward+backward latency and peak memory of
  one 800x1344 image (backbone features).
* ``scan``: the fused scan kernel alone at the four stage shapes of LocalVMamba-T (batch 128,
  224x224): forward and forward+backward time and achieved memory bandwidth, next to the
  measured device-to-device copy bandwidth.

Prints a table and writes everything to a JSON file. ``--plot`` turns a JSON file into the PNG of
docs/benchmarks.md (no GPU needed)::

    python tools/benchmark.py --json work_dirs/bench.json
    python tools/benchmark.py --plot work_dirs/bench.json --png docs/benchmarks.png
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys

import torch
import torch.nn.functional as F

GIB = float(1 << 30)
SCAN_DIRECTIONS = ('h', 'h_flip', 'w7', 'w7_flip')
# LocalVMamba-T: dims 96 * 2^i, inner channels 2x, dt rank ceil(C/16), N = 16, 224x224 input.
TINY_STAGES = [dict(stage=i, height=56 >> i, width=56 >> i, channels=192 << i,
                    rank=math.ceil((96 << i) / 16)) for i in range(4)]


# ----------------------------------------------------------------------------- timing


def cuda_time(fn, iters, warmup=3):
    """Median time of ``fn()`` in ms, measured with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_memory(fn):
    """Peak allocated memory (GiB) while running ``fn()`` once, everything else included."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / GIB


def copy_bandwidth(nbytes=2 << 30):
    """Device-to-device copy bandwidth, bytes read + bytes written per second (TB/s)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device='cuda').uniform_()
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src), iters=20)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e12


def environment():
    import triton
    props = torch.cuda.get_device_properties(0)
    return dict(device=torch.cuda.get_device_name(0), sm_count=props.multi_processor_count,
                memory_gib=round(props.total_memory / GIB, 1), torch=torch.__version__,
                triton=triton.__version__, cuda=torch.version.cuda,
                python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d'))


# ----------------------------------------------------------------------------- scan kernel


def scan_inputs(batch, stage, dtype=torch.bfloat16, num_dirs=4, nstate=16):
    """Stage-shaped inputs of one SS2D scan (bf16 activations as under autocast)."""
    dev = 'cuda'
    chans, rank = stage['channels'], stage['rank']
    height, width = stage['height'], stage['width']
    x = torch.randn(batch, chans, height, width, device=dev, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    x_proj = torch.randn(num_dirs, rank + 2 * nstate, chans, device=dev) * chans**-0.5
    dt_w = torch.randn(num_dirs, chans, rank, device=dev) * rank**-0.5
    dt_b = torch.randn(num_dirs, chans, device=dev) * 0.5 - 4.0
    a_logs = torch.log(torch.arange(1, nstate + 1, device=dev, dtype=torch.float32)).repeat(
        num_dirs * chans, 1)
    ds = torch.ones(num_dirs * chans, device=dev)
    return [x, x_proj, dt_w, dt_b, a_logs, ds]


def scan_bytes(batch, stage, num_dirs=4, nstate=16):
    """Bytes of the scan at a stage shape.

    ``official``: what the official kernel interface reads and writes (u, delta, B, C in, y out,
    all fp32, per direction): the count behind the issue's 9.5% figure. ``fused``: what this
    kernel must move at least (x and x_dbl in bf16 read once, y in fp32 written once).
    """
    tokens = stage['height'] * stage['width']
    chans, rank = stage['channels'], stage['rank']
    big = batch * num_dirs * chans * tokens
    official = 4 * (3 * big + 2 * batch * num_dirs * nstate * tokens)
    fused = (2 * batch * chans * tokens + 2 * batch * tokens * num_dirs * (rank + 2 * nstate) +
             4 * big)
    return official, fused


def bench_scan(batch, iters, copy_tbps, log):
    from mmlocalmamba.ops.scan_orders import kernel_tables
    from mmlocalmamba.ops.triton import scan as ts
    rows = []
    for stage in TINY_STAGES:
        params = scan_inputs(batch, stage)
        x, x_proj, dt_w, dt_b, a_logs, ds = params
        height, width, chans = stage['height'], stage['width'], stage['channels']
        tables = kernel_tables(height, width, SCAN_DIRECTIONS, False, x.device)
        x_cl = x.permute(0, 2, 3, 1).reshape(batch, height * width, chans)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            x_dbl = ts.project(x_cl, x_proj, 16)
        leaves = [x_cl.detach().requires_grad_(True), x_dbl.detach().requires_grad_(True)]
        leaves += [p.detach().requires_grad_(True) for p in (dt_w, dt_b, a_logs, ds)]

        def scan():
            # the scan given the projection (for ranks above the in-kernel limit this includes
            # the delta GEMM, see ops.triton.scan.scan_projected)
            with torch.autocast('cuda', dtype=torch.bfloat16):
                return ts.scan_projected(*leaves, tables, 16)

        def kernel_fwd():
            with torch.no_grad():
                return scan()

        y = kernel_fwd()
        grad = torch.randn_like(y)

        def kernel_fwd_bwd():
            torch.autograd.grad(scan(), leaves, grad)

        op_leaves = [p.detach().requires_grad_(True) for p in params]

        def op_fwd_bwd():
            with torch.autocast('cuda', dtype=torch.bfloat16):
                out = ts.local_selective_scan_triton(*op_leaves, tables)
            torch.autograd.grad(out, op_leaves, grad)

        fwd = cuda_time(kernel_fwd, iters)
        fwd_bwd = cuda_time(kernel_fwd_bwd, iters)
        op = cuda_time(op_fwd_bwd, iters)
        official_bytes, fused_bytes = scan_bytes(batch, stage)
        row = dict(stage=stage['stage'], B=batch, K=4, D=chans, L=height * width, N=16,
                   R=stage['rank'], fwd_ms=fwd, fwd_bwd_ms=fwd_bwd, op_fwd_bwd_ms=op,
                   official_bytes=official_bytes, fused_bytes=fused_bytes,
                   fwd_official_tbps=official_bytes / fwd / 1e9,
                   fwd_fused_tbps=fused_bytes / fwd / 1e9)
        row['fwd_pct_copy_official'] = 100 * row['fwd_official_tbps'] / copy_tbps
        row['fwd_pct_copy_fused'] = 100 * row['fwd_fused_tbps'] / copy_tbps
        rows.append(row)
        log(f"  scan stage {row['stage']}: L={row['L']} D={chans} fwd {fwd:.3f} ms "
            f"({row['fwd_official_tbps']:.2f} TB/s official-equivalent = "
            f"{row['fwd_pct_copy_official']:.0f}% of copy; {row['fwd_fused_tbps']:.2f} TB/s own "
            f"bytes), fwd+bwd {fwd_bwd:.3f} ms, op with projection fwd+bwd {op:.3f} ms")
        del params, leaves, op_leaves, y, grad, x_cl, x_dbl
        torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- models


def build_model(name, kind, det_size=None):
    """``kind``: 'cls' (classifier at 224) or 'det' (backbone features at ``det_size``)."""
    import timm
    if name == 'LocalVMamba-T':
        from mmlocalmamba.models import LocalVMamba, LocalVMambaClassifier
        if kind == 'cls':
            return LocalVMambaClassifier(arch='tiny', num_classes=1000, drop_path_rate=0.1)
        return LocalVMamba(arch='tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.1)
    timm_name = {'Swin-T': 'swin_tiny_patch4_window7_224', 'ConvNeXt-T': 'convnext_tiny'}[name]
    kwargs = dict(pretrained=False, drop_path_rate=0.1)
    if name == 'Swin-T' and kind == 'det':
        kwargs['img_size'] = det_size
    return timm.create_model(timm_name, **kwargs)


def _features(model, x):
    out = model.forward_features(x) if hasattr(model, 'forward_features') else model(x)
    return out if isinstance(out, (tuple, list)) else (out, )


def bench_model(name, batch, iters, log, det_size=(800, 1344)):
    res = dict(model=name)
    dev = 'cuda'
    model = build_model(name, 'cls').to(dev)
    res['params_m'] = sum(p.numel() for p in model.parameters()) / 1e6
    images = torch.randn(batch, 3, 224, 224, device=dev)
    labels = torch.randint(0, 1000, (batch, ), device=dev)

    model.eval()

    def infer():
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
            model(images)

    res['infer_ms'] = cuda_time(infer, iters)
    res['infer_img_s'] = batch / res['infer_ms'] * 1e3

    model.train()

    def train():
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    res['train_ms'] = cuda_time(train, iters)
    res['train_img_s'] = batch / res['train_ms'] * 1e3
    res['train_peak_gib'] = peak_memory(train)
    log(f"  {name}: infer {res['infer_img_s']:.0f} img/s, train {res['train_img_s']:.0f} img/s, "
        f"train peak {res['train_peak_gib']:.1f} GiB")
    del model, images, labels
    torch.cuda.empty_cache()

    model = build_model(name, 'det', det_size).to(dev)
    image = torch.randn(1, 3, *det_size, device=dev)

    def det_fwd():
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
            _features(model, image)

    def det_fwd_bwd():
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = sum(f.float().mean() for f in _features(model, image))
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.eval()
    res['det_fwd_ms'] = cuda_time(det_fwd, iters)
    model.train()
    res['det_fwd_bwd_ms'] = cuda_time(det_fwd_bwd, iters)
    res['det_peak_gib'] = peak_memory(det_fwd_bwd)
    log(f"  {name} {det_size[0]}x{det_size[1]}: fwd {res['det_fwd_ms']:.1f} ms, fwd+bwd "
        f"{res['det_fwd_bwd_ms']:.1f} ms, peak {res['det_peak_gib']:.2f} GiB")
    del model, image
    torch.cuda.empty_cache()
    return res


# ----------------------------------------------------------------------------- report


def ratios(models):
    """Each model's numbers over Swin-T's (the issue's targets are such ratios)."""
    base = next((m for m in models if m['model'] == 'Swin-T'), None)
    if base is None:
        return {}
    out = {}
    for m in models:
        out[m['model']] = dict(
            infer=m['infer_img_s'] / base['infer_img_s'],
            train=m['train_img_s'] / base['train_img_s'],
            train_peak=m['train_peak_gib'] / base['train_peak_gib'],
            det_fwd_bwd=m['det_fwd_bwd_ms'] / base['det_fwd_bwd_ms'])
    return out


def format_tables(result):
    lines = []
    env = result['environment']
    lines.append(f"{env['device']}, torch {env['torch']}, triton {env['triton']}, "
                 f"{env['date']}; copy bandwidth {result['copy_tbps']:.2f} TB/s")
    if result.get('models'):
        lines.append('')
        lines.append('| model | params (M) | inference img/s (b128, 224²) | training fwd+bwd img/s | '
                     'train peak GiB | 800×1344 fwd / fwd+bwd ms | 800×1344 peak GiB |')
        lines.append('|---|---|---|---|---|---|---|')
        for m in result['models']:
            lines.append(f"| {m['model']} | {m['params_m']:.1f} | {m['infer_img_s']:.0f} | "
                         f"{m['train_img_s']:.0f} | {m['train_peak_gib']:.1f} | "
                         f"{m['det_fwd_ms']:.1f} / {m['det_fwd_bwd_ms']:.1f} | "
                         f"{m['det_peak_gib']:.2f} |")
        rat = result.get('ratios_to_swin', {})
        if 'LocalVMamba-T' in rat:
            r = rat['LocalVMamba-T']
            lines.append('')
            lines.append(f"LocalVMamba-T / Swin-T: inference {r['infer']:.3f}x, training "
                         f"{r['train']:.3f}x, train peak memory {r['train_peak']:.2f}x, "
                         f"800×1344 fwd+bwd time {r['det_fwd_bwd']:.2f}x")
    if result.get('scan'):
        lines.append('')
        lines.append('| stage | B×K×D×L (N=16) | fwd ms | fwd TB/s (official bytes) | % of copy | '
                     'fwd TB/s (own bytes) | fwd+bwd ms | with projection fwd+bwd ms |')
        lines.append('|---|---|---|---|---|---|---|---|')
        for s in result['scan']:
            lines.append(f"| {s['stage'] + 1} | {s['B']}×{s['K']}×{s['D']}×{s['L']} | "
                         f"{s['fwd_ms']:.3f} | {s['fwd_official_tbps']:.2f} | "
                         f"{s['fwd_pct_copy_official']:.0f}% | {s['fwd_fused_tbps']:.2f} | "
                         f"{s['fwd_bwd_ms']:.3f} | {s['op_fwd_bwd_ms']:.3f} |")
    return '\n'.join(lines)


def plot(result, png):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    models = result['models']
    names = [m['model'] for m in models]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in zip(axes, ['infer_img_s', 'train_img_s'],
                              ['inference img/s', 'training (fwd+bwd) img/s']):
        vals = [m[key] for m in models]
        bars = ax.bar(names, vals, color=['#d1495b', '#00798c', '#edae49'][:len(names)])
        ax.bar_label(bars, fmt='%.0f')
        ax.set_title(f'{title}, b128, 224², bf16')
        ax.set_ylim(0, max(vals) * 1.15)
    env = result['environment']
    fig.suptitle(f"{env['device']} · torch {env['torch']} · triton {env['triton']} · "
                 f"{env['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--what', default='all', choices=['all', 'models', 'scan'])
    parser.add_argument('--models', default='LocalVMamba-T,Swin-T,ConvNeXt-T',
                        help='comma-separated: LocalVMamba-T, Swin-T, ConvNeXt-T')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--iters', type=int, default=10, help='timed repetitions (median)')
    parser.add_argument('--json', default='work_dirs/benchmark.json', help='output JSON file')
    parser.add_argument('--plot', metavar='JSON', help='only plot an existing JSON file')
    parser.add_argument('--png', default='docs/benchmarks.png')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.plot:
        with open(args.plot) as f:
            plot(json.load(f), args.png)
        return
    if not torch.cuda.is_available():
        sys.exit('tools/benchmark.py needs a CUDA device.')
    torch.backends.cudnn.benchmark = True

    def log(msg):
        print(msg, flush=True)

    result = dict(environment=environment(), settings=vars(args))
    result['copy_tbps'] = copy_bandwidth()
    log(f"{result['environment']}; copy {result['copy_tbps']:.2f} TB/s")
    if args.what in ('all', 'scan'):
        result['scan'] = bench_scan(args.batch, args.iters, result['copy_tbps'], log)
    if args.what in ('all', 'models'):
        result['models'] = [bench_model(n.strip(), args.batch, args.iters, log)
                            for n in args.models.split(',')]
        result['ratios_to_swin'] = ratios(result['models'])
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
        json.dump(result, f, indent=1)
    print(format_tables(result))


if __name__ == '__main__':
    main()
