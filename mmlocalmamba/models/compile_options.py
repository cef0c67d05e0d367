"""Inductor options that a backbone's ``compile()`` adds to work around known Inductor failures.

Inductor of torch 2.11 (Triton code generation, i.e. on CUDA) fails with an ``AssertionError`` in
``tiling_utils.get_pw_red_splits`` on tensors of shape (B, H*W + 1, C) when the batch B is
dynamic: its memory-coalescing analysis compares a kernel's size ``B*(H*W + 1)`` with the
expanded ``B*H*W + B`` structurally, finds them different and then checks their product with the
reduction size. LocalVim with a middle class token meets this at the first recompilation after a
batch-size change (seen on the H200: batch 2 at 37x53, batch 1 at 64x96, then batch 2 at 70x45).
Later torch releases compare with ``statically_known_equals`` (torch 2.14 does), which is what
:func:`coalescing_analysis_fails_on_class_tokens` looks for; there the workaround is not applied.
The workaround switches the analysis off (``triton.coalesce_tiling_analysis``, an Inductor
option for tiling choices; before torch 2.7 it was off by default).
"""
import inspect
from typing import Dict

__all__ = ['coalescing_analysis_fails_on_class_tokens', 'class_token_inductor_options']

_OPTION = 'triton.coalesce_tiling_analysis'


def coalescing_analysis_fails_on_class_tokens() -> bool:
    """Whether this torch's Inductor has the structural size comparison described above."""
    try:
        from torch._inductor import tiling_utils
    except ImportError:  # an Inductor without the analysis
        return False
    splits = getattr(tiling_utils, 'get_pw_red_splits', None)
    if splits is None:
        return False
    try:
        source = inspect.getsource(splits)
    except (OSError, TypeError):  # no source to read: assume the failing kind
        return True
    return 'statically_known_equals' not in source


def class_token_inductor_options() -> Dict[str, object]:
    """The Inductor options a model with a class token in its token sequence needs here
    (empty where this Inductor does not fail)."""
    return {_OPTION: False} if coalescing_analysis_fails_on_class_tokens() else {}
