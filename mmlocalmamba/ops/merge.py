"""SCAttn merge + ``out_norm`` of a LocalVMamba layer: the PyTorch definition and the dispatch.

``out = LayerNorm_out(sum_k y_k * gate_k)`` with ``gate_k`` the SCAttn channel gate of the k-th
direction's outputs, optionally times the SS2D output gate ``SiLU(z)`` (see
:func:`scattn_merge_reference`). :func:`scattn_merge` runs the fused Triton kernels
(:mod:`mmlocalmamba.ops.triton.merge`) on CUDA and the reference elsewhere (CPU, float64).
"""
from typing import List, Optional

import torch
import torch.nn.functional as F

from .custom_ops import HAS_CUSTOM_OPS, grads_like, recompute_grads, use_custom_ops
from .selective_scan import resolve_backend

__all__ = ['scattn_merge', 'scattn_merge_reference']


def scattn_merge_reference(ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b, out_eps,
                           z=None) -> torch.Tensor:
    """PyTorch definition of the merge: ``LayerNorm_out(sum_k y_k * SCAttn_gate(y_k))``.

    Args:
        ys: (B, K, L, C) scan outputs, tokens row-major.
        attn_w, attn_b: (C,) affine of the SCAttn LayerNorm; attn_eps: its eps.
        w1: (R, C), b1: (R,), w2: (C, R), b2: (C,): the gate MLP (``global_reduce`` and
            ``channel_select``).
        out_w, out_b: (C,) affine of ``out_norm``; out_eps: its eps.
        z: optional (B, L, C): the result is multiplied by ``SiLU(z)`` and returned in z's
            dtype (the math stays in at least fp32).

    Returns:
        (B, L, C) float32 (float64 when ``ys`` is float64: the math runs in at least fp32), or
        z's dtype with ``z``.
    """
    num_ch = ys.shape[-1]
    dtype = torch.promote_types(ys.dtype, torch.float32)
    outs = 0
    for k in range(ys.shape[1]):
        y = ys[:, k].to(dtype)
        pooled = F.layer_norm(y, (num_ch, ), attn_w, attn_b, attn_eps).mean(dim=1, keepdim=True)
        gate = torch.sigmoid(F.linear(F.gelu(F.linear(pooled, w1, b1)), w2, b2))
        outs = outs + y * gate
    out = F.layer_norm(outs, (num_ch, ), out_w, out_b, out_eps)
    if z is None:
        return out
    return (out * F.silu(z.to(out.dtype))).to(z.dtype)


def scattn_merge(ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b, out_eps, z=None,
                 backend: str = 'auto') -> torch.Tensor:
    """The merge (see :func:`scattn_merge_reference`) through the backend's implementation.

    Arguments as :func:`scattn_merge_reference`; ``backend`` as the scans' (``'triton'`` and
    ``'auto'`` on CUDA run the fused kernels, float64 always runs the reference).

    Returns:
        (B, L, C) float32 (float64 for float64 ``ys``; z's dtype with ``z``).

    Under ``torch.compile`` / ``torch.jit.trace`` the call goes through the custom operator
    ``torch.ops.mmlocalmamba.scattn_merge`` (same values).
    """
    if use_custom_ops():
        return torch.ops.mmlocalmamba.scattn_merge(ys, attn_w, attn_b, float(attn_eps), w1, b1,
                                                   w2, b2, out_w, out_b, float(out_eps), z,
                                                   backend)[0]
    if _fused_possible(ys, backend):
        from .triton.merge import scattn_merge_triton
        return scattn_merge_triton(ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b,
                                   out_eps, z)
    return scattn_merge_reference(ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b,
                                  out_eps, z)


def _fused_possible(ys: torch.Tensor, backend: str) -> bool:
    return (ys.dtype != torch.float64 and ys.numel() > 0
            and resolve_backend(backend, ys.device) == 'triton')


# ----------------------------------------------------------------------------- custom operator
def _reference_with_stats(ys, params, attn_eps, out_eps, z):
    """The reference's output and the statistics the fused backward keeps: (out (B, L, C),
    gate (B, K, C), m (B, K, C) the token means of the non-affine attn LayerNorm, mean / rstd
    (B, L) of the gated sum), the statistics in ``promote(ys.dtype, float32)``."""
    attn_w, attn_b, w1, b1, w2, b2, out_w, out_b = params
    num_ch = ys.shape[-1]
    dtype = torch.promote_types(ys.dtype, torch.float32)
    y = ys.to(dtype)
    m = F.layer_norm(y, (num_ch, ), eps=attn_eps).mean(dim=2)
    gate = torch.sigmoid(F.linear(F.gelu(F.linear(attn_w * m + attn_b, w1, b1)), w2, b2))
    acc = (y * gate[:, :, None]).sum(1)
    var, mean = torch.var_mean(acc, dim=-1, unbiased=False)
    rstd = torch.rsqrt(var + out_eps)
    out = (acc - mean[..., None]) * rstd[..., None] * out_w + out_b
    if z is not None:
        out = (out * F.silu(z.to(dtype))).to(z.dtype)
    return out, gate, m, mean, rstd


def _merge_op_impl(ys, params, attn_eps, out_eps, z, backend):
    if _fused_possible(ys, backend):
        from .triton.merge import merge_forward
        out, saved = merge_forward(ys, params, attn_eps, out_eps, z)
        return [out, *saved]
    return [t.contiguous() for t in _reference_with_stats(ys, params, attn_eps, out_eps, z)]


def _merge_op_backward_impl(dout, ys, params, saved, attn_eps, out_eps, z, backend):
    if _fused_possible(ys, backend):
        from .triton.merge import merge_backward
        return merge_backward(dout, ys, params, saved, attn_eps, z=z)
    return recompute_grads(
        lambda y, *p: scattn_merge_reference(y, p[0], p[1], attn_eps, *p[2:8], out_eps, p[8]),
        (ys, *params, z), dout)


if HAS_CUSTOM_OPS:

    @torch.library.custom_op('mmlocalmamba::scattn_merge', mutates_args=())
    def _merge_op(ys: torch.Tensor, attn_w: torch.Tensor, attn_b: torch.Tensor, attn_eps: float,
                  w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                  out_w: torch.Tensor, out_b: torch.Tensor, out_eps: float,
                  z: Optional[torch.Tensor], backend: str) -> List[torch.Tensor]:
        """:func:`scattn_merge` as an operator: [out, gate, m, mean, rstd] (the last four are
        the statistics its backward reuses; not differentiable)."""
        return _merge_op_impl(ys, (attn_w, attn_b, w1, b1, w2, b2, out_w, out_b), attn_eps,
                              out_eps, z, backend)

    @_merge_op.register_fake
    def _(ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b, out_eps, z, backend):
        batch, num_dirs, length, num_ch = ys.shape
        dtype = torch.promote_types(ys.dtype, torch.float32)
        return [ys.new_empty((batch, length, num_ch), dtype=dtype if z is None else z.dtype)] + [
            ys.new_empty(shape, dtype=dtype) for shape in
            ((batch, num_dirs, num_ch), (batch, num_dirs, num_ch), (batch, length),
             (batch, length))]

    @torch.library.custom_op('mmlocalmamba::scattn_merge_backward', mutates_args=())
    def _merge_backward_op(dout: torch.Tensor, ys: torch.Tensor, attn_w: torch.Tensor,
                           attn_b: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                           w2: torch.Tensor, b2: torch.Tensor, out_w: torch.Tensor,
                           out_b: torch.Tensor, gate: torch.Tensor, m: torch.Tensor,
                           mean: torch.Tensor, rstd: torch.Tensor, attn_eps: float,
                           out_eps: float, z: Optional[torch.Tensor],
                           backend: str) -> List[torch.Tensor]:
        """Gradients of ``mmlocalmamba::scattn_merge`` w.r.t. ys, the 8 parameters and z
        (an empty tensor without z)."""
        inputs = (ys, attn_w, attn_b, w1, b1, w2, b2, out_w, out_b)
        grads = _merge_op_backward_impl(dout, ys, inputs[1:], (gate, m, mean, rstd), attn_eps,
                                        out_eps, z, backend)
        return grads_like(grads, inputs + (ys.new_empty(0) if z is None else z, ))

    @_merge_backward_op.register_fake
    def _(dout, ys, attn_w, attn_b, w1, b1, w2, b2, out_w, out_b, gate, m, mean, rstd,
          attn_eps, out_eps, z, backend):
        return [torch.empty_like(t) for t in (ys, attn_w, attn_b, w1, b1, w2, b2, out_w, out_b)
                ] + [ys.new_empty(0) if z is None else torch.empty_like(z)]

    def _setup_context(ctx, inputs, output):
        ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b, out_eps, z, backend = inputs
        ctx.save_for_backward(ys, attn_w, attn_b, w1, b1, w2, b2, out_w, out_b, *output[1:],
                              *(() if z is None else (z, )))
        ctx.args = (attn_eps, out_eps)
        ctx.backend = backend
        ctx.mark_non_differentiable(*output[1:])

    def _backward(ctx, douts):
        saved = ctx.saved_tensors
        z = saved[13] if len(saved) > 13 else None
        dys, d_aw, d_ab, d_w1, d_b1, d_w2, d_b2, d_ow, d_ob, dz = (
            torch.ops.mmlocalmamba.scattn_merge_backward(douts[0], *saved[:13], *ctx.args, z,
                                                         ctx.backend))
        return (dys, d_aw, d_ab, None, d_w1, d_b1, d_w2, d_b2, d_ow, d_ob, None,
                None if z is None else dz, None)

    _merge_op.register_autograd(_backward, setup_context=_setup_context)
