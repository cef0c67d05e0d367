"""Selective scan (the S6 recurrence of Mamba) with interchangeable backends.

Semantics, per batch ``b``, channel ``d`` and time ``t`` (``N`` state dimensions)::

    delta = softplus(delta + delta_bias)          # if softplus, else delta + delta_bias
    h_t   = exp(delta_t * A[d]) * h_{t-1} + delta_t * B_t * u_t     # (N,)
    y_t   = <h_t, C_t> + D[d] * u_t

Shapes: ``u``, ``delta`` (B, D, L); ``A`` (D, N); ``B``, ``C`` either (B, N, L) (shared by all
channels) or (B, G, N, L) with ``D`` divisible by ``G`` (group ``g`` serves channels
``g*D/G ... (g+1)*D/G``); ``D`` (D,) or None; ``delta_bias`` (D,) or None. Output (B, D, L) in
the dtype of ``u``.

The computation runs in ``promote(u.dtype, float32)``: half and bfloat16 inputs are computed with a
float32 state, float64 inputs in float64 end to end.

Backends: ``'torch'`` (this file, runs anywhere), ``'triton'`` (CUDA, see
:mod:`mmlocalmamba.ops.triton.scan`),
``'mamba_ssm'`` (optional CUDA kernel of the mamba-ssm package). ``'auto'`` picks triton on CUDA
when a recent enough triton is installed (see :func:`resolve_backend`) and torch otherwise.
"""
import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['selective_scan', 'selective_scan_torch', 'available_backends', 'resolve_backend',
           'BACKENDS']

BACKENDS = ('auto', 'torch', 'triton', 'mamba_ssm')


def _group_view(bc: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, N, L) or (B, G, N, L) -> time-major (L, B, G, 1, N)."""
    if bc.dim() == 3:
        bc = bc.unsqueeze(1)
    groups = bc.shape[1]
    if channels % groups:
        raise ValueError(f'{channels} channels cannot be split into {groups} B/C groups.')
    return bc.permute(3, 0, 1, 2).unsqueeze(3)


def _chunk_size(length: int) -> int:
    return max(1, int(math.ceil(math.sqrt(length))))


def _recurrence_(decay: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """In place: turn ``states`` (holding the inputs) into ``h_t = decay_t * h_{t-1} + in_t``.

    Time-major: dim 0 is time, the rest is flattened. Two-level chunked formulation: the
    recurrence runs inside chunks of ~sqrt(L) steps for all chunks at once, then each chunk
    receives the state carried in from the previous one, so only ~2*sqrt(L) sequential steps
    are taken, each over contiguous rows of the tensor.

    Args:
        decay, states: (L, ...) contiguous; ``states`` is overwritten and returned.
    """
    length = states.shape[0]
    if states.numel() == 0:
        return states
    chunk = _chunk_size(length)
    nchunks = -(-length // chunk)
    pad = nchunks * chunk - length
    flat_states = states.view(length, -1)
    flat_decay = decay.view(length, -1)
    if pad:
        work = F.pad(flat_states, (0, 0, 0, pad))
        flat_decay = F.pad(flat_decay, (0, 0, 0, pad), value=1.0)
    else:
        work = flat_states
    work = work.view(nchunks, chunk, -1)
    flat_decay = flat_decay.view(nchunks, chunk, -1)
    for t in range(1, chunk):  # local states, zero state at each chunk start
        work[:, t].addcmul_(flat_decay[:, t], work[:, t - 1])
    cumdecay = flat_decay.clone()  # (a loop of row products beats torch.cumprod on dim 1)
    for t in range(1, chunk):
        cumdecay[:, t].mul_(cumdecay[:, t - 1])
    for c in range(1, nchunks):  # carry the last state of chunk c-1 into chunk c
        work[c].addcmul_(cumdecay[c], work[c - 1, -1:])
    if pad:
        flat_states.copy_(work.view(nchunks * chunk, -1)[:length])
    return states


class _LinearRecurrence(torch.autograd.Function):
    """``h_t = decay_t * h_{t-1} + inp_t`` along dim 0 with ``h_{-1} = 0``.

    The backward is the same recurrence run backwards in time:
    ``g_t = grad_t + decay_{t+1} * g_{t+1}``, ``d inp_t = g_t``, ``d decay_t = g_t * h_{t-1}``.
    """

    @staticmethod
    def forward(decay, inp):
        return _recurrence_(decay, inp.clone())

    @staticmethod
    def setup_context(ctx, inputs, output):  # (the form torch.func transforms accept)
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, grad):
        decay, states = ctx.saved_tensors
        next_decay = torch.cat([decay[1:], torch.ones_like(decay[:1])], dim=0)
        grad_inp = _recurrence_(next_decay.flip(0), grad.flip(0).contiguous()).flip(0)
        prev_states = torch.cat([torch.zeros_like(states[:1]), states[:-1]], dim=0)
        return grad_inp * prev_states, grad_inp


def _linear_recurrence(decay: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """All states of ``h_t = decay_t * h_{t-1} + inp_t`` (h_{-1} = 0) along dim 0.

    Args:
        decay, inp: (L, ...) of the same shape.

    Returns:
        (L, ...).
    """
    return _LinearRecurrence.apply(decay.contiguous(), inp.contiguous())


def selective_scan_torch(u: torch.Tensor,
                         delta: torch.Tensor,
                         A: torch.Tensor,
                         B: torch.Tensor,
                         C: torch.Tensor,
                         D: Optional[torch.Tensor] = None,
                         delta_bias: Optional[torch.Tensor] = None,
                         softplus: bool = False) -> torch.Tensor:
    """Pure-PyTorch selective scan (see the module docstring for shapes and semantics).

    Works time-major internally: the state tensors are (L, B, G, D/G, N), so every step of
    the recurrence touches contiguous memory.
    """
    out_dtype = u.dtype
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    batch, channels, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if softplus:
        delta = F.softplus(delta)
    Bt = _group_view(B, channels)  # (L, B, G, 1, N)
    Ct = _group_view(C, channels)
    groups = Bt.shape[2]
    # time-major (L, B, G, D/G, 1) views of the per-channel inputs
    per = channels // groups
    delta_t = delta.permute(2, 0, 1).contiguous().view(length, batch, groups, per, 1)
    du_t = (delta * u).permute(2, 0, 1).contiguous().view(length, batch, groups, per, 1)
    decay = torch.exp(delta_t * A.view(groups, per, A.shape[-1]))
    states = _linear_recurrence(decay, du_t * Bt)  # (L, B, G, D/G, N)
    y = (states * Ct).sum(-1).view(length, batch, channels).permute(1, 2, 0)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    return y.to(out_dtype)


def _triton_unavailable(device: Optional[torch.device] = None) -> Optional[str]:
    from .triton.common import unavailable_reason
    return unavailable_reason(device)


def _triton_available() -> bool:
    return torch.cuda.is_available() and _triton_unavailable() is None


def _mamba_available() -> bool:
    try:
        import selective_scan_cuda  # noqa: F401
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def available_backends():
    """Backends usable in this process (``'torch'`` always is)."""
    out = ['torch']
    if _triton_available():
        out.append('triton')
    if _mamba_available():
        out.append('mamba_ssm')
    return out


_WARNED = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``backend`` (one of :data:`BACKENDS`) into a concrete backend for ``device``.

    ``'auto'``: on CUDA the Triton kernels when a recent enough triton is installed (see
    :data:`~mmlocalmamba.ops.triton.MIN_TRITON_VERSION`), otherwise mamba-ssm's CUDA kernel when
    installed, otherwise the PyTorch path (with one warning that says why); elsewhere the
    PyTorch path.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: an explicitly requested backend that cannot run here (the message gives
            the versions found and needed).
    """
    if backend not in BACKENDS:
        raise ValueError(f'Unknown selective-scan backend {backend!r}; valid: {BACKENDS}.')
    device = torch.device(device)
    if backend == 'torch':
        return backend
    if backend == 'auto':
        if device.type != 'cuda':
            return 'torch'
        reason = _triton_unavailable(device)
        if reason is None:
            return 'triton'
        fallback = 'mamba_ssm' if _mamba_available() else 'torch'
        _warn_once(f'mmlocalmamba: the Triton scan kernels cannot run ({reason}); '
                   f'scan_backend="auto" uses the {fallback!r} path on CUDA instead '
                   f'(much slower for "torch").')
        return fallback
    if device.type != 'cuda':
        raise RuntimeError(f'Selective-scan backend {backend!r} needs CUDA tensors, got '
                           f'{device}; use backend="torch" or "auto".')
    if backend == 'triton':
        reason = _triton_unavailable(device)
        if reason is not None:
            raise RuntimeError(f'Selective-scan backend "triton" requested but {reason}; '
                               f'install a newer triton or use scan_backend="auto".')
    if backend == 'mamba_ssm' and not _mamba_available():
        raise RuntimeError('Selective-scan backend "mamba_ssm" requested but mamba-ssm is not '
                           'installed (pip install mmlocalmamba[mamba]).')
    return backend


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, softplus=False,
                   backend: str = 'auto'):
    """Selective scan through the chosen backend (see the module docstring).

    float64 inputs always run the PyTorch path (the GPU kernels keep an fp32 state).
    """
    backend = resolve_backend(backend, u.device)
    if u.dtype == torch.float64 or u.numel() == 0:
        backend = 'torch'
    if backend == 'triton':
        from .triton.scan import selective_scan_triton
        return selective_scan_triton(u, delta, A, B, C, D, delta_bias, softplus)
    if backend == 'mamba_ssm':
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        return selective_scan_fn(u, delta, A, B.contiguous(), C.contiguous(), D,
                                 delta_bias=delta_bias, delta_softplus=softplus)
    return selective_scan_torch(u, delta, A, B, C, D, delta_bias, softplus)
