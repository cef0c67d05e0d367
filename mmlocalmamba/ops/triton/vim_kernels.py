"""Triton kernels of the fused LocalVim layer (imported lazily, needs triton).

See :mod:`mmlocalmamba.ops.triton.vim` for the tensors and docs/kernel_notes.md ("LocalVim fused
path") for the design. Two families:

* **Conv kernels** (new): the causal depth-wise conv1d + SiLU of every direction, reading the
  in-projected tokens ``xz`` (B, T, 2Di) in place through the gather table and writing the conv
  output in scan order; its backward in scan order (d pre-activation, weight / bias partial
  sums); and the input gradient in natural token order, both halves of ``xz`` at once, each
  position written by one program (no atomics, deterministic). Tiles ``(BT, BD)``: steps or
  tokens x channels, channels contiguous.
* **Gated scan kernels**: the LocalVMamba scan kernels of :mod:`.scan_kernels` in one more mode,
  written from their helpers (program prologue, step loads, delta / softplus, state step, lane
  reduce-scatter) and with their work split, prefetch and chunked backward. The mode:

  - inputs (u = conv output, B, C, dt or delta) are **in scan order**: step ``t`` reads row
    ``t`` and is live below the direction's length. Window-padding steps are real steps (their
    conv output enters the state), as in the official LocalVim;
  - **the gate**: step ``t``'s output is ``y_t * SiLU(z[p])`` with ``p = gather[k, t]`` (z read in
    place from ``xz``; padding reads no z), stored at ``q = scatter[k, t]`` (dropped at padding);
    the backward recomputes ``y_t`` from its recomputed state (nothing saved), uses
    ``g_t = dout[q] * SiLU(z[p])`` and writes ``dout[q] * y_t`` at ``(k, b, p)`` for the dz sum.

  They could be folded into ``scan_fwd_kernel`` / ``scan_rev_summary_kernel`` /
  ``scan_bwd_kernel`` with two constexprs, ``SCAN_ORDER`` (input row ``t``, validity
  ``t < length``) and ``GATE`` (the z pointer and strides, the gated store and gradient). The
  checkpoint, segment-summary and combine passes need neither: they run the shared kernels
  unchanged, with the ``order`` table (step t reads row t) as their gather table.
"""
import triton
import triton.language as tl

from .jit_keys import settle_cache_keys
from .scan_kernels import (_SIZE_ARGS, _add_step_grads, _adjoint_step, _advance_state,
                           _bwd_segment_start, _delta, _fwd_step, _load_dskip, _load_in,
                           _load_vec, _prologue, _tok)

# As in .scan_kernels: the size integers that change with the image size (token and step
# counts, segments, checkpoint counts) and the batch are not specialised, so a new image size
# compiles no new variant (strides stay specialised; they are multiples of the channel counts).
_SIZE_ARGS_CONV = ['table_len', 'num_tokens']
_SIZE_ARGS_CONV_BWD = _SIZE_ARGS_CONV + ['batch']
_SIZE_ARGS_CONV_DX = ['num_tokens']
_SIZE_ARGS_SCAN = [a for a in _SIZE_ARGS if a != 'num_ck']  # the forward passes take no ck


@triton.jit
def _silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def _dsilu(x):
    """d SiLU(x) / dx = sig(x) (1 + x (1 - sig(x)))."""
    sig = tl.sigmoid(x)
    return sig * (1.0 + x * (1.0 - sig))


# ----------------------------------------------------------------------------- conv kernels
@triton.jit
def _conv_tap(xz_base, sxz_t, gidx_row, t, c, cmask, live, num_tokens, j, DC: tl.constexpr):
    """(BT, BD) fp32 input of tap ``j`` at steps ``t``: x at step ``t - DC + 1 + j`` of the
    direction, read through the gather table; 0 before the start, at padding and where the step
    is not live."""
    s = t - (DC - 1) + j
    pos = tl.load(gidx_row + s, mask=live & (s >= 0), other=num_tokens)
    ok = pos < num_tokens
    xv = tl.load(xz_base + tl.where(ok, pos, 0)[:, None] * sxz_t + c[None, :],
                 mask=ok[:, None] & cmask[None, :], other=0.0)
    return xv.to(tl.float32)


@triton.jit
def _conv_pre(xz_base, sxz_t, w_row, cb_row, gidx_row, t, c, cmask, live, num_tokens, num_ch,
              DC: tl.constexpr, HAS_CB: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """Pre-activation (BT, BD) of the causal depth-wise conv of one direction at steps ``t``."""
    acc = tl.zeros([BT, BD], tl.float32)
    for j in tl.static_range(DC):
        wj = tl.load(w_row + j * num_ch + c, mask=cmask, other=0.0)
        acc += _conv_tap(xz_base, sxz_t, gidx_row, t, c, cmask, live, num_tokens, j, DC) * wj[
            None, :]
    if HAS_CB:
        acc += tl.load(cb_row + c, mask=cmask, other=0.0)[None, :]
    return acc


@triton.jit(do_not_specialize=_SIZE_ARGS_CONV)
def vim_conv_fwd_kernel(xz_ptr, sxz_b, sxz_t, w_ptr, cb_ptr, xs_ptr, sxs_k, sxs_b, sxs_t,
                        gidx_ptr, len_ptr, table_len, num_tokens, num_dirs, num_ch,
                        DC: tl.constexpr, HAS_CB: tl.constexpr, BT: tl.constexpr,
                        BD: tl.constexpr):
    """Causal depth-wise conv1d + SiLU of every direction, written in scan order.

    ``xs[k, b, t, c] = SiLU(cb[k, c] + sum_j w[k, j, c] x[b, gather[k, t - DC + 1 + j], c])`` for
    ``t < length[k]`` and 0 for ``length[k] <= t < L``. ``x`` is channels ``0 .. Di-1`` of
    ``xz`` (B, T, 2Di) (channel stride 1); a step before the start or at a padding position
    (``gather == T``) reads 0. ``w``: (K, DC, Di) fp32; ``cb``: (K, Di) fp32.
    Grid: (cdiv(L, BT), B * K, cdiv(Di, BD)).
    """
    pid_bk = tl.program_id(1)
    b = (pid_bk // num_dirs).to(tl.int64)
    k = pid_bk % num_dirs
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(2) * BD + tl.arange(0, BD)
    cmask = c < num_ch
    live = t < tl.load(len_ptr + k)
    pre = _conv_pre(xz_ptr + b * sxz_b, sxz_t, w_ptr + k * DC * num_ch, cb_ptr + k * num_ch,
                    gidx_ptr + k * table_len, t, c, cmask, live, num_tokens, num_ch, DC, HAS_CB,
                    BT, BD)
    out = tl.where(live[:, None], _silu(pre), 0.0)
    base = xs_ptr + k.to(tl.int64) * sxs_k + b * sxs_b
    tl.store(base + t[:, None] * sxs_t + c[None, :], out,
             mask=(t < table_len)[:, None] & cmask[None, :])


@triton.jit(do_not_specialize=_SIZE_ARGS_CONV_BWD)
def vim_conv_bwd_kernel(xz_ptr, sxz_b, sxz_t, w_ptr, cb_ptr, du_ptr, sdu_k, sdu_b, sdu_t,
                        dg_ptr, sdg_k, sdg_b, sdg_t, part_ptr, gidx_ptr, len_ptr, table_len,
                        num_tokens, num_dirs, num_ch, batch, DC: tl.constexpr,
                        HAS_CB: tl.constexpr, HAS_DG: tl.constexpr, BT: tl.constexpr,
                        BD: tl.constexpr):
    """Backward of :func:`vim_conv_fwd_kernel` in scan order.

    ``d xs = du + dg`` (the scan's input gradient and the projection GEMM's, both (K, B, L, Di),
    any float dtypes, summed in fp32); writes ``dpre = d xs * SiLU'(pre)`` over ``du`` (steps
    below the length; ``du`` past it is not read or written), and the program's partial sums
    ``part[pid_t * B + b, k, j, c]`` of ``dpre * tap_j`` (j < DC: d w) and of ``dpre`` (j = DC:
    d bias), (cdiv(L, BT) * B, K, DC + 1, Di) fp32, summed by the caller (deterministic).
    Grid: as the forward.
    """
    pid_t = tl.program_id(0)
    pid_bk = tl.program_id(1)
    b = (pid_bk // num_dirs).to(tl.int64)
    k = pid_bk % num_dirs
    t = pid_t * BT + tl.arange(0, BT)
    c = tl.program_id(2) * BD + tl.arange(0, BD)
    cmask = c < num_ch
    live = t < tl.load(len_ptr + k)
    xz_base = xz_ptr + b * sxz_b
    gidx_row = gidx_ptr + k * table_len
    pre = _conv_pre(xz_base, sxz_t, w_ptr + k * DC * num_ch, cb_ptr + k * num_ch, gidx_row, t,
                    c, cmask, live, num_tokens, num_ch, DC, HAS_CB, BT, BD)
    m = live[:, None] & cmask[None, :]
    du_at = du_ptr + k.to(tl.int64) * sdu_k + b * sdu_b + t[:, None] * sdu_t + c[None, :]
    gsum = tl.load(du_at, mask=m, other=0.0).to(tl.float32)
    if HAS_DG:
        dg_at = dg_ptr + k.to(tl.int64) * sdg_k + b * sdg_b + t[:, None] * sdg_t + c[None, :]
        gsum += tl.load(dg_at, mask=m, other=0.0).to(tl.float32)
    dpre = gsum * _dsilu(pre)
    tl.store(du_at, dpre, mask=m)
    part = part_ptr + ((pid_t * batch + b) * num_dirs + k) * ((DC + 1) * num_ch) + c
    for j in tl.static_range(DC):
        xv = _conv_tap(xz_base, sxz_t, gidx_row, t, c, cmask, live, num_tokens, j, DC)
        tl.store(part + j * num_ch, tl.sum(dpre * xv, axis=0), mask=cmask)
    tl.store(part + DC * num_ch, tl.sum(dpre, axis=0), mask=cmask)


@triton.jit(do_not_specialize=_SIZE_ARGS_CONV_DX)
def vim_conv_dx_kernel(dpre_ptr, sdp_k, sdp_b, sdp_t, w_ptr, gz_ptr, sgz_k, sgz_b, sgz_t,
                       xz_ptr, sxz_b, sxz_t, dxz_ptr, sdx_b, sdx_t, steps_ptr, len_ptr,
                       num_tokens, num_dirs, num_ch, DC: tl.constexpr, BT: tl.constexpr,
                       BD: tl.constexpr):
    """Both halves of ``d xz`` (B, T, 2Di) in natural token order, each position written once.

    ``d x[b, p, c] = sum_k sum_j w[k, j, c] dpre[k, b, s + DC - 1 - j, c]`` with
    ``s = steps[k, p]`` (the step that reads position p; terms past the length are 0), and
    ``d z[b, p, c] = SiLU'(z[b, p, c]) sum_k gz[k, b, p, c]`` (``gz``: (K, B, T, Di), the scan
    backward's ``dout * y`` at the position its z was read from). Sums in fp32.
    Grid: (cdiv(T, BT), B, cdiv(Di, BD)).
    """
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(2) * BD + tl.arange(0, BD)
    pm = p < num_tokens
    cmask = c < num_ch
    m = pm[:, None] & cmask[None, :]
    dx = tl.zeros([BT, BD], tl.float32)
    gzs = tl.zeros([BT, BD], tl.float32)
    dp_base = dpre_ptr + b * sdp_b  # advanced by one direction per iteration (64-bit pointers)
    gz_base = gz_ptr + b * sgz_b
    for k in range(0, num_dirs):
        s = tl.load(steps_ptr + k * num_tokens + p, mask=pm, other=0)
        length = tl.load(len_ptr + k)
        for j in tl.static_range(DC):
            tt = s + (DC - 1 - j)
            ok = pm & (tt < length)
            v = tl.load(dp_base + tl.where(ok, tt, 0)[:, None] * sdp_t + c[None, :],
                        mask=ok[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            wj = tl.load(w_ptr + (k * DC + j) * num_ch + c, mask=cmask, other=0.0)
            dx += v * wj[None, :]
        gzs += tl.load(gz_base + p[:, None] * sgz_t + c[None, :], mask=m, other=0.0).to(
            tl.float32)
        dp_base += sdp_k
        gz_base += sgz_k
    tok = p[:, None] * sxz_t + c[None, :]
    z = tl.load(xz_ptr + b * sxz_b + tok + num_ch, mask=m, other=0.0).to(tl.float32)
    out = dxz_ptr + b * sdx_b + p[:, None] * sdx_t + c[None, :]
    tl.store(out, dx, mask=m)
    tl.store(out + num_ch, gzs * _dsilu(z), mask=m)


# ----------------------------------------------------------------------------- gated scan
@triton.jit
def _bases(ptr, bidx, s_b, k, s_k, td, s_d):
    """Base pointer of one (batch, direction) of a per-channel tensor (64-bit direction
    offset) and the channel offsets of the state tile."""
    return ptr + bidx * s_b + k.to(tl.int64) * s_k, td * s_d


@triton.jit
def _load_at(base, off, s_l, p, num_tokens, dmask):
    """(DL,1,CH) per-channel values at position ``p`` (0 where ``p >= num_tokens``), fp32."""
    pv = p < num_tokens
    v = tl.load((base + tl.where(pv, p, 0) * s_l) + off, mask=dmask & pv, other=0.0)
    return v.to(tl.float32)


@triton.jit(do_not_specialize=_SIZE_ARGS_SCAN)
def vim_scan_fwd_kernel(
        x_ptr, sx_b, sx_k, sx_d, sx_l,
        dt_ptr, sdt_b, sdt_k, sdt_r, sdt_l,
        w_ptr,
        b_ptr, sb_b, sb_k, sb_n, sb_l,
        c_ptr, sc_b, sc_k, sc_n, sc_l,
        a2_ptr, dskip_ptr, bias_ptr, tab_sd,
        z_ptr, sz_b, sz_d, sz_l,
        y_ptr, sy_b, sy_k, sy_d, sy_l,
        hs_ptr, num_seg, seg_len,
        gidx_ptr, sidx_ptr, len_ptr, table_len,
        num_dirs, num_ch, rank, num_tokens,
        N: tl.constexpr, RP: tl.constexpr, CH: tl.constexpr, DL: tl.constexpr,
        DELTA_FULL: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr, SEPARATE_SCATTER: tl.constexpr, LOAD_H0: tl.constexpr):
    """Gated forward scan of one segment, inputs in scan order (``scan_fwd_kernel``'s
    ``STORE_Y`` pass in the scan-order, gated mode; see the module docstring).

    Grid: (batch * num_dirs, cdiv(num_ch, CH * DL), num_seg). ``x``: the conv output (b, k, d,
    l strides; row = step); ``z``: (b, d, l) strides into the token positions of ``xz``;
    ``y``: (B, K, T, D) outputs, ``y[b, k, scatter[k, t]] = y_t * SiLU(z[b, gather[k, t]])``.
    ``LOAD_H0``: segment start states from ``hs`` (B, K, S, N, D).
    """
    seg = tl.program_id(2)
    n1 = tl.arange(0, N)
    bidx, k, n, d, dmask, td, tkd, a2, bias, w, dt_off, x_base, x_off, dt_base = _prologue(
        num_dirs, num_ch, tab_sd, a2_ptr, bias_ptr, w_ptr, x_ptr, sx_b, sx_k, sx_d, dt_ptr, sdt_b,
        sdt_k, sdt_r, N, RP, CH, DL, DELTA_FULL, HAS_BIAS)
    dskip = _load_dskip(dskip_ptr, tkd, dmask, DL, CH, HAS_D)
    b_base = b_ptr + bidx * sb_b + k * sb_k
    b_off = n1 * sb_n
    c_base = c_ptr + bidx * sc_b + k * sc_k
    c_off = n1 * sc_n
    z_base, z_off = _bases(z_ptr, bidx, sz_b, k, 0, td, sz_d)
    y_base, y_off = _bases(y_ptr, bidx, sy_b, k, sy_k, td, sy_d)
    gidx_row = gidx_ptr + k * table_len
    sidx_row = sidx_ptr + k * table_len
    bk = bidx * num_dirs + k
    hs_base = hs_ptr + (bk * num_seg + seg) * N * num_ch

    length = tl.load(len_ptr + k)
    s0 = seg * seg_len
    s1 = tl.minimum(s0 + seg_len, length)
    if LOAD_H0:
        h = tl.load(hs_base + n * num_ch + td, mask=dmask, other=0.0)
    else:
        h = tl.zeros([DL, N, CH], tl.float32)

    # Prefetch as in scan_fwd_kernel: the inputs of step t (set a) and the positions of step
    # t + 1 are in flight when an iteration starts. The inputs' addresses need no table here.
    pa, qa = _tok(gidx_row, sidx_row, s0, length, num_tokens, False, SEPARATE_SCATTER)
    pb, qb = _tok(gidx_row, sidx_row, s0 + 1, length, num_tokens, False, SEPARATE_SCATTER)
    ua, da, ba, fa = _load_in(s0, length, x_base, x_off, sx_l, dt_base, dt_off, sdt_l, b_base,
                              b_off, sb_l, dmask, DELTA_FULL)
    ca = _load_vec(c_base, c_off, s0, length, sc_l)
    za = _load_at(z_base, z_off, sz_l, pa, num_tokens, dmask)
    for t in range(s0, s1, 2):
        # issue step t + 1 (set b) and the positions of step t + 2
        ub, db, bb, fb = _load_in(t + 1, length, x_base, x_off, sx_l, dt_base, dt_off, sdt_l,
                                  b_base, b_off, sb_l, dmask, DELTA_FULL)
        cb = _load_vec(c_base, c_off, t + 1, length, sc_l)
        zb = _load_at(z_base, z_off, sz_l, pb, num_tokens, dmask)
        pn, qn = _tok(gidx_row, sidx_row, t + 2, length, num_tokens, False, SEPARATE_SCATTER)
        # step t
        h, y, delta = _fwd_step(h, ua, da, ba, ca, fa, t < s1, w, bias, a2, dskip, DELTA_FULL,
                                SOFTPLUS, True)
        tl.store((y_base + qa * sy_l) + y_off, y * _silu(za),
                 mask=dmask & (qa < num_tokens) & (t < s1))
        # issue step t + 2 (set a) and the positions of step t + 3
        ua, da, ba, fa = _load_in(t + 2, length, x_base, x_off, sx_l, dt_base, dt_off, sdt_l,
                                  b_base, b_off, sb_l, dmask, DELTA_FULL)
        ca = _load_vec(c_base, c_off, t + 2, length, sc_l)
        za = _load_at(z_base, z_off, sz_l, pn, num_tokens, dmask)
        # step t + 1
        h, y, delta = _fwd_step(h, ub, db, bb, cb, fb, t + 1 < s1, w, bias, a2, dskip,
                                DELTA_FULL, SOFTPLUS, True)
        tl.store((y_base + qb * sy_l) + y_off, y * _silu(zb),
                 mask=dmask & (qb < num_tokens) & (t + 1 < s1))
        qa = qn
        pb, qb = _tok(gidx_row, sidx_row, t + 3, length, num_tokens, False, SEPARATE_SCATTER)


@triton.jit(do_not_specialize=_SIZE_ARGS_SCAN)
def vim_scan_rev_summary_kernel(
        x_ptr, sx_b, sx_k, sx_d, sx_l,
        dt_ptr, sdt_b, sdt_k, sdt_r, sdt_l,
        w_ptr,
        c_ptr, sc_b, sc_k, sc_n, sc_l,
        a2_ptr, bias_ptr, tab_sd,
        z_ptr, sz_b, sz_d, sz_l,
        dy_ptr, sy_b, sy_k, sy_d, sy_l,
        es_ptr, num_seg, seg_len,
        gidx_ptr, sidx_ptr, len_ptr, table_len,
        num_dirs, num_ch, rank, num_tokens,
        N: tl.constexpr, RP: tl.constexpr, CH: tl.constexpr, DL: tl.constexpr,
        DELTA_FULL: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        SEPARATE_SCATTER: tl.constexpr):
    """Reverse summary of one segment (``scan_rev_summary_kernel`` in the scan-order, gated
    mode): ``e`` entering the previous segment when nothing enters this one,
    ``e_t = decay_t (C_t g_t + e_{t+1})`` with ``g_t = dout[q] SiLU(z[p])``, to ``es``
    (B, K, S, N, D)."""
    seg = tl.program_id(2)
    n1 = tl.arange(0, N)
    bidx, k, n, d, dmask, td, tkd, a2, bias, w, dt_off, x_base, x_off, dt_base = _prologue(
        num_dirs, num_ch, tab_sd, a2_ptr, bias_ptr, w_ptr, x_ptr, sx_b, sx_k, sx_d, dt_ptr, sdt_b,
        sdt_k, sdt_r, N, RP, CH, DL, DELTA_FULL, HAS_BIAS)
    c_base = c_ptr + bidx * sc_b + k * sc_k
    c_off = n1 * sc_n
    z_base, z_off = _bases(z_ptr, bidx, sz_b, k, 0, td, sz_d)
    dy_base, dy_off = _bases(dy_ptr, bidx, sy_b, k, sy_k, td, sy_d)
    gidx_row = gidx_ptr + k * table_len
    sidx_row = sidx_ptr + k * table_len
    bk = bidx * num_dirs + k
    length = tl.load(len_ptr + k)
    s0 = seg * seg_len
    s1 = tl.minimum(s0 + seg_len, length)
    e = tl.zeros([DL, N, CH], tl.float32)
    for i in range(0, s1 - s0):
        t = s1 - 1 - i
        p, q = _tok(gidx_row, sidx_row, t, length, num_tokens, False, SEPARATE_SCATTER)
        u, dtr, cv, pf = _load_in(t, length, x_base, x_off, sx_l, dt_base, dt_off, sdt_l, c_base,
                                  c_off, sc_l, dmask, DELTA_FULL)
        g = (_load_at(dy_base, dy_off, sy_l, q, num_tokens, dmask) *
             _silu(_load_at(z_base, z_off, sz_l, p, num_tokens, dmask)))
        delta = _delta(dtr, pf, w, bias, t < length, DELTA_FULL, SOFTPLUS)
        e = tl.exp2(delta * a2) * (cv.to(tl.float32) * g + e)
    tl.store(es_ptr + (bk * num_seg + seg) * N * num_ch + n * num_ch + td, e, mask=dmask)


@triton.jit(do_not_specialize=_SIZE_ARGS)
def vim_scan_bwd_kernel(
        x_ptr, sx_b, sx_k, sx_d, sx_l,
        dt_ptr, sdt_b, sdt_k, sdt_r, sdt_l,
        w_ptr,
        b_ptr, sb_b, sb_k, sb_n, sb_l,
        c_ptr, sc_b, sc_k, sc_n, sc_l,
        a2_ptr, dskip_ptr, bias_ptr, tab_sd,
        z_ptr, sz_b, sz_d, sz_l,
        dy_ptr, sy_b, sy_k, sy_d, sy_l,
        gz_ptr, sgz_b, sgz_k, sgz_d, sgz_l,
        du_ptr, sdu_b, sdu_k, sdu_d, sdu_l,
        ddt_ptr, sddt_b, sddt_k, sddt_r, sddt_l,
        db_ptr, sdb_b, sdb_k, sdb_n, sdb_l,
        dc_ptr, sdc_b, sdc_k, sdc_n, sdc_l,
        da_ptr, dd_ptr, dbias_ptr, dw_ptr,
        ck_ptr, num_ck,
        es_ptr, num_seg, seg_len,
        gidx_ptr, sidx_ptr, len_ptr, table_len,
        num_dirs, num_ch, rank, num_tokens,
        N: tl.constexpr, RP: tl.constexpr, CH: tl.constexpr, DL: tl.constexpr,
        T: tl.constexpr, DELTA_FULL: tl.constexpr, HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SEPARATE_SCATTER: tl.constexpr,
        LOAD_E: tl.constexpr, USE_RS: tl.constexpr, RECOMPUTE_DECAY: tl.constexpr,
        CKM: tl.constexpr):
    """Gated backward of one segment, inputs in scan order (``scan_bwd_kernel`` in the
    scan-order, gated mode: chunks of ``T`` steps in reverse, states recomputed from the
    checkpoints ``ck`` every ``CKM * T`` steps).

    Grid: (batch * num_dirs, cdiv(num_ch, CH * DL), num_seg). Writes ``du`` (row t of
    direction k, stored: every live step once), ``gz[b, k, p] = dout[q] * y_t`` (the token
    position p its z was read from), ``ddt`` = d(delta before softplus) stored (DELTA_FULL) or
    d(low-rank dt) added atomically, ``db``, ``dc`` added atomically (rows t), per-(batch,
    segment) partials ``da`` (B*S, K*D, N), ``dd``, ``dbias`` (B*S, K*D) and ``dw``
    (B*S, K, RP, D). ``LOAD_E``: the adjoint entering the segment is ``es[b, k, s]``.
    """
    seg = tl.program_id(2)
    r = tl.arange(0, RP)[None, :, None]
    lane = tl.arange(0, DL)[:, None]
    n1 = tl.arange(0, N)
    bidx, k, n, d, dmask, td, tkd, a2, bias, w, dt_off, x_base, x_off, dt_base = _prologue(
        num_dirs, num_ch, tab_sd, a2_ptr, bias_ptr, w_ptr, x_ptr, sx_b, sx_k, sx_d, dt_ptr, sdt_b,
        sdt_k, sdt_r, N, RP, CH, DL, DELTA_FULL, HAS_BIAS)
    dskip = _load_dskip(dskip_ptr, tkd, dmask, DL, CH, HAS_D)
    ddt_base, ddt_off = _bases(ddt_ptr, bidx, sddt_b, k, sddt_k, td, sddt_r)
    b_base = b_ptr + bidx * sb_b + k * sb_k
    b_off = n1 * sb_n
    c_base = c_ptr + bidx * sc_b + k * sc_k
    c_off = n1 * sc_n
    z_base, z_off = _bases(z_ptr, bidx, sz_b, k, 0, td, sz_d)
    dy_base, dy_off = _bases(dy_ptr, bidx, sy_b, k, sy_k, td, sy_d)
    gz_base, gz_off = _bases(gz_ptr, bidx, sgz_b, k, sgz_k, td, sgz_d)
    du_base, du_off = _bases(du_ptr, bidx, sdu_b, k, sdu_k, td, sdu_d)
    db_base = _bases(db_ptr, bidx, sdb_b, k, sdb_k, td, 0)[0]
    dc_base = _bases(dc_ptr, bidx, sdc_b, k, sdc_k, td, 0)[0]
    gidx_row = gidx_ptr + k * table_len
    sidx_row = sidx_ptr + k * table_len
    bk = bidx * num_dirs + k
    ck_base = ck_ptr + bk * num_ck * N * num_ch
    st_off = n * num_ch + td

    length, c_lo, c_hi, e, da_acc, dd_acc, dbias_acc, dw_acc = _bwd_segment_start(
        len_ptr, k, seg, seg_len, es_ptr, bk, num_seg, st_off, num_ch, dmask, N, RP, CH, DL, T,
        LOAD_E)
    for ci in range(0, c_hi - c_lo):
        c = c_hi - 1 - ci
        t0 = c * T
        # state before the chunk: checkpoint slot c // CKM, advanced by (c % CKM) * T steps
        c_ck = c // CKM
        h = tl.load(ck_base + (c_ck * (N * num_ch) + st_off), mask=dmask, other=0.0)
        for ex in range(0, c % CKM):
            te = (c_ck * CKM + ex) * T
            for j in tl.static_range(T):
                h, delta = _advance_state(h, te + j, length, te + j, length, x_base, x_off,
                                          sx_l, dt_base, dt_off, sdt_l, b_base, b_off, sb_l, w,
                                          bias, a2, dmask, DELTA_FULL, SOFTPLUS)
        # Recompute the chunk's states; keep h_{t-1} and delta_t of every step in registers.
        hs = (h, )
        deltas = ()
        for j in tl.static_range(T):
            if j < T - 1:
                h, delta = _advance_state(h, t0 + j, length, t0 + j, length, x_base, x_off,
                                          sx_l, dt_base, dt_off, sdt_l, b_base, b_off, sb_l, w,
                                          bias, a2, dmask, DELTA_FULL, SOFTPLUS)
                hs = hs + (h, )
            else:  # the chunk's last state is not needed
                ins = _load_in(t0 + j, length, x_base, x_off, sx_l, dt_base, dt_off, sdt_l,
                               b_base, b_off, sb_l, dmask, DELTA_FULL)
                delta = _delta(ins[1], ins[3], w, bias, t0 + j < length, DELTA_FULL, SOFTPLUS)
            deltas = deltas + (delta, )
        # Reverse over the chunk.
        for jj in tl.static_range(T):
            t = t0 + (T - 1 - jj)
            live = t < length
            row = tl.where(live, t, 0)
            p, q = _tok(gidx_row, sidx_row, t, length, num_tokens, False, SEPARATE_SCATTER)
            u, dtr, bv, pf = _load_in(t, length, x_base, x_off, sx_l, dt_base, dt_off, sdt_l,
                                      b_base, b_off, sb_l, dmask, DELTA_FULL)
            uf = u.to(tl.float32) * pf
            bf = bv.to(tl.float32)
            cf = _load_vec(c_base, c_off, t, length, sc_l).to(tl.float32)
            dyv = _load_at(dy_base, dy_off, sy_l, q, num_tokens, dmask)
            g = dyv * _silu(_load_at(z_base, z_off, sz_l, p, num_tokens, dmask))
            delta = deltas[T - 1 - jj]
            e, h_t, dh, dbu, ddraw, du, da_acc, dd_acc, dbias_acc = _adjoint_step(
                hs[T - 1 - jj], delta, e, uf, bf, cf, g, live, da_acc, dd_acc, dbias_acc, a2,
                dskip, SOFTPLUS, RECOMPUTE_DECAY)
            # the gate: out = y_t SiLU(z), y_t = <h_t, C_t> + D u_t (recomputed, not saved)
            y_t = tl.sum(h_t * cf, axis=1, keep_dims=True) + dskip * uf
            tl.store((gz_base + tl.where(p < num_tokens, p, 0) * sgz_l) + gz_off, dyv * y_t,
                     mask=dmask & (p < num_tokens) & live)
            # Sums over the program's channels, added atomically at row t.
            dw_acc = _add_step_grads(row, dc_base, sdc_n, sdc_l, db_base, sdb_n, sdb_l, ddt_base,
                                     ddt_off, sddt_r, sddt_l, g, h_t, dh, dbu, ddraw, dtr, pf, w,
                                     dw_acc, lane, live, dmask, DL, RP, N, DELTA_FULL, USE_RS)
            tl.store((du_base + row * sdu_l) + du_off, du, mask=dmask & live)

    part = (bidx * num_seg + seg) * num_dirs * num_ch + tkd
    tl.store(da_ptr + part * N + n, da_acc, mask=dmask)
    tl.store(dd_ptr + part, dd_acc, mask=dmask)
    tl.store(dbias_ptr + part, dbias_acc, mask=dmask)
    if not DELTA_FULL:
        tl.store(dw_ptr + (((bidx * num_seg + seg) * num_dirs + k) * RP + r) * num_ch + td,
                 dw_acc, mask=dmask)


# The cache keys, the same in every process whatever kernel runs first (see .jit_keys).
settle_cache_keys(globals())
