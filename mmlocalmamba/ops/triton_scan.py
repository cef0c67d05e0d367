"""Fused multi-direction selective scan on the GPU (Triton), forward and backward.

Public entry points (the ``'triton'`` backend of :mod:`mmlocalmamba.ops.selective_scan` and
:mod:`mmlocalmamba.ops.local_scan`):

* :func:`local_selective_scan_triton` -- the whole K-direction scan of one LocalVMamba layer,
  same arguments and results as :func:`mmlocalmamba.ops.local_scan.local_selective_scan`.
* :func:`selective_scan_triton` -- a plain selective scan (``u, delta, A, B, C, D``).
* :func:`is_available` -- True when triton imports and CUDA is usable.
* :func:`scan_tables` -- the int32 index tables the kernels walk (pure PyTorch, runs anywhere).

How the local scan runs (see ``_triton_scan_kernels`` for the kernels):

1. ``x`` (B, D, H, W) is read channels-last, ``(B, H*W, D)`` (a view when the tensor is in
   ``torch.channels_last`` format, one copy otherwise).
2. ``x_dbl = x @ x_proj_weight^T`` in natural token order, ``(B, H*W, K, R + 2N)``, by one GEMM.
   This equals the official per-direction projection of the scanned sequence at every real
   token, because the projection acts per token; padding tokens are handled in the kernel.
3. One launch scans all K directions: per scan step it reads the token through the direction's
   index table, computes ``delta = softplus(dt_projs_weight[k] @ dt + bias)`` in registers, updates
   the fp32 state and writes ``y`` at the token's natural position, ``(B, K, H*W, D)`` fp32.
4. Backward: a forward pass writes the state every ``T`` steps (transient buffer), then one
   launch runs the reverse recurrence per chunk; sums over channels (dB, dC, d dt) are atomic.

Triton is imported only when a kernel is first needed, so this module imports without triton.
"""
import json
import math
import os
from collections import namedtuple
from functools import lru_cache
from typing import Optional, Sequence

import torch

from .scan_orders import gather_index, inverse_index, scan_length

__all__ = ['is_available', 'scan_tables', 'ScanTables', 'local_selective_scan_triton',
           'selective_scan_triton', 'KERNEL_CONFIG']

LOG2E = 1.4426950408889634

#: Launch configuration (tuned on an H100, see docs/kernel_notes.md). ``fwd``: forward kernel;
#: ``bwd``: backward kernel (``T`` = steps per chunk = checkpoint spacing; its checkpoint pass
#: runs the forward kernel with that ``T``). A program (``num_warps`` = 1) scans ``CH * DL``
#: channels, ``T`` steps per chunk; ``DL`` lanes go along channels, ``32 / DL`` along states.
#: ``du_atomic``: the backward adds the K directions' input gradients atomically into one
#: buffer instead of writing K buffers and summing them.
KERNEL_CONFIG = {
    'fwd': dict(CH=1, DL=8, T=8, num_warps=1),
    'bwd': dict(CH=1, DL=8, T=4, num_warps=1),
    'du_atomic': False,
    'x_channels_last': True,
}
# Developer override, e.g. MMLOCALMAMBA_TRITON_CONFIG='{"bwd": {"CH": 1, "DL": 8, "T": 8,
# "num_warps": 1, "maxnreg": 128}}' (keys replace those of KERNEL_CONFIG).
if os.environ.get('MMLOCALMAMBA_TRITON_CONFIG'):
    KERNEL_CONFIG.update(json.loads(os.environ['MMLOCALMAMBA_TRITON_CONFIG']))

_LAUNCH_OPTIONS = ('num_warps', 'maxnreg')


def _split_config(name):
    """(kernel constexprs, launch options) of ``KERNEL_CONFIG[name]``."""
    cfg = dict(KERNEL_CONFIG[name])
    return cfg, {k: cfg.pop(k) for k in _LAUNCH_OPTIONS if k in cfg}

ScanTables = namedtuple('ScanTables', ['gather', 'scatter', 'lengths', 'num_tokens',
                                       'separate_scatter'])
ScanTables.__doc__ = """Index tables of a direction list on an H x W grid.

gather (K, Lmax) int32: token read at scan step t (H*W = zero padding, also past the end);
scatter (K, Lmax) int32: natural position written at step t (H*W = dropped);
lengths (K,) int32: scan length of each direction; num_tokens = H*W;
separate_scatter: False when scatter equals gather (always, unless official_v_reverse changes
the v/v_flip outputs of a non-square grid).
"""


def is_available() -> bool:
    """True when the Triton kernels can run here (triton importable and a CUDA device)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


@lru_cache(maxsize=256)
def _scan_tables_cpu(height: int, width: int, directions: tuple, official_v_reverse: bool):
    num = height * width
    lengths = [scan_length(height, width, d) for d in directions]
    lmax = max(lengths)
    gather = torch.full((len(directions), lmax), num, dtype=torch.int32)
    scatter = torch.full((len(directions), lmax), num, dtype=torch.int32)
    for k, direction in enumerate(directions):
        gather[k, :lengths[k]] = gather_index(height, width, direction).to(torch.int32)
        # out[p] = seq[inverse[p]]  =>  step inverse[p] writes position p.
        inverse = inverse_index(height, width, direction, official_v_reverse)
        scatter[k, inverse] = torch.arange(num, dtype=torch.int32)
    separate = not torch.equal(gather, scatter)
    return gather, scatter, torch.tensor(lengths, dtype=torch.int32), num, separate


@lru_cache(maxsize=256)
def _scan_tables_dev(height, width, directions, official_v_reverse, device):
    gather, scatter, lengths, num, separate = _scan_tables_cpu(height, width, directions,
                                                               official_v_reverse)
    return ScanTables(gather.to(device), scatter.to(device) if separate else None,
                      lengths.to(device), num, separate)


def scan_tables(height: int, width: int, directions: Sequence[str],
                official_v_reverse: bool = False,
                device: torch.device = torch.device('cpu')) -> ScanTables:
    """Index tables the kernels walk (cached per grid, direction list and device).

    Raises:
        ValueError: for an unknown direction name or an empty grid.
    """
    directions = tuple(directions)
    if not directions:
        raise ValueError('directions must name at least one scan direction.')
    return _scan_tables_dev(int(height), int(width), directions, bool(official_v_reverse),
                            torch.device(device))


def _kernels():
    from . import _triton_scan_kernels
    return _triton_scan_kernels


def _pow2(value: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(1, value)))))


def _launch_args(u, u_strides, dt, dt_strides, w, bmat, b_strides, cmat, c_strides, a2, dskip,
                 bias):
    """The argument prefix shared by the forward and backward kernels."""
    dummy = a2
    return [u, *u_strides, dt, *dt_strides, dummy if w is None else w, bmat, *b_strides, cmat,
            *c_strides, a2, dummy if dskip is None else dskip, dummy if bias is None else bias, 1]


class _Problem:
    """Tensors, strides and sizes of one scan (shared by forward and backward)."""

    def __init__(self, *, u, u_strides, dt, dt_strides, delta_full, w, bmat, b_strides, cmat,
                 c_strides, a2, dskip, bias, softplus, tables, batch, num_dirs, num_ch, rank,
                 nstate):
        self.u, self.u_strides = u, u_strides
        self.dt, self.dt_strides, self.delta_full = dt, dt_strides, delta_full
        self.w, self.bmat, self.b_strides, self.cmat, self.c_strides = (w, bmat, b_strides,
                                                                         cmat, c_strides)
        self.a2, self.dskip, self.bias, self.softplus = a2, dskip, bias, softplus
        self.tables = tables  # ScanTables, or ('identity', length)
        self.batch, self.num_dirs, self.num_ch = batch, num_dirs, num_ch
        self.rank, self.nstate = rank, nstate
        self.rp = _pow2(rank, 4) if not delta_full else 4
        if nstate & (nstate - 1):
            raise ValueError(f'The Triton scan needs a power-of-two state size, got N={nstate}.')

    @property
    def identity(self):
        return isinstance(self.tables, tuple) and self.tables[0] == 'identity'

    def table_args(self):
        if self.identity:
            length = self.tables[1]
            lengths = torch.full((self.num_dirs, ), length, dtype=torch.int32,
                                 device=self.u.device)
            return [lengths, lengths, lengths, 0], length, length, False
        t = self.tables
        scatter = t.scatter if t.separate_scatter else t.gather
        return ([t.gather, scatter, t.lengths, t.gather.shape[1]], t.gather.shape[1],
                t.num_tokens, t.separate_scatter)

    def common(self):
        return _launch_args(self.u, self.u_strides, self.dt, self.dt_strides, self.w, self.bmat,
                            self.b_strides, self.cmat, self.c_strides, self.a2, self.dskip,
                            self.bias)

    def flags(self):
        return dict(N=self.nstate, RP=self.rp, DELTA_FULL=self.delta_full,
                    HAS_D=self.dskip is not None, HAS_BIAS=self.bias is not None,
                    SOFTPLUS=self.softplus, IDENTITY=self.identity)

    def forward(self, y=None, y_strides=None, ck=None, ck_every=None):
        """Run the forward kernel: write y (if given) and/or the checkpoints (if given)."""
        kern = _kernels()
        cfg, opts = _split_config('fwd')
        block = cfg['CH'] * cfg['DL']
        tables, lmax, num_tokens, separate = self.table_args()
        grid = (self.batch * self.num_dirs, triton_cdiv(self.num_ch, block))
        store_y = y is not None
        store_ck = ck is not None
        if store_ck:
            cfg['T'] = ck_every
        kern.scan_fwd_kernel[grid](
            *self.common(), y if store_y else self.a2, *(y_strides if store_y else (0, ) * 4),
            ck if store_ck else self.a2, ck.shape[2] if store_ck else 0, *tables,
            self.num_dirs, self.num_ch, self.rank, num_tokens, **self.flags(),
            SEPARATE_SCATTER=separate, STORE_Y=store_y, STORE_CK=store_ck, **cfg, **opts)

    def backward(self, dy, dy_strides, du, du_strides, du_atomic, ddt, ddt_strides, db,
                 db_strides, dc, dc_strides):
        """Checkpoint pass + backward kernel. Returns the partials (da, dd, dbias, dw)."""
        kern = _kernels()
        cfg, opts = _split_config('bwd')
        chunk = cfg['T']
        tables, lmax, num_tokens, separate = self.table_args()
        num_ck = triton_cdiv(lmax, chunk)
        dev = self.u.device
        ck = torch.empty((self.batch, self.num_dirs, num_ck, self.nstate, self.num_ch),
                         dtype=torch.float32, device=dev)
        if num_ck > 1:
            self.forward(ck=ck, ck_every=chunk)
        parts = self.batch * self.num_dirs * self.num_ch
        da = torch.empty((parts, self.nstate), dtype=torch.float32, device=dev)
        dd = torch.empty((parts, ), dtype=torch.float32, device=dev)
        dbias = torch.empty((parts, ), dtype=torch.float32, device=dev)
        dw = (torch.empty((self.batch, self.num_dirs, self.rp, self.num_ch), dtype=torch.float32,
                          device=dev) if not self.delta_full else da)
        block = cfg['CH'] * cfg['DL']
        grid = (self.batch * self.num_dirs, triton_cdiv(self.num_ch, block))
        kern.scan_bwd_kernel[grid](
            *self.common(), dy, *dy_strides, du, *du_strides, ddt, *ddt_strides, db,
            *db_strides, dc, *dc_strides, da, dd, dbias, dw, ck, num_ck, *tables, self.num_dirs,
            self.num_ch, self.rank, num_tokens, **self.flags(), SEPARATE_SCATTER=separate,
            DU_ATOMIC=du_atomic, **cfg, **opts)
        shape = (self.batch, self.num_dirs * self.num_ch)
        return (da.view(*shape, self.nstate).sum(0), dd.view(shape).sum(0),
                dbias.view(shape).sum(0), None if self.delta_full else dw.sum(0))


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _param_tables(A_logs, Ds, bias, num_dirs, num_ch, nstate, w=None, rank=0, rp=16,
                  a_is_log=True):
    """fp32 per-channel tables in the kernels' channel-minor layout."""
    A = -torch.exp(A_logs.float()) if a_is_log else A_logs.float()
    a2 = (A * LOG2E).view(num_dirs, num_ch, nstate).transpose(1, 2).contiguous()
    dskip = None if Ds is None else Ds.float().reshape(-1).contiguous()
    bias_t = None if bias is None else bias.float().reshape(-1).contiguous()
    wt = None
    if w is not None:
        wt = w.new_zeros((num_dirs, rp, num_ch), dtype=torch.float32)
        wt[:, :rank] = w.float().transpose(1, 2)
    return A, a2, dskip, bias_t, wt


class _LocalScanFn(torch.autograd.Function):
    """Autograd of the fused scan given channels-last x and natural-order x_dbl."""

    @staticmethod
    def forward(ctx, x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds, tables, nstate):
        batch, num_tokens, num_ch = x_cl.shape
        num_dirs, _, rank = dt_w.shape
        rp = _pow2(rank, 4)
        A, a2, dskip, bias, wt = _param_tables(A_logs, Ds, dt_bias, num_dirs, num_ch, nstate, dt_w,
                                               rank, rp)
        prob = _local_problem(x_cl, x_dbl, wt, a2, dskip, bias, tables, rank, nstate)
        y = torch.empty((batch, num_dirs, num_tokens, num_ch), dtype=torch.float32,
                        device=x_cl.device)
        prob.forward(y=y, y_strides=(y.stride(0), y.stride(1), y.stride(3), y.stride(2)))
        ctx.save_for_backward(x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds)
        ctx.tables, ctx.nstate = tables, nstate
        return y

    @staticmethod
    def backward(ctx, dy):
        x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds = ctx.saved_tensors
        nstate = ctx.nstate
        batch, num_tokens, num_ch = x_cl.shape
        num_dirs, _, rank = dt_w.shape
        rp = _pow2(rank, 4)
        A, a2, dskip, bias, wt = _param_tables(A_logs, Ds, dt_bias, num_dirs, num_ch, nstate, dt_w,
                                               rank, rp)
        prob = _local_problem(x_cl, x_dbl, wt, a2, dskip, bias, ctx.tables, rank, nstate)
        dev = x_cl.device
        # dy arrives as (B, K, HW, D) with any strides; the kernel takes (b, k, d, l) strides.
        dys = dy.stride()
        du_atomic = KERNEL_CONFIG['du_atomic'] and num_dirs > 1
        if du_atomic:
            du = torch.zeros((batch, num_tokens, num_ch), dtype=torch.float32, device=dev)
            du_strides = (du.stride(0), 0, du.stride(2), du.stride(1))
        else:
            du = torch.empty((batch, num_dirs, num_tokens, num_ch), dtype=torch.float32,
                             device=dev)
            du_strides = (du.stride(0), du.stride(1), du.stride(3), du.stride(2))
        cdbl = x_dbl.shape[-1]
        dxdbl = torch.zeros((batch, num_tokens, num_dirs, cdbl), dtype=torch.float32, device=dev)
        s = dxdbl.stride()
        bc_strides = (s[0], s[2], s[3], s[1])
        da, dd, dbias, dw = prob.backward(dy, (dys[0], dys[1], dys[3], dys[2]), du, du_strides,
                                          du_atomic, dxdbl, bc_strides,
                                          dxdbl[..., rank:], bc_strides,
                                          dxdbl[..., rank + nstate:], bc_strides)
        dx = du if du_atomic else du.sum(1)
        d_alog = (da * A).to(A_logs.dtype)
        d_w = dw[:, :rank].transpose(1, 2).to(dt_w.dtype)
        return (dx.to(x_cl.dtype), dxdbl.to(x_dbl.dtype), d_w,
                dbias.view_as(dt_bias).to(dt_bias.dtype), d_alog, dd.to(Ds.dtype), None, None)


def _local_problem(x_cl, x_dbl, wt, a2, dskip, bias, tables, rank, nstate):
    batch, num_tokens, num_ch = x_cl.shape
    num_dirs = x_dbl.shape[2]
    xs = x_cl.stride()
    ds = x_dbl.stride()  # (B, HW, K, C)
    dbl_strides = (ds[0], ds[2], ds[3], ds[1])
    return _Problem(u=x_cl, u_strides=(xs[0], 0, xs[2], xs[1]), dt=x_dbl, dt_strides=dbl_strides,
                    delta_full=False, w=wt, bmat=x_dbl[..., rank:], b_strides=dbl_strides,
                    cmat=x_dbl[..., rank + nstate:], c_strides=dbl_strides, a2=a2, dskip=dskip,
                    bias=bias, softplus=True, tables=tables, batch=batch, num_dirs=num_dirs,
                    num_ch=num_ch, rank=rank, nstate=nstate)


def _check_local_args(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, directions):
    if x.dim() != 4:
        raise ValueError(f'x must be (B, D, H, W), got shape {tuple(x.shape)}.')
    num_dirs, num_ch = len(directions), x.shape[1]
    rank = dt_projs_weight.shape[-1]
    nstate = A_logs.shape[-1]
    expected = {
        'x_proj_weight': (x_proj_weight, (num_dirs, rank + 2 * nstate, num_ch)),
        'dt_projs_weight': (dt_projs_weight, (num_dirs, num_ch, rank)),
        'dt_projs_bias': (dt_projs_bias, (num_dirs, num_ch)),
        'A_logs': (A_logs, (num_dirs * num_ch, nstate)),
        'Ds': (Ds, (num_dirs * num_ch, )),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f'{name} must have shape {shape} for K={num_dirs} directions and '
                             f'D={num_ch} channels, got {tuple(tensor.shape)}.')
    return num_dirs, num_ch, rank, nstate


def local_selective_scan_triton(x: torch.Tensor,
                                x_proj_weight: torch.Tensor,
                                dt_projs_weight: torch.Tensor,
                                dt_projs_bias: torch.Tensor,
                                A_logs: torch.Tensor,
                                Ds: torch.Tensor,
                                directions: Sequence[str],
                                official_v_reverse: bool = False) -> torch.Tensor:
    """Fused K-direction scan of one LocalVMamba layer (see ``local_selective_scan``).

    Args:
        x: (B, D, H, W) CUDA tensor, fp32/fp16/bf16 (any memory format; channels-last avoids a
            copy). float64 inputs are computed by the PyTorch path.
        x_proj_weight: (K, R + 2N, D); dt_projs_weight: (K, D, R); dt_projs_bias: (K, D);
        A_logs: (K * D, N); Ds: (K * D,).
        directions: K direction names; official_v_reverse: see ``scan_orders``.

    Returns:
        (B, K, H * W, D) float32 scan outputs in row-major token order (float64 for float64 x).
    """
    num_dirs, num_ch, rank, nstate = _check_local_args(x, x_proj_weight, dt_projs_weight,
                                                       dt_projs_bias, A_logs, Ds, directions)
    if x.dtype == torch.float64:
        from .local_scan import local_selective_scan
        return local_selective_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs,
                                    Ds, directions, official_v_reverse, backend='torch')
    if not x.is_cuda:
        raise RuntimeError(f'The Triton scan needs CUDA tensors, got x on {x.device}.')
    batch, _, height, width = x.shape
    tables = scan_tables(height, width, directions, official_v_reverse, x.device)
    if KERNEL_CONFIG['x_channels_last']:
        x_cl = x.permute(0, 2, 3, 1).reshape(batch, height * width, num_ch)
    else:
        x_cl = x.flatten(2).transpose(1, 2)  # (B, HW, D) view of NCHW, token-minor
    # Projection in natural order: (B, HW, K*C) -> (B, HW, K, C).
    x_dbl = torch.matmul(x_cl, x_proj_weight.reshape(-1, num_ch).t())
    x_dbl = x_dbl.view(batch, height * width, num_dirs, -1)
    return _LocalScanFn.apply(x_cl, x_dbl, dt_projs_weight, dt_projs_bias, A_logs, Ds, tables,
                              nstate)


class _PlainScanFn(torch.autograd.Function):
    """Autograd of the plain selective scan (natural order, delta given in full)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus):
        prob, groups = _plain_problem(u, delta, A, B, C, D, delta_bias, softplus)
        y = torch.empty_like(u)
        prob.forward(y=y, y_strides=_group_strides(y, groups))
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.softplus = softplus
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        prob, groups = _plain_problem(u, delta, A, B, C, D, delta_bias, ctx.softplus)
        du = torch.empty(u.shape, dtype=torch.float32, device=u.device)
        ddelta = torch.empty(u.shape, dtype=torch.float32, device=u.device)
        dB = torch.zeros(B.shape, dtype=torch.float32, device=u.device)
        dC = torch.zeros(C.shape, dtype=torch.float32, device=u.device)
        da, dd, dbias, _ = prob.backward(dy, _group_strides(dy, groups), du, _group_strides(du, groups), False, ddelta,
                                         _group_strides(ddelta, groups), dB, _bc_strides(dB),
                                         dC, _bc_strides(dC))
        return (du.to(u.dtype), ddelta.to(delta.dtype), da.to(A.dtype), dB.to(B.dtype),
                dC.to(C.dtype), None if D is None else dd.to(D.dtype),
                None if delta_bias is None else dbias.to(delta_bias.dtype), None)


def _group_strides(t, groups):
    """(b, k, d, l) strides of a (B, G*D', L) tensor seen as G groups."""
    per = t.shape[1] // groups
    return (t.stride(0), per * t.stride(1), t.stride(1), t.stride(2))


def _bc_strides(t):
    if t.dim() == 3:
        return (t.stride(0), 0, t.stride(1), t.stride(2))
    return tuple(t.stride())


def _plain_problem(u, delta, A, B, C, D, delta_bias, softplus):
    batch, num_total, length = u.shape
    nstate = A.shape[-1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    if num_total % groups:
        raise ValueError(f'{num_total} channels cannot be split into {groups} B/C groups.')
    num_ch = num_total // groups
    _, a2, dskip, bias, _ = _param_tables(A, D, delta_bias, groups, num_ch, nstate,
                                          a_is_log=False)
    prob = _Problem(u=u, u_strides=_group_strides(u, groups), dt=delta,
                    dt_strides=_group_strides(delta, groups), delta_full=True, w=None, bmat=B,
                    b_strides=_bc_strides(B), cmat=C, c_strides=_bc_strides(C), a2=a2,
                    dskip=dskip, bias=bias, softplus=softplus, tables=('identity', length),
                    batch=batch, num_dirs=groups, num_ch=num_ch, rank=0, nstate=nstate)
    return prob, groups


def selective_scan_triton(u: torch.Tensor,
                          delta: torch.Tensor,
                          A: torch.Tensor,
                          B: torch.Tensor,
                          C: torch.Tensor,
                          D: Optional[torch.Tensor] = None,
                          delta_bias: Optional[torch.Tensor] = None,
                          softplus: bool = False) -> torch.Tensor:
    """Selective scan on the GPU; shapes and semantics of ``selective_scan_torch``.

    float64 inputs are computed by the PyTorch path (the kernels keep an fp32 state).
    """
    if u.dtype == torch.float64:
        from .selective_scan import selective_scan_torch
        return selective_scan_torch(u, delta, A, B, C, D, delta_bias, softplus)
    if not u.is_cuda:
        raise RuntimeError(f'The Triton scan needs CUDA tensors, got u on {u.device}.')
    return _PlainScanFn.apply(u, delta, A, B, C, D, delta_bias, softplus)
