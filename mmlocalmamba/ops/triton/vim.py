"""Fused LocalVim layer scan on the GPU (Triton): launchers and autograd.

Entry points (the ``'triton'`` backend of :func:`mmlocalmamba.ops.vim_scan.local_vim_scan`,
which owns the backend choice and keeps float64 and CPU tensors on the PyTorch reference; same
values):

* :func:`vim_scan_triton` -- the K gated scans of one LocalVim layer, with autograd;
* :func:`vim_scan_forward` / :func:`vim_scan_backward` -- its two halves (the CUDA
  implementation of the custom operator ``mmlocalmamba::vim_scan`` and of its backward call
  them directly).

How one layer runs, ``xz`` (B, 2Di, T) read in place (it is a transposed view of the
in-projection's (B, T, 2Di) output: channels-last) through the layer's
:class:`~mmlocalmamba.ops.scan_orders.VimTables` (built by the caller). Kernels in
:mod:`.vim_kernels`:

1. Conv kernel: ``xs = SiLU(causal depth-wise conv1d_k(x))`` for every (direction, batch,
   step), x read through the gather table (window padding and steps before the start read 0,
   the class token sits at step ``cls_pos``), written in scan order ``(K, B, L, Di)`` in the
   compute dtype (the autocast dtype, else xz's). This is the one scan-ordered tensor: it
   feeds the projection GEMM.
2. ``x_dbl = xs @ W_k^T``, one batched GEMM over K (:func:`vim_projection_weight`: per
   direction the columns ``[B (N) | C (N) | dt (RP, zero-padded)]``); for dt ranks above
   ``ScanConfig.lowrank_max`` also ``delta = dt @ dt_proj_weight_k^T`` (one more batched GEMM).
   Smaller ranks are projected in the kernels, as in the LocalVMamba scan.
3. Gated scan kernel: the LocalVMamba scan (same tiles, softplus, D skip, prefetch, sequence
   segments for small batches) with inputs in scan order and the gate ``y * SiLU(z)`` (z read in
   place from xz), outputs written straight to their row-major positions ``(B, K, T, Di)``
   through the scatter table.
4. Backward: the LocalVMamba checkpoint and segment-summary passes unchanged (through
   :class:`~.scan._Problem`, with the ``order`` table as gather table), the gated backward
   kernel (du per direction in scan order, dB / dC / d dt into d x_dbl, ``dout * y`` per
   direction at each token position for dz), the GEMMs' backward, the conv backward in scan
   order (d pre-activation in place, weight / bias partial sums) and one natural-order kernel
   that writes both halves of d xz, each position once (deterministic). The per-step gradient
   buffers (du, dout * y, the full d delta) are in the compute dtype, as the reference's
   autograd holds them; states, checkpoints and every sum are fp32.

Saved for the backward: xz and the parameters; xs, x_dbl (and the full delta) are recomputed
(one conv launch and one GEMM), the small derived parameter tables and segment summaries are
kept. Triton is imported only when a kernel is first needed.
"""
from collections import namedtuple
from typing import Optional, Tuple

import torch

from .common import batch_ranges, cdiv, interpreting, sum_group_partials
from .config import DEFAULT_VIM_CONFIG, VimConfig
from .scan import _Problem, _param_tables, _rank_pad, round_row

__all__ = ['vim_scan_triton', 'vim_scan_forward', 'vim_scan_backward', 'vim_projection_weight']

_INT32 = 2**31 - 1
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: The duck-typed tables of :class:`~.scan._Problem` (the LocalVMamba ``ScanTables``): here the
#: ``order`` table, so that the shared kernels read scan-ordered inputs row by row.
_OrderTables = namedtuple('_OrderTables', ['gather', 'scatter', 'lengths', 'num_tokens',
                                           'separate_scatter'])


def _kernels():
    from . import vim_kernels
    return vim_kernels


def _dt_offset(nstate: int) -> int:
    """First dt column of a direction's x_dbl row (a multiple of 8: 16-byte aligned)."""
    return -(-2 * nstate // 8) * 8


def _row_width(nstate: int, rank: int) -> int:
    """Columns of a direction's x_dbl row, padded to a multiple of ``scan.ROW_ALIGN`` (so the
    strides of x_dbl keep their divisibility by 16 at every image size)."""
    return round_row(_dt_offset(nstate) + _rank_pad(rank))


def vim_projection_weight(x_proj_weight: torch.Tensor, nstate: int) -> torch.Tensor:
    """(K, CT, Di) weights whose products with the conv output give x_dbl in the kernels'
    layout: per direction the rows ``[B (N) | C (N) | 0 | dt (RP) | 0]``, dt starting at the
    multiple of 8 above ``2N`` and zero-padded to ``RP`` rows (see ``scan._rank_pad``), so that
    every direction's B, C and dt rows are 16-byte aligned vectors, the whole zero-padded to
    ``CT``, a multiple of ``scan.ROW_ALIGN``.

    Args:
        x_proj_weight: (K, R + 2N, Di), rows ``[dt | B | C]`` (the official layout).
    """
    num_dirs, rows, num_ch = x_proj_weight.shape
    rank = rows - 2 * nstate
    doff = _dt_offset(nstate)
    w = x_proj_weight.new_zeros((num_dirs, _row_width(nstate, rank), num_ch))
    w[:, :2 * nstate] = x_proj_weight[:, rank:]
    w[:, doff:doff + rank] = x_proj_weight[:, :rank]
    return w


def _projection_weight_grad(dw: torch.Tensor, nstate: int, rank: int) -> torch.Tensor:
    """Gradient of ``x_proj_weight`` from that of :func:`vim_projection_weight`."""
    doff = _dt_offset(nstate)
    return torch.cat([dw[:, doff:doff + rank], dw[:, :2 * nstate]], dim=1)


def _kbl(t: torch.Tensor) -> Tuple[int, int, int, int]:
    """(b, k, inner, l) strides of a (K, B, L, X) tensor (the kernels' argument order)."""
    sk, sb, sl, sx = t.stride()
    return (sb, sk, sx, sl)


def _bkl(t: torch.Tensor) -> Tuple[int, int, int, int]:
    """(b, k, inner, l) strides of a (B, K, T, X) tensor."""
    sb, sk, sl, sx = t.stride()
    return (sb, sk, sx, sl)


class _Dims(namedtuple('_Dims', ['batch', 'num_dirs', 'num_ch', 'd_conv', 'rank', 'nstate',
                                 'length', 'num_tokens'])):
    """Sizes of one layer: B, K, Di, d_conv, R, N, L (scan length), T (tokens)."""


def _check_args(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log,
                D, tables, compute_dtype) -> _Dims:
    if xz.dim() != 3:
        raise ValueError(f'xz must be (B, 2*Di, T), got shape {tuple(xz.shape)}.')
    if conv_weight.dim() != 3:
        raise ValueError(f'conv_weight must be (K, Di, d_conv), got shape '
                         f'{tuple(conv_weight.shape)}.')
    num_dirs, num_ch, d_conv = conv_weight.shape
    rank = dt_proj_weight.shape[-1]
    nstate = A_log.shape[-1]
    batch = xz.shape[0]
    if tables.gather.shape[0] != num_dirs:
        raise ValueError(f'The scan tables hold {tables.gather.shape[0]} directions, the '
                         f'weights {num_dirs}.')
    expected = {
        'xz': (xz, (batch, 2 * num_ch, tables.num_tokens)),
        'conv_bias': (conv_bias, (num_dirs, num_ch)),
        'x_proj_weight': (x_proj_weight, (num_dirs, rank + 2 * nstate, num_ch)),
        'dt_proj_weight': (dt_proj_weight, (num_dirs, num_ch, rank)),
        'dt_proj_bias': (dt_proj_bias, (num_dirs, num_ch)),
        'A_log': (A_log, (num_dirs, num_ch, nstate)),
        'D': (D, (num_dirs, num_ch)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f'{name} must have shape {shape} for K={num_dirs} directions, '
                             f'Di={num_ch} channels and T={tables.num_tokens} tokens, got '
                             f'{tuple(tensor.shape)}.')
    if xz.dtype not in _DTYPES or (compute_dtype is not None and compute_dtype not in _DTYPES):
        raise TypeError(f'The fused LocalVim scan takes float32, float16 or bfloat16 tensors, '
                        f'got xz {xz.dtype} (compute dtype {compute_dtype}); the dispatcher '
                        f'computes float64 with the PyTorch path.')
    if not xz.is_cuda and not interpreting():
        raise RuntimeError(f'The fused LocalVim scan needs CUDA tensors, got xz on '
                           f'{xz.device}.')
    if nstate & (nstate - 1):
        raise ValueError(f'The Triton scan needs a power-of-two state size, got N={nstate}.')
    return _Dims(batch, num_dirs, num_ch, d_conv, rank, nstate, tables.gather.shape[1],
                 tables.num_tokens)


def _max_batch(dims: _Dims) -> int:
    """Largest batch whose (K, B, L|T, X) tensors have int32 offsets (the kernels compute the
    direction offset ``k * stride`` in int32)."""
    width = max(dims.num_ch, _row_width(dims.nstate, dims.rank))
    per = dims.num_dirs * max(dims.length, dims.num_tokens) * width
    return max(1, _INT32 // per)


def _tokens_last(xz: torch.Tensor) -> torch.Tensor:
    """(B, T, 2Di) view of xz with channel stride 1 (a copy only if xz is not channels-last)."""
    xz_cl = xz.transpose(1, 2)
    if xz_cl.stride(2) != 1:
        xz_cl = xz_cl.contiguous()
    return xz_cl


def _derived(conv_weight, conv_bias, dt_proj_weight, dt_proj_bias, A_log, D, dims, full):
    """fp32 parameter tables: conv (K, d_conv, Di) and bias, then those of the scan
    (``scan._param_tables``: A, a2, D, delta bias, low-rank W)."""
    conv_w = conv_weight.float().transpose(1, 2).contiguous()
    conv_b = None if conv_bias is None else conv_bias.float().contiguous()
    scan_tables = _param_tables(A_log.reshape(-1, dims.nstate), D, dt_proj_bias, dims.num_dirs,
                                dims.num_ch, dims.nstate, None if full else dt_proj_weight,
                                dims.rank, _rank_pad(dims.rank))
    return (conv_w, conv_b) + scan_tables


def _conv_args(xz_cl, conv_w, conv_b):
    return (xz_cl, xz_cl.stride(0), xz_cl.stride(1), conv_w, conv_w if conv_b is None else conv_b)


def _conv_forward(xz_cl, conv_w, conv_b, tables, dims, dtype, config: VimConfig):
    """The conv kernel: xs (K, B, L, Di) in ``dtype``, scan order."""
    xs = torch.empty((dims.num_dirs, dims.batch, dims.length, dims.num_ch), dtype=dtype,
                     device=xz_cl.device)
    tile = config.conv
    grid = (cdiv(dims.length, tile.BT), dims.batch * dims.num_dirs, cdiv(dims.num_ch, tile.BD))
    _kernels().vim_conv_fwd_kernel[grid](
        *_conv_args(xz_cl, conv_w, conv_b), xs, xs.stride(0), xs.stride(1),
        xs.stride(2), tables.gather, tables.lengths, dims.length, dims.num_tokens, dims.num_dirs,
        dims.num_ch, DC=dims.d_conv, HAS_CB=conv_b is not None, **tile.constexprs(),
        **tile.launch_options())
    return xs


def _project(xs, x_proj_weight, dt_proj_weight, dims, full):
    """x_dbl (K, B, L, CT) and, for full-rank dt, delta before bias (K, B, L, Di), in xs's
    dtype (autocast off: the caller passes the compute dtype)."""
    k, b, length, d = xs.shape
    weight = vim_projection_weight(x_proj_weight, dims.nstate).to(xs.dtype)
    x_dbl = torch.bmm(xs.view(k, b * length, d), weight.transpose(1, 2)).view(k, b, length, -1)
    delta = None
    if full:
        delta = torch.bmm(_dt_view(x_dbl, dims).reshape(k, b * length, dims.rank),
                          dt_proj_weight.to(xs.dtype).transpose(1, 2)).view(k, b, length, d)
    return x_dbl, delta


def _dt_view(x_dbl, dims):
    """(K, B, L, R) view of the dt columns of x_dbl."""
    doff = _dt_offset(dims.nstate)
    return x_dbl[..., doff:doff + dims.rank]


class _VimProblem:
    """The scan of one LocalVim layer: scan-ordered inputs (xs, x_dbl, the full delta or the
    low-rank W), the gate's z (a (B, T, Di) view of xz) and the tables.

    The passes without the gate (segment summaries, carry combines, checkpoints) run the
    LocalVMamba kernels through their :class:`~.scan._Problem` (``self.core``, whose gather
    table is ``tables.order``); the gated passes are the kernels of :mod:`.vim_kernels`.
    """

    def __init__(self, xs, x_dbl, delta, z, tables, derived, dims, config: VimConfig):
        _, _, A, a2, dskip, bias, wt = derived
        self.xs, self.x_dbl, self.delta, self.z = xs, x_dbl, delta, z
        self.tables, self.derived, self.dims, self.config = tables, derived, dims, config
        num_dirs, batch, length, num_ch = xs.shape
        nstate, full = dims.nstate, delta is not None
        bc_strides = _kbl(x_dbl)
        dtv = _dt_view(x_dbl, dims)
        order = _OrderTables(tables.order, None, tables.lengths, length, False)
        self.core = _Problem(
            u=xs, u_strides=_kbl(xs), dt=delta if full else dtv,
            dt_strides=_kbl(delta if full else dtv), delta_full=full, w=None if full else wt,
            bmat=x_dbl, b_strides=bc_strides, cmat=x_dbl[..., nstate:], c_strides=bc_strides,
            a2=a2, dskip=dskip, bias=bias, softplus=True, tables=order, length=length,
            batch=batch, num_dirs=num_dirs, num_ch=num_ch, rank=0 if full else dims.rank,
            nstate=nstate, config=config.scan)

    def group(self, b0: int, b1: int) -> '_VimProblem':
        """The same problem for the batch elements ``b0 .. b1 - 1`` (views)."""
        sub = _VimProblem(self.xs[:, b0:b1], self.x_dbl[:, b0:b1],
                          None if self.delta is None else self.delta[:, b0:b1], self.z[b0:b1],
                          self.tables, self.derived, self.dims._replace(batch=b1 - b0),
                          self.config)
        return sub

    def _gate_args(self):
        z = self.z
        return [z, z.stride(0), z.stride(2), z.stride(1)]

    def _table_args(self):
        t = self.tables
        return [t.gather, t.scatter if t.separate_scatter else t.gather, t.lengths,
                t.gather.shape[1]]

    def _flags(self):
        flags = self.core.flags()
        del flags['IDENTITY']
        return dict(flags, SEPARATE_SCATTER=self.tables.separate_scatter)

    def forward(self, out: torch.Tensor) -> None:
        """Write the gated outputs ``out`` (B, K, T, Di) (segments as ``_Problem.forward``;
        their summaries stay in ``self.core.summaries`` for the backward)."""
        core, scan = self.core, self.config.scan
        fwd = scan.fwd
        nblk = cdiv(core.num_ch, fwd.CH * fwd.DL)
        segs, seg_len = core.segments(nblk, core.length, scan.ck_spacing)
        hs = core.a2
        if segs > 1:
            hs, ds = core._summaries(segs, seg_len, scan.bwd.T)
            core.summaries = (segs, seg_len, hs, ds)
        _kernels().vim_scan_fwd_kernel[(core.batch * core.num_dirs, nblk, segs)](
            *core.common(), *self._gate_args(), out, *_bkl(out), hs, segs, seg_len,
            *self._table_args(), core.num_dirs, core.num_ch, core.rank, self.dims.num_tokens,
            **self._flags(), LOAD_H0=segs > 1, **fwd.constexprs(), **fwd.launch_options())

    def backward(self, dout, du, dxdbl, gz, ddt):
        """Backward kernels of the scan (checkpoints in batch groups above
        ``ScanConfig.ck_max_bytes``, as ``_Problem.backward``); fills ``du`` (K, B, L, Di),
        ``dxdbl`` (K, B, L, CT, zeroed by the caller), ``gz`` (K, B, T, Di) and, for the full
        delta, ``ddt`` (K, B, L, Di). Returns the partials' sums (da, dd, dbias, dw)."""
        core = self.core
        groups = core.backward_groups()
        if groups == 1:
            return self._backward_group(dout, du, dxdbl, gz, ddt)
        parts = []
        for b0, b1 in batch_ranges(core.batch, cdiv(core.batch, groups)):
            parts.append(self.group(b0, b1)._backward_group(
                dout[b0:b1], du[:, b0:b1], dxdbl[:, b0:b1], gz[:, b0:b1],
                None if ddt is None else ddt[:, b0:b1]))
        return sum_group_partials(parts)

    def _backward_group(self, dout, du, dxdbl, gz, ddt):
        kern = _kernels()
        core, scan = self.core, self.config.scan
        fwd, bwd = scan.fwd, scan.bwd
        chunk = scan.ck_spacing
        nstate, num_ch, num_dirs, batch = core.nstate, core.num_ch, core.num_dirs, core.batch
        nblk = cdiv(num_ch, bwd.CH * bwd.DL)
        fblk = cdiv(num_ch, fwd.CH * fwd.DL)
        segs, seg_len = core.segments(nblk, core.length, chunk)
        ck, ds = core.checkpoints(fblk, segs, seg_len, chunk)
        dout_strides = _bkl(dout)
        if segs > 1:
            es = core.segment_states(segs)
            sargs = [core.u, *core.u_strides, core.dt, *core.dt_strides,
                     core.a2 if core.w is None else core.w, core.cmat, *core.c_strides, core.a2,
                     core.a2 if core.bias is None else core.bias, 1]
            flags = self._flags()
            kern.vim_scan_rev_summary_kernel[(batch * num_dirs, fblk, segs)](
                *sargs, *self._gate_args(), dout, *dout_strides, es, segs, seg_len,
                *self._table_args(), num_dirs, num_ch, core.rank, self.dims.num_tokens,
                N=nstate, RP=core.rp, DELTA_FULL=core.delta_full, HAS_BIAS=flags['HAS_BIAS'],
                SOFTPLUS=flags['SOFTPLUS'], SEPARATE_SCATTER=flags['SEPARATE_SCATTER'],
                **fwd.constexprs(), **fwd.launch_options())
            core._combine(es, ds, segs, reverse=True)
        else:
            es = core.a2
        da, dd, dbias, dw = partials = core.bwd_partials(segs)
        dbv = dxdbl
        dcv = dxdbl[..., nstate:]
        if core.delta_full:
            ddt_t, ddt_strides = ddt, _kbl(ddt)
        else:
            ddt_t = _dt_view(dxdbl, self.dims)
            ddt_strides = _kbl(ddt_t)
        kern.vim_scan_bwd_kernel[(batch * num_dirs, nblk, segs)](
            *core.common(), *self._gate_args(), dout, *dout_strides, gz, *_kbl(gz), du,
            *_kbl(du), ddt_t, *ddt_strides, dbv, *_kbl(dbv), dcv, *_kbl(dcv), da, dd, dbias, dw,
            ck, ck.shape[2], es, segs, seg_len, *self._table_args(), num_dirs, num_ch,
            core.rank, self.dims.num_tokens, **self._flags(), LOAD_E=segs > 1,
            USE_RS=core.bwd_reduce_scatter(),
            RECOMPUTE_DECAY=scan.inline_asm and not interpreting(), CKM=scan.ck_every, T=bwd.T,
            **bwd.constexprs(), **bwd.launch_options())
        return core.reduce_partials(*partials, segs)


def _prepare(dims, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
             A_log, D, tables, compute_dtype, config, derived=None):
    """Conv + projections and the scan problem (autocast off; ``compute_dtype`` explicit)."""
    full = dims.rank > config.scan.lowrank_max
    if derived is None:
        derived = _derived(conv_weight, conv_bias, dt_proj_weight, dt_proj_bias, A_log, D, dims,
                           full)
    dtype = compute_dtype or xz.dtype
    xz_cl = _tokens_last(xz)
    xs = _conv_forward(xz_cl, derived[0], derived[1], tables, dims, dtype, config)
    x_dbl, delta = _project(xs, x_proj_weight, dt_proj_weight, dims, full)
    z = xz_cl[..., dims.num_ch:]
    return _VimProblem(xs, x_dbl, delta, z, tables, derived, dims, config), xz_cl


def _batch_slices(batch: int, dims: _Dims):
    return batch_ranges(batch, _max_batch(dims))


def vim_scan_forward(xz: torch.Tensor,
                     conv_weight: torch.Tensor,
                     conv_bias: Optional[torch.Tensor],
                     x_proj_weight: torch.Tensor,
                     dt_proj_weight: torch.Tensor,
                     dt_proj_bias: torch.Tensor,
                     A_log: torch.Tensor,
                     D: torch.Tensor,
                     tables,
                     compute_dtype: Optional[torch.dtype] = None,
                     config: VimConfig = DEFAULT_VIM_CONFIG):
    """Forward of the fused LocalVim layer scan (arguments as :func:`vim_scan_triton`).

    Returns:
        (out, saved): out (B, K, T, Di) in ``promote(compute_dtype, xz.dtype)``; ``saved`` the
        derived parameter tables and segment summaries :func:`vim_scan_backward` can reuse
        (None: it recomputes them).
    """
    dims = _check_args(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                       A_log, D, tables, compute_dtype)
    out_dtype = torch.promote_types(compute_dtype or xz.dtype, xz.dtype)
    slices = _batch_slices(dims.batch, dims)
    if len(slices) > 1:  # int32 offsets: one call per batch slice
        return torch.cat([vim_scan_forward(xz[b0:b1], conv_weight, conv_bias, x_proj_weight,
                                           dt_proj_weight, dt_proj_bias, A_log, D, tables,
                                           compute_dtype, config)[0] for b0, b1 in slices]), None
    out = torch.empty((dims.batch, dims.num_dirs, dims.num_tokens, dims.num_ch), dtype=out_dtype,
                      device=xz.device)
    with torch.autocast(xz.device.type, enabled=False):
        prob, _ = _prepare(dims, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                           dt_proj_bias, A_log, D, tables, compute_dtype, config)
        prob.forward(out)
    return out, (prob.derived, prob.core.summaries)


def vim_scan_backward(dout: torch.Tensor,
                      xz: torch.Tensor,
                      conv_weight: torch.Tensor,
                      conv_bias: Optional[torch.Tensor],
                      x_proj_weight: torch.Tensor,
                      dt_proj_weight: torch.Tensor,
                      dt_proj_bias: torch.Tensor,
                      A_log: torch.Tensor,
                      D: torch.Tensor,
                      tables,
                      compute_dtype: Optional[torch.dtype] = None,
                      config: VimConfig = DEFAULT_VIM_CONFIG,
                      saved=None):
    """Gradients of :func:`vim_scan_forward` for the output gradient ``dout`` (B, K, T, Di),
    any strides: ``(d xz, d conv_weight, d conv_bias (None without a bias), d x_proj_weight,
    d dt_proj_weight, d dt_proj_bias, d A_log, d D)``, each in its input's dtype (d xz with
    xz's layout)."""
    dims = _check_args(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                       A_log, D, tables, compute_dtype)
    slices = _batch_slices(dims.batch, dims)
    params = (conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)
    if len(slices) > 1:  # int32 offsets: one call per batch slice, parameter gradients summed
        parts = [vim_scan_backward(dout[b0:b1], xz[b0:b1], *params, tables, compute_dtype,
                                   config) for b0, b1 in slices]
        return (torch.cat([p[0] for p in parts]), ) + tuple(
            None if g[0] is None else sum(g) for g in list(zip(*parts))[1:])
    with torch.autocast(xz.device.type, enabled=False):
        return _backward(dout, xz, params, tables, compute_dtype, config, saved, dims)


def _backward(dout, xz, params, tables, compute_dtype, config, saved, dims):
    conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D = params
    derived, summaries = (None, None) if saved is None else saved
    prob, xz_cl = _prepare(dims, xz, *params, tables, compute_dtype, config, derived)
    prob.core.summaries = summaries
    conv_w, conv_b, A = prob.derived[:3]
    k, b, length, num_ch = prob.xs.shape
    dev, dtype = xz.device, prob.xs.dtype
    full = prob.delta is not None
    # per-step gradients in the compute dtype (the reference's autograd holds them in it too);
    # the sums over channels (d x_dbl) are fp32 atomics
    du = torch.empty((k, b, length, num_ch), dtype=dtype, device=dev)
    dxdbl = torch.zeros(prob.x_dbl.shape, dtype=torch.float32, device=dev)
    gz = torch.empty((k, b, dims.num_tokens, num_ch), dtype=dtype, device=dev)
    ddt = None
    if full:  # rows past a direction's length are never written
        make = torch.empty if tables.uniform else torch.zeros
        ddt = make((k, b, length, num_ch), dtype=dtype, device=dev)
    da, dd, dbias, dw = prob.backward(dout, du, dxdbl, gz, ddt)
    if full:
        # delta = dt @ W^T: the two GEMMs of its backward, in the forward GEMM's dtype
        ddelta = ddt.view(k, b * length, num_ch)
        dt = _dt_view(prob.x_dbl, dims).reshape(k, b * length, dims.rank)
        _dt_view(dxdbl, dims).copy_(
            torch.bmm(ddelta, dt_proj_weight.to(dtype)).view(k, b, length, dims.rank))
        d_dtw = torch.bmm(ddelta.transpose(1, 2), dt)
    else:
        d_dtw = dw[:, :dims.rank].transpose(1, 2)
    # x_dbl = xs @ W^T
    dxdbl_c = dxdbl.to(dtype).view(k, b * length, -1)
    weight = vim_projection_weight(x_proj_weight, dims.nstate).to(dtype)
    dg = torch.bmm(dxdbl_c, weight).view(k, b, length, num_ch)
    d_weight = torch.bmm(dxdbl_c.transpose(1, 2), prob.xs.view(k, b * length, num_ch))
    d_xpw = _projection_weight_grad(d_weight, dims.nstate, dims.rank)
    del prob, dxdbl, dxdbl_c
    # conv backward: d pre-activation in place of du, weight / bias partial sums
    kern = _kernels()
    tile = config.conv_bwd
    ntb = cdiv(length, tile.BT)
    part = torch.empty((ntb * b, k, dims.d_conv + 1, num_ch), dtype=torch.float32, device=dev)
    kern.vim_conv_bwd_kernel[(ntb, b * k, cdiv(num_ch, tile.BD))](
        *_conv_args(xz_cl, conv_w, conv_b), du, du.stride(0), du.stride(1),
        du.stride(2), dg, dg.stride(0), dg.stride(1), dg.stride(2), part, tables.gather,
        tables.lengths, length, dims.num_tokens, k, num_ch, b, DC=dims.d_conv,
        HAS_CB=conv_b is not None, HAS_DG=True, **tile.constexprs(), **tile.launch_options())
    del dg
    part = part.sum(0)
    # both halves of d xz, natural order
    dxz = torch.empty((b, dims.num_tokens, 2 * num_ch), dtype=xz.dtype, device=dev)
    tile = config.conv_dx
    kern.vim_conv_dx_kernel[(cdiv(dims.num_tokens, tile.BT), b, cdiv(num_ch, tile.BD))](
        du, du.stride(0), du.stride(1), du.stride(2), conv_w, gz, gz.stride(0), gz.stride(1),
        gz.stride(2), xz_cl, xz_cl.stride(0), xz_cl.stride(1), dxz, dxz.stride(0), dxz.stride(1),
        tables.steps, tables.lengths, dims.num_tokens, k, num_ch, DC=dims.d_conv,
        **tile.constexprs(), **tile.launch_options())
    return (dxz.transpose(1, 2),
            part[:, :dims.d_conv].transpose(1, 2).to(conv_weight.dtype),
            None if conv_bias is None else part[:, dims.d_conv].to(conv_bias.dtype),
            d_xpw.to(x_proj_weight.dtype), d_dtw.to(dt_proj_weight.dtype),
            dbias.view_as(dt_proj_bias).to(dt_proj_bias.dtype),
            (da * A).view_as(A_log).to(A_log.dtype), dd.view_as(D).to(D.dtype))


class _VimScanFn(torch.autograd.Function):
    """Autograd of the fused LocalVim layer scan (saves xz and the parameters; the backward
    recomputes the conv output and the projections)."""

    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                A_log, D, tables, compute_dtype, config):
        out, saved = vim_scan_forward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                                      dt_proj_bias, A_log, D, tables, compute_dtype, config)
        ctx.save_for_backward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                              dt_proj_bias, A_log, D)
        ctx.tables, ctx.compute_dtype, ctx.config = tables, compute_dtype, config
        ctx.derived = saved  # small fp32 tables and segment summaries
        return out

    @staticmethod
    def backward(ctx, dout):
        grads = vim_scan_backward(dout, *ctx.saved_tensors, ctx.tables, ctx.compute_dtype,
                                  ctx.config, ctx.derived)
        return tuple(grads) + (None, None, None)


def vim_scan_triton(xz: torch.Tensor,
                    conv_weight: torch.Tensor,
                    conv_bias: Optional[torch.Tensor],
                    x_proj_weight: torch.Tensor,
                    dt_proj_weight: torch.Tensor,
                    dt_proj_bias: torch.Tensor,
                    A_log: torch.Tensor,
                    D: torch.Tensor,
                    tables,
                    compute_dtype: Optional[torch.dtype] = None,
                    config: VimConfig = DEFAULT_VIM_CONFIG) -> torch.Tensor:
    """The K gated selective scans of one LocalVim layer, fused (values of
    :func:`mmlocalmamba.ops.vim_scan.local_vim_scan`).

    Args:
        xz: (B, 2*Di, T) CUDA tensor, fp32 / fp16 / bf16, in-projected tokens (channels-last in
            memory, i.e. the transpose of a contiguous (B, T, 2Di), avoids a copy);
            ``T = H*W`` (+1 with the class token).
        conv_weight: (K, Di, d_conv); conv_bias: (K, Di) or None.
        x_proj_weight: (K, R + 2N, Di); dt_proj_weight: (K, Di, R); dt_proj_bias: (K, Di).
        A_log: (K, Di, N); D: (K, Di).
        tables: the layer's :class:`~mmlocalmamba.ops.scan_orders.VimTables` on xz's device
            (:func:`~mmlocalmamba.ops.scan_orders.vim_kernel_tables`).
        compute_dtype: dtype of the conv output and the projection GEMMs (the caller's autocast
            dtype; None: xz's dtype). The states, the gate and all sums are fp32.
        config: launch configuration.

    Returns:
        (B, K, T, Di) gated scan outputs, row-major tokens, in
        ``promote(compute_dtype, xz.dtype)`` (the reference's dtype).
    """
    return _VimScanFn.apply(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                            dt_proj_bias, A_log, D, tables, compute_dtype, config)
