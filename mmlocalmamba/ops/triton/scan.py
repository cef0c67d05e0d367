"""Fused multi-direction selective scan on the GPU (Triton): launchers and autograd.

Entry points (the ``'triton'`` backend of :mod:`mmlocalmamba.ops.selective_scan` and
:mod:`mmlocalmamba.ops.local_scan`, which own the backend choice and the float64 / CPU path):

* :func:`local_selective_scan_triton` -- the whole K-direction scan of one LocalVMamba layer,
  the values of :func:`mmlocalmamba.ops.local_scan.local_selective_scan`.
* :func:`selective_scan_triton` -- a plain selective scan (``u, delta, A, B, C, D``).

How the local scan runs (see :mod:`.scan_kernels` for the kernels):

1. ``x`` (B, D, H, W) is read channels-last, ``(B, H*W, D)`` (a view when the tensor is in
   ``torch.channels_last`` format, one copy otherwise).
2. ``x_dbl = x @ W^T`` in natural token order, ``(B, H*W, CT)`` by one GEMM, its columns
   ``[B | C | dt]`` per direction (:func:`projection_weight`). This equals the official
   per-direction projection of the scanned sequence at every real token, because the
   projection acts per token; padding tokens are handled in the kernel. For dt ranks above
   ``ScanConfig.lowrank_max`` the full ``delta = dt @ dt_projs_weight^T`` is one more batched
   GEMM.
3. One launch scans all K directions: one step at a time, a program reads the step's token
   through the direction's index table, computes ``delta = softplus(dt_projs_weight[k] @ dt +
   bias)`` in registers, updates its fp32 state tile (channels x states) and writes ``y`` at the
   token's natural position, ``(B, K, H*W, D)`` fp32. Small batches cut the scan order into
   segments scanned in parallel (summary pass, carry combine, output pass).
4. Backward: a forward pass writes the state every ``ScanConfig.ck_spacing`` steps (transient
   buffer, in batch groups above ``ck_max_bytes``), then one launch runs the reverse recurrence
   per chunk of ``T`` steps with the chunk's states recomputed into registers; sums over
   channels (dB, dC, d dt) are reduce-scattered across lanes and added atomically.

The index tables are :class:`~mmlocalmamba.ops.scan_orders.ScanTables` (built by the caller).
Triton is imported only when a kernel is first needed, so this module imports without triton.
"""
import copy
import math
from functools import lru_cache
from typing import Optional

import torch

from .common import batch_ranges, cdiv, interpreting, sum_group_partials
from .config import DEFAULT_SCAN_CONFIG, ScanConfig

__all__ = ['local_selective_scan_triton', 'selective_scan_triton', 'projection_weight',
           'project', 'project_fp32', 'compute_dtype', 'scan_projected', 'local_scan_forward',
           'local_scan_backward', 'local_tokens_backward']

LOG2E = 1.4426950408889634


def _kernels():
    from . import scan_kernels
    return scan_kernels


def _rank_pad(rank: int) -> int:
    """Padded rank of the low-rank dt (a power of two, at least 8: one 16-byte bf16 vector)."""
    return _pow2(rank, 8)


#: x_dbl rows are padded with zero columns to a multiple of this many values. Triton specialises
#: integer arguments on their divisibility by 16; the row stride and the batch / direction
#: strides of the B, C and dt views are multiples of the row width (times step and batch
#: counts), so with rows of a multiple of 16 they stay divisible at every image size and a new
#: size compiles no new variant. The released models' rows already are (LocalVMamba-T / S:
#: ``K (2N + RP)`` = 160 .. 384; LocalVim-T / S: 48, 64); smaller ones, e.g. 40 for ``d_state``
#: 1 or LocalVim at width 128, gain the zero columns.
ROW_ALIGN = 16


def round_row(width: int) -> int:
    """``width`` rounded up to a multiple of :data:`ROW_ALIGN`."""
    return -(-width // ROW_ALIGN) * ROW_ALIGN


def _dbl_width(num_dirs: int, nstate: int, rank: int) -> int:
    """Columns of a LocalVMamba x_dbl row: ``K (2N + RP)``, padded (see :data:`ROW_ALIGN`)."""
    return round_row(num_dirs * (2 * nstate + _rank_pad(rank)))


def projection_weight(x_proj_weight: torch.Tensor, nstate: int) -> torch.Tensor:
    """(CT, D) weight whose product with the tokens gives ``x_dbl`` in the kernels' layout.

    Columns of ``x_dbl`` (per token): ``[B (K*N) | C (K*N) | dt (K*RP) | 0]``, direction-major,
    the low-rank dt zero-padded to ``RP`` columns. B and C rows of a token are then 32-byte
    aligned vectors, and the whole row, ``K * (2N + RP)`` elements, is zero-padded to ``CT``, a
    multiple of :data:`ROW_ALIGN`.
    """
    num_dirs, rows, num_ch = x_proj_weight.shape
    rank = rows - 2 * nstate
    rp = _rank_pad(rank)
    w_b = x_proj_weight[:, rank:rank + nstate].reshape(num_dirs * nstate, num_ch)
    w_c = x_proj_weight[:, rank + nstate:].reshape(num_dirs * nstate, num_ch)
    w_dt = torch.nn.functional.pad(x_proj_weight[:, :rank], (0, 0, 0, rp - rank))
    weight = torch.cat([w_b, w_c, w_dt.reshape(num_dirs * rp, num_ch)], 0)
    extra = _dbl_width(num_dirs, nstate, rank) - weight.shape[0]
    # the released models' rows need no padding: no copy of the weight on each call for them
    return torch.nn.functional.pad(weight, (0, 0, 0, extra)) if extra else weight


def project(x_cl: torch.Tensor, x_proj_weight: torch.Tensor, nstate: int) -> torch.Tensor:
    """``x_dbl`` (B, L, CT) of channels-last tokens ``x_cl`` (B, L, D), see projection_weight."""
    return torch.matmul(x_cl, projection_weight(x_proj_weight, nstate).t())


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the projection GEMMs take their inputs in: the autocast dtype where autocast is
    on for x's device type, else ``promote(x.dtype, weight.dtype)``."""
    kind = x.device.type
    if kind in ('cuda', 'cpu') and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return torch.promote_types(x.dtype, weight.dtype)


@lru_cache(maxsize=None)
def _mm_out_dtype_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch has ``mm(..., out_dtype=float32)`` for half inputs on ``device``."""
    try:
        a = torch.zeros(2, 2, device=device, dtype=dtype)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (2-D) accumulated and returned in fp32, inputs in their own (half) dtype: one
    GEMM with an fp32 result where torch has it (``mm(out_dtype=)``), else cast after."""
    if a.dtype in (torch.float16, torch.bfloat16) and _mm_out_dtype_works(a.device, a.dtype):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b).float()


def project_fp32(x_cl: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x_dbl = x_cl @ weight^T`` (B, L, CT) in fp32 from inputs in ``dtype`` (autocast off).

    The kernels then read B, C and dt without unpacking half values (about a fifth of the
    forward loop's instructions), and nothing of this size is saved for the backward (it is
    recomputed there: one GEMM).
    """
    batch, length, num_ch = x_cl.shape
    with torch.autocast(x_cl.device.type, enabled=False):
        out = _mm_fp32(x_cl.reshape(batch * length, num_ch).to(dtype), weight.to(dtype).t())
    return out.view(batch, length, weight.shape[0])


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
                 c_strides, a2, dskip, bias, softplus, tables, length, batch, num_dirs, num_ch,
                 rank, nstate, config):
        self.u, self.u_strides = u, u_strides
        self.dt, self.dt_strides, self.delta_full = dt, dt_strides, delta_full
        self.w, self.bmat, self.b_strides, self.cmat, self.c_strides = (w, bmat, b_strides,
                                                                         cmat, c_strides)
        self.a2, self.dskip, self.bias, self.softplus = a2, dskip, bias, softplus
        self.tables = tables  # ScanTables, or None: natural order of ``length`` steps
        self.length = length
        self.config = config
        self.batch, self.num_dirs, self.num_ch = batch, num_dirs, num_ch
        self.rank, self.nstate = rank, nstate
        self.rp = _rank_pad(rank) if not delta_full else 4
        self.summaries = None  # (segs, seg_len, hs, ds) of a forward with sequence segments
        if nstate & (nstate - 1):
            raise ValueError(f'The Triton scan needs a power-of-two state size, got N={nstate}.')

    @property
    def softplus_mode(self):
        """0: no softplus; 1: accurate log2; 2: SFU log2 and a log1p series
        (``ScanConfig.inline_asm``; never in Triton's interpreter, which has no inline
        assembly)."""
        if not self.softplus:
            return 0
        return 2 if self.config.inline_asm and not interpreting() else 1

    @property
    def identity(self):
        return self.tables is None

    def table_args(self):
        if self.tables is None:
            lengths = torch.full((self.num_dirs, ), self.length, dtype=torch.int32,
                                 device=self.u.device)
            return [lengths, lengths, lengths, 0], self.length, self.length, False
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
                    SOFTPLUS=self.softplus_mode, IDENTITY=self.identity)

    def forward(self, y, y_strides):
        """Write y (scan outputs at natural positions).

        With sequence segments, the segment start states and delta sums stay in
        ``self.summaries`` (a few MB: segments are used only when programs are few), so that a
        backward on the same segmentation skips its own summary pass.
        """
        fwd = self.config.fwd
        _, lmax, _, _ = self.table_args()
        nblk = cdiv(self.num_ch, fwd.CH * fwd.DL)
        # segment lengths on the backward's checkpoint spacing, so the summaries can be reused
        segs, seg_len = self.segments(nblk, lmax, self.config.ck_spacing)
        if segs > 1:
            hs, ds = self._summaries(segs, seg_len, self.config.bwd.T)
            self.summaries = (segs, seg_len, hs, ds)
        else:
            hs = ds = self.a2
        self._fwd_launch(nblk, segs, seg_len, self.config.bwd.T, y=y, y_strides=y_strides,
                         hs=hs, ds=ds, load_h0=segs > 1)

    def segments(self, nblk, lmax, chunk):
        """(number of segments, steps per segment) for ``nblk`` channel blocks per direction."""
        programs = self.batch * self.num_dirs * nblk
        target = self.config.target_programs
        minimum = max(chunk, self.config.min_segment)
        full = cdiv(lmax, chunk) * chunk
        if programs >= target or lmax <= 2 * minimum:
            return 1, full
        segs = min(cdiv(target, programs), cdiv(lmax, minimum))
        seg_len = cdiv(cdiv(lmax, segs), chunk) * chunk
        return cdiv(lmax, seg_len), seg_len

    def _fwd_launch(self, nblk, segs, seg_len, chunk, y=None, y_strides=None, ck=None, hs=None,
                    ds=None, summary=False, load_h0=False):
        tables, lmax, num_tokens, separate = self.table_args()
        grid = (self.batch * self.num_dirs, nblk, segs)
        dummy = self.a2
        fwd = self.config.fwd
        _kernels().scan_fwd_kernel[grid](
            *self.common(), dummy if y is None else y, *(y_strides or (0, ) * 4),
            dummy if ck is None else ck, 0 if ck is None else ck.shape[2],
            dummy if hs is None else hs, dummy if ds is None else ds, segs, seg_len, *tables,
            self.num_dirs, self.num_ch, self.rank, num_tokens, **self.flags(),
            SEPARATE_SCATTER=separate, STORE_Y=y is not None, STORE_CK=ck is not None,
            SUMMARY=summary, LOAD_H0=load_h0, T=chunk, **fwd.constexprs(),
            **fwd.launch_options())

    def _summaries(self, segs, seg_len, chunk):
        """Segment start states (B, K, S, N, D) and per-segment delta sums (B, K, S, D)."""
        dev = self.u.device
        fwd = self.config.fwd
        nblk = cdiv(self.num_ch, fwd.CH * fwd.DL)
        hs = self.segment_states(segs)
        ds = torch.empty((self.batch, self.num_dirs, segs, self.num_ch), dtype=torch.float32,
                         device=dev)
        self._fwd_launch(nblk, segs, seg_len, chunk, hs=hs, ds=ds, summary=True)
        self._combine(hs, ds, segs, reverse=False)
        return hs, ds

    def _combine(self, buf, ds, segs, reverse):
        fwd = self.config.fwd
        grid = (self.batch * self.num_dirs, cdiv(self.num_ch, fwd.CH * fwd.DL))
        _kernels().segment_combine_kernel[grid](
            self.a2, buf, ds, segs, self.num_dirs, self.num_ch, 1, N=self.nstate,
            REVERSE=reverse, **fwd.constexprs(), **fwd.launch_options())

    def backward(self, dy, dy_strides, du, du_strides, du_atomic, ddt, ddt_strides, db,
                 db_strides, dc, dc_strides):
        """Checkpoint pass(es) + backward kernel. Returns the partials (da, dd, dbias, dw)."""
        groups = self.backward_groups()
        if groups == 1:
            return self._backward_group(dy, dy_strides, du, du_strides, du_atomic, ddt,
                                        ddt_strides, db, db_strides, dc, dc_strides)
        parts = []
        for b0, b1 in batch_ranges(self.batch, cdiv(self.batch, groups)):
            sub = copy.copy(self)
            sub.batch = b1 - b0
            for name in ('u', 'dt', 'bmat', 'cmat'):
                setattr(sub, name, getattr(self, name)[b0:b1])
            parts.append(sub._backward_group(dy[b0:b1], dy_strides, du[b0:b1], du_strides,
                                             du_atomic, ddt[b0:b1], ddt_strides, db[b0:b1],
                                             db_strides, dc[b0:b1], dc_strides))
        return sum_group_partials(parts)

    def backward_groups(self) -> int:
        """Batch groups of the backward. The checkpoints (an fp32 state every ``ck_spacing``
        steps) are its transient memory; past ``ck_max_bytes`` the batch is processed in
        groups (same kernels, fewer programs each)."""
        lmax = self.table_args()[1]
        ck_bytes = 4 * self.batch * self.num_dirs * self.nstate * self.num_ch * cdiv(
            lmax, self.config.ck_spacing)
        return min(self.batch, max(1, math.ceil(ck_bytes / self.config.ck_max_bytes)))

    def segment_states(self, segs: int) -> torch.Tensor:
        """An empty (B, K, S, N, D) fp32 buffer of per-segment states."""
        return torch.empty((self.batch, self.num_dirs, segs, self.nstate, self.num_ch),
                           dtype=torch.float32, device=self.u.device)

    def checkpoints(self, fblk, segs, seg_len, chunk):
        """The backward's checkpoint pass: (B, K, C, N, D) fp32 states every ``chunk`` steps.
        With sequence segments it starts from the segment start states, those of the forward
        where the segmentation matches (else recomputed: a batch group of the backward, or
        another segmentation). Returns (checkpoints, the segment delta sums or None)."""
        num_ck = cdiv(self.table_args()[1], chunk)
        ck = torch.empty((self.batch, self.num_dirs, num_ck, self.nstate, self.num_ch),
                         dtype=torch.float32, device=self.u.device)
        if segs == 1:
            self._fwd_launch(fblk, 1, seg_len, chunk, ck=ck)
            return ck, None
        saved = self.summaries
        if saved is not None and saved[:2] == (segs, seg_len) and saved[2].shape[0] == self.batch:
            hs, ds = saved[2:]  # from the forward (same segments, same inputs)
        else:
            hs, ds = self._summaries(segs, seg_len, chunk)
        self._fwd_launch(fblk, segs, seg_len, chunk, ck=ck, hs=hs, ds=ds, load_h0=True)
        return ck, ds

    def bwd_partials(self, segs):
        """Empty per-(batch, segment) partial sums of the backward kernels: da (P, N), dd (P),
        dbias (P), ``P = B * S * K * D``, and the low-rank dW (B * S, K, RP, D) (``da`` as a
        placeholder for the full delta)."""
        dev = self.u.device
        parts = self.batch * segs * self.num_dirs * self.num_ch
        da = torch.empty((parts, self.nstate), dtype=torch.float32, device=dev)
        dd = torch.empty((parts, ), dtype=torch.float32, device=dev)
        dbias = torch.empty((parts, ), dtype=torch.float32, device=dev)
        dw = (torch.empty((self.batch * segs, self.num_dirs, self.rp, self.num_ch),
                          dtype=torch.float32, device=dev) if not self.delta_full else da)
        return da, dd, dbias, dw

    def reduce_partials(self, da, dd, dbias, dw, segs):
        """Sums of :meth:`bwd_partials` over batch and segments: da (K*D, N), dd, dbias
        (K*D), dW (K, RP, D) or None."""
        shape = (self.batch * segs, self.num_dirs * self.num_ch)
        return (da.view(*shape, self.nstate).sum(0), dd.view(shape).sum(0),
                dbias.view(shape).sum(0), None if self.delta_full else dw.sum(0))

    def bwd_reduce_scatter(self) -> bool:
        """Whether the backward kernels sum over channels with the lane reduce-scatter
        (``USE_RS``): one warp of 32 lanes along the channels, rank and state at most 64 / 32."""
        bwd = self.config.bwd
        return (bwd.DL == 32 and bwd.launch_options()['num_warps'] == 1 and self.rp <= 64
                and self.nstate <= 32)

    def _backward_group(self, dy, dy_strides, du, du_strides, du_atomic, ddt, ddt_strides, db,
                        db_strides, dc, dc_strides):
        kern = _kernels()
        fwd, bwd = self.config.fwd, self.config.bwd
        chunk = self.config.ck_spacing
        tables, lmax, num_tokens, separate = self.table_args()
        nblk = cdiv(self.num_ch, bwd.CH * bwd.DL)
        fblk = cdiv(self.num_ch, fwd.CH * fwd.DL)
        segs, seg_len = self.segments(nblk, lmax, chunk)
        ck, ds = self.checkpoints(fblk, segs, seg_len, chunk)
        if segs > 1:
            es = self.segment_states(segs)
            sargs = [self.u, *self.u_strides, self.dt, *self.dt_strides,
                     self.a2 if self.w is None else self.w, self.cmat, *self.c_strides, self.a2,
                     self.a2 if self.bias is None else self.bias, 1, dy, *dy_strides, es, segs,
                     seg_len, *tables, self.num_dirs, self.num_ch, self.rank, num_tokens]
            kern.scan_rev_summary_kernel[(self.batch * self.num_dirs, fblk, segs)](
                *sargs, N=self.nstate, RP=self.rp, DELTA_FULL=self.delta_full,
                HAS_BIAS=self.bias is not None, SOFTPLUS=self.softplus_mode,
                IDENTITY=self.identity, SEPARATE_SCATTER=separate, **fwd.constexprs(),
                **fwd.launch_options())
            self._combine(es, ds, segs, reverse=True)
        else:
            es = self.a2
        da, dd, dbias, dw = partials = self.bwd_partials(segs)
        grid = (self.batch * self.num_dirs, nblk, segs)
        kern.scan_bwd_kernel[grid](
            *self.common(), dy, *dy_strides, du, *du_strides, ddt, *ddt_strides, db,
            *db_strides, dc, *dc_strides, da, dd, dbias, dw, ck, ck.shape[2], es, segs, seg_len,
            *tables, self.num_dirs, self.num_ch, self.rank, num_tokens, **self.flags(),
            SEPARATE_SCATTER=separate, DU_ATOMIC=du_atomic, LOAD_E=segs > 1,
            USE_RS=self.bwd_reduce_scatter(),
            ASM_DECAY=self.config.inline_asm and not interpreting(),
            CKM=self.config.ck_every, T=bwd.T, **bwd.constexprs(), **bwd.launch_options())
        return self.reduce_partials(*partials, segs)


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


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scan outputs are stored in the input's dtype for fp16 / bf16 inputs, else in fp32."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def local_scan_forward(x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds, tables, nstate,
                       config: ScanConfig = DEFAULT_SCAN_CONFIG, delta_dtype=None):
    """Forward of the fused scan given channels-last tokens and their projection.

    Args:
        x_cl: (B, L, D) tokens in natural order; x_dbl: (B, L, CT) from :func:`project`;
        dt_w: (K, D, R); dt_bias: (K, D); A_logs: (K * D, N); Ds: (K * D,);
        tables: :class:`~mmlocalmamba.ops.scan_orders.ScanTables`; nstate: N.
        delta_dtype: dtype of the delta GEMM for ranks above ``config.lowrank_max`` (None:
            x_dbl's).

    Returns:
        (y, saved): y (B, K, L, D) outputs at natural positions (in x_cl's dtype for fp16 /
        bf16 inputs, else float32; the state is fp32 either way); ``saved`` the derived
        fp32 parameter tables and segment summaries that :func:`local_scan_backward` can reuse
        (None: it recomputes them).
    """
    batch, num_tokens, num_ch = x_cl.shape
    num_dirs, _, rank = dt_w.shape
    full = rank > config.lowrank_max
    A, a2, dskip, bias, wt = _param_tables(A_logs, Ds, dt_bias, num_dirs, num_ch, nstate,
                                           None if full else dt_w, rank, _rank_pad(rank))
    prob = _scan_problem(x_cl, x_dbl, dt_w, wt, a2, dskip, bias, tables, nstate, full, config,
                         delta_dtype)
    y = torch.empty((batch, num_dirs, num_tokens, num_ch), dtype=_out_dtype(x_cl.dtype),
                    device=x_cl.device)
    prob.forward(y=y, y_strides=(y.stride(0), y.stride(1), y.stride(3), y.stride(2)))
    return y, (A, a2, dskip, bias, wt, prob.summaries)


def local_scan_backward(dy, x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds, tables, nstate,
                        config: ScanConfig = DEFAULT_SCAN_CONFIG, saved=None, delta_dtype=None):
    """Gradients (d x_cl, d x_dbl, d dt_w, d dt_bias, d A_logs, d Ds) of
    :func:`local_scan_forward` for the output gradient ``dy`` (B, K, L, D), any strides."""
    batch, num_tokens, num_ch = x_cl.shape
    num_dirs, _, rank = dt_w.shape
    full = rank > config.lowrank_max
    if saved is None:
        saved = _param_tables(A_logs, Ds, dt_bias, num_dirs, num_ch, nstate,
                              None if full else dt_w, rank, _rank_pad(rank)) + (None, )
    A, a2, dskip, bias, wt, summaries = saved
    prob = _scan_problem(x_cl, x_dbl, dt_w, wt, a2, dskip, bias, tables, nstate, full, config,
                         delta_dtype)
    prob.summaries = summaries
    dev = x_cl.device
    # dy arrives as (B, K, HW, D) with any strides; the kernel takes (b, k, d, l) strides.
    dys = dy.stride()
    du_atomic = config.du_atomic and num_dirs > 1
    if du_atomic:
        du = torch.zeros((batch, num_tokens, num_ch), dtype=torch.float32, device=dev)
        du_strides = (du.stride(0), 0, du.stride(2), du.stride(1))
    else:
        du = torch.empty((batch, num_dirs, num_tokens, num_ch), dtype=torch.float32,
                         device=dev)
        du_strides = (du.stride(0), du.stride(1), du.stride(3), du.stride(2))
    dxdbl = torch.zeros(x_dbl.shape, dtype=torch.float32, device=dev)
    b_strides, dt_strides = _dbl_strides(dxdbl, nstate, _rank_pad(rank))
    dbv, dcv, ddt = _dbl_views(dxdbl, num_dirs, nstate)
    if full:
        # every real token is visited once per direction: ddelta is fully written
        ddt = torch.empty(prob.dt.shape, dtype=torch.float32, device=dev)
        dt_strides = _full_delta_strides(ddt)
    da, dd, dbias, dw = prob.backward(dy, (dys[0], dys[1], dys[3], dys[2]), du, du_strides,
                                      du_atomic, ddt, dt_strides, dbv, b_strides, dcv,
                                      b_strides)
    if full:
        # delta_raw = dt @ W^T: the two GEMMs of its backward, in the forward GEMM's dtype
        dt = _dt_view(x_dbl, num_dirs, nstate, rank)
        gdt = delta_dtype or dt.dtype
        ddelta = ddt.to(gdt)
        with torch.autocast(dev.type, enabled=False):
            _dt_view(dxdbl, num_dirs, nstate, rank).copy_(
                torch.einsum('blkd,kdr->blkr', ddelta, dt_w.to(gdt)))
            d_w = torch.einsum('blkd,blkr->kdr', ddelta, dt.to(gdt))
    else:
        d_w = dw[:, :rank].transpose(1, 2)
    dx = du if du_atomic else du.sum(1)
    d_alog = (da * A).to(A_logs.dtype)
    return (dx.to(x_cl.dtype), dxdbl.to(x_dbl.dtype), d_w.to(dt_w.dtype),
            dbias.view_as(dt_bias).to(dt_bias.dtype), d_alog, dd.to(Ds.dtype))


class _LocalScanFn(torch.autograd.Function):
    """Autograd of the fused scan given channels-last x and the natural-order projection x_dbl
    (B, L, CT) in the layout of :func:`projection_weight`.

    Low dt ranks: the kernels project dt to delta in registers. Ranks above
    ``ScanConfig.lowrank_max``: ``delta_raw = dt @ dt_projs_weight^T`` (B, L, K, D) is one
    batched GEMM in the forward and again in the backward (recomputed, not saved), and the
    kernels read it.
    """

    @staticmethod
    def forward(ctx, x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds, tables, nstate, config):
        y, saved = local_scan_forward(x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds, tables, nstate,
                                      config)
        ctx.save_for_backward(x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds)
        ctx.tables, ctx.nstate, ctx.config = tables, nstate, config
        # derived fp32 tables and segment summaries: reused by the backward (small tensors)
        ctx.derived = saved
        return y

    @staticmethod
    def backward(ctx, dy):
        grads = local_scan_backward(dy, *ctx.saved_tensors, ctx.tables, ctx.nstate, ctx.config,
                                    ctx.derived)
        return grads + (None, None, None)


class _LocalScanTokensFn(torch.autograd.Function):
    """Autograd of the fused scan given channels-last tokens and the projection weight (the
    kernels' layout, :func:`projection_weight`): x_dbl is formed in fp32 by one GEMM from
    inputs in ``cdt`` (the caller's autocast dtype) and recomputed in the backward."""

    @staticmethod
    def forward(ctx, x_cl, w_proj, dt_w, dt_bias, A_logs, Ds, tables, nstate, config, cdt):
        x_dbl = project_fp32(x_cl, w_proj, cdt)
        y, saved = local_scan_forward(x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds, tables, nstate,
                                      config, cdt)
        ctx.save_for_backward(x_cl, w_proj, dt_w, dt_bias, A_logs, Ds)
        ctx.tables, ctx.nstate, ctx.config, ctx.cdt = tables, nstate, config, cdt
        ctx.derived = saved
        return y

    @staticmethod
    def backward(ctx, dy):
        x_cl, w_proj, dt_w, dt_bias, A_logs, Ds = ctx.saved_tensors
        grads = local_tokens_backward(dy, x_cl, w_proj, dt_w, dt_bias, A_logs, Ds, ctx.tables,
                                      ctx.nstate, ctx.config, ctx.cdt, ctx.derived)
        return tuple(grads) + (None, None, None, None)


def local_tokens_backward(dy, x_cl, w_proj, dt_w, dt_bias, A_logs, Ds, tables, nstate,
                          config=DEFAULT_SCAN_CONFIG, cdt=None, saved=None):
    """Gradients (d x_cl, d w_proj, d dt_w, d dt_bias, d A_logs, d Ds) of the scan of tokens
    ``x_cl`` (B, L, D) with the projection weight ``w_proj`` (CT, D) (see
    :class:`_LocalScanTokensFn`); the projection GEMM is recomputed."""
    cdt = cdt or torch.promote_types(x_cl.dtype, w_proj.dtype)
    x_dbl = project_fp32(x_cl, w_proj, cdt)
    dx_cl, dx_dbl, d_dtw, d_bias, d_alog, d_ds = local_scan_backward(
        dy, x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds, tables, nstate, config, saved, cdt)
    batch, length, num_ch = x_cl.shape
    g = dx_dbl.reshape(batch * length, -1).to(cdt)
    tokens = x_cl.reshape(batch * length, num_ch).to(cdt)
    with torch.autocast(x_cl.device.type, enabled=False):
        dx_cl = dx_cl + torch.mm(g, w_proj.to(cdt)).view_as(dx_cl).to(dx_cl.dtype)
        d_w = _mm_fp32(g.t(), tokens)
    return [dx_cl, d_w.to(w_proj.dtype), d_dtw, d_bias, d_alog, d_ds]


def _scan_problem(x_cl, x_dbl, dt_w, wt, a2, dskip, bias, tables, nstate, full, config,
                  delta_dtype=None):
    """The _Problem of one local scan (low-rank dt, or delta formed in full: see _LocalScanFn)."""
    if full:
        return _local_full_problem(x_cl, x_dbl, _full_delta(x_dbl, dt_w, nstate, delta_dtype),
                                   a2, dskip, bias, tables, nstate, config)
    num_dirs, _, rank = dt_w.shape
    return _local_problem(x_cl, x_dbl, wt, a2, dskip, bias, tables, rank, nstate, num_dirs,
                          config)


def _dt_view(x_dbl, num_dirs, nstate, rank):
    """(B, L, K, R) view of the low-rank dt columns of x_dbl."""
    kn = num_dirs * nstate
    rp = _rank_pad(rank)
    return x_dbl[..., 2 * kn:2 * kn + num_dirs * rp].unflatten(-1, (num_dirs, rp))[..., :rank]


def _full_delta(x_dbl, dt_w, nstate, dtype=None):
    """delta before bias and softplus, (B, L, K, D), in ``dtype`` (None: x_dbl's)."""
    dt = _dt_view(x_dbl, dt_w.shape[0], nstate, dt_w.shape[2])
    dtype = dtype or dt.dtype
    with torch.autocast(x_dbl.device.type, enabled=False):
        return torch.einsum('blkr,kdr->blkd', dt.to(dtype), dt_w.to(dtype))


def _full_delta_strides(delta):
    """(b, k, d, l) strides of a (B, L, K, D) tensor."""
    sb, sl, sk, sd = delta.stride()
    return (sb, sk, sd, sl)


def _local_full_problem(x_cl, x_dbl, delta_raw, a2, dskip, bias, tables, nstate, config):
    batch, num_tokens, num_ch = x_cl.shape
    num_dirs = delta_raw.shape[2]
    xs = x_cl.stride()
    b_strides, _ = _dbl_strides(x_dbl, nstate, 8)
    bv, cv, _ = _dbl_views(x_dbl, num_dirs, nstate)
    return _Problem(u=x_cl, u_strides=(xs[0], 0, xs[2], xs[1]), dt=delta_raw,
                    dt_strides=_full_delta_strides(delta_raw), delta_full=True, w=None, bmat=bv,
                    b_strides=b_strides, cmat=cv, c_strides=b_strides, a2=a2, dskip=dskip,
                    bias=bias, softplus=True, tables=tables, length=num_tokens, batch=batch,
                    num_dirs=num_dirs, num_ch=num_ch, rank=0, nstate=nstate, config=config)


def _dbl_strides(x_dbl, nstate, rp):
    """(b, k, n, l) strides of the B / C columns and (b, k, r, l) of the dt columns."""
    sb, sl, sc = x_dbl.stride()
    return (sb, nstate * sc, sc, sl), (sb, rp * sc, sc, sl)


def _dbl_views(x_dbl, num_dirs, nstate):
    """Views of x_dbl starting at its B, C and dt columns (the kernels' base pointers)."""
    kn = num_dirs * nstate
    return x_dbl[..., :kn], x_dbl[..., kn:2 * kn], x_dbl[..., 2 * kn:]


def _local_problem(x_cl, x_dbl, wt, a2, dskip, bias, tables, rank, nstate, num_dirs, config):
    batch, num_tokens, num_ch = x_cl.shape
    rp = _rank_pad(rank)
    width = _dbl_width(num_dirs, nstate, rank)
    if x_dbl.shape[-1] != width:
        raise ValueError(f'x_dbl must have {width} columns (see projection_weight), got '
                         f'{x_dbl.shape[-1]}.')
    xs = x_cl.stride()
    b_strides, dt_strides = _dbl_strides(x_dbl, nstate, rp)
    bv, cv, dtv = _dbl_views(x_dbl, num_dirs, nstate)
    return _Problem(u=x_cl, u_strides=(xs[0], 0, xs[2], xs[1]), dt=dtv, dt_strides=dt_strides,
                    delta_full=False, w=wt, bmat=bv, b_strides=b_strides, cmat=cv,
                    c_strides=b_strides, a2=a2, dskip=dskip, bias=bias, softplus=True,
                    tables=tables, length=num_tokens, batch=batch, num_dirs=num_dirs,
                    num_ch=num_ch, rank=rank, nstate=nstate, config=config)


def _check_local_args(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, tables):
    if x.dim() != 4:
        raise ValueError(f'x must be (B, D, H, W), got shape {tuple(x.shape)}.')
    num_dirs, num_ch = tables.gather.shape[0], x.shape[1]
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
    if x.shape[2] * x.shape[3] != tables.num_tokens:
        raise ValueError(f'The scan tables are for {tables.num_tokens} tokens, x has '
                         f'{x.shape[2]}x{x.shape[3]}.')
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f'The Triton scan takes float32, float16 or bfloat16 tensors, got '
                        f'{x.dtype} (the dispatcher computes float64 with the PyTorch path).')
    return num_dirs, num_ch, rank, nstate


def local_selective_scan_triton(x: torch.Tensor,
                                x_proj_weight: torch.Tensor,
                                dt_projs_weight: torch.Tensor,
                                dt_projs_bias: torch.Tensor,
                                A_logs: torch.Tensor,
                                Ds: torch.Tensor,
                                tables,
                                config: ScanConfig = DEFAULT_SCAN_CONFIG) -> torch.Tensor:
    """Fused K-direction scan of one LocalVMamba layer (see ``local_selective_scan``).

    Args:
        x: (B, D, H, W) CUDA tensor, fp32/fp16/bf16 (any memory format; channels-last avoids a
            copy).
        x_proj_weight: (K, R + 2N, D); dt_projs_weight: (K, D, R); dt_projs_bias: (K, D);
        A_logs: (K * D, N); Ds: (K * D,).
        tables: the directions' :class:`~mmlocalmamba.ops.scan_orders.ScanTables` for this
            grid, on x's device (:func:`~mmlocalmamba.ops.scan_orders.kernel_tables`).
        config: launch configuration.

    Returns:
        (B, K, H * W, D) scan outputs in row-major token order, in x's dtype for fp16 / bf16
        inputs, else float32.
    """
    num_dirs, num_ch, rank, nstate = _check_local_args(x, x_proj_weight, dt_projs_weight,
                                                       dt_projs_bias, A_logs, Ds, tables)
    if not x.is_cuda and not interpreting():
        raise RuntimeError(f'The Triton scan needs CUDA tensors, got x on {x.device}.')
    batch, _, height, width = x.shape
    x_cl = x.permute(0, 2, 3, 1).reshape(batch, height * width, num_ch)
    # Projection in natural order, columns [B | C | dt] (see projection_weight), formed in
    # fp32 inside the autograd Function.
    w_proj = projection_weight(x_proj_weight, nstate)
    return _LocalScanTokensFn.apply(x_cl, w_proj, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                                    tables, nstate, config, compute_dtype(x_cl, w_proj))


def scan_projected(x_cl, x_dbl, dt_projs_weight, dt_projs_bias, A_logs, Ds, tables, nstate,
                   config: ScanConfig = DEFAULT_SCAN_CONFIG):
    """The scan (autograd) given channels-last tokens ``x_cl`` (B, L, D) and their projection
    ``x_dbl`` (B, L, CT) from :func:`project`: (B, K, L, D) (dtype as
    :func:`local_scan_forward`)."""
    return _LocalScanFn.apply(x_cl, x_dbl, dt_projs_weight, dt_projs_bias, A_logs, Ds, tables,
                              nstate, config)


class _PlainScanFn(torch.autograd.Function):
    """Autograd of the plain selective scan (natural order, delta given in full)."""

    @staticmethod
    def forward(u, delta, A, B, C, D, delta_bias, softplus, config):
        prob, groups = _plain_problem(u, delta, A, B, C, D, delta_bias, softplus, config)
        y = torch.empty_like(u)
        prob.forward(y=y, y_strides=_group_strides(y, groups))
        return y

    @staticmethod
    def setup_context(ctx, inputs, output):  # (the form torch.func transforms accept)
        ctx.save_for_backward(*inputs[:7])
        ctx.softplus, ctx.config = inputs[7], inputs[8]

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        prob, groups = _plain_problem(u, delta, A, B, C, D, delta_bias, ctx.softplus,
                                      ctx.config)
        du = torch.empty(u.shape, dtype=torch.float32, device=u.device)
        ddelta = torch.empty(u.shape, dtype=torch.float32, device=u.device)
        dB = torch.zeros(B.shape, dtype=torch.float32, device=u.device)
        dC = torch.zeros(C.shape, dtype=torch.float32, device=u.device)
        da, dd, dbias, _ = prob.backward(dy, _group_strides(dy, groups), du,
                                         _group_strides(du, groups), False, ddelta,
                                         _group_strides(ddelta, groups), dB, _bc_strides(dB),
                                         dC, _bc_strides(dC))
        return (du.to(u.dtype), ddelta.to(delta.dtype), da.to(A.dtype), dB.to(B.dtype),
                dC.to(C.dtype), None if D is None else dd.to(D.dtype),
                None if delta_bias is None else dbias.to(delta_bias.dtype), None, None)


def _group_strides(t, groups):
    """(b, k, d, l) strides of a (B, G*D', L) tensor seen as G groups."""
    per = t.shape[1] // groups
    return (t.stride(0), per * t.stride(1), t.stride(1), t.stride(2))


def _bc_strides(t):
    if t.dim() == 3:
        return (t.stride(0), 0, t.stride(1), t.stride(2))
    return tuple(t.stride())


def _plain_problem(u, delta, A, B, C, D, delta_bias, softplus, config):
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
                    dskip=dskip, bias=bias, softplus=softplus, tables=None, length=length,
                    batch=batch, num_dirs=groups, num_ch=num_ch, rank=0, nstate=nstate,
                    config=config)
    return prob, groups


def selective_scan_triton(u: torch.Tensor,
                          delta: torch.Tensor,
                          A: torch.Tensor,
                          B: torch.Tensor,
                          C: torch.Tensor,
                          D: Optional[torch.Tensor] = None,
                          delta_bias: Optional[torch.Tensor] = None,
                          softplus: bool = False,
                          config: ScanConfig = DEFAULT_SCAN_CONFIG) -> torch.Tensor:
    """Selective scan on the GPU; shapes and semantics of ``selective_scan_torch``
    (fp32 / fp16 / bf16 inputs; the state is fp32)."""
    if u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f'The Triton scan takes float32, float16 or bfloat16 tensors, got '
                        f'{u.dtype} (the dispatcher computes float64 with the PyTorch path).')
    if not u.is_cuda and not interpreting():
        raise RuntimeError(f'The Triton scan needs CUDA tensors, got u on {u.device}.')
    return _PlainScanFn.apply(u, delta, A, B, C, D, delta_bias, softplus, config)
