"""Triton kernels of the fused multi-direction selective scan (imported lazily, needs triton).

See :mod:`mmlocalmamba.ops.triton.scan` for the tensors and docs/kernel_notes.md for the design
and its measurements. The work split:

* **Sequential steps, state tile in registers.** A program (one warp) owns ``CH * DL`` channels
  of one (batch, direction) and walks the scan order one step at a time. Its state is a register
  tile ``(DL, N, CH)``: ``DL`` lanes along channels (dimension 0, the dimension Triton gives the
  lanes first for loads without address contiguity, so per-channel loads and stores keep the
  tile's layout), ``32 / DL`` lanes along the states, ``CH`` channels per thread. With ``DL = 32``
  a thread owns a channel and all its states: sums over states stay in the thread.
* **Each operand loaded once per step in its natural shape**: B_t, C_t and the low-rank dt_t as
  1-D vectors from a scalar row pointer (16-byte loads with immediate offsets), u_t, dy_t per
  channel. Offsets inside one (batch, direction) are int32; the 64-bit bases are computed once.
* **Prefetch**: the forward loop is unrolled twice; the table entries and inputs of the next step
  are issued before the current step is computed.
* **Sequence segments**: for small batches the scan order is cut into ``S`` segments of
  ``seg_len`` steps that run in parallel. A summary pass computes each segment's end state from
  zero and the sum of its deltas (the segment's decay is ``exp2(a2 * sum delta)`` because A is per
  (channel, state)); a combine pass turns these into each segment's start state; the output pass
  then runs every segment from its true start state.
* **Backward**: checkpoints every ``CKM * T`` steps (the forward kernel with ``STORE_CK``); per
  chunk of ``T`` steps, in reverse order, the chunk's states are recomputed into registers (a
  static unroll), then the reverse recurrence runs over them. The adjoint is carried as
  ``e_t = decay_t * dh_t``: ``dh_t = C_t g_t + e_{t+1}``. Sums over the program's channels (dB,
  dC, d dt) are a lane reduce-scatter. For segments, a reverse summary pass and a combine give
  each segment's incoming ``e``.

Scan step ``t`` of direction ``k`` reads token ``p = gather[k, t]`` (``p >= num_tokens``: zero
padding token, u = B = C = dt = 0, so the state decays by ``softplus(bias)``) and writes its
output at ``q = scatter[k, t]``. Steps at or past the direction's length leave the state alone.
"""
import triton
import triton.language as tl

from .jit_keys import settle_cache_keys

LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)

# Integer arguments that change with the input size (sequence lengths, token counts, segment
# and checkpoint counts) are not specialised: a new image size compiles no new kernel variant.
# (Strides stay specialised: their divisibility keeps the B / C / dt rows vector loads, and
# they are multiples of the channel counts, which do not change with the image size.) ``tab_sd``
# is 1 at run time but never specialised (see ``_prologue``).
_SIZE_ARGS = ['tab_sd', 'num_ck', 'num_seg', 'seg_len', 'table_len', 'num_tokens']
_SIZE_ARGS_COMBINE = ['tab_sd', 'num_seg']
_SIZE_ARGS_BWD = _SIZE_ARGS


@triton.jit
def _lg2_asm(x):
    return tl.inline_asm_elementwise('lg2.approx.ftz.f32 $0, $1;', '=r,r', [x], dtype=tl.float32,
                                     is_pure=True, pack=1)


@triton.jit
def _softplus(x, FAST: tl.constexpr):
    """log(1 + exp(x)).

    ``FAST``: ``e = exp(x)`` on the SFU; below e = 1/16 the series of log1p(e) to e^5 (relative
    error < 2e-7; ``log2(1 + e)`` would lose e's low bits in the rounding of 1 + e), above it
    the SFU's ``lg2.approx`` of 1 + e (relative error < 4e-6). About 12 instructions instead of
    the ~27 of an accurate ``log2`` (its range reduction and polynomial). Otherwise
    ``log2(1 + exp2(x log2 e))`` with the accurate ``tl.log2`` (the Triton interpreter's path).
    """
    e = tl.exp2(x * LOG2E)
    if FAST:
        series = e * (1.0 + e * (-0.5 + e * (0.33333334 + e * (-0.25 + e * 0.2))))
        res = tl.where(e < 0.0625, series, LN2 * _lg2_asm(1.0 + e))
    else:
        res = LN2 * tl.log2(1.0 + e)
    return tl.where(x > 20.0, x, res)


@triton.jit
def _ex2_asm(x):
    return tl.inline_asm_elementwise('ex2.approx.ftz.f32 $0, $1;', '=r,r', [x], dtype=tl.float32,
                                     is_pure=True, pack=1)


@triton.jit
def _tok(gidx_row, sidx_row, t, length, num_tokens, IDENTITY: tl.constexpr,
         SEPARATE_SCATTER: tl.constexpr):
    """Token read (p) and written (q) at step ``t`` (scalars, int32; ``num_tokens`` = none)."""
    live = t < length
    if IDENTITY:
        p = tl.where(live, t, num_tokens)
        q = p
    else:
        p = tl.load(gidx_row + t, mask=live, other=num_tokens)
        if SEPARATE_SCATTER:
            q = tl.load(sidx_row + t, mask=live, other=num_tokens)
        else:
            q = p
    return p, q


@triton.jit
def _load_in(p, num_tokens, x_base, x_off, sx_l, dt_base, dt_off, sdt_l, b_base, b_off, sb_l,
             dmask, DELTA_FULL: tl.constexpr):
    """Raw inputs of the step reading token ``p``: u (DL,1,CH), dt ((1,RP,1) low rank or
    (DL,1,CH) full), B (1,N,1), and the token's validity as 0/1 (``pf``).

    Loads are unmasked (a padding token reads token 0): the caller zeroes u and dt with ``pf``,
    which zeroes every contribution of the step but its decay. B and the low-rank dt are loaded
    as 1-D vectors from a scalar row pointer and expanded after the load: the slice layout they
    are rematerialised in keeps the state axis fastest, so each load is a 16-byte vector with an
    immediate offset. The low-rank dt must have ``RP`` readable (zero-padded) columns.
    """
    pv = p < num_tokens
    ps = tl.where(pv, p, 0)
    u = tl.load((x_base + ps * sx_l) + x_off, mask=dmask, other=0.0)
    if DELTA_FULL:
        dtr = tl.load((dt_base + ps * sdt_l) + dt_off, mask=dmask, other=0.0)
    else:
        dtr = tl.load((dt_base + ps * sdt_l) + dt_off)[None, :, None]
    bv = tl.load((b_base + ps * sb_l) + b_off)[None, :, None]
    return u, dtr, bv, pv.to(tl.float32)


@triton.jit
def _load_vec(base, off, p, num_tokens, s_l):
    """A (1,N,1) vector of token ``p`` (token 0 for a padding token; see _load_in)."""
    return tl.load((base + tl.where(p < num_tokens, p, 0) * s_l) + off)[None, :, None]


@triton.jit
def _delta(dtr, pf, w, bias, live, DELTA_FULL: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta (DL,1,CH) of one step; 0 (identity step) where the step is not live."""
    if DELTA_FULL:
        draw = dtr.to(tl.float32) * pf + bias
    else:
        draw = tl.sum(w * dtr.to(tl.float32), axis=1, keep_dims=True) * pf + bias
    if SOFTPLUS:
        delta = _softplus(draw, SOFTPLUS == 2)
    else:
        delta = draw
    return tl.where(live, delta, 0.0)


@triton.jit
def _fwd_step(h, u, dtr, bv, cv, pf, live, w, bias, a2, dskip, DELTA_FULL: tl.constexpr,
              SOFTPLUS: tl.constexpr, NEED_Y: tl.constexpr):
    uf = u.to(tl.float32) * pf
    delta = _delta(dtr, pf, w, bias, live, DELTA_FULL, SOFTPLUS)
    h = tl.exp2(delta * a2) * h + (delta * uf) * bv.to(tl.float32)
    if NEED_Y:
        y = tl.sum(h * cv.to(tl.float32), axis=1, keep_dims=True) + dskip * uf
    else:
        y = delta
    return h, y, delta


@triton.jit
def _prologue(num_dirs, num_ch, tab_sd, a2_ptr, bias_ptr, w_ptr, x_ptr, sx_b, sx_k, sx_d,
              dt_ptr, sdt_b, sdt_k, sdt_r, N: tl.constexpr, RP: tl.constexpr, CH: tl.constexpr,
              DL: tl.constexpr, DELTA_FULL: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Program indices, the per-channel parameter tiles and the x / dt bases shared by the scan
    kernels (grid: (batch * num_dirs, channel blocks, segments)).

    ``tab_sd`` == 1 at run time but is not specialised: per-channel addresses then carry no
    contiguity, which keeps their loads and stores in the state tile's register layout.
    """
    pid_bk = tl.program_id(0)
    bidx = (pid_bk // num_dirs).to(tl.int64)
    k = pid_bk % num_dirs
    ch = tl.arange(0, CH)[None, None, :]
    n = tl.arange(0, N)[None, :, None]
    dl = tl.arange(0, DL)[:, None, None]
    d = tl.program_id(1) * (CH * DL) + ch * DL + dl
    dmask = d < num_ch
    td = d * tab_sd
    tkd = k * num_ch + td
    a2 = tl.load(a2_ptr + (k * N + n) * num_ch + td, mask=dmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + tkd, mask=dmask, other=0.0)
    else:
        bias = tl.zeros([DL, 1, CH], tl.float32)
    if DELTA_FULL:
        w = tl.zeros([DL, RP, CH], tl.float32)
        dt_off = td * sdt_r
        dt_base = dt_ptr + bidx * sdt_b + k * sdt_k
    else:
        w = tl.load(w_ptr + (k * RP + tl.arange(0, RP)[None, :, None]) * num_ch + td, mask=dmask,
                    other=0.0)
        dt_off = tl.arange(0, RP) * sdt_r
        # the low-rank dt rows of one direction are RP-aligned (one 16-byte vector per 8)
        dt_base = dt_ptr + bidx * sdt_b + tl.multiple_of(k * sdt_k, 8)
    x_base = x_ptr + bidx * sx_b + k * sx_k
    return bidx, k, n, d, dmask, td, tkd, a2, bias, w, dt_off, x_base, td * sx_d, dt_base


@triton.jit
def _load_dskip(dskip_ptr, tkd, dmask, DL: tl.constexpr, CH: tl.constexpr,
                HAS_D: tl.constexpr):
    if HAS_D:
        return tl.load(dskip_ptr + tkd, mask=dmask, other=0.0)
    return tl.zeros([DL, 1, CH], tl.float32)


@triton.jit(do_not_specialize=_SIZE_ARGS)
def scan_fwd_kernel(
        x_ptr, sx_b, sx_k, sx_d, sx_l,
        dt_ptr, sdt_b, sdt_k, sdt_r, sdt_l,
        w_ptr,
        b_ptr, sb_b, sb_k, sb_n, sb_l,
        c_ptr, sc_b, sc_k, sc_n, sc_l,
        a2_ptr, dskip_ptr, bias_ptr, tab_sd,
        y_ptr, sy_b, sy_k, sy_d, sy_l,
        ck_ptr, num_ck,
        hs_ptr, ds_ptr, num_seg, seg_len,
        gidx_ptr, sidx_ptr, len_ptr, table_len,
        num_dirs, num_ch, rank, num_tokens,
        N: tl.constexpr, RP: tl.constexpr, CH: tl.constexpr, DL: tl.constexpr,
        T: tl.constexpr, DELTA_FULL: tl.constexpr, HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr,
        SEPARATE_SCATTER: tl.constexpr, STORE_Y: tl.constexpr, STORE_CK: tl.constexpr,
        SUMMARY: tl.constexpr, LOAD_H0: tl.constexpr):
    """Forward scan of one segment ``[s * seg_len, (s + 1) * seg_len)`` of the scan order.

    Grid: (batch * num_dirs, cdiv(num_ch, CH * DL), num_seg).
    ``a2``: (K, N, D) = A * log2(e); ``w``: (K, RP, D); ``dskip``, ``bias``: (K, D).
    Modes (constexpr): ``STORE_Y`` writes y; ``STORE_CK`` writes the state before every chunk of
    ``T`` steps to ``ck`` (B, K, num_ck, N, D); ``SUMMARY`` starts from zero and writes the end
    state to ``hs`` (B, K, S, N, D) and the sum of deltas to ``ds`` (B, K, S, D); ``LOAD_H0``
    starts from ``hs[b, k, s]`` (segment start states, after the combine kernel).
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
    y_base = y_ptr + bidx * sy_b + k * sy_k
    y_off = td * sy_d
    gidx_row = gidx_ptr + k * table_len
    sidx_row = sidx_ptr + k * table_len
    bk = bidx * num_dirs + k
    ck_base = ck_ptr + bk * num_ck * N * num_ch
    st_off = n * num_ch + td  # (CH, N, DL) offsets of a state tile in (N, D) layout
    hs_base = hs_ptr + (bk * num_seg + seg) * N * num_ch
    ds_base = ds_ptr + (bk * num_seg + seg) * num_ch

    length = tl.load(len_ptr + k)
    s0 = seg * seg_len
    s1 = tl.minimum(s0 + seg_len, length)
    if LOAD_H0:
        h = tl.load(hs_base + st_off, mask=dmask, other=0.0)
    else:
        h = tl.zeros([DL, N, CH], tl.float32)
    dsum = tl.zeros([DL, 1, CH], tl.float32)

    # Prefetch: the inputs of step t (set a) and the tokens of step t + 1 are in flight when an
    # iteration starts; the loop is unrolled twice so that no loaded value is copied.
    pa, qa = _tok(gidx_row, sidx_row, s0, length, num_tokens, IDENTITY, SEPARATE_SCATTER)
    pb, qb = _tok(gidx_row, sidx_row, s0 + 1, length, num_tokens, IDENTITY, SEPARATE_SCATTER)
    ua, da, ba, fa = _load_in(pa, num_tokens, x_base, x_off, sx_l, dt_base, dt_off, sdt_l,
                              b_base, b_off, sb_l, dmask, DELTA_FULL)
    if STORE_Y:
        ca = _load_vec(c_base, c_off, pa, num_tokens, sc_l)
    else:
        ca = ba
    for t in range(s0, s1, 2):
        if STORE_CK:
            if (t % T) == 0:
                tl.store(ck_base + ((t // T) * (N * num_ch) + st_off), h, mask=dmask)
        # issue step t + 1 (set b) and the tokens of step t + 2
        ub, db, bb, fb = _load_in(pb, num_tokens, x_base, x_off, sx_l, dt_base, dt_off, sdt_l,
                                  b_base, b_off, sb_l, dmask, DELTA_FULL)
        if STORE_Y:
            cb = _load_vec(c_base, c_off, pb, num_tokens, sc_l)
        else:
            cb = bb
        pn, qn = _tok(gidx_row, sidx_row, t + 2, length, num_tokens, IDENTITY,
                      SEPARATE_SCATTER)
        # step t
        h, y, delta = _fwd_step(h, ua, da, ba, ca, fa, t < s1, w, bias, a2, dskip, DELTA_FULL,
                                SOFTPLUS, STORE_Y)
        if STORE_Y:
            tl.store((y_base + qa * sy_l) + y_off, y.to(y_ptr.dtype.element_ty),
                     mask=dmask & (qa < num_tokens) & (t < s1))
        if SUMMARY:
            dsum += delta
        # issue step t + 2 (set a) and the tokens of step t + 3
        ua, da, ba, fa = _load_in(pn, num_tokens, x_base, x_off, sx_l, dt_base, dt_off, sdt_l,
                                  b_base, b_off, sb_l, dmask, DELTA_FULL)
        if STORE_Y:
            ca = _load_vec(c_base, c_off, pn, num_tokens, sc_l)
        else:
            ca = ba
        # step t + 1
        h, y, delta = _fwd_step(h, ub, db, bb, cb, fb, t + 1 < s1, w, bias, a2, dskip,
                                DELTA_FULL, SOFTPLUS, STORE_Y)
        if STORE_Y:
            tl.store((y_base + qb * sy_l) + y_off, y.to(y_ptr.dtype.element_ty),
                     mask=dmask & (qb < num_tokens) & (t + 1 < s1))
        if SUMMARY:
            dsum += delta
        pa = pn
        qa = qn
        pb, qb = _tok(gidx_row, sidx_row, t + 3, length, num_tokens, IDENTITY,
                      SEPARATE_SCATTER)
    if SUMMARY:
        tl.store(hs_base + st_off, h, mask=dmask)
        tl.store(ds_base + td, dsum, mask=dmask)


@triton.jit(do_not_specialize=_SIZE_ARGS_COMBINE)
def segment_combine_kernel(a2_ptr, hs_ptr, ds_ptr, num_seg, num_dirs, num_ch, tab_sd,
                      N: tl.constexpr, CH: tl.constexpr, DL: tl.constexpr,
                      REVERSE: tl.constexpr):
    """Segment carries in place: ``hs[s]`` (local end value) becomes the value entering segment
    ``s``; carry' = exp2(a2 * ds[s]) * carry + local[s], over s ascending (or descending).

    Grid: (batch * num_dirs, cdiv(num_ch, CH * DL)).
    """
    pid_bk = tl.program_id(0)
    pid_d = tl.program_id(1)
    bk = pid_bk.to(tl.int64)
    k = pid_bk % num_dirs
    ch = tl.arange(0, CH)[None, None, :]
    n = tl.arange(0, N)[None, :, None]
    dl = tl.arange(0, DL)[:, None, None]
    d = pid_d * (CH * DL) + ch * DL + dl
    dmask = d < num_ch
    td = d * tab_sd
    st_off = n * num_ch + td
    a2 = tl.load(a2_ptr + (k * N + n) * num_ch + td, mask=dmask, other=0.0)
    carry = tl.zeros([DL, N, CH], tl.float32)
    for i in range(0, num_seg):
        if REVERSE:
            s = num_seg - 1 - i
        else:
            s = i
        hp = hs_ptr + (bk * num_seg + s) * N * num_ch + st_off
        loc = tl.load(hp, mask=dmask, other=0.0)
        dsum = tl.load(ds_ptr + (bk * num_seg + s) * num_ch + td, mask=dmask, other=0.0)
        tl.store(hp, carry, mask=dmask)
        carry = tl.exp2(a2 * dsum) * carry + loc


@triton.jit(do_not_specialize=_SIZE_ARGS)
def scan_rev_summary_kernel(
        x_ptr, sx_b, sx_k, sx_d, sx_l,
        dt_ptr, sdt_b, sdt_k, sdt_r, sdt_l,
        w_ptr,
        c_ptr, sc_b, sc_k, sc_n, sc_l,
        a2_ptr, bias_ptr, tab_sd,
        dy_ptr, sy_b, sy_k, sy_d, sy_l,
        es_ptr, num_seg, seg_len,
        gidx_ptr, sidx_ptr, len_ptr, table_len,
        num_dirs, num_ch, rank, num_tokens,
        N: tl.constexpr, RP: tl.constexpr, CH: tl.constexpr, DL: tl.constexpr,
        DELTA_FULL: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        IDENTITY: tl.constexpr, SEPARATE_SCATTER: tl.constexpr):
    """Reverse summary of one segment: ``e`` entering the previous segment when nothing enters
    this one (``e_t = decay_t (C_t g_t + e_{t+1})``), written to ``es`` (B, K, S, N, D)."""
    seg = tl.program_id(2)
    n1 = tl.arange(0, N)
    bidx, k, n, d, dmask, td, tkd, a2, bias, w, dt_off, x_base, x_off, dt_base = _prologue(
        num_dirs, num_ch, tab_sd, a2_ptr, bias_ptr, w_ptr, x_ptr, sx_b, sx_k, sx_d, dt_ptr, sdt_b,
        sdt_k, sdt_r, N, RP, CH, DL, DELTA_FULL, HAS_BIAS)
    c_base = c_ptr + bidx * sc_b + k * sc_k
    c_off = n1 * sc_n
    dy_base = dy_ptr + bidx * sy_b + k * sy_k
    dy_off = td * sy_d
    gidx_row = gidx_ptr + k * table_len
    sidx_row = sidx_ptr + k * table_len
    bk = bidx * num_dirs + k
    length = tl.load(len_ptr + k)
    s0 = seg * seg_len
    s1 = tl.minimum(s0 + seg_len, length)
    e = tl.zeros([DL, N, CH], tl.float32)
    for i in range(0, s1 - s0):
        t = s1 - 1 - i
        p, q = _tok(gidx_row, sidx_row, t, length, num_tokens, IDENTITY, SEPARATE_SCATTER)
        u, dtr, cv, pf = _load_in(p, num_tokens, x_base, x_off, sx_l, dt_base, dt_off, sdt_l,
                                  c_base, c_off, sc_l, dmask, DELTA_FULL)
        g = tl.load((dy_base + tl.where(q < num_tokens, q, 0) * sy_l) + dy_off,
                    mask=dmask & (q < num_tokens), other=0.0)
        delta = _delta(dtr, pf, w, bias, t < length, DELTA_FULL, SOFTPLUS)
        e = tl.exp2(delta * a2) * (cv.to(tl.float32) * g.to(tl.float32) + e)
    tl.store(es_ptr + (bk * num_seg + seg) * N * num_ch + n * num_ch + td, e, mask=dmask)


@triton.jit
def _rs_sum(x, lane, DL: tl.constexpr, V: tl.constexpr):
    """Sum of ``x`` (DL = 32 lanes, V columns; V a power of two <= 32) over the lanes, scattered:
    returns (s, c, first) with ``s[l]`` the sum of column ``c[l]`` and ``first`` marking one
    lane per column. A reduce-scatter through lane exchanges (``tl.gather`` along the lane axis
    lowers to shuffles): at level i each lane keeps half of its columns and adds the partner's
    copy of them, ``V - 1`` exchanges in all instead of ``5 V`` for V butterfly sums.
    Needs lane ``l`` to hold row ``l`` (one warp, ``DL = 32``, rows along lanes).
    """
    c = tl.zeros([DL, 1], tl.int32)
    for lvl in tl.static_range(5):
        if (V >> lvl) > 1:
            lo, hi = tl.split(tl.reshape(x, [DL, V >> (lvl + 1), 2]))
            bit = (lane >> (4 - lvl)) & 1
            take_hi = bit != 0
            send = tl.where(take_hi, lo, hi)
            part = tl.gather(send, (lane ^ (16 >> lvl)) + tl.zeros([DL, V >> (lvl + 1)],
                                                                    tl.int32), axis=0)
            x = tl.where(take_hi, hi, lo) + part
            c += bit << lvl
        else:
            x = x + tl.gather(x, lane ^ (16 >> lvl), axis=0)
    first = (lane & (32 // V - 1)) == 0
    return x, c, first


@triton.jit
def _chan_sum_add(row, s_v, x, lane, mask, DL: tl.constexpr, V: tl.constexpr,
                  USE_RS: tl.constexpr):
    """Atomically add the sum over channels of ``x`` (DL, V, CH) at ``row + v * s_v``."""
    if USE_RS:
        xs = tl.sum(x, axis=2)
        if V > 32:
            ev, od = tl.split(tl.reshape(xs, [DL, V // 2, 2]))
            s0, c, first = _rs_sum(ev, lane, DL, V // 2)
            s1, c, first = _rs_sum(od, lane, DL, V // 2)
            tl.atomic_add(row + (2 * c) * s_v, s0, mask=mask & first, sem='relaxed')
            tl.atomic_add(row + (2 * c + 1) * s_v, s1, mask=mask & first, sem='relaxed')
        else:
            s0, c, first = _rs_sum(xs, lane, DL, V)
            tl.atomic_add(row + c * s_v, s0, mask=mask & first, sem='relaxed')
    else:
        v = tl.sum(tl.sum(x, axis=0, keep_dims=True), axis=2, keep_dims=True)
        tl.atomic_add(row + tl.arange(0, V)[None, :, None] * s_v, v, mask=mask, sem='relaxed')


@triton.jit
def _adjoint_step(h_prev, delta, e, uf, bf, cf, g, live, da_acc, dd_acc, dbias_acc, a2, dskip,
                  SOFTPLUS: tl.constexpr, ASM_DECAY: tl.constexpr):
    """The reverse recurrence of one step, shared by the LocalVMamba and the gated LocalVim
    backward: from the state before the step (``h_prev``), its ``delta``, its inputs (``uf`` =
    u * pf, ``bf``, ``cf`` in fp32) and upstream gradient ``g``, the adjoint carried as
    ``e_t = decay_t * dh_t`` with ``dh_t = C_t g_t + e_{t+1}`` (``live``: the step is inside
    the direction, its d bias counts).

    Returns the updated ``e``, the state after the step ``h_t``, ``dh``, ``delta * u``, d(delta
    before softplus), d u and the accumulators of dA, dD and d bias.
    """
    if ASM_DECAY:
        decay = _ex2_asm(delta * a2)  # not merged with the recompute's exp2 (registers)
    else:
        decay = tl.exp2(delta * a2)
    hd = decay * h_prev  # decay_t * h_{t-1}
    dbu = delta * uf
    h_t = hd + dbu * bf
    dh = cf * g + e
    e = decay * dh
    x_t = dh * hd
    da_acc += delta * x_t
    s_b = tl.sum(dh * bf, axis=1, keep_dims=True)
    s_x = tl.sum(a2 * x_t, axis=1, keep_dims=True) * LN2
    du = delta * s_b + dskip * g
    ddelta = uf * s_b + s_x
    if SOFTPLUS:
        ddraw = ddelta * (1.0 - tl.exp2(-delta * LOG2E))
    else:
        ddraw = ddelta
    ddraw = tl.where(live, ddraw, 0.0)
    dbias_acc += ddraw
    dd_acc += g * uf
    return e, h_t, dh, dbu, ddraw, du, da_acc, dd_acc, dbias_acc


@triton.jit
def _add_step_grads(at, dc_base, sdc_n, sdc_l, db_base, sdb_n, sdb_l, ddt_base, ddt_off, sddt_r,
                    sddt_l, g, h_t, dh, dbu, ddraw, dtr, pf, w, dw_acc, lane, valid, dmask,
                    DL: tl.constexpr, RP: tl.constexpr, N: tl.constexpr,
                    DELTA_FULL: tl.constexpr, USE_RS: tl.constexpr):
    """One step's d C, d B (sums over the program's channels, added atomically at row ``at``)
    and d dt (stored in full at row ``at``, or added to its low-rank columns) where ``valid``;
    returns the low-rank dW accumulator."""
    _chan_sum_add(dc_base + at * sdc_l, sdc_n, g * h_t, lane, valid, DL, N, USE_RS)
    _chan_sum_add(db_base + at * sdb_l, sdb_n, dh * dbu, lane, valid, DL, N, USE_RS)
    if DELTA_FULL:
        tl.store((ddt_base + at * sddt_l) + ddt_off, ddraw, mask=dmask & valid)
    else:
        ddraw_p = ddraw * pf
        dw_acc += ddraw_p * dtr.to(tl.float32)
        _chan_sum_add(ddt_base + at * sddt_l, sddt_r, w * ddraw_p, lane, valid, DL, RP, USE_RS)
    return dw_acc


@triton.jit
def _advance_state(h, row, bound, t, length, x_base, x_off, sx_l, dt_base, dt_off, sdt_l, b_base,
                   b_off, sb_l, w, bias, a2, dmask, DELTA_FULL: tl.constexpr,
                   SOFTPLUS: tl.constexpr):
    """The forward recurrence of step ``t`` (it counts below ``length``) reading its inputs at
    ``row`` (none at or beyond ``bound``): (state after the step, its delta)."""
    u, dtr, bv, pf = _load_in(row, bound, x_base, x_off, sx_l, dt_base, dt_off, sdt_l, b_base,
                              b_off, sb_l, dmask, DELTA_FULL)
    delta = _delta(dtr, pf, w, bias, t < length, DELTA_FULL, SOFTPLUS)
    h = tl.exp2(delta * a2) * h + (delta * (u.to(tl.float32) * pf)) * bv.to(tl.float32)
    return h, delta


@triton.jit
def _bwd_step(t, h_prev, delta, e, da_acc, dd_acc, dbias_acc, dw_acc, lane, length, num_tokens,
              gidx_row, sidx_row, x_base, x_off, sx_l, dt_base, dt_off, sdt_l, b_base, b_off,
              sb_l, c_base, c_off, sc_l, dy_base, dy_off, sy_l, du_base, du_off, sdu_l, ddt_base,
              ddt_off, sddt_r, sddt_l, db_base, sdb_n, sdb_l, dc_base, sdc_n, sdc_l, w, a2,
              dskip, dmask, DL: tl.constexpr, RP: tl.constexpr, N: tl.constexpr,
              DELTA_FULL: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr,
              SEPARATE_SCATTER: tl.constexpr, DU_ATOMIC: tl.constexpr, USE_RS: tl.constexpr,
              ASM_DECAY: tl.constexpr):
    """One reverse step ``t`` given the state before it (``h_prev``) and its ``delta``.

    The adjoint is carried as ``e_t = decay_t * dh_t`` with ``dh_t = C_t g_t + e_{t+1}``.
    Writes d u (stored or added atomically), d dt (stored in full or added to the low-rank
    columns), d B and d C (sums over the program's channels, added atomically); returns the
    updated ``e`` and the per-channel accumulators of dA, dD, d bias and the low-rank dW.
    """
    p, q = _tok(gidx_row, sidx_row, t, length, num_tokens, IDENTITY, SEPARATE_SCATTER)
    pv = p < num_tokens
    ps = tl.where(pv, p, 0)
    u, dtr, bv, pf = _load_in(p, num_tokens, x_base, x_off, sx_l, dt_base, dt_off, sdt_l, b_base,
                              b_off, sb_l, dmask, DELTA_FULL)
    uf = u.to(tl.float32) * pf
    bf = bv.to(tl.float32)
    cf = _load_vec(c_base, c_off, p, num_tokens, sc_l).to(tl.float32)
    qv = q < num_tokens
    g = tl.load((dy_base + tl.where(qv, q, 0) * sy_l) + dy_off, mask=dmask & qv,
                other=0.0).to(tl.float32)
    e, h_t, dh, dbu, ddraw, du, da_acc, dd_acc, dbias_acc = _adjoint_step(
        h_prev, delta, e, uf, bf, cf, g, t < length, da_acc, dd_acc, dbias_acc, a2, dskip,
        SOFTPLUS, ASM_DECAY)
    # Sums over the program's channels, added atomically at token p.
    dw_acc = _add_step_grads(ps, dc_base, sdc_n, sdc_l, db_base, sdb_n, sdb_l, ddt_base, ddt_off,
                             sddt_r, sddt_l, g, h_t, dh, dbu, ddraw, dtr, pf, w, dw_acc, lane, pv,
                             dmask, DL, RP, N, DELTA_FULL, USE_RS)
    if DU_ATOMIC:
        tl.atomic_add((du_base + ps * sdu_l) + du_off, du, mask=dmask & pv, sem='relaxed')
    else:
        tl.store((du_base + ps * sdu_l) + du_off, du, mask=dmask & pv)
    return e, da_acc, dd_acc, dbias_acc, dw_acc


@triton.jit
def _bwd_segment_start(len_ptr, k, seg, seg_len, es_ptr, bk, num_seg, st_off, num_ch, dmask,
                       N: tl.constexpr, RP: tl.constexpr, CH: tl.constexpr, DL: tl.constexpr,
                       T: tl.constexpr, LOAD_E: tl.constexpr):
    """The start of a backward program: the direction's length, the segment's chunks
    ``[c_lo, c_hi)`` of ``T`` steps, the adjoint entering it (``es`` with ``LOAD_E``, else 0)
    and zero accumulators of dA, dD, d bias and the low-rank dW."""
    length = tl.load(len_ptr + k)
    c_lo = (seg * seg_len) // T
    c_hi = tl.cdiv(tl.minimum(seg * seg_len + seg_len, length), T)
    if LOAD_E:
        e = tl.load(es_ptr + (bk * num_seg + seg) * N * num_ch + st_off, mask=dmask, other=0.0)
    else:
        e = tl.zeros([DL, N, CH], tl.float32)
    da_acc = tl.zeros([DL, N, CH], tl.float32)
    dd_acc = tl.zeros([DL, 1, CH], tl.float32)
    dbias_acc = tl.zeros([DL, 1, CH], tl.float32)
    dw_acc = tl.zeros([DL, RP, CH], tl.float32)
    return length, c_lo, c_hi, e, da_acc, dd_acc, dbias_acc, dw_acc


@triton.jit
def _recompute_step(t, h, length, num_tokens, gidx_row, sidx_row, x_base, x_off, sx_l, dt_base,
                    dt_off, sdt_l, b_base, b_off, sb_l, w, bias, a2, dmask,
                    DELTA_FULL: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr,
                    SEPARATE_SCATTER: tl.constexpr):
    """The state after step ``t`` and the step's delta (the forward recurrence, no output)."""
    p, q = _tok(gidx_row, sidx_row, t, length, num_tokens, IDENTITY, SEPARATE_SCATTER)
    return _advance_state(h, p, num_tokens, t, length, x_base, x_off, sx_l, dt_base, dt_off,
                          sdt_l, b_base, b_off, sb_l, w, bias, a2, dmask, DELTA_FULL, SOFTPLUS)


@triton.jit(do_not_specialize=_SIZE_ARGS_BWD)
def scan_bwd_kernel(
        x_ptr, sx_b, sx_k, sx_d, sx_l,
        dt_ptr, sdt_b, sdt_k, sdt_r, sdt_l,
        w_ptr,
        b_ptr, sb_b, sb_k, sb_n, sb_l,
        c_ptr, sc_b, sc_k, sc_n, sc_l,
        a2_ptr, dskip_ptr, bias_ptr, tab_sd,
        dy_ptr, sy_b, sy_k, sy_d, sy_l,
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
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr,
        SEPARATE_SCATTER: tl.constexpr, DU_ATOMIC: tl.constexpr, LOAD_E: tl.constexpr,
        USE_RS: tl.constexpr, ASM_DECAY: tl.constexpr, CKM: tl.constexpr):
    """Backward of one segment: chunks of ``T`` steps in reverse, each chunk's states
    recomputed from the checkpoints ``ck``.

    Grid: (batch * num_dirs, cdiv(num_ch, CH * DL), num_seg). ``ck`` holds the state every
    ``CKM * T`` steps (``seg_len`` is a multiple of that); a chunk that starts between two
    checkpoints first advances from the previous one. A chunk's states ``h_{t-1}`` and deltas
    stay in registers (the chunk loops are unrolled, ``T`` states per thread) while the reverse
    pass runs over them.

    Writes ``du`` (stored per direction, or added atomically, ``DU_ATOMIC``); ``ddt`` = d(delta
    before softplus) stored (DELTA_FULL) or d(low-rank dt) added atomically; ``db``, ``dc``
    added atomically; per-(batch, segment) partials ``da`` (B*S, K*D, N), ``dd``, ``dbias``
    (B*S, K*D) and ``dw`` (B*S, K, RP, D). ``LOAD_E``: the adjoint entering the segment from the
    later one is ``es[b, k, s]`` (after the reverse combine).
    """
    seg = tl.program_id(2)
    r = tl.arange(0, RP)[None, :, None]
    lane = tl.arange(0, DL)[:, None]
    n1 = tl.arange(0, N)
    bidx, k, n, d, dmask, td, tkd, a2, bias, w, dt_off, x_base, x_off, dt_base = _prologue(
        num_dirs, num_ch, tab_sd, a2_ptr, bias_ptr, w_ptr, x_ptr, sx_b, sx_k, sx_d, dt_ptr, sdt_b,
        sdt_k, sdt_r, N, RP, CH, DL, DELTA_FULL, HAS_BIAS)
    dskip = _load_dskip(dskip_ptr, tkd, dmask, DL, CH, HAS_D)
    if DELTA_FULL:
        ddt_off = td * sddt_r
    else:
        ddt_off = 0
    ddt_base = ddt_ptr + bidx * sddt_b + k * sddt_k
    b_base = b_ptr + bidx * sb_b + k * sb_k
    b_off = n1 * sb_n
    c_base = c_ptr + bidx * sc_b + k * sc_k
    c_off = n1 * sc_n
    dy_base = dy_ptr + bidx * sy_b + k * sy_k
    dy_off = td * sy_d
    du_base = du_ptr + bidx * sdu_b + k * sdu_k
    du_off = td * sdu_d
    db_base = db_ptr + bidx * sdb_b + k * sdb_k
    dc_base = dc_ptr + bidx * sdc_b + k * sdc_k
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
        for ex in range(0, (c % CKM) * T):
            h, _ = _recompute_step(c_ck * CKM * T + ex, h, length, num_tokens, gidx_row,
                                   sidx_row, x_base, x_off, sx_l, dt_base, dt_off, sdt_l, b_base,
                                   b_off, sb_l, w, bias, a2, dmask, DELTA_FULL, SOFTPLUS,
                                   IDENTITY, SEPARATE_SCATTER)
        # the chunk's states h_{t-1} and deltas in registers (static unroll)
        hs = (h, )
        deltas = ()
        for j in tl.static_range(T):
            h, delta = _recompute_step(t0 + j, h, length, num_tokens, gidx_row, sidx_row, x_base,
                                       x_off, sx_l, dt_base, dt_off, sdt_l, b_base, b_off, sb_l,
                                       w, bias, a2, dmask, DELTA_FULL, SOFTPLUS, IDENTITY,
                                       SEPARATE_SCATTER)
            deltas = deltas + (delta, )
            if j < T - 1:
                hs = hs + (h, )
        for jj in tl.static_range(T):
            e, da_acc, dd_acc, dbias_acc, dw_acc = _bwd_step(
                t0 + (T - 1 - jj), hs[T - 1 - jj], deltas[T - 1 - jj], e, da_acc, dd_acc,
                dbias_acc, dw_acc, lane, length, num_tokens, gidx_row, sidx_row, x_base, x_off,
                sx_l, dt_base, dt_off, sdt_l, b_base, b_off, sb_l, c_base, c_off, sc_l, dy_base,
                dy_off, sy_l, du_base, du_off, sdu_l, ddt_base, ddt_off, sddt_r, sddt_l, db_base,
                sdb_n, sdb_l, dc_base, sdc_n, sdc_l, w, a2, dskip, dmask, DL, RP, N, DELTA_FULL,
                SOFTPLUS, IDENTITY, SEPARATE_SCATTER, DU_ATOMIC, USE_RS, ASM_DECAY)

    part = (bidx * num_seg + seg) * num_dirs * num_ch + tkd
    tl.store(da_ptr + part * N + n, da_acc, mask=dmask)
    tl.store(dd_ptr + part, dd_acc, mask=dmask)
    tl.store(dbias_ptr + part, dbias_acc, mask=dmask)
    if not DELTA_FULL:
        tl.store(dw_ptr + (((bidx * num_seg + seg) * num_dirs + k) * RP + r) * num_ch + td,
                 dw_acc, mask=dmask)


# The cache keys, the same in every process whatever kernel runs first (see .jit_keys).
settle_cache_keys(globals())
