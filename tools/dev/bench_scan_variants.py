"""Compare launch configurations of the Triton scan (kernel development; one CUDA GPU).

    PYTHONPATH=$PWD python tools/dev/bench_scan_variants.py --out work_dirs/variants.json \\
        --configs "ScanConfig()" "ScanConfig(bwd=Tile(T=8), ck_every=1, bwd_scratch=True)"

For each configuration: the scan alone at LocalVMamba-T's four stage shapes (batch 128, 224x224;
forward, forward + backward, given the projection), and the whole LocalVMamba-T classifier
(inference and training step at batch 128, training peak memory) with every layer set to it.
Also, once: timm's Swin-T at the same batch (the reference), the host time against the GPU
kernel time of one backbone forward + backward at 800x1344 (batch 2) from torch.profiler, the
host cost of one Triton scan launch, and (``--compile-times``) the first-call wall time of a
backbone forward + backward at 800x1344, 800x1216 and 736x1344 on a fresh Triton cache (a
subprocess per configuration). Results are printed and written as JSON.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from mmlocalmamba.ops.triton import ScanConfig, Tile

DIRS = ('h', 'h_flip', 'w7', 'w7_flip')


def cuda_ms(fn, iters=10, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_gib(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def parse_config(text):
    return eval(text, {'ScanConfig': ScanConfig, 'Tile': Tile})  # noqa: S307 (dev tool)


def bench_scan(config, batch, log):
    from mmlocalmamba.ops.scan_orders import kernel_tables
    from mmlocalmamba.ops.triton import scan as ts
    rows = []
    for i in range(4):
        hw, chans, rank = 56 >> i, 192 << i, math.ceil((96 << i) / 16)
        dev = 'cuda'
        x = torch.randn(batch, chans, hw, hw, device=dev, dtype=torch.bfloat16)
        xpw = torch.randn(4, rank + 32, chans, device=dev) * chans**-0.5
        dtw = torch.randn(4, chans, rank, device=dev) * rank**-0.5
        dtb = torch.randn(4, chans, device=dev) * 0.5 - 4
        alog = torch.log(torch.arange(1, 17, device=dev, dtype=torch.float32)).repeat(4 * chans, 1)
        ds = torch.ones(4 * chans, device=dev)
        tables = kernel_tables(hw, hw, DIRS, False, dev)
        leaves = [t.detach().requires_grad_(True) for t in (x, xpw, dtw, dtb, alog, ds)]

        def scan():
            # the launcher as the model calls it (projection GEMM included)
            with torch.autocast('cuda', dtype=torch.bfloat16):
                return ts.local_selective_scan_triton(*leaves, tables, config)

        def fwd():
            with torch.no_grad():
                scan()

        y = scan()
        grad = torch.randn_like(y)

        def fwd_bwd():
            torch.autograd.grad(scan(), leaves, grad)

        row = dict(stage=i + 1, fwd_ms=cuda_ms(fwd), fwd_bwd_ms=cuda_ms(fwd_bwd),
                   fwd_bwd_peak_gib=peak_gib(fwd_bwd))
        log(f'    stage {i + 1}: fwd {row["fwd_ms"]:.2f} ms, fwd+bwd {row["fwd_bwd_ms"]:.2f} ms, '
            f'peak {row["fwd_bwd_peak_gib"]:.2f} GiB')
        rows.append(row)
        del x, leaves, y, grad
        torch.cuda.empty_cache()
    return rows


def set_config(model, config):
    from mmlocalmamba.models.base import ScanLayer
    for m in model.modules():
        if isinstance(m, ScanLayer):
            m.scan_config = config


def bench_classifier(model, batch, log, name):
    model = model.cuda()
    images = torch.randn(batch, 3, 224, 224, device='cuda')
    labels = torch.randint(0, 1000, (batch, ), device='cuda')
    model.eval()

    def infer():
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
            model(images)

    model.train()

    def train():
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.eval()
    infer_ms = cuda_ms(infer)
    model.train()
    train_ms = cuda_ms(train, iters=8)
    row = dict(model=name, infer_img_s=batch / infer_ms * 1e3, train_img_s=batch / train_ms * 1e3,
               train_peak_gib=peak_gib(train))
    log(f'    {name}: infer {row["infer_img_s"]:.0f} img/s, train {row["train_img_s"]:.0f} img/s, '
        f'peak {row["train_peak_gib"]:.1f} GiB')
    return row


def profile_backbone(log, height=800, width=1344):
    """Host wall time vs GPU kernel time of one LocalVMamba-T backbone fwd+bwd (batch 2)."""
    from torch.profiler import ProfilerActivity, profile

    from mmlocalmamba.models import LocalVMamba
    model = LocalVMamba(arch='tiny', drop_path_rate=0.1).cuda().train()
    image = torch.randn(2, 3, height, width, device='cuda')

    def step():
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = sum(f.float().mean() for f in model(image))
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / 5 * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == 'CUDA']
    gpu = sum(e.self_device_time_total for e in events) / 1e3
    launches = sum(e.count for e in prof.key_averages()
                   if e.key in ('cudaLaunchKernel', 'cuLaunchKernel', 'cuLaunchKernelEx',
                                'cudaLaunchKernelExC'))
    top = sorted(((e.self_device_time_total / 1e3, e.key, e.count) for e in events),
                 reverse=True)[:25]
    row = dict(wall_ms=wall, gpu_kernel_ms=gpu, launches=launches,
               top=[dict(ms=ms, name=name[:90], count=count) for ms, name, count in top])
    log(f'    800x1344 b2 fwd+bwd: wall {wall:.1f} ms, GPU kernels {gpu:.1f} ms, '
        f'{launches} launches, {len(events)} kinds')
    return row


def launch_overhead(log):
    """Host time of one Triton scan forward (tiny problem: the kernel itself is negligible)."""
    from mmlocalmamba.ops.scan_orders import kernel_tables
    from mmlocalmamba.ops.triton import scan as ts
    x = torch.randn(1, 32, 4, 4, device='cuda')
    params = [torch.randn(4, 2 + 32, 32, device='cuda'), torch.randn(4, 32, 2, device='cuda'),
              torch.randn(4, 32, device='cuda'), torch.randn(128, 16, device='cuda'),
              torch.randn(128, device='cuda')]
    tables = kernel_tables(4, 4, DIRS, False, 'cuda')
    x_cl = x.permute(0, 2, 3, 1).reshape(1, 16, 32)
    x_dbl = ts.project(x_cl, params[0], 16)
    for _ in range(20):
        ts.local_scan_forward(x_cl, x_dbl, *params[1:], tables, 16)
    torch.cuda.synchronize()
    n = 300
    t0 = time.perf_counter()
    for _ in range(n):
        ts.local_scan_forward(x_cl, x_dbl, *params[1:], tables, 16)
    host = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    log(f'    host time per local_scan_forward (param tables + 1 launch): {host:.0f} us')
    return dict(local_scan_forward_host_us=host)


COMPILE_SCRIPT = r'''
import sys, time, json, torch
from mmlocalmamba.models import LocalVMamba
from mmlocalmamba.ops.triton import ScanConfig, Tile
cfg = eval(sys.argv[1], {"ScanConfig": ScanConfig, "Tile": Tile})
model = LocalVMamba(arch="tiny").cuda().train()
for m in model.modules():
    if hasattr(m, "scan_config"):
        m.scan_config = cfg
out = {}
for h, w in ((800, 1344), (800, 1216), (736, 1344)):
    x = torch.randn(2, 3, h, w, device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = sum(f.float().mean() for f in model(x))
    loss.backward()
    torch.cuda.synchronize()
    out[f"{h}x{w}"] = time.perf_counter() - t0
print("RESULT", json.dumps(out))
'''


def compile_times(config_text, log):
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, '-c', COMPILE_SCRIPT, config_text], env=env,
                              capture_output=True, text=True, timeout=400)
        if proc.returncode:
            log(proc.stderr[-3000:])
            return dict(error=proc.stderr[-1000:])
        res = json.loads(proc.stdout.split('RESULT')[-1])
        res['process_s'] = time.perf_counter() - t0
    log('    first fwd+bwd (fresh Triton cache): ' +
        ', '.join(f'{k} {v:.1f} s' for k, v in res.items()))
    return res


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', default=['ScanConfig()'])
    parser.add_argument('--model-configs', nargs='*', default=None,
                        help='configurations for the whole-model rows (default: --configs)')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--out', default='work_dirs/variants.json')
    parser.add_argument('--compile-times', nargs='*', default=[],
                        help='configurations whose fresh-cache first-call time to measure')
    parser.add_argument('--skip', nargs='*', default=[], help='scan, model, swin, profile, launch')
    parser.add_argument('--ncu-once', metavar='CONFIG',
                        help='only run stage 1 forward + backward twice with CONFIG (for ncu)')
    args = parser.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  date=time.strftime('%Y-%m-%d'))
    try:
        import triton
        result['triton'] = triton.__version__
    except ImportError:
        pass

    def log(msg):
        print(msg, flush=True)

    def save():
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)

    if args.ncu_once:
        cfg = parse_config(args.ncu_once)
        from mmlocalmamba.ops.scan_orders import kernel_tables
        from mmlocalmamba.ops.triton import scan as ts
        x = torch.randn(args.batch, 192, 56, 56, device='cuda', dtype=torch.bfloat16)
        params = [torch.randn(4, 38, 192, device='cuda') * 0.07,
                  torch.randn(4, 192, 6, device='cuda') * 0.4,
                  torch.randn(4, 192, device='cuda') * 0.5 - 4,
                  torch.log(torch.arange(1, 17, device='cuda',
                                         dtype=torch.float32)).repeat(768, 1),
                  torch.ones(768, device='cuda')]
        leaves = [t.requires_grad_(True) for t in [x] + params]
        tables = kernel_tables(56, 56, DIRS, False, 'cuda')
        for _ in range(2):
            with torch.autocast('cuda', dtype=torch.bfloat16):
                y = ts.local_selective_scan_triton(*leaves, tables, cfg)
            y.backward(torch.ones_like(y))
        torch.cuda.synchronize()
        return
    for text in args.compile_times:
        log(f'compile times {text}')
        result.setdefault('compile_times', {})[text] = compile_times(text, log)
        save()
    if 'launch' not in args.skip:
        result['launch'] = launch_overhead(log)
        save()
    if 'scan' not in args.skip:
        for text in args.configs:
            log(f'scan {text}')
            result.setdefault('scan', {})[text] = bench_scan(parse_config(text), args.batch, log)
            save()
    if 'model' not in args.skip:
        from mmlocalmamba.models import LocalVMambaClassifier
        for text in args.model_configs if args.model_configs is not None else args.configs:
            log(f'model {text}')
            model = LocalVMambaClassifier(arch='tiny', drop_path_rate=0.1)
            set_config(model, parse_config(text))
            result.setdefault('model', {})[text] = bench_classifier(model, args.batch, log,
                                                                    'LocalVMamba-T')
            del model
            torch.cuda.empty_cache()
            save()
    if 'swin' not in args.skip:
        import timm
        log('Swin-T')
        result['swin'] = bench_classifier(
            timm.create_model('swin_tiny_patch4_window7_224', drop_path_rate=0.1), args.batch,
            log, 'Swin-T')
        torch.cuda.empty_cache()
        save()
    if 'profile' not in args.skip:
        log('profile')
        result['profile_800x1344'] = profile_backbone(log)
        save()
    log(f'wrote {args.out}')


if __name__ == '__main__':
    main()
