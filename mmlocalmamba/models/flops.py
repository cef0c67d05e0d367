"""FLOP rules of the LocalMamba layers (1 multiply-accumulate = 1 FLOP, as fvcore and the paper).

The generic counter (:func:`mmlocalmamba.utils.flops.count_flops`: ``nn.Linear``, convolutions,
LayerNorm, pooling) knows no model; this module registers the rules of the layers whose work it
cannot see, next to the layers:

* :class:`~.local_vmamba.SS2D` adds its two per-direction projections (x_proj, dt_proj: einsums
  over the padded common length) and the selective scan with the official
  ``9 * B * L * D * N + B * D * L`` rule (L = padded common length, D = K x inner channels), as the
  official ``VSSM.flops()`` does;
* :class:`~.local_vim.LocalVimMixer` adds, for **each** of its K directions (sequence length L_k,
  window padding and a class token included): the causal conv1d (``Di * (L_k + d_conv - 1) *
  d_conv``, fvcore's count of the padded conv), x_proj, dt_proj and the scan with the same rule.
  This is the *full* count. The paper's LocalVim numbers come from the official analytic
  ``VisionMamba.flops()``: :func:`local_vim_paper_flops`.

The scan rule itself is :func:`selective_scan_flops`.
"""
from typing import Tuple

import torch.nn as nn

from ..ops.scan_orders import scan_length
from ..utils.flops import register_flop_rule
from .local_vim import LocalVimMixer
from .local_vmamba import SS2D

__all__ = ['selective_scan_flops', 'local_vim_paper_flops']


def selective_scan_flops(batch: int, channels: int, length: int, d_state: int) -> int:
    """One selective scan over ``channels`` sequences of ``length`` with state size ``d_state``:
    ``9 * B * L * D * N`` for the recurrence and ``B * D * L`` for the skip ``D * u`` (the
    official rule; no gate inside the scan)."""
    return 9 * batch * length * channels * d_state + batch * channels * length


@register_flop_rule(SS2D)
def _ss2d(m: SS2D, inputs, output) -> int:
    # in_proj, conv2d, the merge, out_norm and out_proj are counted through their own modules.
    batch, height, width, _ = inputs[0].shape
    length = max(scan_length(height, width, d) for d in m.directions)
    k, di, n, r = len(m.directions), m.d_inner, m.d_state, m.dt_rank
    x_proj = batch * k * length * di * (r + 2 * n)
    dt_proj = batch * k * length * r * di
    return x_proj + dt_proj + selective_scan_flops(batch, k * di, length, n)


@register_flop_rule(LocalVimMixer)
def _local_vim_mixer(m: LocalVimMixer, inputs, output) -> int:
    # in_proj, out_proj and the channel attention are counted through their own modules.
    tokens, (height, width) = inputs[0], inputs[1]
    with_cls = len(inputs) > 2 and inputs[2] is not None
    batch, di, n, r, dc = tokens.shape[0], m.d_inner, m.d_state, m.dt_rank, m.d_conv
    total = 0
    for d in m.directions:
        length = scan_length(height, width, d) + int(with_cls)
        total += batch * di * (length + dc - 1) * dc  # causal conv1d (padded output)
        total += batch * length * di * (r + 2 * n)  # x_proj
        total += batch * length * r * di  # dt_proj
        total += selective_scan_flops(batch, di, length, n)
    return total


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
