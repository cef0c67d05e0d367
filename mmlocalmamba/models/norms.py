"""Normalisation layers that not every supported torch release has.

``torch.nn.RMSNorm`` exists from torch 2.4 on. On older releases this module provides
:class:`RMSNorm`, a fallback with the same constructor, parameter (``weight``, no bias), state-dict
key and formula, and makes it available as ``torch.nn.RMSNorm``, so the model code (written
against torch >= 2.4) and checkpoints work unchanged: importing this module is all it takes, and
:mod:`mmlocalmamba.models.local_vim` does. On torch >= 2.4, :class:`RMSNorm` *is*
``torch.nn.RMSNorm`` and nothing is changed.
"""
import numbers
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = ['RMSNorm', 'RMSNormFallback', 'install_rmsnorm_fallback']

_Shape = Union[int, List[int], Tuple[int, ...], torch.Size]


class RMSNormFallback(nn.Module):
    r"""Root-mean-square layer normalisation, for torch releases without ``nn.RMSNorm``.

    .. math:: y = \frac{x}{\sqrt{\mathrm{mean}(x^2) + \epsilon}} \cdot w

    over the last ``len(normalized_shape)`` dimensions, as ``torch.nn.RMSNorm`` (torch >= 2.4).

    Args:
        normalized_shape (int | sequence of int): shape of the trailing dimensions normalised.
        eps (float, optional): added to the mean square. Default: None, i.e.
            ``torch.finfo(x.dtype).eps`` of the input.
        elementwise_affine (bool): learn a per-element scale ``weight`` (initialised to ones).
            Default: True.
        device, dtype: of ``weight``.
    """

    def __init__(self,
                 normalized_shape: _Shape,
                 eps: Optional[float] = None,
                 elementwise_affine: bool = True,
                 device=None,
                 dtype=None) -> None:
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape, )
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(
                torch.ones(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter('weight', None)

    def reset_parameters(self) -> None:
        """Scale back to ones."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (..., *normalized_shape)."""
        dims = tuple(range(-len(self.normalized_shape), 0))
        if tuple(x.shape[x.dim() - len(dims):]) != self.normalized_shape:
            raise ValueError(f'RMSNorm over {self.normalized_shape} got an input of shape '
                             f'{tuple(x.shape)}.')
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        y = x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps)
        return y if self.weight is None else y * self.weight

    def extra_repr(self) -> str:
        return (f'{self.normalized_shape}, eps={self.eps}, '
                f'elementwise_affine={self.elementwise_affine}')


def install_rmsnorm_fallback() -> type:
    """Make ``torch.nn.RMSNorm`` exist; return the class that it is (torch's where it has one)."""
    if not hasattr(nn, 'RMSNorm'):
        nn.RMSNorm = RMSNormFallback
    return nn.RMSNorm


#: ``torch.nn.RMSNorm`` (torch >= 2.4) or :class:`RMSNormFallback`.
RMSNorm = install_rmsnorm_fallback()
