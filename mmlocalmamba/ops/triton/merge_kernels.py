"""Triton kernels of the fused SCAttn merge + out_norm (imported lazily, needs triton).

See :mod:`mmlocalmamba.ops.triton.merge` for the passes and the tensors.
"""
import triton
import triton.language as tl

from .jit_keys import settle_cache_keys

# The sequence length ``L`` changes with the input size and is not specialised (no new kernel
# variant per image size); the strides are multiples of the channel count and stay specialised.


@triton.jit
def _tile_offsets(L, C, BL: tl.constexpr, CP: tl.constexpr):
    """Rows of this program's block (local 0..BL-1 and global), channels, masks."""
    local = tl.arange(0, BL)
    rows = tl.program_id(0) * BL + local
    cols = tl.arange(0, CP)
    rmask = rows < L
    cmask = cols < C
    return local, rows, cols, rmask, cmask, rmask[:, None] & cmask[None, :]


@triton.jit
def _row_norm(x, mask, C, eps):
    """Per-row (mean, rstd, centred tile) of an fp32 tile (masked entries 0)."""
    mean = tl.sum(x, axis=1) / C
    diff = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(diff * diff, axis=1) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    return mean, rstd, diff


@triton.jit
def _gated_sum(y_k, syk, offs, g_k, cols, mask, cmask, K, C, BL: tl.constexpr,
               CP: tl.constexpr):
    """sum_k y_k * gate_k of the program's (BL, CP) tile (fp32); y_k / g_k point at k = 0."""
    acc = tl.zeros((BL, CP), dtype=tl.float32)
    for _ in range(K):
        y = tl.load(y_k + offs, mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(g_k + cols, mask=cmask, other=0.0)
        acc += y * gate[None, :]
        y_k += syk
        g_k += C
    return acc


@triton.jit(do_not_specialize=['L'])
def _stats_kernel(y_ptr, syb, syk, syl, syc, part_ptr, K, L, C, eps,
                  BL: tl.constexpr, CP: tl.constexpr):
    """part[b, blk, k, :] = sum over the block's rows of xhat(ys[b, k, row, :])."""
    blk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    local, rows, cols, rmask, cmask, mask = _tile_offsets(L, C, BL, CP)
    offs = local[:, None] * syl + cols[None, :] * syc
    y_k = y_ptr + b * syb + (blk * BL).to(tl.int64) * syl
    out_k = part_ptr + ((b * tl.num_programs(0) + blk) * K) * C
    for _ in range(K):
        y = tl.load(y_k + offs, mask=mask, other=0.0).to(tl.float32)
        _, rstd, diff = _row_norm(y, mask, C, eps)
        tl.store(out_k + cols, tl.sum(diff * rstd[:, None], axis=0), mask=cmask)
        y_k += syk
        out_k += C


@triton.jit(do_not_specialize=['L'])
def _combine_kernel(y_ptr, syb, syk, syl, syc, gate_ptr, w_ptr, bias_ptr, out_ptr, mean_ptr,
                    rstd_ptr, z_ptr, szb, szl, szc, K, L, C, eps, BL: tl.constexpr,
                    CP: tl.constexpr, GATE_Z: tl.constexpr):
    """out = LayerNorm(sum_k ys[b, k] * gate[b, k]) * w + bias (times SiLU(z) with ``GATE_Z``,
    stored in out's dtype); mean / rstd per row."""
    blk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    local, rows, cols, rmask, cmask, mask = _tile_offsets(L, C, BL, CP)
    offs = local[:, None] * syl + cols[None, :] * syc
    acc = _gated_sum(y_ptr + b * syb + (blk * BL).to(tl.int64) * syl, syk, offs,
                     gate_ptr + b * K * C, cols, mask, cmask, K, C, BL, CP)
    mean, rstd, diff = _row_norm(acc, mask, C, eps)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
    bias = tl.load(bias_ptr + cols, mask=cmask, other=0.0)
    out = diff * rstd[:, None] * w[None, :] + bias[None, :]
    if GATE_Z:
        z = tl.load(z_ptr + b * szb + rows[:, None] * szl + cols[None, :] * szc, mask=mask,
                    other=0.0).to(tl.float32)
        out = out * (z * tl.sigmoid(z))
    tok = b * L + rows
    tl.store(out_ptr + tok[:, None] * C + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask)
    tl.store(mean_ptr + tok, mean, mask=rmask)
    tl.store(rstd_ptr + tok, rstd, mask=rmask)


@triton.jit(do_not_specialize=['L'])
def _bwd_a_kernel(y_ptr, syb, syk, syl, syc, gate_ptr, w_ptr, bias_ptr, dout_ptr, sdb, sdl, sdc,
                  mean_ptr, rstd_ptr, dacc_ptr, dgate_part_ptr, dw_part_ptr, db_part_ptr,
                  z_ptr, szb, szl, szc, dz_ptr, K, L, C, BL: tl.constexpr, CP: tl.constexpr,
                  GATE_Z: tl.constexpr):
    """dacc (LayerNorm backward of dout) and the block's partial sums of dacc * y_k,
    dout * ohat and dout. With ``GATE_Z`` the upstream gradient is that of
    ``out * SiLU(z)``: d out = dres * SiLU(z), and d z (stored contiguous, in z's dtype) =
    dres * out * SiLU'(z)."""
    blk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    local, rows, cols, rmask, cmask, mask = _tile_offsets(L, C, BL, CP)
    offs = local[:, None] * syl + cols[None, :] * syc
    y_base = y_ptr + b * syb + (blk * BL).to(tl.int64) * syl
    acc = _gated_sum(y_base, syk, offs, gate_ptr + b * K * C, cols, mask, cmask, K, C, BL,
                     CP)
    tok = b * L + rows
    mean = tl.load(mean_ptr + tok, mask=rmask, other=0.0)
    rstd = tl.load(rstd_ptr + tok, mask=rmask, other=0.0)
    ohat = tl.where(mask, (acc - mean[:, None]) * rstd[:, None], 0.0)
    d_offs = rows[:, None] * sdl + cols[None, :] * sdc
    dout = tl.load(dout_ptr + b * sdb + d_offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
    if GATE_Z:
        bias = tl.load(bias_ptr + cols, mask=cmask, other=0.0)
        z = tl.load(z_ptr + b * szb + rows[:, None] * szl + cols[None, :] * szc, mask=mask,
                    other=0.0).to(tl.float32)
        sig = tl.sigmoid(z)
        out = ohat * w[None, :] + bias[None, :]
        dz = dout * out * (sig * (1.0 + z * (1.0 - sig)))
        tl.store(dz_ptr + tok[:, None] * C + cols[None, :], dz.to(dz_ptr.dtype.element_ty),
                 mask=mask)
        dout = tl.where(mask, dout * (z * sig), 0.0)
    g = dout * w[None, :]
    mean_g = tl.sum(g, axis=1) / C
    mean_go = tl.sum(g * ohat, axis=1) / C
    dacc = rstd[:, None] * (g - mean_g[:, None] - ohat * mean_go[:, None])
    dacc = tl.where(mask, dacc, 0.0)
    tl.store(dacc_ptr + tok[:, None] * C + cols[None, :], dacc, mask=mask)
    part = b * tl.num_programs(0) + blk
    tl.store(dw_part_ptr + part * C + cols, tl.sum(dout * ohat, axis=0), mask=cmask)
    tl.store(db_part_ptr + part * C + cols, tl.sum(dout, axis=0), mask=cmask)
    y_k = y_base
    dg_k = dgate_part_ptr + part * K * C
    for _ in range(K):
        y = tl.load(y_k + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dg_k + cols, tl.sum(dacc * y, axis=0), mask=cmask)
        y_k += syk
        dg_k += C


@triton.jit(do_not_specialize=['L'])
def _bwd_b_kernel(y_ptr, syb, syk, syl, syc, gate_ptr, dm_ptr, dacc_ptr, dy_ptr, sdyb,
                  sdyk, sdyl, sdyc, K, L, C, eps, BL: tl.constexpr, CP: tl.constexpr):
    """dys[b, k] = LayerNorm backward of the per-(b, k) constant upstream dm[b, k] (already
    divided by L) + dacc * gate[b, k], in dys's dtype."""
    blk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    local, rows, cols, rmask, cmask, mask = _tile_offsets(L, C, BL, CP)
    offs = local[:, None] * syl + cols[None, :] * syc
    dy_offs = local[:, None] * sdyl + cols[None, :] * sdyc
    y_k = y_ptr + b * syb + (blk * BL).to(tl.int64) * syl
    dy_k = dy_ptr + b * sdyb + (blk * BL).to(tl.int64) * sdyl
    g_k = gate_ptr + b * K * C
    dm_k = dm_ptr + b * K * C
    tok = b * L + rows
    dacc = tl.load(dacc_ptr + tok[:, None] * C + cols[None, :], mask=mask, other=0.0)
    for _ in range(K):
        y = tl.load(y_k + offs, mask=mask, other=0.0).to(tl.float32)
        _, rstd, diff = _row_norm(y, mask, C, eps)
        xhat = diff * rstd[:, None]
        g = tl.load(dm_k + cols, mask=cmask, other=0.0)
        mean_g = tl.sum(g, axis=0) / C
        mean_gx = tl.sum(g[None, :] * xhat, axis=1) / C
        gate = tl.load(g_k + cols, mask=cmask, other=0.0)
        dy = rstd[:, None] * (g[None, :] - mean_g - xhat * mean_gx[:, None])
        dy += dacc * gate[None, :]
        tl.store(dy_k + dy_offs, dy.to(dy_ptr.dtype.element_ty), mask=mask)
        y_k += syk
        dy_k += sdyk
        g_k += C
        dm_k += C


# The cache keys, the same in every process whatever kernel runs first (see .jit_keys).
settle_cache_keys(globals())
