"""Fused multi-direction selective scan on the GPU (Triton), forward and backward.

Public entry points (the ``'triton'`` backend of :mod:`mmlocalmamba.ops.selective_scan` and
:mod:`mmlocalmamba.ops.local_scan`):

* :func:`local_selective_scan_triton` -- the whole K-direction scan of one LocalVMamba layer,
  same arguments and results as :func:`mmlocalmamba.ops.local_scan.local_selective_scan`.
* :func:`selective_scan_triton` -- a plain selective scan (``u, delta, A, B, C, D``).
* :func:`is_available` -- True when triton imports and CUDA is usable.
* :func:`scan_tables` -- the int32 index tables the kernels walk (pure PyTorch, runs anywhere).

How the local scan runs (see ``_triton_scan_v3`` for the kernels):

1. ``x`` (B, D, H, W) is read channels-last, ``(B, H*W, D)`` (a view when the tensor is in
   ``torch.channels_last`` format, one copy otherwise).
2. ``x_dbl = x @ W^T`` in natural token order, ``(B, H*W, CT)`` by one GEMM, its columns
   ``[B | C | dt]`` per direction (:func:`projection_weight`). This equals the official
   per-direction projection of the scanned sequence at every real token, because the
   projection acts per token; padding tokens are handled in the kernel. For dt ranks above
   ``v3_lowrank_max`` the full ``delta = dt @ dt_projs_weight^T`` is one more batched GEMM.
3. One launch scans all K directions: one step at a time, a program reads the step's token
   through the direction's index table, computes ``delta = softplus(dt_projs_weight[k] @ dt +
   bias)`` in registers, updates its fp32 state tile (channels x states) and writes ``y`` at the
   token's natural position, ``(B, K, H*W, D)`` fp32. Small batches cut the scan order into
   segments scanned in parallel (summary pass, carry combine, output pass).
4. Backward: a forward pass writes the state every ``v3_ck_every * T`` steps (transient
   buffer, in batch groups above ``v3_ck_max_bytes``), then one launch runs the reverse
   recurrence per chunk of ``T`` steps with the chunk's states recomputed into registers; sums
   over channels (dB, dC, d dt) are reduce-scattered across lanes and added atomically.

Triton is imported only when a kernel is first needed, so this module imports without triton.
"""
import copy
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

#: Launch configuration (tuned on an H100, see docs/kernel_notes.md). A program
#: (``num_warps`` = 1) owns ``CH * DL`` channels; ``DL`` lanes go along channels and ``32 / DL``
#: along states (``DL = 32``: a thread owns a channel and all its states).
#: ``v3_fwd``: forward, checkpoint and summary passes (``maxnreg=80``: 25 one-warp programs per
#: SM instead of 19, so the 3,072 programs of stage 1 at batch 128 run in one wave; 0-72 bytes
#: of spills; stage-1 forward 5.2 -> 4.0-4.3 ms); ``v3_bwd``: backward (``T`` = steps whose
#: states are recomputed into registers per chunk; the channel sums use a lane reduce-scatter
#: when ``DL = 32``). ``v3_target_programs``: below this many programs, the scan order is cut
#: into segments that run in parallel (at least ``v3_min_segment`` steps each).
#: ``v3_lowrank_max``: dt ranks up to this are projected to delta inside the kernels (the
#: (RP, D) weight stays in registers); above it, delta = dt @ W^T is one batched GEMM outside
#: and the kernels read it in full (stages 3 and 4 of LocalVMamba-T, ranks 24 and 48).
#: ``v3_recompute_decay``: the backward recomputes exp2(delta * A) in its reverse pass instead of
#: keeping the recompute pass's values (fewer registers, more SFU work).
#: ``v3_dbl_fp32``: the kernels read B, C and dt from an fp32 copy of x_dbl (no bf16 unpacking:
#: 366 instead of 470 instructions per two forward steps at 80 registers). Measured without a
#: register cap: slower (128 registers). At ``maxnreg=80``: scan forward 4-15% faster, but
#: inference +1% and training -1.4% for the whole model (the copy pass), so it stays off.
#: ``v3_ck_every``: checkpoints every ``v3_ck_every * T`` steps (a chunk between two checkpoints
#: first advances from the previous one: half the checkpoint memory for 1/4 more recompute).
#: ``v3_ck_max_bytes``: above this checkpoint size the backward runs in batch groups (fewer
#: programs per launch, and segments when they get few: ~5 ms more per stage-1 layer at
#: batch 128). 4 GB keeps batch 128 at 224x224 in one group (2.5 GB at stage 1); it did not
#: move the training peak of LocalVMamba-T (15.8 GiB either way).
#: ``v3_fast_softplus``: softplus through the SFU's log2 and a log1p series (see ``_softplus`` in
#: ``_triton_scan_v3``; ~15 instructions less per step and channel).
#: ``v3_reuse_summaries``: with sequence segments, the backward takes the segment start states
#: of the forward instead of rerunning the summary pass (one launch pair and one pass over the
#: sequence less per layer; 800x1344 images).
#: ``du_atomic``: the backward adds the K directions' input gradients atomically into one buffer
#: instead of writing K buffers and summing them.
KERNEL_CONFIG = {
    'v3_fwd': dict(CH=1, DL=32, num_warps=1, maxnreg=80),
    'v3_bwd': dict(CH=1, DL=32, T=4, num_warps=1),
    'v3_target_programs': 2048,
    'v3_min_segment': 64,
    'v3_recompute_decay': True,
    'v3_lowrank_max': 16,
    'v3_dbl_fp32': False,
    'v3_ck_every': 2,
    'v3_ck_max_bytes': 4e9,
    'du_atomic': True,
    'v3_reuse_summaries': True,
    'v3_fast_softplus': True,
    'x_channels_last': True,
}
# Developer override, e.g. MMLOCALMAMBA_TRITON_CONFIG='{"v3_bwd": {"CH": 1, "DL": 8, "T": 8,
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


def _kernels_v3():
    from . import _triton_scan_v3
    return _triton_scan_v3


def _interpreting() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def _rank_pad(rank: int) -> int:
    """Padded rank of the low-rank dt (a power of two, at least 8: one 16-byte bf16 vector)."""
    return _pow2(rank, 8)


def projection_weight(x_proj_weight: torch.Tensor, nstate: int) -> torch.Tensor:
    """(CT, D) weight whose product with the tokens gives ``x_dbl`` in the kernels' layout.

    Columns of ``x_dbl`` (per token): ``[B (K*N) | C (K*N) | dt (K*RP)]``, direction-major, the
    low-rank dt zero-padded to ``RP`` columns. B and C rows of a token are then 32-byte aligned
    vectors, and the whole row is ``CT = K * (2N + RP)`` elements.
    """
    num_dirs, rows, num_ch = x_proj_weight.shape
    rank = rows - 2 * nstate
    rp = _rank_pad(rank)
    w_b = x_proj_weight[:, rank:rank + nstate].reshape(num_dirs * nstate, num_ch)
    w_c = x_proj_weight[:, rank + nstate:].reshape(num_dirs * nstate, num_ch)
    w_dt = torch.nn.functional.pad(x_proj_weight[:, :rank], (0, 0, 0, rp - rank))
    return torch.cat([w_b, w_c, w_dt.reshape(num_dirs * rp, num_ch)], 0)


def project(x_cl: torch.Tensor, x_proj_weight: torch.Tensor, nstate: int) -> torch.Tensor:
    """``x_dbl`` (B, L, CT) of channels-last tokens ``x_cl`` (B, L, D), see projection_weight."""
    return torch.matmul(x_cl, projection_weight(x_proj_weight, nstate).t())


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
        self.rp = _rank_pad(rank) if not delta_full else 4
        self.summaries = None  # (segs, seg_len, hs, ds) of a forward with sequence segments
        if nstate & (nstate - 1):
            raise ValueError(f'The Triton scan needs a power-of-two state size, got N={nstate}.')

    @property
    def softplus_mode(self):
        """0: no softplus; 1: accurate log2; 2: SFU log2 and a log1p series (``v3_fast_softplus``;
        not in Triton's interpreter, which has no inline assembly)."""
        if not self.softplus:
            return 0
        return 2 if KERNEL_CONFIG['v3_fast_softplus'] and not _interpreting() else 1

    @property
    def identity(self):
        # ScanTables is a tuple too: test its type, never compare its tensors with a string
        # (Tensor == str costs ~50 us of host time per call, 9 ms per 800x1344 training step).
        return not isinstance(self.tables, ScanTables)

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
                    SOFTPLUS=self.softplus_mode, IDENTITY=self.identity)

    def forward(self, y, y_strides):
        """Write y (scan outputs at natural positions).

        With sequence segments, the segment start states and delta sums stay in
        ``self.summaries`` (a few MB: segments are used only when programs are few), so that a
        backward on the same segmentation skips its own summary pass.
        """
        cfg, opts = _split_config('v3_fwd')
        cfg.pop('T', None)
        tbwd = KERNEL_CONFIG['v3_bwd']['T']
        tables, lmax, num_tokens, separate = self.table_args()
        nblk = triton_cdiv(self.num_ch, cfg['CH'] * cfg['DL'])
        # segment lengths on the backward's checkpoint spacing, so the summaries can be reused
        segs, seg_len = self.segments(nblk, lmax, tbwd * KERNEL_CONFIG['v3_ck_every'])
        if segs > 1:
            hs, ds = self._summaries(segs, seg_len, cfg, opts, tbwd)
            self.summaries = (segs, seg_len, hs, ds)
        else:
            hs = ds = self.a2
        self._fwd_launch(nblk, segs, seg_len, cfg, opts, tbwd, y=y, y_strides=y_strides, hs=hs,
                         ds=ds, load_h0=segs > 1)

    def segments(self, nblk, lmax, chunk):
        """(number of segments, steps per segment) for ``nblk`` channel blocks per direction."""
        programs = self.batch * self.num_dirs * nblk
        target = KERNEL_CONFIG['v3_target_programs']
        minimum = max(chunk, KERNEL_CONFIG['v3_min_segment'])
        full = triton_cdiv(lmax, chunk) * chunk
        if programs >= target or lmax <= 2 * minimum:
            return 1, full
        segs = min(triton_cdiv(target, programs), triton_cdiv(lmax, minimum))
        seg_len = triton_cdiv(triton_cdiv(lmax, segs), chunk) * chunk
        return triton_cdiv(lmax, seg_len), seg_len

    def _fwd_launch(self, nblk, segs, seg_len, cfg, opts, chunk, y=None, y_strides=None, ck=None,
                    hs=None, ds=None, summary=False, load_h0=False):
        kern = _kernels_v3()
        tables, lmax, num_tokens, separate = self.table_args()
        grid = (self.batch * self.num_dirs, nblk, segs)
        dummy = self.a2
        kern.v3_fwd_kernel[grid](
            *self.common(), dummy if y is None else y, *(y_strides or (0, ) * 4),
            dummy if ck is None else ck, 0 if ck is None else ck.shape[2],
            dummy if hs is None else hs, dummy if ds is None else ds, segs, seg_len, *tables,
            self.num_dirs, self.num_ch, self.rank, num_tokens, **self.flags(),
            SEPARATE_SCATTER=separate, STORE_Y=y is not None, STORE_CK=ck is not None,
            SUMMARY=summary, LOAD_H0=load_h0, T=chunk, **cfg, **opts)

    def _summaries(self, segs, seg_len, cfg, opts, chunk):
        """Segment start states (B, K, S, N, D) and per-segment delta sums (B, K, S, D)."""
        dev = self.u.device
        nblk = triton_cdiv(self.num_ch, cfg['CH'] * cfg['DL'])
        hs = torch.empty((self.batch, self.num_dirs, segs, self.nstate, self.num_ch),
                         dtype=torch.float32, device=dev)
        ds = torch.empty((self.batch, self.num_dirs, segs, self.num_ch), dtype=torch.float32,
                         device=dev)
        self._fwd_launch(nblk, segs, seg_len, cfg, opts, chunk, hs=hs, ds=ds, summary=True)
        self._combine(hs, ds, segs, reverse=False)
        return hs, ds

    def _combine(self, buf, ds, segs, reverse):
        kern = _kernels_v3()
        cfg, opts = _split_config('v3_fwd')
        cfg.pop('T', None)
        grid = (self.batch * self.num_dirs, triton_cdiv(self.num_ch, cfg['CH'] * cfg['DL']))
        kern.v3_combine_kernel[grid](self.a2, buf, ds, segs, self.num_dirs, self.num_ch, 1,
                                     N=self.nstate, REVERSE=reverse, **cfg, **opts)

    def backward(self, dy, dy_strides, du, du_strides, du_atomic, ddt, ddt_strides, db,
                 db_strides, dc, dc_strides):
        """Checkpoint pass(es) + backward kernel. Returns the partials (da, dd, dbias, dw)."""
        # The checkpoints (state every T steps) are the backward's transient memory; past
        # v3_ck_max_bytes the batch is processed in groups (same kernels, fewer programs each).
        lmax = self.table_args()[1]
        spacing = KERNEL_CONFIG['v3_bwd']['T'] * KERNEL_CONFIG['v3_ck_every']
        ck_bytes = 4 * self.batch * self.num_dirs * self.nstate * self.num_ch * triton_cdiv(
            lmax, spacing)
        groups = min(self.batch, max(1, math.ceil(ck_bytes / KERNEL_CONFIG['v3_ck_max_bytes'])))
        if groups == 1:
            return self._backward_v3(dy, dy_strides, du, du_strides, du_atomic, ddt,
                                     ddt_strides, db, db_strides, dc, dc_strides)
        per = triton_cdiv(self.batch, groups)
        parts = []
        for b0 in range(0, self.batch, per):
            sub = copy.copy(self)
            b1 = min(b0 + per, self.batch)
            sub.batch = b1 - b0
            for name in ('u', 'dt', 'bmat', 'cmat'):
                setattr(sub, name, getattr(self, name)[b0:b1])
            parts.append(sub._backward_v3(dy[b0:b1], dy_strides, du[b0:b1], du_strides,
                                          du_atomic, ddt[b0:b1], ddt_strides, db[b0:b1],
                                          db_strides, dc[b0:b1], dc_strides))
        return tuple(None if p[0] is None else sum(p) for p in zip(*parts))

    def _backward_v3(self, dy, dy_strides, du, du_strides, du_atomic, ddt, ddt_strides, db,
                     db_strides, dc, dc_strides):
        kern = _kernels_v3()
        fcfg, fopts = _split_config('v3_fwd')
        fcfg.pop('T', None)
        cfg, opts = _split_config('v3_bwd')
        ckm = KERNEL_CONFIG['v3_ck_every']
        chunk = cfg['T'] * ckm  # checkpoint spacing
        tables, lmax, num_tokens, separate = self.table_args()
        dev = self.u.device
        nblk = triton_cdiv(self.num_ch, cfg['CH'] * cfg['DL'])
        fblk = triton_cdiv(self.num_ch, fcfg['CH'] * fcfg['DL'])
        segs, seg_len = self.segments(nblk, lmax, chunk)
        num_ck = triton_cdiv(lmax, chunk)
        ck = torch.empty((self.batch, self.num_dirs, num_ck, self.nstate, self.num_ch),
                         dtype=torch.float32, device=dev)
        if segs > 1:
            saved = self.summaries
            if (KERNEL_CONFIG['v3_reuse_summaries'] and saved is not None
                    and saved[:2] == (segs, seg_len) and saved[2].shape[0] == self.batch):
                hs, ds = saved[2:]  # from the forward (same segments, same inputs)
            else:
                hs, ds = self._summaries(segs, seg_len, fcfg, fopts, chunk)
            self._fwd_launch(fblk, segs, seg_len, fcfg, fopts, chunk, ck=ck, hs=hs, ds=ds,
                             load_h0=True)
            del hs
            es = torch.empty((self.batch, self.num_dirs, segs, self.nstate, self.num_ch),
                             dtype=torch.float32, device=dev)
            sargs = [self.u, *self.u_strides, self.dt, *self.dt_strides,
                     self.a2 if self.w is None else self.w, self.cmat, *self.c_strides, self.a2,
                     self.a2 if self.bias is None else self.bias, 1, dy, *dy_strides, es, segs,
                     seg_len, *tables, self.num_dirs, self.num_ch, self.rank, num_tokens]
            kern.v3_rev_summary_kernel[(self.batch * self.num_dirs, fblk, segs)](
                *sargs, N=self.nstate, RP=self.rp, DELTA_FULL=self.delta_full,
                HAS_BIAS=self.bias is not None, SOFTPLUS=self.softplus_mode,
                IDENTITY=self.identity,
                SEPARATE_SCATTER=separate, **fcfg, **fopts)
            self._combine(es, ds, segs, reverse=True)
        else:
            es = self.a2
            self._fwd_launch(fblk, 1, seg_len, fcfg, fopts, chunk, ck=ck)
        parts = self.batch * segs * self.num_dirs * self.num_ch
        da = torch.empty((parts, self.nstate), dtype=torch.float32, device=dev)
        dd = torch.empty((parts, ), dtype=torch.float32, device=dev)
        dbias = torch.empty((parts, ), dtype=torch.float32, device=dev)
        dw = (torch.empty((self.batch * segs, self.num_dirs, self.rp, self.num_ch),
                          dtype=torch.float32, device=dev) if not self.delta_full else da)
        grid = (self.batch * self.num_dirs, nblk, segs)
        kern.v3_bwd_kernel[grid](
            *self.common(), dy, *dy_strides, du, *du_strides, ddt, *ddt_strides, db,
            *db_strides, dc, *dc_strides, da, dd, dbias, dw, ck, num_ck, es, segs, seg_len,
            *tables, self.num_dirs, self.num_ch, self.rank, num_tokens, **self.flags(),
            SEPARATE_SCATTER=separate, DU_ATOMIC=du_atomic, LOAD_E=segs > 1,
            USE_RS=(cfg['DL'] == 32 and opts.get('num_warps', 4) == 1 and self.rp <= 64
                    and self.nstate <= 32),
            RECOMPUTE_DECAY=KERNEL_CONFIG['v3_recompute_decay'] and not _interpreting(),
            CKM=ckm, **cfg, **opts)
        shape = (self.batch * segs, self.num_dirs * self.num_ch)
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
    """Autograd of the fused scan given channels-last x and the natural-order projection x_dbl
    (B, L, CT) in the layout of :func:`projection_weight`.

    Low dt ranks: the kernels project dt to delta in registers. ``full`` (ranks above
    ``v3_lowrank_max``): ``delta_raw = dt @ dt_projs_weight^T`` (B, L, K, D) is one batched GEMM
    in the forward and again in the backward (recomputed, not saved), and the kernels read it.
    """

    @staticmethod
    def forward(ctx, x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds, tables, nstate, full):
        batch, num_tokens, num_ch = x_cl.shape
        num_dirs, _, rank = dt_w.shape
        A, a2, dskip, bias, wt = _param_tables(A_logs, Ds, dt_bias, num_dirs, num_ch, nstate,
                                               None if full else dt_w, rank, _rank_pad(rank))
        prob = _scan_problem(x_cl, x_dbl, dt_w, wt, a2, dskip, bias, tables, nstate, full)
        y = torch.empty((batch, num_dirs, num_tokens, num_ch), dtype=torch.float32,
                        device=x_cl.device)
        prob.forward(y=y, y_strides=(y.stride(0), y.stride(1), y.stride(3), y.stride(2)))
        ctx.save_for_backward(x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds)
        ctx.tables, ctx.nstate, ctx.full = tables, nstate, full
        # derived fp32 tables and segment summaries: reused by the backward (small tensors)
        ctx.derived = (A, a2, dskip, bias, wt, prob.summaries)
        return y

    @staticmethod
    def backward(ctx, dy):
        x_cl, x_dbl, dt_w, dt_bias, A_logs, Ds = ctx.saved_tensors
        nstate, full = ctx.nstate, ctx.full
        batch, num_tokens, num_ch = x_cl.shape
        num_dirs, _, rank = dt_w.shape
        A, a2, dskip, bias, wt, summaries = ctx.derived
        prob = _scan_problem(x_cl, x_dbl, dt_w, wt, a2, dskip, bias, ctx.tables, nstate, full)
        prob.summaries = summaries
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
            ddelta = ddt.to(dt.dtype)
            _dt_view(dxdbl, num_dirs, nstate, rank).copy_(
                torch.einsum('blkd,kdr->blkr', ddelta, dt_w.to(dt.dtype)))
            d_w = torch.einsum('blkd,blkr->kdr', ddelta, dt)
        else:
            d_w = dw[:, :rank].transpose(1, 2)
        dx = du if du_atomic else du.sum(1)
        d_alog = (da * A).to(A_logs.dtype)
        return (dx.to(x_cl.dtype), dxdbl.to(x_dbl.dtype), d_w.to(dt_w.dtype),
                dbias.view_as(dt_bias).to(dt_bias.dtype), d_alog, dd.to(Ds.dtype), None, None,
                None)


def _scan_problem(x_cl, x_dbl, dt_w, wt, a2, dskip, bias, tables, nstate, full):
    """The _Problem of one local scan (low-rank dt, or delta formed in full: see _LocalScanFn)."""
    if full:
        return _local_full_problem(x_cl, _kernel_dbl(x_dbl), _full_delta(x_dbl, dt_w, nstate), a2,
                                   dskip, bias, tables, nstate)
    num_dirs, _, rank = dt_w.shape
    return _local_problem(x_cl, _kernel_dbl(x_dbl), wt, a2, dskip, bias, tables, rank, nstate,
                          num_dirs)


def _kernel_dbl(x_dbl):
    """The x_dbl the kernels read (an fp32 copy if ``v3_dbl_fp32``; see KERNEL_CONFIG)."""
    if KERNEL_CONFIG['v3_dbl_fp32']:
        return x_dbl.float()
    return x_dbl


def _dt_view(x_dbl, num_dirs, nstate, rank):
    """(B, L, K, R) view of the low-rank dt columns of x_dbl."""
    kn = num_dirs * nstate
    return x_dbl[..., 2 * kn:].unflatten(-1, (num_dirs, _rank_pad(rank)))[..., :rank]


def _full_delta(x_dbl, dt_w, nstate):
    """delta before bias and softplus, (B, L, K, D), in x_dbl's dtype."""
    dt = _dt_view(x_dbl, dt_w.shape[0], nstate, dt_w.shape[2])
    return torch.einsum('blkr,kdr->blkd', dt, dt_w.to(dt.dtype))


def _full_delta_strides(delta):
    """(b, k, d, l) strides of a (B, L, K, D) tensor."""
    sb, sl, sk, sd = delta.stride()
    return (sb, sk, sd, sl)


def _local_full_problem(x_cl, x_dbl, delta_raw, a2, dskip, bias, tables, nstate):
    batch, num_tokens, num_ch = x_cl.shape
    num_dirs = delta_raw.shape[2]
    xs = x_cl.stride()
    b_strides, _ = _dbl_strides(x_dbl, nstate, 8)
    bv, cv, _ = _dbl_views(x_dbl, num_dirs, nstate)
    return _Problem(u=x_cl, u_strides=(xs[0], 0, xs[2], xs[1]), dt=delta_raw,
                    dt_strides=_full_delta_strides(delta_raw), delta_full=True, w=None, bmat=bv,
                    b_strides=b_strides, cmat=cv, c_strides=b_strides, a2=a2, dskip=dskip,
                    bias=bias, softplus=True, tables=tables, batch=batch, num_dirs=num_dirs,
                    num_ch=num_ch, rank=0, nstate=nstate)


def _dbl_strides(x_dbl, nstate, rp):
    """(b, k, n, l) strides of the B / C columns and (b, k, r, l) of the dt columns."""
    sb, sl, sc = x_dbl.stride()
    return (sb, nstate * sc, sc, sl), (sb, rp * sc, sc, sl)


def _dbl_views(x_dbl, num_dirs, nstate):
    """Views of x_dbl starting at its B, C and dt columns (the kernels' base pointers)."""
    kn = num_dirs * nstate
    return x_dbl[..., :kn], x_dbl[..., kn:2 * kn], x_dbl[..., 2 * kn:]


def _local_problem(x_cl, x_dbl, wt, a2, dskip, bias, tables, rank, nstate, num_dirs):
    batch, num_tokens, num_ch = x_cl.shape
    rp = _rank_pad(rank)
    if x_dbl.shape[-1] != num_dirs * (2 * nstate + rp):
        raise ValueError(f'x_dbl must have {num_dirs * (2 * nstate + rp)} columns (see '
                         f'projection_weight), got {x_dbl.shape[-1]}.')
    xs = x_cl.stride()
    b_strides, dt_strides = _dbl_strides(x_dbl, nstate, rp)
    bv, cv, dtv = _dbl_views(x_dbl, num_dirs, nstate)
    return _Problem(u=x_cl, u_strides=(xs[0], 0, xs[2], xs[1]), dt=dtv, dt_strides=dt_strides,
                    delta_full=False, w=wt, bmat=bv, b_strides=b_strides, cmat=cv,
                    c_strides=b_strides, a2=a2, dskip=dskip, bias=bias, softplus=True,
                    tables=tables, batch=batch, num_dirs=num_dirs, num_ch=num_ch, rank=rank,
                    nstate=nstate)


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
    # Projection in natural order, columns [B | C | dt] (see projection_weight).
    x_dbl = project(x_cl, x_proj_weight, nstate)
    return scan_projected(x_cl, x_dbl, dt_projs_weight, dt_projs_bias, A_logs, Ds, tables,
                          nstate)


def scan_projected(x_cl, x_dbl, dt_projs_weight, dt_projs_bias, A_logs, Ds, tables, nstate):
    """The scan (autograd) given channels-last tokens ``x_cl`` (B, L, D) and their projection
    ``x_dbl`` (B, L, CT) from :func:`project`: (B, K, L, D) float32."""
    full = dt_projs_weight.shape[-1] > KERNEL_CONFIG['v3_lowrank_max']
    return _LocalScanFn.apply(x_cl, x_dbl, dt_projs_weight, dt_projs_bias, A_logs, Ds, tables,
                              nstate, full)


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
        da, dd, dbias, _ = prob.backward(dy, _group_strides(dy, groups), du,
                                         _group_strides(du, groups), False, ddelta,
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
