"""Triton kernels of the fused multi-direction selective scan (imported lazily, needs triton).

One program scans one (batch, direction, channel block): it walks the direction's scan order
through an index table, gathers its inputs from natural (row-major) token order, keeps the SSM
state in fp32 registers and writes every output straight to its natural position. No permuted or
padded copy of any tensor is made. See :mod:`mmlocalmamba.ops.triton_scan` for the tensors.

Register tiles are 3-D, ``(CH, N, DL)``: channel ``d = d0 + ch * DL + dl`` and state ``n``.
With ``DL = 32 * num_warps`` (forward) a thread owns one channel and all ``N`` states; with
``DL = 8`` and one warp (backward) 4 lanes share the ``N`` states of a channel and a thread
holds ``CH`` channels, which balances the reductions over ``N`` and over channels. The
per-channel tables (``A * log2(e)``, the delta projection) are stored channel-minor,
``(K, N, D)`` and ``(K, RP, D)``, so that their loads steer the compiler to those layouts.

Scan step ``t`` of direction ``k`` reads token ``p = gather[k, t]`` (``p >= num_tokens`` is a zero
padding token: u = B = C = 0 and dt = 0, so the state only decays) and writes its output at
``q = scatter[k, t]`` (the natural position, or the position the official ``v`` reverse puts it).

Backward: per chunk of ``T`` steps, in reverse chunk order, the forward is recomputed from a
checkpointed state (written by a forward pass with ``STORE_CK``, every ``T`` steps) keeping the
``T`` states of the chunk in registers, then the reverse recurrence runs over the chunk.
"""
import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _step_tokens(gidx_row, sidx_row, t, length, num_tokens, IDENTITY: tl.constexpr,
                 SEPARATE_SCATTER: tl.constexpr):
    """(p, q, p valid, q valid) of scan step ``t`` (int64 token indices)."""
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
    return p.to(tl.int64), q.to(tl.int64), pv, qv


@triton.jit
def _step_inputs(x_row, sx_l, dt_row, sdt_l, b_row, sb_l, c_row, sc_l, w, bias, a2, p, pv,
                 dmask, rmask, DELTA_FULL: tl.constexpr, SOFTPLUS: tl.constexpr,
                 NEED_C: tl.constexpr):
    """Inputs of one step: u (CH,1,DL), delta before/after softplus (CH,1,DL), B, C (1,N,1),
    decay exp(delta*A) (CH,N,DL) and the low-rank dt (1,RP,1) (= delta if DELTA_FULL)."""
    u = tl.load(x_row + p * sx_l, mask=dmask & pv, other=0.0).to(tl.float32)
    if DELTA_FULL:
        draw = tl.load(dt_row + p * sdt_l, mask=dmask & pv, other=0.0).to(tl.float32)
    else:
        dtr = tl.load(dt_row + p * sdt_l, mask=rmask & pv, other=0.0).to(tl.float32)
        draw = tl.sum(w * dtr, axis=1, keep_dims=True)
    if DELTA_FULL:
        dtr = draw
    draw = draw + bias
    if SOFTPLUS:
        delta = _softplus(draw)
    else:
        delta = draw
    bv = tl.load(b_row + p * sb_l, mask=pv, other=0.0).to(tl.float32)
    if NEED_C:
        cv = tl.load(c_row + p * sc_l, mask=pv, other=0.0).to(tl.float32)
    else:
        cv = bv
    decay = tl.exp2(delta * a2)
    return u, draw, delta, bv, cv, decay, dtr


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
    """
    pid_bk = tl.program_id(0)
    pid_d = tl.program_id(1)
    bidx = (pid_bk // num_dirs).to(tl.int64)
    k = pid_bk % num_dirs
    ch = tl.arange(0, CH)[:, None, None]
    n = tl.arange(0, N)[None, :, None]
    dl = tl.arange(0, DL)[None, None, :]
    r = tl.arange(0, RP)[None, :, None]
    d = pid_d * (CH * DL) + ch * DL + dl
    dmask = d < num_ch
    rmask = r < rank
    # tab_sd == 1 at run time but is not specialised: addresses built from td / tn carry no
    # contiguity, so the compiler keeps every load and store in the (CH, N, DL) register layout
    # instead of vectorising them into another layout and converting each step.
    td = d * tab_sd
    tn = n * tab_sd
    tr = r * tab_sd
    tkd = k * num_ch + td

    a2 = tl.load(a2_ptr + (k * N + tn) * num_ch + td, mask=dmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + tkd, mask=dmask, other=0.0)
    else:
        bias = tl.zeros([CH, 1, DL], tl.float32)
    if HAS_D:
        dskip = tl.load(dskip_ptr + tkd, mask=dmask, other=0.0)
    else:
        dskip = tl.zeros([CH, 1, DL], tl.float32)
    if DELTA_FULL:
        w = tl.zeros([CH, RP, DL], tl.float32)
        dt_row = dt_ptr + bidx * sdt_b + k * sdt_k + td * sdt_r
    else:
        w = tl.load(w_ptr + (k * RP + tr) * num_ch + td, mask=dmask, other=0.0)
        dt_row = dt_ptr + bidx * sdt_b + k * sdt_k + tr * sdt_r
    x_row = x_ptr + bidx * sx_b + k * sx_k + td * sx_d
    b_row = b_ptr + bidx * sb_b + k * sb_k + tn * sb_n
    c_row = c_ptr + bidx * sc_b + k * sc_k + tn * sc_n
    y_row = y_ptr + bidx * sy_b + k * sy_k + td * sy_d
    gidx_row = gidx_ptr + k * table_len
    sidx_row = sidx_ptr + k * table_len
    ck_row = ck_ptr + ((bidx * num_dirs + k) * num_ck * N + tn) * num_ch + td

    length = tl.load(len_ptr + k)
    num_chunks = tl.cdiv(length, T)
    h = tl.zeros([CH, N, DL], tl.float32)
    for c in range(0, num_chunks):
        for j in tl.static_range(T):
            t = c * T + j
            p, q, pv, qv = _step_tokens(gidx_row, sidx_row, t, length, num_tokens, IDENTITY,
                                        SEPARATE_SCATTER)
            u, draw, delta, bv, cv, decay, dtr = _step_inputs(
                x_row, sx_l, dt_row, sdt_l, b_row, sb_l, c_row, sc_l, w, bias, a2, p, pv,
                dmask, rmask, DELTA_FULL, SOFTPLUS, STORE_Y)
            h = decay * h + (delta * u) * bv
            if STORE_Y:
                y = tl.sum(h * cv, axis=1, keep_dims=True) + dskip * u
                tl.store(y_row + q * sy_l, y, mask=dmask & qv)
        if STORE_CK:
            tl.store(ck_row + (c + 1) * (N * num_ch), h, mask=dmask & (c + 1 < num_chunks))


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
    """Backward scan (reverse order, chunks of T steps recomputed from checkpoints).

    Writes: ``du`` at natural positions (stored, or atomically added when several directions
    share it, ``DU_ATOMIC``); ``ddt`` = d(delta before softplus) stored (DELTA_FULL) or d(low-rank
    dt) atomically added; ``db``, ``dc`` atomically added (sums over channels); per-(batch,
    channel) partials ``da`` (B, K*D, N) = dL/dA, ``dd``, ``dbias`` (B, K*D), ``dw`` (B, K, RP, D).
    """
    pid_bk = tl.program_id(0)
    pid_d = tl.program_id(1)
    bidx = (pid_bk // num_dirs).to(tl.int64)
    k = pid_bk % num_dirs
    ch = tl.arange(0, CH)[:, None, None]
    n = tl.arange(0, N)[None, :, None]
    dl = tl.arange(0, DL)[None, None, :]
    r = tl.arange(0, RP)[None, :, None]
    d = pid_d * (CH * DL) + ch * DL + dl
    dmask = d < num_ch
    rmask = r < rank
    # tab_sd == 1 at run time but is not specialised: addresses built from td / tn carry no
    # contiguity, so the compiler keeps every load and store in the (CH, N, DL) register layout
    # instead of vectorising them into another layout and converting each step.
    td = d * tab_sd
    tn = n * tab_sd
    tr = r * tab_sd
    tkd = k * num_ch + td

    a2 = tl.load(a2_ptr + (k * N + tn) * num_ch + td, mask=dmask, other=0.0)
    a_nat = a2 * LN2
    if HAS_BIAS:
        bias = tl.load(bias_ptr + tkd, mask=dmask, other=0.0)
    else:
        bias = tl.zeros([CH, 1, DL], tl.float32)
    if HAS_D:
        dskip = tl.load(dskip_ptr + tkd, mask=dmask, other=0.0)
    else:
        dskip = tl.zeros([CH, 1, DL], tl.float32)
    if DELTA_FULL:
        w = tl.zeros([CH, RP, DL], tl.float32)
        dt_row = dt_ptr + bidx * sdt_b + k * sdt_k + td * sdt_r
        ddt_row = ddt_ptr + bidx * sddt_b + k * sddt_k + td * sddt_r
    else:
        w = tl.load(w_ptr + (k * RP + tr) * num_ch + td, mask=dmask, other=0.0)
        dt_row = dt_ptr + bidx * sdt_b + k * sdt_k + tr * sdt_r
        ddt_row = ddt_ptr + bidx * sddt_b + k * sddt_k + tr * sddt_r
    x_row = x_ptr + bidx * sx_b + k * sx_k + td * sx_d
    b_row = b_ptr + bidx * sb_b + k * sb_k + tn * sb_n
    c_row = c_ptr + bidx * sc_b + k * sc_k + tn * sc_n
    dy_row = dy_ptr + bidx * sy_b + k * sy_k + td * sy_d
    du_row = du_ptr + bidx * sdu_b + k * sdu_k + td * sdu_d
    db_row = db_ptr + bidx * sdb_b + k * sdb_k + tn * sdb_n
    dc_row = dc_ptr + bidx * sdc_b + k * sdc_k + tn * sdc_n
    gidx_row = gidx_ptr + k * table_len
    sidx_row = sidx_ptr + k * table_len
    ck_row = ck_ptr + ((bidx * num_dirs + k) * num_ck * N + tn) * num_ch + td

    zero3 = tl.zeros([CH, N, DL], tl.int32)
    zero3r = tl.zeros([CH, RP, DL], tl.int32)
    zeron = tl.zeros([CH, N, DL], tl.int32)
    lead = (ch == 0) & (dl == 0) & (n >= 0)
    lead_r = (ch == 0) & (dl == 0) & (r >= 0)
    n0 = n == 0

    length = tl.load(len_ptr + k)
    num_chunks = tl.cdiv(length, T)
    dh = tl.zeros([CH, N, DL], tl.float32)
    da_acc = tl.zeros([CH, N, DL], tl.float32)
    dd_acc = tl.zeros([CH, 1, DL], tl.float32)
    dbias_acc = tl.zeros([CH, 1, DL], tl.float32)
    dw_acc = tl.zeros([CH, RP, DL], tl.float32)
    for ci in range(0, num_chunks):
        c = num_chunks - 1 - ci
        h = tl.load(ck_row + c * (N * num_ch), mask=dmask & (c > 0), other=0.0)
        hist = ()
        for j in tl.static_range(T):
            t = c * T + j
            p, q, pv, qv = _step_tokens(gidx_row, sidx_row, t, length, num_tokens, IDENTITY,
                                        SEPARATE_SCATTER)
            u, draw, delta, bv, cv, decay, dtr = _step_inputs(
                x_row, sx_l, dt_row, sdt_l, b_row, sb_l, c_row, sc_l, w, bias, a2, p, pv,
                dmask, rmask, DELTA_FULL, SOFTPLUS, False)
            h = decay * h + (delta * u) * bv
            hist = hist + (h, )
        for j in tl.static_range(T - 1, -1, -1):
            t = c * T + j
            p, q, pv, qv = _step_tokens(gidx_row, sidx_row, t, length, num_tokens, IDENTITY,
                                        SEPARATE_SCATTER)
            u, draw, delta, bv, cv, decay, dtr = _step_inputs(
                x_row, sx_l, dt_row, sdt_l, b_row, sb_l, c_row, sc_l, w, bias, a2, p, pv,
                dmask, rmask, DELTA_FULL, SOFTPLUS, True)
            g = tl.load(dy_row + q * sy_l, mask=dmask & qv, other=0.0).to(tl.float32)
            hj = hist[j]
            dh = dh + cv * g
            du_ = tl.sum(dh * bv, axis=1, keep_dims=True) * delta + dskip * g
            dbu = delta * u
            h_prev_decayed = hj - dbu * bv  # decay_t * h_{t-1}
            ddelta = tl.sum(dh * (u * bv + a_nat * h_prev_decayed), axis=1, keep_dims=True)
            da_acc += dh * h_prev_decayed * delta
            if SOFTPLUS:
                ddraw = ddelta / (1.0 + tl.exp(-draw))
            else:
                ddraw = ddelta
            dbias_acc += ddraw
            dd_acc += g * u
            # Sums over channels, written by the lanes of channel (ch, dl) = (0, 0) only; the
            # (CH, N, DL)-shaped pointers keep the atomics in the register layout.
            dc_t = tl.sum(tl.sum(g * hj, axis=0, keep_dims=True), axis=2, keep_dims=True)
            db_t = tl.sum(tl.sum(dh * dbu, axis=0, keep_dims=True), axis=2, keep_dims=True)
            tl.atomic_add(dc_row + p * sdc_l + zero3, dc_t + zero3, mask=lead & pv,
                          sem='relaxed')
            tl.atomic_add(db_row + p * sdb_l + zero3, db_t + zero3, mask=lead & pv,
                          sem='relaxed')
            if DELTA_FULL:
                tl.store(ddt_row + p * sddt_l + zeron, ddraw + zeron, mask=dmask & pv & n0)
            else:
                dw_acc += ddraw * dtr
                ddtr = tl.sum(tl.sum(w * ddraw, axis=0, keep_dims=True), axis=2,
                              keep_dims=True)
                tl.atomic_add(ddt_row + p * sddt_l + zero3r, ddtr + zero3r,
                              mask=lead_r & rmask & pv, sem='relaxed')
            if DU_ATOMIC:
                tl.atomic_add(du_row + p * sdu_l + zeron, du_ + zeron, mask=dmask & pv & n0,
                              sem='relaxed')
            else:
                tl.store(du_row + p * sdu_l + zeron, du_ + zeron, mask=dmask & pv & n0)
            dh = decay * dh

    part = bidx * num_dirs * num_ch + tkd
    tl.store(da_ptr + part * N + tn, da_acc, mask=dmask)
    tl.store(dd_ptr + part, dd_acc, mask=dmask)
    tl.store(dbias_ptr + part, dbias_acc, mask=dmask)
    if not DELTA_FULL:
        tl.store(dw_ptr + ((bidx * num_dirs + k) * RP + tr) * num_ch + td, dw_acc, mask=dmask)
