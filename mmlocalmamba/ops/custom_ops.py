"""Shared plumbing of mmlocalmamba's PyTorch custom operators (namespace ``mmlocalmamba``).

The scans and the SCAttn merge are registered with :mod:`torch.library` (torch >= 2.4) next to
their dispatchers (:mod:`.local_scan`, :mod:`.vim_scan`, :mod:`.merge`): a CPU implementation
(the PyTorch reference), a CUDA implementation (the Triton kernels, or the reference where they
cannot run), a fake (meta) function and an autograd formula whose backward is a custom operator
too. ``torch.compile`` and ``torch.jit.trace`` (e.g. mmengine's FLOP counter) then see each of
them as one opaque operator; eager code calls the implementations directly, without the
operator dispatch.
"""
from typing import Callable, List, Optional, Sequence

import torch

__all__ = ['HAS_CUSTOM_OPS', 'use_custom_ops', 'autocast_dtype', 'recompute_grads',
           'grads_like']

#: torch.library.custom_op (and opcheck) exist: torch >= 2.4.
HAS_CUSTOM_OPS = hasattr(torch.library, 'custom_op') and hasattr(torch.library, 'register_fake')


def _compiling() -> bool:
    compiler = getattr(torch, 'compiler', None)
    is_compiling = getattr(compiler, 'is_compiling', None)
    return bool(is_compiling is not None and is_compiling())


def use_custom_ops() -> bool:
    """True while ``torch.compile`` (Dynamo) or ``torch.jit.trace`` records the model: calls then
    go through the registered operators."""
    return HAS_CUSTOM_OPS and (_compiling() or torch.jit.is_tracing())


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype active for ``device``'s type, or None when autocast is off."""
    kind = torch.device(device).type
    if kind not in ('cuda', 'cpu') or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


def recompute_grads(fn: Callable[..., torch.Tensor], inputs: Sequence[Optional[torch.Tensor]],
                    grad_out: torch.Tensor) -> List[Optional[torch.Tensor]]:
    """Gradients of ``fn(*inputs)`` w.r.t. its floating tensor inputs, by running ``fn`` again
    (the backward of the operators on their reference paths).

    Operator kernels run below autograd (tensors there record no graph), so this uses
    :func:`torch.func.vjp`, whose transform works inside them; the autograd Functions ``fn``
    reaches must have a ``setup_context``.

    Returns one entry per input: the gradient (zeros where ``fn`` does not depend on it), None
    for non-tensors and non-floating tensors.
    """
    which = [isinstance(t, torch.Tensor) and t.is_floating_point() for t in inputs]
    primals = [t for t, w in zip(inputs, which) if w]

    def call(*ps):
        it = iter(ps)
        return fn(*[next(it) if w else t for t, w in zip(inputs, which)])

    out, vjp = torch.func.vjp(call, *primals)
    grads = iter(vjp(grad_out.to(out.dtype)))
    return [next(grads) if w else None for w in which]


def grads_like(grads: Sequence[Optional[torch.Tensor]],
               inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Gradients laid out as ``torch.empty_like`` of their inputs (dtype, strides), zeros for
    None: what the backward operators' fake functions promise."""
    out = []
    for g, t in zip(grads, inputs):
        res = torch.empty_like(t)
        if g is None:
            res.zero_()
        else:
            res.copy_(g)
        out.append(res)
    return out
