"""Where the time of one step goes: a torch-profiler kernel table, grouped.

:func:`profile_step` runs a step under ``torch.profiler`` and returns its wall time, the summed
kernel time (CUDA kernels on the GPU; on the CPU, the operators' own CPU time), the time per
:data:`GROUPS` and the top kernels. :func:`kernel_group` names the group of a kernel: our Triton
kernels by their function names (read from ``mmlocalmamba.ops.triton``), the rest by patterns of
the cuBLAS / cuDNN / ATen / Inductor kernel names.
"""
import cProfile
import functools
import importlib
import io
import pkgutil
import pstats
import re
from typing import Callable, Dict, FrozenSet, Tuple

import torch

from .measure import synchronize, wall_s

#: groups in reporting order ('norm': LayerNorm, RMSNorm and BatchNorm; 'elementwise' includes
#: reductions and softmax).
GROUPS = ('scan', 'merge', 'gemm', 'norm', 'elementwise', 'copy', 'conv', 'other')
# Tried in this order: conv kernels also say "gemm", fused Inductor kernels name their ops.
_PATTERNS = (
    ('scan', r'selective_scan|local_scan|vim_scan|scan_(fwd|bwd|rev)'),
    ('merge', r'scattn|merge'),
    ('conv', r'conv|cudnn|dgrad|wgrad|fprop|winograd|depthwise'),
    ('gemm', r'gemm|gemv|cublas|cutlass|nvjet|xmma|matmul|aten::(mm|addmm|bmm|baddbmm|linear)$'),
    ('norm', r'layer_?norm|rms_?norm|batch_?norm|group_?norm|bn_(fw|bw)|welford'),
    ('copy', r'copy|memcpy|memset|\bcat\b|catarray|_cat_|index|gather|scatter|transpose|permute|'
             r'contiguous|constant_pad|reflection_pad|flip|roll|aten::(cat|stack|pad|to|clone)$'),
    ('elementwise', r'elementwise|vectorized|unrolled|triton_(poi|red|per)_|reduce|softmax|'
                    r'activation|gelu|silu|sigmoid|softplus|exp|aten::(add|sub|mul|div|neg|pow|'
                    r'sum|mean|where|fill_|zero_|add_|mul_|copysign)'),
)


@functools.lru_cache(maxsize=1)
def own_kernels() -> Tuple[FrozenSet[str], FrozenSet[str]]:
    """(scan, merge) names of the Triton kernels in ``mmlocalmamba.ops.triton`` (empty sets
    where Triton is not installed)."""
    scan, merge = set(), set()
    try:
        from triton.runtime.jit import JITFunction
        package = importlib.import_module('mmlocalmamba.ops.triton')
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f'{package.__name__}.{info.name}')
            for obj in vars(module).values():
                while not isinstance(obj, JITFunction) and hasattr(obj, 'fn'):
                    obj = obj.fn  # autotune / heuristics wrappers
                if isinstance(obj, JITFunction):
                    (merge if 'merge' in info.name else scan).add(obj.__name__)
    except ImportError:
        pass
    return frozenset(scan), frozenset(merge)


def kernel_group(name: str) -> str:
    """The :data:`GROUPS` entry of a kernel (or, on the CPU, an operator) name."""
    scan, merge = own_kernels()
    if name in scan:
        return 'scan'
    if name in merge:
        return 'merge'
    lowered = name.lower()
    for group, pattern in _PATTERNS:
        if re.search(pattern, lowered):
            return group
    return 'other'


def group_times(events) -> Dict[str, object]:
    """Summary of (name, self time in us, calls) triples: ``kernel_ms``, ``groups`` (ms per
    group), ``top`` (kernels by time, with their group and share)."""
    events = sorted(events, key=lambda e: -e[1])
    total = sum(t for _, t, _ in events)
    groups = {g: 0.0 for g in GROUPS}
    for name, us, _ in events:
        groups[kernel_group(name)] += us / 1e3
    top = [dict(name=name, ms=us / 1e3, pct=100 * us / total if total else 0.0, calls=calls,
                group=kernel_group(name)) for name, us, calls in events]
    return dict(kernel_ms=total / 1e3, groups=groups,
                groups_pct={g: 100 * ms * 1e3 / total if total else 0.0
                            for g, ms in groups.items()},
                top=top)


def profile_step(step: Callable[[], object], device: torch.device, warmup: int = 2,
                 rows: int = 25, host: bool = False) -> Dict[str, object]:
    """Profile one call of ``step`` after ``warmup`` calls (see the module docstring).

    Returns ``wall_ms`` (one unprofiled step), ``kernel_ms``, ``groups``, ``groups_pct``,
    ``top`` (the ``rows`` longest kernels), ``num_kernels``; with ``host``, also ``host_ops``
    (operators by own CPU time) and ``host_python`` (cProfile text of one step).
    """
    for _ in range(warmup):
        step()
    wall_ms = wall_s(step, device) * 1e3
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == 'cuda':
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        step()
        synchronize(device)
    averages = prof.key_averages()
    if device.type == 'cuda':
        events = [(e.key, e.self_device_time_total, e.count) for e in averages
                  if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        events = [(e.key, e.self_cpu_time_total, e.count) for e in averages
                  if e.self_cpu_time_total > 0]
    out = dict(wall_ms=wall_ms, device=device.type, **group_times(events))
    out['num_kernels'] = sum(calls for _, _, calls in events)
    out['top'] = out['top'][:rows]
    if host:
        cpu = sorted((e for e in averages if e.self_cpu_time_total > 0),
                     key=lambda e: -e.self_cpu_time_total)
        out['host_ops'] = [dict(name=e.key, ms=e.self_cpu_time_total / 1e3, calls=e.count)
                           for e in cpu[:rows]]
        synchronize(device)
        profiler = cProfile.Profile()
        profiler.enable()
        step()
        synchronize(device)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats('tottime').print_stats(rows)
        out['host_python'] = '\n'.join(text.getvalue().splitlines()[4:])
    return out


def format_profile(title: str, prof: Dict[str, object], rows: int = 30) -> str:
    """Text table of a :func:`profile_step` result."""
    unit = 'kernel' if prof.get('device') == 'cuda' else 'op (CPU)'
    lines = [f"## {title}: wall {prof['wall_ms']:.1f} ms, {unit} time {prof['kernel_ms']:.1f} ms",
             '  '.join(f"{g} {prof['groups'][g]:.1f} ms ({prof['groups_pct'][g]:.0f}%)"
                       for g in GROUPS if prof['groups'][g] > 0),
             f'{"time ms":>10} {"%":>6} {"calls":>6}  {"group":<11} {unit}']
    for e in prof['top'][:rows]:
        lines.append(f"{e['ms']:10.2f} {e['pct']:6.1f} {e['calls']:6d}  {e['group']:<11} "
                     f"{e['name'][:110]}")
    if prof.get('host_ops'):
        total = sum(e['ms'] for e in prof['host_ops'])
        lines.append(f'\nhost (CPU) time by op, top {len(prof["host_ops"])}: {total:.1f} ms')
        lines += [f"{e['ms']:10.2f} {e['calls']:6d}  {e['name'][:110]}" for e in prof['host_ops']]
    if prof.get('host_python'):
        lines += ['\nPython functions by own time (cProfile, one step):', prof['host_python']]
    return '\n'.join(lines)
