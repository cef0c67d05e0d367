"""Parameter and FLOP counts: the generic counter.

Counting rules (1 multiply-accumulate = 1 FLOP, as fvcore and the paper count):

* ``nn.Linear``: tokens x in x out; ``nn.Conv2d``/``nn.Conv1d``: output elements x
  (in/groups) x kernel size; ``nn.LayerNorm``: 5 per element with affine, 4 without;
  ``nn.AdaptiveAvgPool2d``: 1 per input element. Element-wise activations are not counted.
* Any other module type counts through a rule registered with :func:`register_flop_rule`. The
  LocalMamba layers register theirs beside them, in :mod:`mmlocalmamba.models.flops` (the
  selective scans, the per-direction projections and LocalVim's per-direction conv1d); this
  module imports no model.

Counting uses forward hooks on one forward pass, so it follows the actual input size.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['count_flops', 'count_params', 'register_flop_rule']

# Rules registered for other module types: type -> fn(module, inputs, output) -> flops.
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
