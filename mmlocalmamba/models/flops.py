"""FLOP rules of the LocalMamba operators, for mmengine's FLOP counter (1 multiply-accumulate =
1 FLOP, as fvcore, mmengine and the paper count).

mmengine's :class:`~mmengine.analysis.FlopAnalyzer` (behind
``mmengine.analysis.get_model_complexity_info`` and the ``get_flops.py`` tools of mmdet and
mmseg) traces a model with ``torch.jit.trace`` and counts each recorded operator with a
handle: its own for linear layers, convolutions, einsums, LayerNorm and pooling, ours for the
operators mmlocalmamba registers with :mod:`torch.library` (:mod:`mmlocalmamba.ops`), which a
trace records as single operators:

* ``mmlocalmamba::local_scan`` (a LocalVMamba layer's K scans): the per-direction projections
  x_proj and dt_proj over the padded common length L and the selective scan with the official
  ``9 * B * L * D * N + B * D * L`` rule (D = K x inner channels), as the official
  ``VSSM.flops()`` counts them;
* ``mmlocalmamba::vim_scan`` (a LocalVim layer's K gated scans): for **each** direction, with its
  own length L_k (window padding and a class token included), the causal conv1d
  (``Di * (L_k + d_conv - 1) * d_conv``, fvcore's count of the padded conv), x_proj, dt_proj and
  the scan with the same rule. This is the *full* count; the paper's LocalVim numbers come from
  the official analytic ``VisionMamba.flops()``, :func:`local_vim_paper_flops`;
* ``mmlocalmamba::scattn_merge`` (the fused SCAttn merge + out_norm that CUDA models record):
  what the PyTorch merge it replaces counts, per direction the SCAttn LayerNorm
  (5 per element) and the two gate linears on the pooled token, then out_norm.

mmengine has no public way to add default handles: :func:`install_flop_handles` adds these to the
table every new ``FlopAnalyzer`` starts from (``_DEFAULT_SUPPORTED_FLOP_OPS`` in
``mmengine/analysis/complexity_analysis.py``) and output-size activation counts to the
activation table. ``import mmlocalmamba`` calls it (:mod:`mmlocalmamba.registry`).
:func:`mmlocalmamba.utils.flops.count_flops` and ``tools/get_flops.py`` count through the same
analyzer, so there is one set of rules.
"""
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch.nn as nn

from ..ops.scan_orders import direction_name, scan_length

__all__ = ['selective_scan_flops', 'local_scan_flops', 'vim_scan_flops', 'scattn_merge_flops',
           'local_vim_paper_flops', 'install_flop_handles', 'FLOP_HANDLES']


def selective_scan_flops(batch: int, channels: int, length: int, d_state: int) -> int:
    """One selective scan over ``channels`` sequences of ``length`` with state size ``d_state``:
    ``9 * B * L * D * N`` for the recurrence and ``B * D * L`` for the skip ``D * u`` (the
    official rule; no gate inside the scan)."""
    return 9 * batch * length * channels * d_state + batch * channels * length


def local_scan_flops(batch: int, height: int, width: int, directions: Sequence[str],
                     d_inner: int, d_state: int, dt_rank: int) -> int:
    """``mmlocalmamba::local_scan`` on a (B, Di, H, W) map: x_proj, dt_proj and one scan over
    the K directions' sequences, end-padded to the longest length L."""
    k = len(directions)
    length = max(scan_length(height, width, d) for d in directions)
    x_proj = batch * k * length * d_inner * (dt_rank + 2 * d_state)
    dt_proj = batch * k * length * dt_rank * d_inner
    return x_proj + dt_proj + selective_scan_flops(batch, k * d_inner, length, d_state)


def vim_scan_flops(batch: int, height: int, width: int, directions: Sequence[str],
                   with_cls: bool, d_inner: int, d_state: int, dt_rank: int,
                   d_conv: int) -> int:
    """``mmlocalmamba::vim_scan`` on an (H, W) token grid (+ a class token): per direction the
    causal conv1d (padded output), x_proj, dt_proj and the scan, each over its own length."""
    total = 0
    for d in directions:
        length = scan_length(height, width, d) + int(with_cls)
        total += batch * d_inner * (length + d_conv - 1) * d_conv
        total += batch * length * d_inner * (dt_rank + 2 * d_state)
        total += batch * length * dt_rank * d_inner
        total += selective_scan_flops(batch, d_inner, length, d_state)
    return total


def scattn_merge_flops(batch: int, num_dirs: int, length: int, channels: int,
                       reduced: int) -> int:
    """``mmlocalmamba::scattn_merge`` of (B, K, L, C) outputs with a gate MLP of width
    ``reduced``: per direction the affine SCAttn LayerNorm (5 per element) and the two gate
    linears on the pooled token; then the affine out_norm."""
    per_direction = 5 * batch * length * channels + 2 * batch * channels * reduced
    return num_dirs * per_direction + 5 * batch * length * channels


# ----------------------------------------------------------------------------- mmengine handles
def _shape(value) -> List[int]:
    return value.type().sizes()


def _constant(value) -> Any:
    """The Python value of a trace constant: an int, a bool, None, or a list of them."""
    node = value.node()
    if node.kind() == 'prim::ListConstruct':
        return [_constant(v) for v in node.inputs()]
    if node.kind() != 'prim::Constant':
        raise ValueError(f'A LocalMamba operator argument is not a constant of the trace '
                         f'({node.kind()}); the FLOP rules need it.')
    return value.toIValue()


def _local_scan_handle(inputs: List[Any], outputs: List[Any]) -> int:
    # (x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, codes, ...)
    batch, d_inner, height, width = _shape(inputs[0])
    directions = [direction_name(c) for c in _constant(inputs[6])]
    return local_scan_flops(batch, height, width, directions, d_inner, _shape(inputs[4])[-1],
                            _shape(inputs[2])[-1])


def _vim_scan_handle(inputs: List[Any], outputs: List[Any]) -> int:
    # (xz, height, width, codes, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
    #  dt_proj_bias, A_log, D, cls_pos, ...)
    _, d_inner, d_conv = _shape(inputs[4])
    directions = [direction_name(c) for c in _constant(inputs[3])]
    return vim_scan_flops(_shape(inputs[0])[0], _constant(inputs[1]), _constant(inputs[2]),
                          directions, _constant(inputs[11]) is not None, d_inner,
                          _shape(inputs[9])[-1], _shape(inputs[7])[-1], d_conv)


def _scattn_merge_handle(inputs: List[Any], outputs: List[Any]) -> int:
    # (ys, attn_w, attn_b, attn_eps, w1, ...)
    batch, num_dirs, length, channels = _shape(inputs[0])
    return scattn_merge_flops(batch, num_dirs, length, channels, _shape(inputs[4])[0])


def _activation_handle(inputs: List[Any], outputs: List[Any]) -> int:
    size = 1
    for s in _shape(outputs[0]):
        size *= s
    return size


#: mmengine FLOP handles of the mmlocalmamba operators (jit op name -> handle).
FLOP_HANDLES: Dict[str, Callable] = {
    'mmlocalmamba::local_scan': _local_scan_handle,
    'mmlocalmamba::vim_scan': _vim_scan_handle,
    'mmlocalmamba::scattn_merge': _scattn_merge_handle,
}


def install_flop_handles() -> None:
    """Make every new mmengine ``FlopAnalyzer`` / ``ActivationAnalyzer`` count the mmlocalmamba
    operators (idempotent; see the module docstring)."""
    from mmengine.analysis import complexity_analysis
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS.update(FLOP_HANDLES)
    complexity_analysis._DEFAULT_SUPPORTED_ACT_OPS.update(
        {name: _activation_handle for name in FLOP_HANDLES})


def local_vim_paper_flops(model: nn.Module, input_hw: Tuple[int, int] = (224, 224),
                          num_classes: int = 1000) -> int:
    """LocalVim FLOPs as the paper counts them (the official analytic ``VisionMamba.flops()``).

    Per layer with L tokens: in_proj ``L*C*2Di``; **one** causal conv1d
    ``(L + d_conv - 1)*Di*d_conv``, **one** x_proj ``L*Di*(R+2N)`` and **one** dt_proj ``L*R*Di``
    (the model has K of each); per direction ``5*Di*L*N + 2*Di*L``; the channel attention's two
    linears on the pooled token; out_proj ``L*Di*C``; ``L*C`` for the norm. Plus the patch
    embedding conv and a ``C * num_classes`` head. L ignores window padding and class tokens.
    Gives 1.482 G (LocalVim-T) and 4.771 G (LocalVim-S) at 224x224; see
    :func:`~mmlocalmamba.utils.flops.count_flops` for the full count (2.164 G / 6.357 G).
    """
    patch = model.patch_size
    tokens = -(-input_hw[0] // patch) * -(-input_hw[1] // patch)
    dim = model.embed_dim
    flops = tokens * dim * model.patch_embed.proj.in_channels * patch * patch
    for layer in model.layers:
        mixer = layer.mixer
        di, n, r = mixer.d_inner, mixer.d_state, mixer.dt_rank
        flops += tokens * dim * 2 * di
        flops += (tokens + mixer.d_conv - 1) * di * mixer.d_conv
        flops += tokens * di * (r + 2 * n) + tokens * r * di
        flops += len(mixer.directions) * (5 * di * tokens * n + 2 * di * tokens)
        flops += 2 * di * mixer.attn.global_reduce.out_features
        flops += tokens * di * dim + tokens * dim
    return flops + dim * num_classes
