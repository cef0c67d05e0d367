"""Triton kernels of the fused multi-direction selective scan (imported lazily, needs triton).

One program scans one (batch, direction, channel block): it walks the direction's scan order
through an index table, gathers its inputs from natural (row-major) token order, keeps the SSM
state in fp32 registers and writes every output straight to its natural position. No permuted or
padded copy of any tensor is made. See :mod:`mmlocalmamba.ops.triton_scan` for the tensors.

The scan order is processed in chunks of ``T`` steps. A chunk's index-table entries and inputs are
loaded as tiles at once (one memory round trip per chunk, not per step), and the recurrence over
the chunk runs as an associative scan along the tile's first axis, which lives in each thread's
registers. Tiles are 4-D, ``(T, CH, N, DL)``: step ``t``, channel ``d = d0 + ch * DL + dl`` and
state ``n``; with one warp, ``DL`` lanes go along channels and ``32 / DL`` along ``N``.

Scan step ``t`` of direction ``k`` reads token ``p = gather[k, t]`` (``p >= num_tokens`` is a zero
padding token: u = B = C = 0 and dt = 0, so the state only decays) and writes its output at
``q = scatter[k, t]`` (the natural position, or the position the official ``v`` reverse puts it).

Backward: chunks in reverse order; each recomputes its states from a checkpoint (written every
``T`` steps by a forward pass with ``STORE_CK``), then runs the reverse recurrence
``dh_t = C_t g_t + decay_{t+1} dh_{t+1}`` as a scan over the flipped step axis. ``decay_{t+1}``
comes from loading the chunk shifted by one step.
"""
import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    """Compose two steps of h -> a * h + b (first 1, then 2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _last_row(tile, tt, T: tl.constexpr):
    """Row T-1 of a (T, ...) tile, keeping the axis: (1, ...)."""
    return tl.sum(tl.where(tt == T - 1, tile, 0.0), axis=0, keep_dims=True)


@triton.jit
def _first_row(tile, tt):
    return tl.sum(tl.where(tt == 0, tile, 0.0), axis=0, keep_dims=True)


@triton.jit
def _chunk_tokens(gidx_row, sidx_row, t, length, num_tokens, IDENTITY: tl.constexpr,
                  SEPARATE_SCATTER: tl.constexpr):
    """Token read (p) and written (q) by steps ``t`` (T,1,1,1) (int32), with validity."""
    live = t < length
    if IDENTITY:
        p = t
        q = t
    else:
        p = tl.load(gidx_row + t, mask=live, other=num_tokens)
        if SEPARATE_SCATTER:
            q = tl.load(sidx_row + t, mask=live, other=num_tokens)
        else:
            q = p
    pv = (p < num_tokens) & live
    qv = (q < num_tokens) & live
    return p, q, pv, qv


@triton.jit
def _chunk_delta(dt_base, dt_off, sdt_l, w, bias, p, pv, dmask, rmask, n0,
                 DELTA_FULL: tl.constexpr):
    """delta before softplus (T,CH,1,DL) and the low-rank dt tile (T,CH,RP,DL) (or delta).

    ``dt_off`` is a full-tile offset, so every load is in the tiles' register layout.
    """
    if DELTA_FULL:
        dtr = tl.load(dt_base + (dt_off + p * sdt_l), mask=dmask & pv,
                      other=0.0).to(tl.float32)
        draw = tl.sum(tl.where(n0, dtr, 0.0), axis=2, keep_dims=True)
    else:
        dtr = tl.load(dt_base + (dt_off + p * sdt_l), mask=dmask & rmask & pv,
                      other=0.0).to(tl.float32)
        draw = tl.sum(w * dtr, axis=2, keep_dims=True)
    return draw + bias, dtr


@triton.jit(do_not_specialize=['tab_sd'])
def scan_fwd_kernel(
        x_ptr, sx_b, sx_k, sx_d, sx_l,
        dt_ptr, sdt_b, sdt_k, sdt_r, sdt_l,
        w_ptr,
        b_ptr, sb_b, sb_k, sb_n, sb_l,
        c_ptr, sc_b, sc_k, sc_n, sc_l,
        a2_ptr, dskip_ptr, bias_ptr, tab_sd,
        y_ptr, sy_b, sy_k, sy_d, sy_l,
        ck_ptr, num_ck,
        gidx_ptr, sidx_ptr, len_ptr, table_len,
        num_dirs, num_ch, rank, num_tokens,
        N: tl.constexpr, RP: tl.constexpr, CH: tl.constexpr, DL: tl.constexpr,
        T: tl.constexpr, DELTA_FULL: tl.constexpr, HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr,
        SEPARATE_SCATTER: tl.constexpr, STORE_Y: tl.constexpr, STORE_CK: tl.constexpr):
    """Forward scan; writes y at natural positions and/or the chunk-start states.

    Grid: (batch * num_dirs, cdiv(num_ch, CH * DL)).
    ``a2``: (K, N, D) = A * log2(e); ``w``: (K, RP, D) delta projection (unused if DELTA_FULL);
    ``dskip``, ``bias``: (K, D); ``ck``: (B, K, num_ck, N, D) fp32, slot c = state before chunk c.
    ``tab_sd`` is 1 (see the comment at its use).
    """
    pid_bk = tl.program_id(0)
    pid_d = tl.program_id(1)
    bidx = (pid_bk // num_dirs).to(tl.int64)
    k = pid_bk % num_dirs
    tt = tl.arange(0, T)[:, None, None, None]
    ch = tl.arange(0, CH)[None, :, None, None]
    n = tl.arange(0, N)[None, None, :, None]
    dl = tl.arange(0, DL)[None, None, None, :]
    r = tl.arange(0, RP)[None, None, :, None]
    d = pid_d * (CH * DL) + ch * DL + dl
    dmask = d < num_ch
    rmask = r < rank
    # tab_sd == 1 at run time but is not specialised: addresses built from td / tn / tr carry no
    # contiguity, so the compiler keeps loads and stores in the tiles' register layout instead of
    # vectorising them into another layout and converting every chunk.
    td = d * tab_sd
    tn = n * tab_sd
    tr = r * tab_sd
    tkd = k * num_ch + td
    zero_n = tn * 0  # (1,1,N,1): broadcasts (.., 1, ..) pointers to full tiles
    zero_d = td * 0  # (1,CH,1,DL)
    n0 = n == 0

    a2 = tl.load(a2_ptr + (k * N + tn) * num_ch + td, mask=dmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + tkd, mask=dmask, other=0.0)
    else:
        bias = tl.zeros([1, CH, 1, DL], tl.float32)
    if HAS_D:
        dskip = tl.load(dskip_ptr + tkd, mask=dmask, other=0.0)
    else:
        dskip = tl.zeros([1, CH, 1, DL], tl.float32)
    if DELTA_FULL:
        w = tl.zeros([1, CH, RP, DL], tl.float32)
        dt_off = td * sdt_r + zero_n
    else:
        w = tl.load(w_ptr + (k * RP + tr) * num_ch + td, mask=dmask, other=0.0)
        dt_off = tr * sdt_r + zero_d
    # Scalar (batch, direction) base pointers plus int32 full-tile (1, CH, N|RP, DL) offsets:
    # broadcast operands are loaded in the tiles' layout, and no 64-bit pointer tiles stay live.
    dt_base = dt_ptr + bidx * sdt_b + k * sdt_k
    x_base = x_ptr + bidx * sx_b + k * sx_k
    x_off = td * sx_d + zero_n
    b_base = b_ptr + bidx * sb_b + k * sb_k
    b_off = tn * sb_n + zero_d
    c_base = c_ptr + bidx * sc_b + k * sc_k
    c_off = tn * sc_n + zero_d
    y_base = y_ptr + bidx * sy_b + k * sy_k
    y_off = td * sy_d + zero_n
    gidx_row = gidx_ptr + k * table_len
    sidx_row = sidx_ptr + k * table_len
    ck_base = ck_ptr + (bidx * num_dirs + k) * num_ck * N * num_ch
    ck_off = tn * num_ch + td

    length = tl.load(len_ptr + k)
    num_chunks = tl.cdiv(length, T)
    h0 = tl.zeros([1, CH, N, DL], tl.float32)
    for c in range(0, num_chunks):
        t = c * T + tt
        p, q, pv, qv = _chunk_tokens(gidx_row, sidx_row, t, length, num_tokens, IDENTITY,
                                     SEPARATE_SCATTER)
        u = tl.load(x_base + (x_off + p * sx_l), mask=dmask & pv, other=0.0).to(tl.float32)
        draw, dtr = _chunk_delta(dt_base, dt_off, sdt_l, w, bias, p, pv, dmask, rmask, n0,
                                 DELTA_FULL)
        if SOFTPLUS:
            delta = _softplus(draw)
        else:
            delta = draw
        bv = tl.load(b_base + (b_off + p * sb_l), mask=dmask & pv, other=0.0).to(tl.float32)
        decay = tl.exp2(delta * a2)
        acc_a, acc_b = tl.associative_scan((decay, (delta * u) * bv), 0, _linear_combine)
        h = acc_b + acc_a * h0
        if STORE_Y:
            cv = tl.load(c_base + (c_off + p * sc_l), mask=dmask & pv, other=0.0).to(tl.float32)
            # The D skip is added once per channel (state 0) inside the sum over states.
            y = tl.sum(h * cv + tl.where(n0, dskip * u, 0.0), axis=2, keep_dims=True)
            tl.store(y_base + (y_off + q * sy_l), y + zero_n, mask=dmask & qv & n0)
        h0 = _last_row(h, tt, T)
        if STORE_CK:
            tl.store(ck_base + (ck_off + (c + 1) * (N * num_ch)), h0,
                     mask=dmask & (c + 1 < num_chunks))


@triton.jit(do_not_specialize=['tab_sd'])
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
        gidx_ptr, sidx_ptr, len_ptr, table_len,
        num_dirs, num_ch, rank, num_tokens,
        N: tl.constexpr, RP: tl.constexpr, CH: tl.constexpr, DL: tl.constexpr,
        T: tl.constexpr, DELTA_FULL: tl.constexpr, HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr,
        SEPARATE_SCATTER: tl.constexpr, DU_ATOMIC: tl.constexpr):
    """Backward scan (reverse chunk order, states recomputed from checkpoints).

    Writes: ``du`` at natural positions (stored, or atomically added when several directions
    share it, ``DU_ATOMIC``); ``ddt`` = d(delta before softplus) stored (DELTA_FULL) or d(low-rank
    dt) atomically added; ``db``, ``dc`` atomically added (sums over channels); per-(batch,
    channel) partials ``da`` (B, K*D, N) = dL/dA, ``dd``, ``dbias`` (B, K*D), ``dw`` (B, K, RP, D).
    """
    pid_bk = tl.program_id(0)
    pid_d = tl.program_id(1)
    bidx = (pid_bk // num_dirs).to(tl.int64)
    k = pid_bk % num_dirs
    tt = tl.arange(0, T)[:, None, None, None]
    ch = tl.arange(0, CH)[None, :, None, None]
    n = tl.arange(0, N)[None, None, :, None]
    dl = tl.arange(0, DL)[None, None, None, :]
    r = tl.arange(0, RP)[None, None, :, None]
    d = pid_d * (CH * DL) + ch * DL + dl
    dmask = d < num_ch
    rmask = r < rank
    td = d * tab_sd
    tn = n * tab_sd
    tr = r * tab_sd
    tkd = k * num_ch + td
    zero_n = tn * 0
    zero_d = td * 0  # (1,CH,1,DL)
    n0 = n == 0
    lead = (ch == 0) & (dl == 0)  # the lanes that write sums over channels

    a2 = tl.load(a2_ptr + (k * N + tn) * num_ch + td, mask=dmask, other=0.0)
    a_nat = a2 * LN2
    if HAS_BIAS:
        bias = tl.load(bias_ptr + tkd, mask=dmask, other=0.0)
    else:
        bias = tl.zeros([1, CH, 1, DL], tl.float32)
    if HAS_D:
        dskip = tl.load(dskip_ptr + tkd, mask=dmask, other=0.0)
    else:
        dskip = tl.zeros([1, CH, 1, DL], tl.float32)
    if DELTA_FULL:
        w = tl.zeros([1, CH, RP, DL], tl.float32)
        dt_off = td * sdt_r + zero_n
        ddt_off = td * sddt_r + zero_n
    else:
        w = tl.load(w_ptr + (k * RP + tr) * num_ch + td, mask=dmask, other=0.0)
        dt_off = tr * sdt_r + zero_d
        ddt_off = tr * sddt_r + zero_d
    dt_base = dt_ptr + bidx * sdt_b + k * sdt_k
    ddt_base = ddt_ptr + bidx * sddt_b + k * sddt_k
    x_base = x_ptr + bidx * sx_b + k * sx_k
    x_off = td * sx_d + zero_n
    b_base = b_ptr + bidx * sb_b + k * sb_k
    b_off = tn * sb_n + zero_d
    c_base = c_ptr + bidx * sc_b + k * sc_k
    c_off = tn * sc_n + zero_d
    dy_base = dy_ptr + bidx * sy_b + k * sy_k
    dy_off = td * sy_d + zero_n
    du_base = du_ptr + bidx * sdu_b + k * sdu_k
    du_off = td * sdu_d + zero_n
    db_base = db_ptr + bidx * sdb_b + k * sdb_k
    db_off = tn * sdb_n + zero_d
    dc_base = dc_ptr + bidx * sdc_b + k * sdc_k
    dc_off = tn * sdc_n + zero_d
    gidx_row = gidx_ptr + k * table_len
    sidx_row = sidx_ptr + k * table_len
    ck_base = ck_ptr + (bidx * num_dirs + k) * num_ck * N * num_ch
    ck_off = tn * num_ch + td

    length = tl.load(len_ptr + k)
    num_chunks = tl.cdiv(length, T)
    dh_next = tl.zeros([1, CH, N, DL], tl.float32)  # dh at the first step of the later chunk
    da_acc = tl.zeros([1, CH, N, DL], tl.float32)
    dd_acc = tl.zeros([1, CH, 1, DL], tl.float32)
    dbias_acc = tl.zeros([1, CH, 1, DL], tl.float32)
    dw_acc = tl.zeros([1, CH, RP, DL], tl.float32)
    for ci in range(0, num_chunks):
        c = num_chunks - 1 - ci
        t = c * T + tt
        p, q, pv, qv = _chunk_tokens(gidx_row, sidx_row, t, length, num_tokens, IDENTITY,
                                     SEPARATE_SCATTER)
        pn, qn, pnv, qnv = _chunk_tokens(gidx_row, sidx_row, t + 1, length, num_tokens,
                                         IDENTITY, False)
        h0 = tl.load(ck_base + (ck_off + c * (N * num_ch)), mask=dmask & (c > 0), other=0.0)
        u = tl.load(x_base + (x_off + p * sx_l), mask=dmask & pv, other=0.0).to(tl.float32)
        g = tl.load(dy_base + (dy_off + q * sy_l), mask=dmask & qv, other=0.0).to(tl.float32)
        draw, dtr = _chunk_delta(dt_base, dt_off, sdt_l, w, bias, p, pv, dmask, rmask, n0,
                                 DELTA_FULL)
        draw_n, _ = _chunk_delta(dt_base, dt_off, sdt_l, w, bias, pn, pnv, dmask, rmask, n0,
                                 DELTA_FULL)
        if SOFTPLUS:
            delta = _softplus(draw)
            delta_n = _softplus(draw_n)
        else:
            delta = draw
            delta_n = draw_n
        bv = tl.load(b_base + (b_off + p * sb_l), mask=dmask & pv, other=0.0).to(tl.float32)
        cv = tl.load(c_base + (c_off + p * sc_l), mask=dmask & pv, other=0.0).to(tl.float32)
        dbu = delta * u
        # States of the chunk.
        acc_a, acc_b = tl.associative_scan((tl.exp2(delta * a2), dbu * bv), 0, _linear_combine)
        h = acc_b + acc_a * h0
        # Adjoints: dh_t = C_t g_t + decay_{t+1} dh_{t+1}, scanned from the chunk's end, where
        # dh_{t0+T} (first step of the later chunk) is carried over.
        decay_n = tl.exp2(delta_n * a2)
        # (associative_scan(reverse=True) lowers through lane shuffles; flips of the in-register
        # step axis are free.)
        rev_a, rev_b = tl.associative_scan((tl.flip(decay_n, 0), tl.flip(cv * g, 0)), 0,
                                           _linear_combine)
        dh = tl.flip(rev_b, 0) + tl.flip(rev_a, 0) * dh_next
        dh_next = _first_row(dh, tt)

        du = tl.sum(dh * bv * delta + tl.where(n0, dskip * g, 0.0), axis=2, keep_dims=True)
        h_prev_decayed = h - dbu * bv  # decay_t * h_{t-1}
        ddelta = tl.sum(dh * (u * bv + a_nat * h_prev_decayed), axis=2, keep_dims=True)
        da_acc += tl.sum(dh * h_prev_decayed * delta, axis=0, keep_dims=True)
        if SOFTPLUS:
            ddraw = ddelta / (1.0 + tl.exp(-draw))
        else:
            ddraw = ddelta
        dbias_acc += tl.sum(ddraw, axis=0, keep_dims=True)
        dd_acc += tl.sum(tl.sum(tl.where(n0, g * u, 0.0), axis=2, keep_dims=True), axis=0,
                         keep_dims=True)
        # Sums over channels, written by the lanes of channel (ch, dl) = (0, 0) only.
        dc_t = tl.sum(tl.sum(g * h, axis=1, keep_dims=True), axis=3, keep_dims=True)
        db_t = tl.sum(tl.sum(dh * dbu, axis=1, keep_dims=True), axis=3, keep_dims=True)
        tl.atomic_add(dc_base + (dc_off + p * sdc_l), dc_t + zero_d, mask=lead & pv,
                      sem='relaxed')
        tl.atomic_add(db_base + (db_off + p * sdb_l), db_t + zero_d, mask=lead & pv,
                      sem='relaxed')
        if DELTA_FULL:
            tl.store(ddt_base + (ddt_off + p * sddt_l), ddraw + zero_n, mask=dmask & pv & n0)
        else:
            dw_acc += tl.sum(ddraw * dtr, axis=0, keep_dims=True)
            ddtr = tl.sum(tl.sum(w * ddraw, axis=1, keep_dims=True), axis=3, keep_dims=True)
            tl.atomic_add(ddt_base + (ddt_off + p * sddt_l), ddtr + zero_d,
                          mask=lead & rmask & pv, sem='relaxed')
        if DU_ATOMIC:
            tl.atomic_add(du_base + (du_off + p * sdu_l), du + zero_n, mask=dmask & pv & n0,
                          sem='relaxed')
        else:
            tl.store(du_base + (du_off + p * sdu_l), du + zero_n, mask=dmask & pv & n0)

    part = bidx * num_dirs * num_ch + tkd
    tl.store(da_ptr + part * N + tn, da_acc, mask=dmask)
    tl.store(dd_ptr + part + zero_n, dd_acc + zero_n, mask=dmask & n0)
    tl.store(dbias_ptr + part + zero_n, dbias_acc + zero_n, mask=dmask & n0)
    if not DELTA_FULL:
        tl.store(dw_ptr + ((bidx * num_dirs + k) * RP + tr) * num_ch + td, dw_acc, mask=dmask)
