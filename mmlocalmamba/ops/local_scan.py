"""Multi-direction local selective scan of a LocalVMamba (SS2D) layer.

This is the hot path of LocalVMamba: K directions, each its own projection of the same features,
scanned as one selective scan over ``K * D`` channels. The function below is the contract that
every backend implements; the ``'torch'`` implementation (the reference) is written out here,
the fused Triton one lives in :mod:`mmlocalmamba.ops.triton.scan`.
"""
from typing import Sequence

import torch

from .scan_orders import kernel_tables, multi_reverse, multi_scan
from .selective_scan import resolve_backend, selective_scan

__all__ = ['local_selective_scan']


def local_selective_scan(x: torch.Tensor,
                         x_proj_weight: torch.Tensor,
                         dt_projs_weight: torch.Tensor,
                         dt_projs_bias: torch.Tensor,
                         A_logs: torch.Tensor,
                         Ds: torch.Tensor,
                         directions: Sequence[str],
                         official_v_reverse: bool = False,
                         backend: str = 'auto') -> torch.Tensor:
    """Scan a feature map in K directions and return every direction's output, row-major.

    For direction k: ``seq = scan_k(x)`` (zero tokens where windows pad), sequences end-padded with
    zeros to the longest length ``L``; ``dt, B, C = split(x_proj_weight[k] @ seq, [R, N, N])``;
    ``delta = dt_projs_weight[k] @ dt``; then the selective scan with ``A = -exp(A_logs)``,
    ``D = Ds``, ``delta_bias = dt_projs_bias``, softplus, and the outputs brought back to row-major
    order (``reverse_k``).

    Args:
        x: (B, D, H, W) features (after the depth-wise conv and SiLU).
        x_proj_weight: (K, R + 2N, D).
        dt_projs_weight: (K, D, R).
        dt_projs_bias: (K, D).
        A_logs: (K * D, N).
        Ds: (K * D,).
        directions: K direction names.
        official_v_reverse: reproduce the official (wrong for H != W) ``v`` reverse.
        backend: selective-scan backend (see :mod:`mmlocalmamba.ops.selective_scan`).

    Returns:
        (B, K, H * W, D) scan outputs in row-major token order, in the dtype
        ``promote(x.dtype, float32)``.
    """
    backend = resolve_backend(backend, x.device)
    batch, channels, height, width = x.shape
    if backend == 'triton' and x.dtype != torch.float64 and batch > 0:
        from .triton.scan import local_selective_scan_triton
        tables = kernel_tables(height, width, directions, official_v_reverse, x.device)
        return local_selective_scan_triton(x, x_proj_weight, dt_projs_weight, dt_projs_bias,
                                           A_logs, Ds, tables)
    num_dirs = len(directions)
    rank = dt_projs_weight.shape[-1]
    nstate = A_logs.shape[-1]
    dtype = torch.promote_types(x.dtype, torch.float32)

    xs = multi_scan(x, directions)  # (B, K, D, L)
    length = xs.shape[-1]
    x_dbl = torch.einsum('bkdl,kcd->bkcl', xs, x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [rank, nstate, nstate], dim=2)
    dts = torch.einsum('bkrl,kdr->bkdl', dts, dt_projs_weight)

    ys = selective_scan(
        xs.reshape(batch, num_dirs * channels, length).to(dtype),
        dts.reshape(batch, num_dirs * channels, length).to(dtype),
        -torch.exp(A_logs.to(dtype)),
        Bs.to(dtype),
        Cs.to(dtype),
        Ds.to(dtype),
        delta_bias=dt_projs_bias.reshape(-1).to(dtype),
        softplus=True,
        backend='torch' if backend == 'triton' else backend,
    ).view(batch, num_dirs, channels, length)
    ys = multi_reverse(ys, height, width, directions, official_v_reverse)
    return ys.transpose(2, 3)
