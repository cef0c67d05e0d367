"""Parameter and FLOP counts of the LocalMamba models.

Counting rules (1 multiply-accumulate = 1 FLOP, as fvcore and the paper count):

* ``nn.Linear``: tokens x in x out; ``nn.Conv2d``/``nn.Conv1d``: output elements x
  (in/groups) x kernel size; ``nn.LayerNorm``: 5 per element with affine, 4 without;
  ``nn.AdaptiveAvgPool2d``: 1 per input element. Element-wise activations are not counted.
* LocalVMamba's SS2D adds its two per-direction projections (x_proj, dt_proj: einsums over the
  padded common length) and the selective scan with the usual ``9 * B * L * D * N + B * D * L``
  rule (L = padded common length, D = K x inner channels), as the official ``VSSM.flops()`` does.
* LocalVim's mixer adds, for **each** of its K directions (sequence length L_k, window padding and
  a class token included): the causal conv1d (``Di * (L_k + d_conv - 1) * d_conv``, fvcore's count
  of the padded conv), x_proj, dt_proj and the scan with the same ``9 * L * D * N + D * L`` rule.
  This is the *full* count. The paper's LocalVim numbers come from the official analytic
  ``VisionMamba.flops()``, which counts conv1d, x_proj and dt_proj once per layer (one of the K
  directions) and ``5 * D * L * N + 2 * D * L`` per scan: :func:`local_vim_paper_flops`.

Counting uses forward hooks on one forward pass, so it follows the actual input size.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['count_flops', 'count_params', 'register_flop_rule', 'local_vim_paper_flops']

# Extra rules for project modules: type -> fn(module, inputs, output) -> flops.
_RULES: Dict[type, Callable] = {}


def register_flop_rule(module_type: type):
    """Decorator: count ``module_type`` with ``fn(module, inputs, output) -> int``."""

    def wrap(fn):
        _RULES[module_type] = fn
        return fn

    return wrap


def _linear(m: nn.Linear, inputs, output) -> int:
    return output.numel() // m.out_features * m.in_features * m.out_features


def _conv(m, inputs, output) -> int:
    kernel = 1
    for k in m.kernel_size:
        kernel *= k
    return output.numel() * (m.in_channels // m.groups) * kernel


def _layer_norm(m: nn.LayerNorm, inputs, output) -> int:
    return inputs[0].numel() * (5 if m.elementwise_affine else 4)


def _avgpool(m, inputs, output) -> int:
    return inputs[0].numel()


_BUILTIN = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.LayerNorm: _layer_norm,
    nn.AdaptiveAvgPool2d: _avgpool,
}


def _register_project_rules() -> None:
    from ..models.local_vmamba import SS2D
    from ..ops.scan_orders import scan_length

    _register_local_vim_rule()
    if SS2D in _RULES:
        return

    @register_flop_rule(SS2D)
    def _ss2d(m: SS2D, inputs, output) -> int:
        batch, height, width, _ = inputs[0].shape
        length = max(scan_length(height, width, d) for d in m.directions)
        k, di, n, r = len(m.directions), m.d_inner, m.d_state, m.dt_rank
        x_proj = batch * k * length * di * (r + 2 * n)
        dt_proj = batch * k * length * r * di
        scan = 9 * batch * length * k * di * n + batch * k * di * length
        return x_proj + dt_proj + scan


def _register_local_vim_rule() -> None:
    from ..models.local_vim import LocalVimMixer
    from ..ops.scan_orders import scan_length

    if LocalVimMixer in _RULES:
        return

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
            total += batch * (9 * length * di * n + di * length)  # selective scan
        return total


def local_vim_paper_flops(model: nn.Module, input_hw: Tuple[int, int] = (224, 224),
                          num_classes: int = 1000) -> int:
    """LocalVim FLOPs as the paper counts them (the official analytic ``VisionMamba.flops()``).

    Per layer with L tokens: in_proj ``L*C*2Di``; **one** causal conv1d
    ``(L + d_conv - 1)*Di*d_conv``, **one** x_proj ``L*Di*(R+2N)`` and **one** dt_proj ``L*R*Di``
    (the model has K of each); per direction ``5*Di*L*N + 2*Di*L``; the channel attention's two
    linears on the pooled token; out_proj ``L*Di*C``; ``L*C`` for the norm. Plus the patch
    embedding conv and a ``C * num_classes`` head. L ignores window padding and class tokens.
    Gives 1.482 G (LocalVim-T) and 4.771 G (LocalVim-S) at 224x224; see :func:`count_flops` for
    the full count (2.164 G / 6.357 G).
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


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module,
                input_shape: Tuple[int, ...] = (1, 3, 224, 224),
                inputs: Optional[torch.Tensor] = None) -> Dict[str, int]:
    """FLOPs of one forward pass, by module type.

    Returns:
        dict: ``{'total': int, '<ModuleType>': int, ...}``.
    """
    _register_project_rules()
    rules = dict(_BUILTIN)
    rules.update(_RULES)
    counts: Dict[str, int] = {}
    handles = []

    def make_hook(fn):

        def hook(module, inp, out):
            name = type(module).__name__
            counts[name] = counts.get(name, 0) + int(fn(module, inp, out))

        return hook

    for module in model.modules():
        for mtype, fn in rules.items():
            if type(module) is mtype:
                handles.append(module.register_forward_hook(make_hook(fn)))
                break
    was_training = model.training
    model.eval()
    try:
        if inputs is None:
            param = next(model.parameters())
            inputs = torch.zeros(input_shape, dtype=param.dtype, device=param.device)
        model(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    counts['total'] = sum(counts.values())
    return counts
