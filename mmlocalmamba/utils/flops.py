"""Parameter and FLOP counts, through mmengine's FLOP counter.

:func:`count_flops` is mmengine's :class:`~mmengine.analysis.FlopAnalyzer` (the counter behind
``mmengine.analysis.get_model_complexity_info`` and mmdet's / mmseg's ``get_flops.py``), run
once on a model: one forward pass is traced and every recorded operator is counted by its
handle, 1 multiply-accumulate = 1 FLOP. mmengine's own handles count linear layers,
convolutions, einsums, normalisation layers and pooling; element-wise operations are not
counted. The handles of the LocalMamba operators (the scans, the fused merge) are installed by
``import mmlocalmamba`` (:func:`mmlocalmamba.models.flops.install_flop_handles`), so this module
imports no model and every counter gives the same numbers. (The scans are operators from
torch 2.4 on; with an older torch their FLOPs are missing, and :func:`count_flops` warns.)
"""
import warnings
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..ops.custom_ops import HAS_CUSTOM_OPS

__all__ = ['count_flops', 'count_params']


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module,
                input_shape: Tuple[int, ...] = (1, 3, 224, 224),
                inputs: Optional[torch.Tensor] = None) -> Dict[str, int]:
    """FLOPs of one forward pass (in eval mode), by operator.

    Args:
        model: the model; it runs on the device of its parameters (not ``meta``: the trace
            computes).
        input_shape: (B, C, H, W) of the zero input made when ``inputs`` is None.
        inputs: the input tensor.

    Returns:
        dict: ``{'total': int, '<operator>': int, ...}`` (operators as mmengine names them:
        ``linear``, ``conv``, ``layer_norm``, ``local_scan``, ``vim_scan``, ...).
    """
    from mmengine.analysis import FlopAnalyzer
    if not HAS_CUSTOM_OPS:
        warnings.warn('This torch has no torch.library.custom_op (torch < 2.4): the selective '
                      'scans are not traced as operators, and their FLOPs are not counted.')
    if inputs is None:
        param = next(model.parameters())
        inputs = torch.zeros(input_shape, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            analyzer = FlopAnalyzer(model, (inputs, ))
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            counts = {op: int(n) for op, n in analyzer.by_operator().items()}
    finally:
        model.train(was_training)
    counts['total'] = sum(counts.values())
    return counts
