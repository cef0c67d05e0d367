"""Multi-direction local scan of a LocalVim (plain, ViT-like LocalMamba) layer.

Unlike LocalVMamba, every LocalVim direction owns its causal conv1d, ``x_proj``, ``dt_proj``,
``A_log`` and ``D``, the scan input is the *pre-conv* projection ``xz`` (both halves, so the
gate ``z`` follows the scan order), and the gating ``y * SiLU(z)`` happens inside each
direction before the outputs are brought back to row-major order.

Sequence layout of direction ``k`` for a ``H x W`` token grid (see
:mod:`~mmlocalmamba.ops.scan_orders`): the direction's gather table (window directions pad
with zero tokens, which then go through the conv and **do** write into the SSM state), then,
for the middle-class-token variant, the class token inserted at index ``cls_pos`` of the
(padded) sequence. Directions of different lengths are end-padded with zeros to a common
length and scanned together; as conv and scan are causal, end padding changes nothing.

Backends: the function below is the reference (pure PyTorch around the plain selective scan of
the chosen backend). With the ``'triton'`` backend (``'auto'`` on CUDA), fp32 / fp16 / bf16 CUDA
tensors take the fused path of :mod:`mmlocalmamba.ops.triton.vim` instead (same values: the K
directions in one launch per pass, tokens read in place through the scan tables, no permuted or
padded copies); float64 and CPU tensors always run the reference.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .custom_ops import (HAS_CUSTOM_OPS, autocast_dtype, grads_like, recompute_grads,
                         use_custom_ops)
from .scan_orders import (direction_code, direction_name, stacked_gather_index,
                          stacked_inverse_index, vim_kernel_tables)
from .selective_scan import resolve_backend, selective_scan

__all__ = ['vim_gather_index', 'vim_inverse_index', 'vim_multi_scan', 'vim_multi_reverse',
           'local_vim_scan']


def vim_gather_index(height: int, width: int, directions: Sequence[str],
                     cls_pos: Optional[int] = None,
                     device: torch.device = torch.device('cpu')) -> torch.Tensor:
    """Stacked scan tables ``(K, L)`` into a token table of ``H*W`` grid tokens, then one zero
    padding token (index ``H*W``) and the class token (index ``H*W + 1``)."""
    return stacked_gather_index(height, width, directions, device, cls_pos)


def vim_inverse_index(height: int, width: int, directions: Sequence[str],
                      cls_pos: Optional[int] = None, official_v_reverse: bool = False,
                      device: torch.device = torch.device('cpu')) -> torch.Tensor:
    """Stacked reverse tables ``(K, T)`` into the flattened ``(K * L)`` sequences, with
    ``T = H*W`` (+1 with a class token, which comes back at ``cls_pos``)."""
    return stacked_inverse_index(height, width, directions, official_v_reverse, device, cls_pos)


def vim_multi_scan(tokens: torch.Tensor, height: int, width: int, directions: Sequence[str],
                   cls_pos: Optional[int] = None) -> torch.Tensor:
    """Read a token sequence in K directions.

    Args:
        tokens: (B, C, T) row-major tokens, ``T = H*W``, or ``H*W + 1`` with the class token at
            ``cls_pos``.

    Returns:
        (B, K, C, L) sequences (zero tokens at window padding and common-length end padding).
    """
    batch, channels, num = tokens.shape
    expected = height * width + int(cls_pos is not None)
    if num != expected:
        raise ValueError(f'Expected {expected} tokens for a {height}x{width} grid '
                         f'(cls_pos={cls_pos}), got {num}.')
    zero = tokens.new_zeros(batch, channels, 1)
    if cls_pos is None:
        table = torch.cat([tokens, zero], dim=-1)
    else:
        table = torch.cat([tokens[..., :cls_pos], tokens[..., cls_pos + 1:], zero,
                           tokens[..., cls_pos:cls_pos + 1]], dim=-1)
    index = vim_gather_index(height, width, directions, cls_pos, tokens.device)
    seqs = table.index_select(-1, index.flatten())
    return seqs.view(batch, channels, len(directions), index.shape[1]).transpose(1, 2)


def vim_multi_reverse(seqs: torch.Tensor, height: int, width: int, directions: Sequence[str],
                      cls_pos: Optional[int] = None,
                      official_v_reverse: bool = False) -> torch.Tensor:
    """Inverse of :func:`vim_multi_scan`: (B, K, C, L) -> (B, K, C, T), row-major tokens."""
    batch, num_dirs, channels, length = seqs.shape
    index = vim_inverse_index(height, width, directions, cls_pos, official_v_reverse,
                              seqs.device)
    flat = seqs.transpose(1, 2).reshape(batch, channels, num_dirs * length)
    out = flat.index_select(-1, index.flatten())
    return out.view(batch, channels, num_dirs, index.shape[1]).transpose(1, 2)


def local_vim_scan(xz: torch.Tensor,
                   height: int,
                   width: int,
                   directions: Sequence[str],
                   conv_weight: torch.Tensor,
                   conv_bias: Optional[torch.Tensor],
                   x_proj_weight: torch.Tensor,
                   dt_proj_weight: torch.Tensor,
                   dt_proj_bias: torch.Tensor,
                   A_log: torch.Tensor,
                   D: torch.Tensor,
                   cls_pos: Optional[int] = None,
                   official_v_reverse: bool = False,
                   backend: str = 'auto') -> torch.Tensor:
    """The K gated selective scans of one LocalVim layer, outputs in row-major order.

    For direction k (``Di`` inner channels, ``R`` dt rank, ``N`` state size): ``x, z`` = the two
    halves of ``scan_k(xz)``; ``x = SiLU(causal depth-wise conv1d_k(x))``;
    ``dt, B, C = split(x_proj_k @ x, [R, N, N])``; ``y = SSM(x, dt_proj_k @ dt, A = -exp(A_log_k),
    B, C, D_k, delta_bias = dt_bias_k, softplus)``; ``y = y * SiLU(z)``; reverse to row-major.

    Args:
        xz: (B, 2*Di, T) in-projected tokens, ``T = H*W`` (+1 with a class token at ``cls_pos``).
        height, width: token grid.
        directions: K direction names.
        conv_weight: (K, Di, d_conv) causal depth-wise conv kernels; conv_bias: (K, Di) or None.
        x_proj_weight: (K, R + 2N, Di).
        dt_proj_weight: (K, Di, R); dt_proj_bias: (K, Di).
        A_log: (K, Di, N); D: (K, Di).
        cls_pos: index of the class token in ``xz`` (and in every direction's sequence).
        official_v_reverse: reproduce the official ``v``/``v_flip`` reverse (wrong for H != W).
        backend: selective-scan backend, see :mod:`mmlocalmamba.ops.selective_scan`.

    Returns:
        (B, K, T, Di) gated scan outputs, row-major tokens, in the dtype of ``xz``.

    Under ``torch.compile`` / ``torch.jit.trace`` the call goes through the custom operator
    ``torch.ops.mmlocalmamba.vim_scan`` (same values).

    With the ``'triton'`` backend (``'auto'`` on CUDA) fp32 / fp16 / bf16 CUDA tensors run the
    fused kernels (:func:`~mmlocalmamba.ops.triton.vim.vim_scan_triton`); the output dtype is
    the reference's, ``promote(autocast dtype or xz.dtype, xz.dtype)``.
    """
    if use_custom_ops():
        return torch.ops.mmlocalmamba.vim_scan(
            xz, height, width, [direction_code(d) for d in directions], conv_weight, conv_bias,
            x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, cls_pos,
            bool(official_v_reverse), backend, autocast_dtype(xz.device))
    return _vim_scan_eager(xz, height, width, directions, conv_weight, conv_bias, x_proj_weight,
                           dt_proj_weight, dt_proj_bias, A_log, D, cls_pos, official_v_reverse,
                           backend)


def _fused_possible(xz: torch.Tensor, backend: str) -> bool:
    """The fused Triton path applies: backend 'triton' (or 'auto' on CUDA), a non-empty batch
    of fp32 / fp16 / bf16 tensors (float64 keeps the reference)."""
    return (xz.dtype != torch.float64 and xz.shape[0] > 0
            and resolve_backend(backend, xz.device) == 'triton')


def _fused_tables(xz, height, width, directions, cls_pos, official_v_reverse):
    return vim_kernel_tables(height, width, directions, official_v_reverse, cls_pos, xz.device)


def _vim_scan_eager(xz, height, width, directions, conv_weight, conv_bias, x_proj_weight,
                    dt_proj_weight, dt_proj_bias, A_log, D, cls_pos, official_v_reverse,
                    backend):
    if _fused_possible(xz, backend):
        from .triton.vim import vim_scan_triton
        tables = _fused_tables(xz, height, width, directions, cls_pos, official_v_reverse)
        return vim_scan_triton(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                               dt_proj_bias, A_log, D, tables, autocast_dtype(xz.device))
    return _vim_scan_reference(xz, height, width, directions, conv_weight, conv_bias,
                               x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, cls_pos,
                               official_v_reverse, backend)


def _vim_scan_reference(xz, height, width, directions, conv_weight, conv_bias, x_proj_weight,
                        dt_proj_weight, dt_proj_bias, A_log, D, cls_pos, official_v_reverse,
                        backend):
    """The reference: gathers, per-direction conv, einsums, the plain scan of ``backend``."""
    batch = xz.shape[0]
    num_dirs, d_inner, d_conv = conv_weight.shape
    rank = dt_proj_weight.shape[-1]
    nstate = A_log.shape[-1]

    seqs = vim_multi_scan(xz, height, width, directions, cls_pos)  # (B, K, 2Di, L)
    length = seqs.shape[-1]
    x, z = seqs.chunk(2, dim=2)  # (B, K, Di, L) each
    x = F.conv1d(x.reshape(batch, num_dirs * d_inner, length),
                 conv_weight.reshape(num_dirs * d_inner, 1, d_conv),
                 None if conv_bias is None else conv_bias.reshape(-1),
                 padding=d_conv - 1, groups=num_dirs * d_inner)[..., :length]
    x = F.silu(x).view(batch, num_dirs, d_inner, length)
    x_dbl = torch.einsum('bkdl,kcd->bkcl', x, x_proj_weight)
    dt, Bs, Cs = torch.split(x_dbl, [rank, nstate, nstate], dim=2)
    delta = torch.einsum('bkrl,kdr->bkdl', dt, dt_proj_weight)
    y = selective_scan(
        x.reshape(batch, num_dirs * d_inner, length),
        delta.reshape(batch, num_dirs * d_inner, length),
        -torch.exp(A_log.reshape(num_dirs * d_inner, nstate)),
        Bs,
        Cs,
        D.reshape(-1),
        delta_bias=dt_proj_bias.reshape(-1),
        softplus=True,
        backend=backend)
    y = y.view(batch, num_dirs, d_inner, length) * F.silu(z)
    y = vim_multi_reverse(y, height, width, directions, cls_pos, official_v_reverse)
    return y.transpose(2, 3)


# ----------------------------------------------------------------------------- custom operator
_TENSOR_ARGS = ('xz', 'conv_weight', 'conv_bias', 'x_proj_weight', 'dt_proj_weight',
                'dt_proj_bias', 'A_log', 'D')


def _vim_op_call(tensors, height, width, codes, cls_pos, official_v_reverse, backend,
                 amp_dtype):
    """The scan under the caller's autocast state (``amp_dtype``), the output in
    ``amp_dtype or xz.dtype``: the fused forward where it applies, else the reference."""
    xz, conv_w, conv_b, xpw, dtw, dtb, a_log, d_skip = tensors
    directions = [direction_name(c) for c in codes]
    if _fused_possible(xz, backend):
        from .triton.vim import vim_scan_forward
        tables = _fused_tables(xz, height, width, directions, cls_pos, official_v_reverse)
        y, _ = vim_scan_forward(*tensors, tables, amp_dtype)
        return y.to(amp_dtype or xz.dtype)
    with torch.autocast(xz.device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        y = _vim_scan_reference(xz, height, width, directions, conv_w, conv_b, xpw, dtw, dtb,
                                a_log, d_skip, cls_pos, official_v_reverse, backend)
    return y.to(amp_dtype or xz.dtype)


def _vim_op_grads(dy, tensors, height, width, codes, cls_pos, official_v_reverse, backend,
                  amp_dtype):
    """Gradients of :func:`_vim_op_call` w.r.t. its tensors: the fused backward where it
    applies (no recompute through ``torch.func.vjp``), else the reference's vjp."""
    xz = tensors[0]
    if _fused_possible(xz, backend):
        from .triton.vim import vim_scan_backward
        directions = [direction_name(c) for c in codes]
        tables = _fused_tables(xz, height, width, directions, cls_pos, official_v_reverse)
        return list(vim_scan_backward(dy, *tensors, tables, amp_dtype))
    return recompute_grads(
        lambda *t: _vim_op_call(t, height, width, codes, cls_pos, official_v_reverse, backend,
                                amp_dtype), tensors, dy)


if HAS_CUSTOM_OPS:

    @torch.library.custom_op('mmlocalmamba::vim_scan', mutates_args=())
    def _vim_op(xz: torch.Tensor, height: int, width: int, codes: List[int],
                conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
                x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor,
                dt_proj_bias: torch.Tensor, A_log: torch.Tensor, D: torch.Tensor,
                cls_pos: Optional[int], official_v_reverse: bool, backend: str,
                amp_dtype: Optional[torch.dtype]) -> torch.Tensor:
        """:func:`local_vim_scan` as an operator (directions as ``direction_code`` integers;
        ``amp_dtype``: the caller's autocast dtype)."""
        tensors = (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                   A_log, D)
        return _vim_op_call(tensors, height, width, codes, cls_pos, official_v_reverse,
                            backend, amp_dtype).contiguous()

    @_vim_op.register_fake
    def _(xz, height, width, codes, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
          dt_proj_bias, A_log, D, cls_pos, official_v_reverse, backend, amp_dtype):
        tokens = height * width + int(cls_pos is not None)
        return xz.new_empty((xz.shape[0], len(codes), tokens, conv_weight.shape[1]),
                            dtype=amp_dtype or xz.dtype)

    @torch.library.custom_op('mmlocalmamba::vim_scan_backward', mutates_args=())
    def _vim_backward_op(dy: torch.Tensor, xz: torch.Tensor, height: int, width: int,
                         codes: List[int], conv_weight: torch.Tensor,
                         conv_bias: Optional[torch.Tensor], x_proj_weight: torch.Tensor,
                         dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor,
                         A_log: torch.Tensor, D: torch.Tensor, cls_pos: Optional[int],
                         official_v_reverse: bool, backend: str,
                         amp_dtype: Optional[torch.dtype]) -> List[torch.Tensor]:
        """Gradients of ``mmlocalmamba::vim_scan`` w.r.t. its tensor inputs (zeros for an
        absent conv bias)."""
        tensors = (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                   A_log, D)
        grads = _vim_op_grads(dy, tensors, height, width, codes, cls_pos, official_v_reverse,
                              backend, amp_dtype)
        present = [t if t is not None else conv_weight.new_zeros(0) for t in tensors]
        return grads_like(grads, present)

    @_vim_backward_op.register_fake
    def _(dy, xz, height, width, codes, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
          dt_proj_bias, A_log, D, cls_pos, official_v_reverse, backend, amp_dtype):
        tensors = (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                   A_log, D)
        return [torch.empty_like(t) if t is not None else conv_weight.new_empty(0)
                for t in tensors]

    def _setup_context(ctx, inputs, output):
        (xz, height, width, codes, conv_w, conv_b, xpw, dtw, dtb, a_log, d_skip, cls_pos,
         official_v_reverse, backend, amp_dtype) = inputs
        ctx.save_for_backward(xz, conv_w, xpw, dtw, dtb, a_log, d_skip,
                              *(() if conv_b is None else (conv_b, )))
        ctx.args = (height, width, codes, cls_pos, official_v_reverse, backend, amp_dtype)
        ctx.has_bias = conv_b is not None

    def _backward(ctx, dy):
        xz, conv_w, xpw, dtw, dtb, a_log, d_skip, *bias = ctx.saved_tensors
        height, width, codes, cls_pos, official_v_reverse, backend, amp_dtype = ctx.args
        grads = torch.ops.mmlocalmamba.vim_scan_backward(
            dy, xz, height, width, codes, conv_w, bias[0] if bias else None, xpw, dtw, dtb,
            a_log, d_skip, cls_pos, official_v_reverse, backend, amp_dtype)
        dxz, dconv_w, dconv_b, dxpw, ddtw, ddtb, da, dd = grads
        return (dxz, None, None, None, dconv_w, dconv_b if ctx.has_bias else None, dxpw, ddtw,
                ddtb, da, dd, None, None, None, None)

    _vim_op.register_autograd(_backward, setup_context=_setup_context)
