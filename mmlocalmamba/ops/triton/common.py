"""What the Triton kernels need from their environment: availability, version, interpreter.

Nothing here imports triton at module import time, so the package imports everywhere.
"""
import os
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = ['MIN_TRITON_VERSION', 'triton_version', 'unavailable_reason', 'is_available',
           'interpreting', 'cdiv', 'batch_ranges', 'sum_group_partials']

#: The oldest Triton the kernels compile with: the backward's lane reduce-scatter uses
#: ``tl.gather``, first released in Triton 3.3 (the version torch 2.7 pins). Tested: Triton 3.6
#: (GPU), 3.8 (CPU interpreter).
MIN_TRITON_VERSION: Tuple[int, int] = (3, 3)


def _parse(version: str) -> Tuple[int, ...]:
    parts = []
    for piece in version.split('+')[0].split('.'):
        digits = ''.join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@lru_cache(maxsize=1)
def triton_version() -> Optional[str]:
    """The installed Triton's version string, or None when triton does not import."""
    try:
        import triton
    except Exception:  # ImportError, or triton failing to initialise
        return None
    return str(getattr(triton, '__version__', '0'))


def unavailable_reason(device: Optional[torch.device] = None) -> Optional[str]:
    """Why the kernels cannot run here (None when they can): no triton, a Triton older than
    :data:`MIN_TRITON_VERSION`, or no CUDA device (``device``, when given, must be CUDA).
    Under Triton's interpreter (``TRITON_INTERPRET=1``) CPU tensors are fine."""
    version = triton_version()
    need = '.'.join(map(str, MIN_TRITON_VERSION))
    if version is None:
        return f'triton is not installed (the GPU kernels need triton >= {need})'
    if _parse(version)[:2] < MIN_TRITON_VERSION:
        return f'triton {version} is too old (the GPU kernels need triton >= {need})'
    if interpreting():
        return None
    if not torch.cuda.is_available():
        return 'no CUDA device is available'
    if device is not None and torch.device(device).type != 'cuda':
        return f'the tensors are on {torch.device(device)}, the kernels need CUDA tensors'
    return None


def is_available() -> bool:
    """True when the Triton kernels can run here (a recent enough triton and a CUDA device)."""
    return unavailable_reason() is None and torch.cuda.is_available()


def interpreting() -> bool:
    """True under Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` of positive integers."""
    return -(-a // b)


def batch_ranges(batch: int, per: int) -> List[Tuple[int, int]]:
    """``[(b0, b1), ...]``: ``range(batch)`` cut into consecutive slices of ``per`` (the last
    one shorter)."""
    return [(b0, min(b0 + per, batch)) for b0 in range(0, batch, per)]


def sum_group_partials(parts: Sequence[Tuple[Optional[torch.Tensor], ...]]) -> tuple:
    """Element-wise sums of the backward's partial-sum tuples of several batch groups (an
    entry that is None in the first group stays None)."""
    return tuple(None if p[0] is None else sum(p) for p in zip(*parts))
