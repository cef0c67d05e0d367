"""Multi-direction local selective scan of a LocalVMamba (SS2D) layer.

This is the hot path of LocalVMamba: K directions, each its own projection of the same features,
scanned as one selective scan over ``K * D`` channels. The function below is the contract that
every backend implements; the ``'torch'`` implementation (the reference) is written out here,
the fused Triton one lives in :mod:`mmlocalmamba.ops.triton.scan`.
"""
from typing import List, Optional, Sequence

import torch

from .custom_ops import (HAS_CUSTOM_OPS, autocast_dtype, grads_like, recompute_grads,
                         use_custom_ops)
from .scan_orders import (direction_code, direction_name, kernel_tables, multi_reverse,
                          multi_scan)
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
                         backend: str = 'auto',
                         config=None) -> torch.Tensor:
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
        config: launch configuration of the Triton kernels
            (:class:`~mmlocalmamba.ops.triton.ScanConfig`; None: the default).

    Returns:
        (B, K, H * W, D) scan outputs in row-major token order: in x's dtype for fp16 / bf16
        inputs (the recurrence runs with an fp32 state), else ``promote(x.dtype, float32)``.

    Under ``torch.compile`` / ``torch.jit.trace`` the call goes through the custom operator
    ``torch.ops.mmlocalmamba.local_scan`` (same values; see :mod:`.custom_ops`).
    """
    if use_custom_ops():
        return torch.ops.mmlocalmamba.local_scan(
            x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
            [direction_code(d) for d in directions], bool(official_v_reverse), backend,
            autocast_dtype(x.device))
    return _local_scan_eager(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                             directions, official_v_reverse, backend, config)


def _local_scan_eager(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, directions,
                      official_v_reverse, backend, config=None):
    backend = resolve_backend(backend, x.device)
    batch, channels, height, width = x.shape
    if backend == 'triton' and x.dtype != torch.float64 and batch > 0:
        from .triton.scan import local_selective_scan_triton
        tables = kernel_tables(height, width, directions, official_v_reverse, x.device)
        if config is None:
            return local_selective_scan_triton(x, x_proj_weight, dt_projs_weight,
                                               dt_projs_bias, A_logs, Ds, tables)
        return local_selective_scan_triton(x, x_proj_weight, dt_projs_weight, dt_projs_bias,
                                           A_logs, Ds, tables, config)
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
    return ys.transpose(2, 3).to(_out_dtype(x.dtype))


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    """The outputs' dtype: the input's for fp16 / bf16 (computed with an fp32 state), else
    ``promote(dtype, float32)``."""
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    return torch.promote_types(dtype, torch.float32)


# ----------------------------------------------------------------------------- custom operator
def _fused_possible(x: torch.Tensor, backend: str) -> bool:
    return (x.dtype != torch.float64 and x.shape[0] > 0
            and resolve_backend(backend, x.device) == 'triton')


def _tokens(x, x_proj_weight, nstate, proj_dtype):
    """Channels-last tokens (B, L, D), the projection weight (CT, D) in the kernels' layout and
    the GEMM input dtype (``proj_dtype``: the caller's autocast dtype; None: promoted)."""
    from .triton.scan import projection_weight
    batch, channels, height, width = x.shape
    x_cl = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    with torch.autocast(x.device.type, enabled=False):
        weight = projection_weight(x_proj_weight, nstate)
    return x_cl, weight, proj_dtype or torch.promote_types(x.dtype, weight.dtype)


def _local_scan_op_impl(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, codes,
                        official_v_reverse, backend, proj_dtype):
    directions = [direction_name(c) for c in codes]
    if not _fused_possible(x, backend):
        return _local_scan_eager(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                                 directions, official_v_reverse, 'torch').contiguous()
    from .triton.scan import local_scan_forward, project_fp32
    nstate = A_logs.shape[-1]
    x_cl, weight, cdt = _tokens(x, x_proj_weight, nstate, proj_dtype)
    tables = kernel_tables(x.shape[2], x.shape[3], directions, official_v_reverse, x.device)
    return local_scan_forward(x_cl, project_fp32(x_cl, weight, cdt), dt_projs_weight,
                              dt_projs_bias, A_logs, Ds, tables, nstate, delta_dtype=cdt)[0]


def _local_scan_op_backward_impl(dy, x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs,
                                 Ds, codes, official_v_reverse, backend, proj_dtype):
    directions = [direction_name(c) for c in codes]
    inputs = (x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    if not _fused_possible(x, backend):
        return recompute_grads(
            lambda *t: _local_scan_eager(*t, directions, official_v_reverse, 'torch'), inputs,
            dy)
    from .triton.scan import local_tokens_backward, projection_weight
    nstate = A_logs.shape[-1]
    x_cl, weight, cdt = _tokens(x, x_proj_weight, nstate, proj_dtype)
    tables = kernel_tables(x.shape[2], x.shape[3], directions, official_v_reverse, x.device)
    dx_cl, d_weight, d_dtw, d_bias, d_alog, d_ds = local_tokens_backward(
        dy, x_cl, weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, tables, nstate, cdt=cdt)
    # through weight = projection_weight(x_proj_weight) (slices, padding: a linear map)
    _, vjp = torch.func.vjp(lambda w: projection_weight(w, nstate), x_proj_weight)
    d_xpw, = vjp(d_weight.to(weight.dtype))
    batch, channels, height, width = x.shape
    dx = dx_cl.view(batch, height, width, channels).permute(0, 3, 1, 2).to(x.dtype)
    return [dx, d_xpw, d_dtw, d_bias, d_alog, d_ds]


if HAS_CUSTOM_OPS:

    @torch.library.custom_op('mmlocalmamba::local_scan', mutates_args=())
    def _local_scan_op(x: torch.Tensor, x_proj_weight: torch.Tensor,
                       dt_projs_weight: torch.Tensor, dt_projs_bias: torch.Tensor,
                       A_logs: torch.Tensor, Ds: torch.Tensor, codes: List[int],
                       official_v_reverse: bool, backend: str,
                       proj_dtype: Optional[torch.dtype]) -> torch.Tensor:
        """:func:`local_selective_scan` as an operator (directions as :func:`direction_code`
        integers; ``proj_dtype``: the caller's autocast dtype for the projection GEMM)."""
        return _local_scan_op_impl(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                                   codes, official_v_reverse, backend, proj_dtype)

    @_local_scan_op.register_fake
    def _(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, codes,
          official_v_reverse, backend, proj_dtype):
        batch, channels, height, width = x.shape
        return x.new_empty((batch, len(codes), height * width, channels),
                           dtype=_out_dtype(x.dtype))

    @torch.library.custom_op('mmlocalmamba::local_scan_backward', mutates_args=())
    def _local_scan_backward_op(dy: torch.Tensor, x: torch.Tensor, x_proj_weight: torch.Tensor,
                                dt_projs_weight: torch.Tensor, dt_projs_bias: torch.Tensor,
                                A_logs: torch.Tensor, Ds: torch.Tensor, codes: List[int],
                                official_v_reverse: bool, backend: str,
                                proj_dtype: Optional[torch.dtype]) -> List[torch.Tensor]:
        """Gradients of ``mmlocalmamba::local_scan`` w.r.t. its six tensor inputs."""
        inputs = (x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
        grads = _local_scan_op_backward_impl(dy.contiguous(), *inputs, codes,
                                             official_v_reverse, backend, proj_dtype)
        return grads_like(grads, inputs)

    @_local_scan_backward_op.register_fake
    def _(dy, x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, codes,
          official_v_reverse, backend, proj_dtype):
        return [torch.empty_like(t) for t in (x, x_proj_weight, dt_projs_weight, dt_projs_bias,
                                              A_logs, Ds)]

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:6])
        ctx.args = inputs[6:]

    def _backward(ctx, dy):
        grads = torch.ops.mmlocalmamba.local_scan_backward(dy, *ctx.saved_tensors, *ctx.args)
        return tuple(grads) + (None, ) * 4

    _local_scan_op.register_autograd(_backward, setup_context=_setup_context)
