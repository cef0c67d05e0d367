"""SCAttn merge + ``out_norm`` of a LocalVMamba layer: the PyTorch definition and the dispatch.

``out = LayerNorm_out(sum_k y_k * gate_k)`` with ``gate_k`` the SCAttn channel gate of the k-th
direction's outputs (see :func:`scattn_merge_reference`). :func:`scattn_merge` runs the fused
Triton kernels (:mod:`mmlocalmamba.ops.triton.merge`) on CUDA and the reference elsewhere
(CPU, float64).
"""
import torch
import torch.nn.functional as F

from .selective_scan import resolve_backend

__all__ = ['scattn_merge', 'scattn_merge_reference']


def scattn_merge_reference(ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b,
                           out_eps) -> torch.Tensor:
    """PyTorch definition of the merge: ``LayerNorm_out(sum_k y_k * SCAttn_gate(y_k))``.

    Args:
        ys: (B, K, L, C) scan outputs, tokens row-major.
        attn_w, attn_b: (C,) affine of the SCAttn LayerNorm; attn_eps: its eps.
        w1: (R, C), b1: (R,), w2: (C, R), b2: (C,): the gate MLP (``global_reduce`` and
            ``channel_select``).
        out_w, out_b: (C,) affine of ``out_norm``; out_eps: its eps.

    Returns:
        (B, L, C) float32 (float64 when ``ys`` is float64: the math runs in at least fp32).
    """
    num_ch = ys.shape[-1]
    dtype = torch.promote_types(ys.dtype, torch.float32)
    outs = 0
    for k in range(ys.shape[1]):
        y = ys[:, k].to(dtype)
        pooled = F.layer_norm(y, (num_ch, ), attn_w, attn_b, attn_eps).mean(dim=1, keepdim=True)
        gate = torch.sigmoid(F.linear(F.gelu(F.linear(pooled, w1, b1)), w2, b2))
        outs = outs + y * gate
    return F.layer_norm(outs, (num_ch, ), out_w, out_b, out_eps)


def scattn_merge(ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b, out_eps,
                 backend: str = 'auto') -> torch.Tensor:
    """``LayerNorm_out(sum_k y_k * SCAttn_gate(y_k))`` through the backend's implementation.

    Arguments as :func:`scattn_merge_reference`; ``backend`` as the scans' (``'triton'`` and
    ``'auto'`` on CUDA run the fused kernels, float64 always runs the reference).

    Returns:
        (B, L, C) float32 (float64 for float64 ``ys``).
    """
    if (ys.dtype != torch.float64 and ys.numel() > 0
            and resolve_backend(backend, ys.device) == 'triton'):
        from .triton.merge import scattn_merge_triton
        return scattn_merge_triton(ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b,
                                   out_eps)
    return scattn_merge_reference(ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b,
                                  out_eps)
