"""Where the GPU time of LocalVMamba-T goes: a torch-profiler kernel table per workload.

Runs the benchmark workloads of ``tools/benchmark.py`` (bf16 autocast, random weights) under
``torch.profiler`` and prints, for each, the wall time of one step, the summed kernel time and the
kernels that take the most time::

    python tools/dev/profile_backbone.py                       # infer, train, det_fwd_bwd
    python tools/dev/profile_backbone.py --what train --rows 40
    python tools/dev/profile_backbone.py --what det_fwd_bwd --host   # + where the host time goes
"""
import argparse
import cProfile
import importlib.util
import io
import pstats
import os
import time

import torch
import torch.nn.functional as F


def _load_benchmark():
    """tools/benchmark.py (a script beside this folder, not a module): its models and workloads."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark.py')
    spec = importlib.util.spec_from_file_location('mmlocalmamba_tools_benchmark', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_benchmark = _load_benchmark()
_features, build_model = _benchmark._features, _benchmark.build_model

WORKLOADS = ('infer', 'train', 'det_fwd', 'det_fwd_bwd')


def workload(name, what, batch):
    """(model, step function) of one workload."""
    dev = 'cuda'
    if what in ('infer', 'train'):
        model = build_model(name, 'cls').to(dev)
        images = torch.randn(batch, 3, 224, 224, device=dev)
        labels = torch.randint(0, 1000, (batch, ), device=dev)
    else:
        model = build_model(name, 'det', (800, 1344)).to(dev)
        image = torch.randn(1, 3, 800, 1344, device=dev)
    model.train(what in ('train', 'det_fwd_bwd'))

    def step():
        if what == 'infer':
            with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
                model(images)
        elif what == 'train':
            with torch.autocast('cuda', dtype=torch.bfloat16):
                loss = F.cross_entropy(model(images).float(), labels)
            loss.backward()
            model.zero_grad(set_to_none=True)
        elif what == 'det_fwd':
            with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
                _features(model, image)
        else:
            with torch.autocast('cuda', dtype=torch.bfloat16):
                loss = sum(f.float().mean() for f in _features(model, image))
            loss.backward()
            model.zero_grad(set_to_none=True)

    return model, step


def profile(name, what, batch, rows, host=False):
    model, step = workload(name, what, batch)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1e3
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.self_device_time_total for e in events)
    print(f'\n## {name} {what} (batch {batch if what in ("infer", "train") else 1}): '
          f'wall {wall_ms:.1f} ms, kernel time {total_us / 1e3:.1f} ms')
    events.sort(key=lambda e: -e.self_device_time_total)
    print(f'{"kernel time ms":>14} {"%":>6} {"calls":>6}  kernel')
    for e in events[:rows]:
        print(f'{e.self_device_time_total / 1e3:14.2f} {100 * e.self_device_time_total / total_us:6.1f} '
              f'{e.count:6d}  {e.key[:110]}')
    if host:
        cpu = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        cpu.sort(key=lambda e: -e.self_cpu_time_total)
        print(f'\nhost (CPU) time by op, total {sum(e.self_cpu_time_total for e in cpu) / 1e3:.1f} ms')
        for e in cpu[:rows]:
            print(f'{e.self_cpu_time_total / 1e3:14.2f} {e.count:6d}  {e.key[:110]}')
        torch.cuda.synchronize()
        profiler = cProfile.Profile()
        profiler.enable()
        step()
        torch.cuda.synchronize()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats('tottime').print_stats(rows)
        print('\nPython functions by own time (cProfile, one step):')
        print('\n'.join(text.getvalue().splitlines()[4:]))
    del model
    torch.cuda.empty_cache()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='LocalVMamba-T')
    parser.add_argument('--what', default='infer,train,det_fwd_bwd',
                        help=f'comma-separated, from {", ".join(WORKLOADS)}')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--rows', type=int, default=30)
    parser.add_argument('--host', action='store_true',
                        help='also print host time per op and the Python functions (cProfile)')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error('needs a CUDA device')
    for what in args.what.split(','):
        if what not in WORKLOADS:
            parser.error(f'--what {what!r}: expected one of {", ".join(WORKLOADS)}')
        profile(args.model, what, args.batch, args.rows, args.host)


if __name__ == '__main__':
    main()
