"""Fused SCAttn merge + ``out_norm`` of a LocalVMamba layer (Triton), forward and backward.

The computation (:func:`mmlocalmamba.ops.merge.scattn_merge_reference` is the PyTorch
definition)::

    out = LayerNorm_out( sum_k  y_k * gate_k ),   y_k = ys[:, k]            (B, L, C)
    gate_k = sigmoid(W2 GELU(W1 pooled_k + b1) + b2),                       (B, 1, C)
    pooled_k = mean_tokens(LayerNorm_attn(y_k))

with ``ys`` (B, K, L, C) the K scan directions' outputs. ``ys`` is the only large tensor;
everything of size (B, K, C) is tiny and handled by PyTorch.

Design (one :class:`torch.autograd.Function`, four kernels, each with one program per (batch,
block of ``BL`` tokens), launched as the grid ``(cdiv(L, BL), B)`` so that the row blocks sit on
the axis without CUDA's 65535 limit; a program owns a tile of ``BL`` tokens x ``CP`` channels,
``CP`` the next power of two of ``C`` (masked), ``BL = max(1, 4096 // CP)``, 4 warps, 8 for
``CP >= 1024``)::

    forward
      1. stats     ys -> part (B, nblk, K, C): per (token block, k), the column sums of xhat,
                   xhat = (y - mean) * rstd the non-affine LayerNorm of each token.
                   M = part.sum(1) / L (B, K, C) is the mean of xhat over the tokens, so
                   pooled = attn_w * M + attn_b (the token mean of an affine LayerNorm).
      2. (torch)   gate = sigmoid(linear(gelu(linear(pooled, w1, b1)), w2, b2))  (B, K, C)
      3. combine   acc = sum_k ys[:, k] * gate_k; out = LayerNorm(acc) * out_w + out_b;
                   also stores the token mean / rstd of acc (B, L) for the backward.
    backward (dout (B, L, C))
      4. bwd_a     recomputes acc and its normalised ohat; dacc = LayerNorm backward of dout;
                   writes dacc (B, L, C) fp32 and per-block partial sums of dacc * y_k (dgate),
                   dout * ohat (d out_w) and dout (d out_b).
      5. (torch)   dgate = sum of the partials; backprop through the gate MLP by
                   torch.autograd.grad -> dM, d attn_w, d attn_b, d w1, d b1, d w2, d b2.
      6. bwd_b     per k: recompute xhat of y_k; dy_k = LayerNorm backward of the constant
                   upstream dM_k / L  +  dacc * gate_k; stored in ys's dtype.

Memory traffic, with N = B*K*L*C elements of ys of s bytes each (s = 2 for bf16/fp16, 4 for
fp32), T = B*L*C and P = B*nblk*K*C partial sums (nblk = cdiv(L, BL); P = K*T / BL, i.e.
K*T / 16 for C = 192, so each 4*P partial buffer is 1 / (4*s) of N*s: 6 % of fp32 ys, 12 % of
bf16 ys at C = 192)::

    stats    read N*s                          write 4*P
    combine  read N*s                          write 4*T (out) + 8*B*L (mean, rstd)
    bwd_a    read 2*N*s (ys twice: acc, then dgate; the second read of the program's own
             tiles mostly hits L2) + 4*T (dout) + 8*B*L     write 4*T (dacc) + 4*P + 8*B*nblk*C
    bwd_b    read N*s + 4*T (dacc, once per tile)          write N*s (dys)

so the forward moves about 2*N*s + 4*T bytes and the backward about 5*N*s + 12*T (the unfused
PyTorch path reads and writes ys-sized fp32 tensors several times per direction). Partial sums
are reduced by ``torch.sum`` (no atomics): the results are deterministic.

``ys`` may be fp32, bf16 or fp16 with arbitrary strides (passed to the kernels); all math is
fp32 (float64 inputs go to the PyTorch reference, the dispatcher's choice). Triton is imported
only when a kernel is first needed (:mod:`.merge_kernels`), so this module imports without
triton. The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``).
"""
import torch
import torch.nn.functional as F

from .common import cdiv, interpreting, unavailable_reason

__all__ = ['scattn_merge_triton', 'merge_forward', 'merge_backward']


def _kernels():
    from . import merge_kernels
    return merge_kernels


def _gate_mlp(m, attn_w, attn_b, w1, b1, w2, b2):
    """gate (B, K, C) of the token means ``m`` (B, K, C) of the non-affine attn LayerNorm."""
    pooled = attn_w * m + attn_b
    return torch.sigmoid(F.linear(F.gelu(F.linear(pooled, w1, b1)), w2, b2))


def _pow2(value: int) -> int:
    return 1 << max(0, (int(value) - 1).bit_length())


#: Target elements of a program's (BL, CP) tile: BL = max(1, TILE_ELEMENTS // CP) token rows.
TILE_ELEMENTS = 4096


def _tile(num_ch: int, tile_elements: int):
    """(BL, CP, num_warps) of the kernels for C channels (BL and CP powers of two)."""
    cp = _pow2(num_ch)
    return _pow2(max(1, tile_elements // cp)), cp, (8 if cp >= 1024 else 4)


def _check_args(ys, attn_w, attn_b, w1, b1, w2, b2, out_w, out_b):
    if not isinstance(ys, torch.Tensor) or ys.dim() != 4:
        raise ValueError('ys must be a 4-D (B, K, L, C) tensor, got '
                         f'{tuple(ys.shape) if isinstance(ys, torch.Tensor) else type(ys)}.')
    if ys.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise TypeError(f'ys must be float32, bfloat16, float16 (or float64), got {ys.dtype}.')
    if min(ys.shape) < 1:
        raise ValueError(f'ys must not be empty, got shape {tuple(ys.shape)}.')
    num_ch = ys.shape[-1]
    named = dict(attn_w=attn_w, attn_b=attn_b, w1=w1, b1=b1, w2=w2, b2=b2, out_w=out_w,
                 out_b=out_b)
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{name} must be a tensor, got {type(t)}.')
        if not t.is_floating_point():
            raise TypeError(f'{name} must be a floating tensor, got {t.dtype}.')
        if t.device != ys.device:
            raise ValueError(f'{name} is on {t.device}, ys on {ys.device}.')
    for name in ('attn_w', 'attn_b', 'b2', 'out_w', 'out_b'):
        if tuple(named[name].shape) != (num_ch, ):
            raise ValueError(f'{name} must have shape ({num_ch},) for C = {num_ch}, got '
                             f'{tuple(named[name].shape)}.')
    if w1.dim() != 2 or w1.shape[1] != num_ch or w1.shape[0] < 1:
        raise ValueError(f'w1 must have shape (R, {num_ch}), got {tuple(w1.shape)}.')
    rank = w1.shape[0]
    if tuple(b1.shape) != (rank, ):
        raise ValueError(f'b1 must have shape ({rank},), got {tuple(b1.shape)}.')
    if tuple(w2.shape) != (num_ch, rank):
        raise ValueError(f'w2 must have shape ({num_ch}, {rank}), got {tuple(w2.shape)}.')


def scattn_merge_triton(ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b, out_eps,
                        z=None, tile_elements: int = TILE_ELEMENTS) -> torch.Tensor:
    """Fused SCAttn merge + out_norm (Triton), same arguments and values as
    :func:`mmlocalmamba.ops.merge.scattn_merge_reference`; differentiable w.r.t. ``ys``, the 8
    parameter tensors and ``z``.

    Args:
        ys: (B, K, L, C) CUDA tensor (CPU under the Triton interpreter), fp32 / bf16 / fp16,
            any strides.
        attn_w, attn_b: (C,); attn_eps: float. w1: (R, C), b1: (R,), w2: (C, R), b2: (C,).
        out_w, out_b: (C,); out_eps: float.
        z: optional (B, L, C) gate, any strides: the result is ``out * SiLU(z)`` in z's dtype
            (the SS2D output gate, fused).
        tile_elements: target elements of a program's (tokens x channels) tile.

    Returns:
        (B, L, C) contiguous tensor: float32, or z's dtype with ``z``.

    Raises:
        ValueError / TypeError: for wrong shapes, dtypes or devices; RuntimeError when ys is
        not on CUDA (outside the interpreter) or triton is missing.
    """
    _check_args(ys, attn_w, attn_b, w1, b1, w2, b2, out_w, out_b)
    _check_gate(ys, z)
    if ys.dtype == torch.float64:
        raise TypeError('scattn_merge_triton computes in fp32; float64 inputs go to the PyTorch '
                        'reference (mmlocalmamba.ops.merge.scattn_merge_reference).')
    reason = unavailable_reason()
    if reason is not None and not interpreting():
        raise RuntimeError(f'scattn_merge_triton cannot run: {reason}.')
    if not ys.is_cuda and not interpreting():
        raise RuntimeError(f'scattn_merge_triton needs CUDA tensors, got ys on {ys.device} '
                           '(set TRITON_INTERPRET=1 to run the kernels on the CPU).')
    return _ScAttnMergeFn.apply(ys, attn_w, attn_b, float(attn_eps), w1, b1, w2, b2, out_w,
                                out_b, float(out_eps), z, int(tile_elements))


def _check_gate(ys, z):
    if z is None:
        return
    batch, _, length, num_ch = ys.shape
    if not isinstance(z, torch.Tensor) or tuple(z.shape) != (batch, length, num_ch):
        raise ValueError(f'z must be a ({batch}, {length}, {num_ch}) tensor, got '
                         f'{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z)}.')
    if z.dtype not in (torch.float32, torch.bfloat16, torch.float16) or z.device != ys.device:
        raise TypeError(f'z must be a float32 / bfloat16 / float16 tensor on {ys.device}, got '
                        f'{z.dtype} on {z.device}.')


def _no_autocast(device):
    return torch.autocast(device_type=device.type, enabled=False)


def merge_forward(ys, params, attn_eps, out_eps, z=None, tile_elements=TILE_ELEMENTS):
    """The forward passes of the fused merge.

    Args:
        ys: (B, K, L, C) CUDA tensor (fp32 / bf16 / fp16, any strides).
        params: the 8 parameter tensors (attn_w, attn_b, w1, b1, w2, b2, out_w, out_b).
        z: optional (B, L, C) gate (the result is ``out * SiLU(z)`` in z's dtype).

    Returns:
        (out, saved): out (B, L, C) float32 (z's dtype with ``z``); saved = (gate (B, K, C),
        m (B, K, C), mean (B, L), rstd (B, L)), all float32, what :func:`merge_backward` needs.
    """
    batch, num_dirs, length, num_ch = ys.shape
    dev = ys.device
    bl, cp, warps = _tile(num_ch, tile_elements)
    nblk = cdiv(length, bl)
    grid = (nblk, batch)  # row blocks on axis 0: no 65535 limit on cdiv(L, BL)
    aw, ab, pw1, pb1, pw2, pb2, ow, ob = _fp32(params)
    kern = _kernels()
    part = torch.empty((batch, nblk, num_dirs, num_ch), dtype=torch.float32, device=dev)
    kern._stats_kernel[grid](ys, *ys.stride(), part, num_dirs, length, num_ch, attn_eps, BL=bl,
                             CP=cp, num_warps=warps)
    m = part.sum(1).div_(length)  # (B, K, C): token mean of xhat
    with _no_autocast(dev):
        gate = _gate_mlp(m, aw, ab, pw1, pb1, pw2, pb2).contiguous()
    out = torch.empty((batch, length, num_ch), dtype=torch.float32 if z is None else z.dtype,
                      device=dev)
    mean = torch.empty((batch, length), dtype=torch.float32, device=dev)
    rstd = torch.empty((batch, length), dtype=torch.float32, device=dev)
    zt, zs = (out, (0, 0, 0)) if z is None else (z, z.stride())
    kern._combine_kernel[grid](ys, *ys.stride(), gate, ow, ob, out, mean, rstd, zt, *zs,
                               num_dirs, length, num_ch, out_eps, BL=bl, CP=cp,
                               GATE_Z=z is not None, num_warps=warps)
    return out, (gate, m, mean, rstd)


def merge_backward(dout, ys, params, saved, attn_eps, need_dys=True, z=None,
                   tile_elements=TILE_ELEMENTS):
    """Gradients [d ys, one per parameter (in the parameters' dtypes), d z] of
    :func:`merge_forward` for ``dout`` (B, L, C), any strides; d ys is None unless
    ``need_dys``, d z is None without ``z``."""
    gate, m, mean, rstd = saved
    batch, num_dirs, length, num_ch = ys.shape
    dev = ys.device
    bl, cp, warps = _tile(num_ch, tile_elements)
    nblk = cdiv(length, bl)
    grid = (nblk, batch)
    aw, ab, pw1, pb1, pw2, pb2, ow, ob = _fp32(params)
    kern = _kernels()
    dacc = torch.empty((batch, length, num_ch), dtype=torch.float32, device=dev)
    dgate_part = torch.empty((batch, nblk, num_dirs, num_ch), dtype=torch.float32, device=dev)
    dow_part = torch.empty((batch, nblk, num_ch), dtype=torch.float32, device=dev)
    dob_part = torch.empty((batch, nblk, num_ch), dtype=torch.float32, device=dev)
    if z is None:
        zt, zs, dz = dacc, (0, 0, 0), None
    else:
        zt, zs = z, z.stride()
        dz = torch.empty((batch, length, num_ch), dtype=z.dtype, device=dev)
    kern._bwd_a_kernel[grid](ys, *ys.stride(), gate, ow, ob, dout, *dout.stride(), mean, rstd,
                             dacc, dgate_part, dow_part, dob_part, zt, *zs,
                             dacc if dz is None else dz, num_dirs, length, num_ch, BL=bl, CP=cp,
                             GATE_Z=z is not None, num_warps=warps)
    dgate = dgate_part.sum(1)
    d_out_w = dow_part.sum((0, 1))
    d_out_b = dob_part.sum((0, 1))
    # the gate MLP's backward (torch.func: it also runs inside operator kernels)
    with _no_autocast(dev):
        _, vjp = torch.func.vjp(_gate_mlp, m, aw, ab, pw1, pb1, pw2, pb2)
        dm, *dparams = vjp(dgate)
    dys = None
    if need_dys:
        dys = torch.empty(ys.shape, dtype=ys.dtype, device=dev)
        dm_l = (dm / length).contiguous()
        kern._bwd_b_kernel[grid](ys, *ys.stride(), gate, dm_l, dacc, dys, *dys.stride(),
                                 num_dirs, length, num_ch, attn_eps, BL=bl, CP=cp,
                                 num_warps=warps)
    grads = [g.to(p.dtype) for g, p in zip(dparams + [d_out_w, d_out_b], params)]
    return [dys] + grads + [dz]


def _fp32(params):
    return [p.detach().float().contiguous() for p in params]


class _ScAttnMergeFn(torch.autograd.Function):
    """Autograd of :func:`scattn_merge_triton` (see the module docstring for the passes)."""

    @staticmethod
    def forward(ctx, ys, attn_w, attn_b, attn_eps, w1, b1, w2, b2, out_w, out_b, out_eps, z,
                tile_elements):
        params = (attn_w, attn_b, w1, b1, w2, b2, out_w, out_b)
        out, saved = merge_forward(ys, params, attn_eps, out_eps, z, tile_elements)
        ctx.save_for_backward(ys, *params, *saved, z)
        ctx.attn_eps, ctx.tile_elements = attn_eps, tile_elements
        return out

    @staticmethod
    def backward(ctx, dout):
        ys, *rest = ctx.saved_tensors
        params, saved, z = rest[:8], rest[8:12], rest[12]
        dys, d_aw, d_ab, d_w1, d_b1, d_w2, d_b2, d_ow, d_ob, dz = merge_backward(
            dout, ys, params, saved, ctx.attn_eps, ctx.needs_input_grad[0], z,
            ctx.tile_elements)
        return dys, d_aw, d_ab, None, d_w1, d_b1, d_w2, d_b2, d_ow, d_ob, None, dz, None
