"""Precompile a backbone's Triton kernels in parallel on its first call (per kind of call).

:class:`~mmlocalmamba.models.base.LocalMambaBackbone` registers :func:`precompile_pre_hook`
as a forward pre-hook. On the first call with a CUDA input for each kind of call (device, input
dtype, autocast dtype, with or without backward, train or eval mode), the hook runs the call
once more on zeros with the package's kernels recorded and skipped, then compiles the recorded
kernel variants in parallel processes (:func:`mmlocalmamba.ops.triton.precompile.precompile`),
and the real call finds them in Triton's cache. Without it the first call compiles the variants
one after another (LocalVMamba-T, batch 2, 800x1344 forward+backward: 43 variants, about half
a minute on the H200 machine).

The recording run leaves no trace: random generator states (drop path, dropout) and buffers
are restored, gradients are taken with ``torch.autograd.grad`` (nothing accumulates in
``.grad``), outside autocast as a training loop takes them. It is skipped under
``torch.compile`` tracing, for CPU inputs, for backbones whose scan backend is not Triton, and
with ``triton_precompile=False``.
"""
import logging
import os
from typing import Any, Iterator

import torch
import torch.nn as nn

from ..ops.triton.precompile import claim_backward, usable_cpus

__all__ = ['precompile_pre_hook', 'precompile_workers', 'PRECOMPILE_TIMEOUT_S']

#: Seconds the first call waits for the compiling children (the slowest LocalVMamba-T variant
#: takes about 6 s on the H200 machine); what is not compiled by then compiles in its launch.
PRECOMPILE_TIMEOUT_S = 600


def precompile_workers() -> int:
    """Child processes per call: the CPUs this process may use, shared among the processes of
    this node that a launcher started (``LOCAL_WORLD_SIZE``, e.g. one per GPU)."""
    local = os.environ.get('LOCAL_WORLD_SIZE', '1')
    return max(1, usable_cpus() // max(1, int(local) if local.isdigit() else 1))


def _tensors(out: Any) -> Iterator[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (list, tuple)):
        for item in out:
            yield from _tensors(item)
    elif isinstance(out, dict):
        for item in out.values():
            yield from _tensors(item)


def _call_key(module: nn.Module, x: torch.Tensor, backward: bool) -> tuple:
    autocast = torch.is_autocast_enabled('cuda')
    return (x.device, x.dtype, autocast and torch.get_autocast_dtype('cuda'), backward,
            module.training)


def _recording_run(module: nn.Module, x: torch.Tensor, backward: bool) -> None:
    """``module(zeros like x)`` and, with ``backward``, the gradients of its outputs' sum with
    respect to the trainable parameters (and the input, when it requires grad); no side
    effects on generators, buffers or ``.grad``."""
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    dummy = torch.zeros_like(x).requires_grad_(x.requires_grad)
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        out = module(dummy)
        if backward:
            outs = [t for t in _tensors(out) if t.requires_grad]
            wrt = [p for p in module.parameters() if p.requires_grad]
            wrt += [dummy] if dummy.requires_grad else []
            if outs and wrt:
                total = sum(t.float().sum() for t in outs)
                claim_backward(total)  # CUDA backward runs on autograd's device thread
                # Outside autocast, as training loops run it (the hook runs inside the
                # forward's autocast region; autograd would carry that state into the
                # backward, and the backward's matmuls would give other dtypes).
                with torch.autocast(x.device.type, enabled=False):
                    torch.autograd.grad(total, wrt, allow_unused=True)
    with torch.no_grad():
        for b, saved in buffers:
            b.copy_(saved)


def precompile_pre_hook(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of the backbones (see the module docstring)."""
    if torch.compiler.is_compiling() or not getattr(module, 'triton_precompile', False):
        return
    if getattr(module, '_precompiling', False) or not args:
        return
    x = args[0]
    if not isinstance(x, torch.Tensor) or not x.is_cuda:
        return
    backward = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in module.parameters()))
    key = _call_key(module, x, backward)
    done = module.__dict__.setdefault('_precompiled', set())
    if key in done:
        return
    done.add(key)
    from ..ops.selective_scan import resolve_backend
    if module.scan_backend not in ('auto', 'triton') or resolve_backend(
            module.scan_backend, x.device) != 'triton':
        return
    from mmengine.logging import print_log

    from ..ops.triton.precompile import precompile
    module._precompiling = True
    try:
        report = precompile(lambda: _recording_run(module, x, backward),
                            workers=precompile_workers(), timeout=PRECOMPILE_TIMEOUT_S)
    finally:
        module._precompiling = False
    shape = 'x'.join(map(str, x.shape))
    what = 'forward+backward' if backward else 'forward'
    level = logging.WARNING if report.failed else (
        logging.INFO if report.variants or report.skipped else logging.DEBUG)
    print_log(f'{type(module).__name__} {what} at {shape}: {report.summary()}',
              logger='current', level=level)
