"""Architecture parameters of direction-search supernets.

A supernet layer is a :class:`~mmlocalmamba.models.layers.MultiScan` built with ``search=True``:
it owns ``weights`` (K, 1, 1, 1), the logits of the softmax that mixes its K candidate
directions. Their parameter names always end with :data:`ARCH_PARAM_KEY`
(``'multi_scan.weights'``), in any model that contains such layers (LocalVMamba, LocalVim, a
detector or segmentor around them, a DDP wrapper), so optimizers can treat them apart:

* mmengine configs: ``optim_wrapper.paramwise_cfg.custom_keys`` from :func:`arch_paramwise_cfg`;
* plain PyTorch: the two parameter groups of :func:`split_parameters`.
"""
import math
import re
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from ..models.layers import MultiScan

__all__ = [
    'ARCH_PARAM_KEY', 'search_layers', 'arch_param_names', 'arch_parameters',
    'arch_probabilities', 'arch_candidates', 'arch_paramwise_cfg', 'split_parameters',
    'normalized_entropy', 'search_space', 'layer_label', 'format_arch_table'
]

#: Suffix of the name of every architecture parameter.
ARCH_PARAM_KEY = 'multi_scan.weights'

_VMAMBA_LAYER = re.compile(r'layers\.(\d+)\.blocks\.(\d+)\.op\.multi_scan$')
_VIM_LAYER = re.compile(r'layers\.(\d+)\.mixer\.multi_scan$')


def layer_label(name: str) -> str:
    """Short label of a search layer: ``'s2.b3'`` for LocalVMamba stage 2 block 3, ``'l7'`` for
    LocalVim layer 7, else the module name without ``.multi_scan``."""
    m = _VMAMBA_LAYER.search(name)
    if m:
        return f's{m.group(1)}.b{m.group(2)}'
    m = _VIM_LAYER.search(name)
    if m:
        return f'l{m.group(1)}'
    return name[:-len('.multi_scan')] if name.endswith('.multi_scan') else name


def search_layers(model: nn.Module) -> 'OrderedDict[str, MultiScan]':
    """The supernet layers of ``model`` in module order: ``{module name: MultiScan}``.

    The name is that of the ``MultiScan`` module, e.g. ``'layers.0.blocks.1.op.multi_scan'``;
    its architecture parameter is ``name + '.weights'``.
    """
    return OrderedDict((name, m) for name, m in model.named_modules()
                       if isinstance(m, MultiScan) and m.search)


def arch_param_names(model: nn.Module) -> List[str]:
    """Names of the architecture parameters, in module (= layer) order."""
    return [name for name, _ in model.named_parameters() if name.endswith(ARCH_PARAM_KEY)]


def arch_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The architecture parameters (each (K, 1, 1, 1)), in the order of :func:`arch_param_names`."""
    return [p for name, p in model.named_parameters() if name.endswith(ARCH_PARAM_KEY)]


def arch_probabilities(model: nn.Module) -> 'OrderedDict[str, torch.Tensor]':
    """Softmax of every search layer's weights: ``{module name: (K,) float tensor (CPU)}``."""
    return OrderedDict((name, m.arch_probs().float().cpu())
                       for name, m in search_layers(model).items())


def arch_candidates(model: nn.Module) -> 'OrderedDict[str, List[str]]':
    """Candidate directions of every search layer: ``{module name: [K names]}``."""
    return OrderedDict((name, list(m.directions)) for name, m in search_layers(model).items())


def search_space(model: nn.Module) -> Dict[str, list]:
    """A plain description of the search space, stored in checkpoints for the exporter.

    Returns:
        ``{'layers': [module names], 'candidates': [[K names] per layer]}`` (empty lists for a
        model without search layers). Only strings and lists, so ``weights_only`` loading works.
    """
    cands = arch_candidates(model)
    return {'layers': list(cands), 'candidates': [list(c) for c in cands.values()]}


def arch_paramwise_cfg(lr_mult: float = 1.0, decay_mult: float = 0.0) -> Dict[str, dict]:
    """``custom_keys`` entry for mmengine's ``paramwise_cfg``.

    Example::

        optim_wrapper = dict(paramwise_cfg=dict(custom_keys=arch_paramwise_cfg(lr_mult=10.)))

    which is ``{'multi_scan.weights': dict(lr_mult=10., decay_mult=0.)}``. mmengine matches
    custom keys as substrings of the full parameter name, so it works for a bare backbone as well
    as for ``backbone.`` inside a detector.
    """
    return {ARCH_PARAM_KEY: dict(lr_mult=float(lr_mult), decay_mult=float(decay_mult))}


def split_parameters(model: nn.Module) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
    """``(network parameters, architecture parameters)``, trainable ones only."""
    net, arch = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (arch if name.endswith(ARCH_PARAM_KEY) else net).append(p)
    return net, arch


def normalized_entropy(probs: torch.Tensor) -> float:
    """Entropy of a (K,) distribution divided by log K: 1 = uniform, 0 = one-hot."""
    probs = probs.double().clamp_min(1e-12)
    k = probs.numel()
    if k < 2:
        return 0.0
    return float(-(probs * probs.log()).sum() / math.log(k))


def format_arch_table(probs: Dict[str, Sequence[float]], candidates: Dict[str, Sequence[str]],
                      topk: int = 4) -> str:
    """A text table: one row per layer, probabilities in candidate order and the top-k."""
    names = list(probs)
    if not names:
        return '(no search layers)'
    first = candidates[names[0]]
    same = all(list(candidates[n]) == list(first) for n in names)
    width = max(len(n) for n in first) if same else 6
    width = max(width, 5)
    label_w = max(len(layer_label(n)) for n in names)
    header = (' ' * label_w + ' ' + ' '.join(f'{c:>{width}}' for c in first) +
              f'  top-{topk}') if same else ''
    lines = [header] if header else []
    for name in names:
        p = [float(v) for v in probs[name]]
        cand = candidates[name]
        k = min(topk, len(p))
        top = sorted(sorted(range(len(p)), key=lambda i: (-p[i], i))[:k])
        cells = ' '.join(f'{v:>{width}.3f}' for v in p)
        lines.append(f'{layer_label(name):<{label_w}} {cells}  ' +
                     ','.join(cand[i] for i in top))
    return '\n'.join(lines)
