"""The OpenMMLab behaviour both LocalMamba backbones share.

:class:`LocalMambaBackbone` holds what :class:`~mmlocalmamba.models.LocalVMamba`,
:class:`~mmlocalmamba.models.LocalVim` and their migration aliases have in common: the
deprecated ``pretrained=`` argument, ``init_weights`` through ``init_cfg``, ``frozen_stages`` /
``norm_eval`` in ``train()``, gradient checkpointing, and the scan-backend switch. The helpers
below it (:func:`pretrained_to_init_cfg`, :func:`resolve_arch`, :func:`check_out_indices`) are the
one place each of those checks is written.
"""
import warnings
from typing import Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule

from ..ops.selective_scan import BACKENDS

__all__ = ['LocalMambaBackbone', 'ScanLayer', 'pretrained_to_init_cfg', 'resolve_arch',
           'check_out_indices', 'check_backend', 'TimmClassifierMixin', 'take_indices',
           'MATCH_PREV_GROUP']


def check_backend(backend: str) -> str:
    """Validate a selective-scan backend name (one of :data:`BACKENDS`) and return it."""
    if backend not in BACKENDS:
        raise ValueError(f'Unknown scan_backend {backend!r}; valid: {BACKENDS}.')
    return backend


def pretrained_to_init_cfg(pretrained: Optional[str], init_cfg: Optional[dict], owner: str,
                           arg_name: str = 'pretrained') -> Optional[dict]:
    """Turn the deprecated ``pretrained`` path into ``dict(type='Pretrained', checkpoint=...)``.

    Raises:
        ValueError: both ``pretrained`` and ``init_cfg`` are given.
    """
    if pretrained is None:
        return init_cfg
    if init_cfg is not None:
        raise ValueError(f'{owner}: give either init_cfg or the deprecated {arg_name}, not both.')
    warnings.warn(f'{owner}({arg_name}=...) is deprecated; use '
                  f'init_cfg=dict(type="Pretrained", checkpoint=...).', DeprecationWarning)
    return dict(type='Pretrained', checkpoint=pretrained)


def resolve_arch(arch: Union[str, Mapping], presets: Mapping[str, dict], keys: Iterable[str],
                 required: Sequence[str], family: str) -> dict:
    """A preset name or a custom dict -> a fresh arch dict (defaults are the caller's job).

    Raises:
        ValueError: an unknown preset, unknown keys, a missing required key, or ``candidates``
            given for a model that is not a search supernet.
        TypeError: ``arch`` is neither a string nor a dict.
    """
    keys = set(keys)
    if isinstance(arch, str):
        if arch not in presets:
            raise ValueError(f'Unknown {family} arch {arch!r}; valid presets: {sorted(presets)} '
                             f'or a dict with keys {sorted(keys)}.')
        return dict(presets[arch])
    if not isinstance(arch, Mapping):
        raise TypeError(f'{family} arch must be a preset name or a dict, got '
                        f'{type(arch).__name__}.')
    unknown = set(arch) - keys
    if unknown:
        raise ValueError(f'Unknown {family} arch keys {sorted(unknown)}; valid keys: '
                         f'{sorted(keys)}.')
    missing = [k for k in required if k not in arch]
    if missing:
        names = ' and '.join(f'"{k}"' for k in required)
        raise ValueError(f'A custom {family} arch needs {names}; missing {missing} in '
                         f'{dict(arch)}.')
    arch = dict(arch)
    if arch.get('candidates') is not None and arch.get('directions', 0) is not None:
        raise ValueError('arch "candidates" only applies to a search supernet (directions=None); '
                         'remove it or set directions=None.')
    return arch


def check_out_indices(out_indices: Union[int, Sequence[int]], num: int, what: str,
                      allow_negative: bool = False) -> List[int]:
    """``out_indices`` as a list of increasing, unique indices in ``[0, num)``.

    Args:
        out_indices: an index or a sequence of indices.
        num: number of stages (or layers).
        what: what is indexed, for the error message ("stages", "layers").
        allow_negative: negative indices count from the end (``-1`` is the last).

    Raises:
        ValueError: an index out of range, a repeat, or a decreasing order.
    """
    indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
    low = -num if allow_negative else 0
    resolved = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not low <= i < num:
            raise ValueError(f'out_indices {indices} must be within [{low}, {num}) for {num} '
                             f'{what} (integers).')
        resolved.append(i % num)
    if resolved != sorted(set(resolved)):
        raise ValueError(f'out_indices must be increasing without repeats, got {indices}.')
    return resolved


def take_indices(num: int, indices: Union[None, int, Sequence[int]]) -> Tuple[List[int], int]:
    """timm's choice of feature indices: None takes all ``num``, an int n the last n, a sequence
    those indices (negative ones count from the end).

    Returns:
        (the absolute indices in the given order, the largest of them).

    Raises:
        ValueError: an index (or n) out of range.
    """
    if indices is None:
        indices = num
    if isinstance(indices, int):
        if not 0 < indices <= num:
            raise ValueError(f'Cannot take the last {indices} of {num} features.')
        taken = list(range(num - indices, num))
    else:
        taken = []
        for i in indices:
            if not -num <= i < num:
                raise ValueError(f'Feature index {i} is out of range for {num} features.')
            taken.append(i % num)
    return taken, max(taken)


#: Suffix of a timm ``group_matcher`` rule that merges its matches into the group before them.
MATCH_PREV_GROUP = (99999, )


class ScanLayer(nn.Module):
    """Base of the modules that run a selective scan (their ``scan_backend`` is switchable)."""

    scan_backend: str = 'auto'


class LocalMambaBackbone(BaseModule):
    """OpenMMLab plumbing shared by the LocalMamba backbones.

    Subclasses build their modules, then call :meth:`_freeze_stages`, and implement
    :meth:`_frozen_parts` (what ``frozen_stages`` freezes).

    Args:
        frozen_stages (int): -1 freezes nothing; 0 the embeddings; i >= 1 also the first i
            stages (layers) with their output norms.
        num_stages (int): how many stages (layers) ``frozen_stages`` can count.
        norm_eval (bool): keep batch-norm layers in eval mode while training.
        with_cp (bool): gradient checkpointing per block (layer).
        pretrained (str, optional): deprecated, becomes ``init_cfg``.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads
            through :func:`mmlocalmamba.utils.checkpoint.load_pretrained`.
    """

    def __init__(self, frozen_stages: int, num_stages: int, norm_eval: bool, with_cp: bool,
                 pretrained: Optional[str] = None, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=pretrained_to_init_cfg(pretrained, init_cfg,
                                                         type(self).__name__))
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not (
                -1 <= frozen_stages <= num_stages):
            raise ValueError(f'frozen_stages must be an integer in [-1, {num_stages}], got '
                             f'{frozen_stages!r}.')
        self.frozen_stages = frozen_stages
        self.norm_eval = bool(norm_eval)
        self.with_cp = bool(with_cp)

    # ------------------------------------------------------------------ scan backend
    @property
    def scan_backend(self) -> str:
        """The selective-scan backend of the layers (one of :data:`BACKENDS`)."""
        for m in self.modules():
            if isinstance(m, ScanLayer):
                return m.scan_backend
        return 'auto'

    def set_scan_backend(self, backend: str) -> None:
        """Switch the selective-scan backend of every layer."""
        check_backend(backend)
        for m in self.modules():
            if isinstance(m, ScanLayer):
                m.scan_backend = backend

    def no_weight_decay(self) -> set:
        """Names of the parameters flagged ``_no_weight_decay`` (the SSM ``A_log``/``D``)."""
        return {n for n, p in self.named_parameters() if getattr(p, '_no_weight_decay', False)}

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', ...)`` through our checkpoint loader (key
        conversion, prefix detection, checks); other ``init_cfg`` types go to mmengine."""
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            from mmengine.logging import MMLogger

            from ..utils.checkpoint import load_pretrained
            load_pretrained(self, self.init_cfg['checkpoint'],
                            prefix=self.init_cfg.get('prefix'),
                            logger=MMLogger.get_current_instance(),
                            map_location=self.init_cfg.get('map_location', 'cpu'))
            self._is_init = True
            return
        super().init_weights()

    # ------------------------------------------------------------------ training mode
    def _frozen_parts(self) -> Tuple[List[nn.Module], List[nn.Parameter]]:
        """(modules to keep in eval mode, parameters to freeze) for ``self.frozen_stages``."""
        raise NotImplementedError

    def _freeze_stages(self) -> None:
        modules, params = self._frozen_parts()
        for m in modules:
            m.eval()
            params = params + list(m.parameters())
        for p in params:
            p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _checkpointed(self, fn: Callable, first: torch.Tensor, *args):
        """``fn(first, *args)``, gradient-checkpointed when ``with_cp`` and grads flow."""
        if self.with_cp and first.requires_grad:
            return cp.checkpoint(fn, first, *args, use_reentrant=False)
        return fn(first, *args)


class TimmClassifierMixin:
    """What both LocalMamba classifiers add for timm (on top of a :class:`LocalMambaBackbone`).

    Subclasses set ``num_features`` and ``head_hidden_size`` and implement ``forward_features``,
    ``forward_head``, ``get_classifier``, ``reset_classifier`` and ``group_matcher``.
    """

    #: global_pool values the classifier accepts.
    pool_types: Tuple[str, ...] = ('', 'avg')

    @staticmethod
    def _in_channels(kwargs: dict, in_chans: Optional[int]) -> int:
        """Image channels from timm's ``in_chans`` or the backbone's ``in_channels`` (popped from
        ``kwargs``); default 3."""
        if in_chans is None:
            return kwargs.pop('in_channels', 3)
        if kwargs.setdefault('in_channels', in_chans) != in_chans:
            raise ValueError(f'in_chans={in_chans} and in_channels={kwargs["in_channels"]} '
                             f'disagree; give one of them.')
        return kwargs.pop('in_channels')

    def _check_pool(self, global_pool: str) -> str:
        if global_pool not in self.pool_types:
            raise ValueError(f'{type(self).__name__}: global_pool must be one of '
                             f'{list(self.pool_types)}, got {global_pool!r}.')
        return global_pool

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing per block (the backbone's ``with_cp``)."""
        self.with_cp = bool(enable)
