"""Timing, peak memory and the environment record of a benchmark run.

Every function takes the device it measures on. On CUDA, times come from CUDA events (calls) or
from ``synchronize`` + ``perf_counter`` (whole training steps, as mmengine's log measures them);
on the CPU from ``perf_counter``, and peak memory is ``None``.
"""
import contextlib
import datetime
import importlib.metadata
import importlib.util
import os.path as osp
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, Optional

import torch

GIB = float(1 << 30)
MIB = float(1 << 20)
#: autocast dtypes by their command-line names ('fp32': no autocast).
DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': None}
#: (import name, distribution name) of the packages whose versions a run records.
PACKAGES = (('triton', 'triton'), ('timm', 'timm'), ('mmengine', 'mmengine'), ('mmcv', 'mmcv'),
            ('mmdet', 'mmdet'), ('mmseg', 'mmsegmentation'))


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype_name: str):
    """bf16/fp16 autocast on CUDA; no autocast for 'fp32' or on the CPU."""
    dtype = DTYPES[dtype_name]
    if dtype is None or device.type != 'cuda':
        return contextlib.nullcontext()
    return torch.autocast('cuda', dtype=dtype)


def wall_s(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one synchronised call of ``fn`` in seconds."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_calls(fn: Callable[[], object], device: torch.device, iters: int,
               warmup: int) -> Dict[str, object]:
    """Run ``fn`` ``warmup`` times, then ``iters`` timed times.

    Returns ``ms`` (median of the timed calls), ``times_ms`` and ``first_ms`` (the first call,
    compilation included; it is the first timed call when ``warmup`` is 0).
    """
    first_ms = None
    for _ in range(warmup):
        elapsed = wall_s(fn, device) * 1e3
        first_ms = elapsed if first_ms is None else first_ms
    times = []
    for _ in range(max(iters, 1)):
        if device.type == 'cuda':
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            times.append(wall_s(fn, device) * 1e3)
    first_ms = times[0] if first_ms is None else first_ms
    return dict(ms=statistics.median(times), times_ms=times, first_ms=first_ms)


def time_steps(step: Callable[[], object], device: torch.device, iters: int,
               warmup: int) -> Dict[str, object]:
    """Time whole training steps: wall time per step (synchronised), median after warm-up,
    and the peak memory of the timed steps (MB as in mmengine's log; ``None`` on the CPU).

    Returns ``s_iter``, ``times_s``, ``first_s`` and ``peak_mb``.
    """
    first_s = None
    for _ in range(warmup):
        elapsed = wall_s(step, device)
        first_s = elapsed if first_s is None else first_s
    reset_peak(device)
    times = [wall_s(step, device) for _ in range(max(iters, 1))]
    first_s = times[0] if first_s is None else first_s
    peak = peak_bytes(device)
    return dict(s_iter=statistics.median(times), times_s=times, first_s=first_s,
                peak_mb=None if peak is None else peak / MIB)


def reset_peak(device: torch.device) -> None:
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> Optional[int]:
    if device.type != 'cuda':
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def peak_gib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak allocated memory (GiB) during one call of ``fn``, everything else included;
    ``None`` on the CPU (nothing is run there)."""
    if device.type != 'cuda':
        return None
    reset_peak(device)
    fn()
    return peak_bytes(device) / GIB


def copy_bandwidth(device: torch.device, nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth, bytes read + bytes written per second (TB/s)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_calls(lambda: dst.copy_(src), device, iters=20, warmup=3)['ms']
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e12


def package_versions() -> Dict[str, str]:
    """Versions of the optional packages that are installed (without importing them)."""
    out = {}
    for module, dist in PACKAGES:
        try:
            out[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if importlib.util.find_spec(module) is not None:
                out[module] = getattr(importlib.import_module(module), '__version__', '?')
    return out


def _git_commit(root: Optional[str] = None) -> Optional[str]:
    """The checkout's commit, with ``-dirty`` when its tracked files differ from it (then the
    code that ran is not that commit's: e.g. a copied working tree beside an older ``.git``)."""
    root = root or osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    try:
        out = subprocess.run(['git', '-C', root, 'describe', '--always', '--dirty', '--abbrev=7'],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device) -> Dict[str, object]:
    """Device, versions and date of this run (JSON-ready)."""
    from ...version import __version__
    now = datetime.datetime.now(datetime.timezone.utc)
    env: Dict[str, object] = {}
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        env.update(device=torch.cuda.get_device_name(device), sm_count=props.multi_processor_count,
                   memory_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        env.update(device=f'cpu ({platform.processor() or platform.machine()})',
                   cpu_threads=torch.get_num_threads())
    env.update(torch=torch.__version__, python=platform.python_version(),
               mmlocalmamba=__version__, commit=_git_commit())
    env.update(package_versions())
    env.update(date=now.strftime('%Y-%m-%d'), time_utc=now.strftime('%H:%M:%S'))
    return env
