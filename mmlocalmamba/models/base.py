"""The OpenMMLab behaviour both LocalMamba backbones share.

:class:`LocalMambaBackbone` holds what :class:`~mmlocalmamba.models.LocalVMamba`,
:class:`~mmlocalmamba.models.LocalVim` and their migration aliases have in common: the
deprecated ``pretrained=`` argument, ``init_weights`` through ``init_cfg``, ``frozen_stages`` /
``norm_eval`` in ``train()``, gradient checkpointing, and the scan-backend switch. The helpers
below it (:func:`pretrained_to_init_cfg`, :func:`resolve_arch`, :func:`check_out_indices`, the
argument checks :func:`check_int`, :func:`check_number`, :func:`check_bool`,
:func:`check_int_list`, :func:`check_size_pair`, :func:`check_ssm_args` and
:func:`check_layer_directions`) are the one place each of those checks is written: every
constructor argument of the backbones, classifiers, aliases and scan layers is checked when the
module is built, with an error that names the value and the valid range.
"""
import math
import numbers
import warnings
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule

from ..ops.scan_orders import direction_lists, parse_direction
from ..ops.selective_scan import BACKENDS
from .precompile import precompile_pre_hook

__all__ = ['LocalMambaBackbone', 'ScanLayer', 'pretrained_to_init_cfg', 'resolve_arch',
           'check_out_indices', 'check_backend', 'check_int', 'check_number', 'check_bool',
           'check_int_list', 'check_size_pair', 'check_ssm_args', 'check_layer_directions',
           'MAX_WINDOW', 'TimmClassifierMixin', 'take_indices', 'MATCH_PREV_GROUP']

#: Largest window size K of a ``wK`` direction. A window covers K x K tokens and the map is
#: zero-padded to multiples of K, so a window much larger than the feature maps (64 tokens is
#: a 1024-pixel input at stride 16, or 256 pixels at stride 4) only adds padding and cost.
MAX_WINDOW = 64


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, name: str, owner: str, low: int = 1,
              high: Optional[int] = None) -> int:
    """An integer in ``[low, high]`` (``high`` None: no upper bound), returned as ``int``.

    Raises:
        ValueError: naming ``owner``, ``name``, the value and the valid range.
    """
    if _is_int(value) and low <= value and (high is None or value <= high):
        return int(value)
    valid = f'an integer >= {low}' if high is None else f'an integer in [{low}, {high}]'
    raise ValueError(f'{owner}: {name} must be {valid}, got {value!r}.')


def check_number(value: Any, name: str, owner: str, low: Optional[float] = None,
                 high: Optional[float] = None, low_open: bool = False,
                 high_open: bool = False) -> float:
    """A finite real number within the given bounds (``*_open``: bound excluded), as ``float``.

    Raises:
        ValueError: naming ``owner``, ``name``, the value and the valid range.
    """
    ok = (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
          and math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return float(value)
    if low is not None and high is not None:
        valid = f'a number in {"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
    elif low is not None:
        valid = f'a number {">" if low_open else ">="} {low}'
    elif high is not None:
        valid = f'a number {"<" if high_open else "<="} {high}'
    else:
        valid = 'a finite number'
    raise ValueError(f'{owner}: {name} must be {valid}, got {value!r}.')


def check_bool(value: Any, name: str, owner: str) -> bool:
    """``True`` or ``False`` (also numpy bools and the integers 0 and 1), as ``bool``."""
    if isinstance(value, (bool, np.bool_)) or (_is_int(value) and value in (0, 1)):
        return bool(value)
    raise ValueError(f'{owner}: {name} must be True or False, got {value!r}.')


def check_int_list(value: Any, name: str, owner: str, low: int = 1) -> List[int]:
    """A non-empty list (or tuple) of integers >= ``low``, as a list of ``int``."""
    if isinstance(value, (list, tuple)) and value and all(
            _is_int(v) and v >= low for v in value):
        return [int(v) for v in value]
    raise ValueError(f'{owner}: {name} must be a non-empty list of integers >= {low}, got '
                     f'{value!r}.')


def check_size_pair(value: Any, name: str, owner: str) -> Tuple[int, int]:
    """A positive integer or a pair of them (height, width), as a pair."""
    if _is_int(value) and value >= 1:
        return int(value), int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            _is_int(v) and v >= 1 for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f'{owner}: {name} must be a positive integer or a pair (height, width) of '
                     f'them, got {value!r}.')


def check_layer_directions(directions: Any, owner: str, name: str = 'directions'
                           ) -> Tuple[str, ...]:
    """One layer's scan directions: a non-empty list of valid, bounded names, as a tuple.

    Raises:
        ValueError: an empty list, an unknown name (matched exactly, e.g. ``'h\\n'`` is refused)
            or a window size outside ``[1, MAX_WINDOW]`` (with the reason).
    """
    try:
        names = direction_lists([directions], 1)[0]
    except ValueError as err:
        message = str(err).replace('directions[0]', name, 1)
        where = '' if name in message else f' (in {name})'
        raise ValueError(f'{owner}: {message}{where}') from None
    for direction in names:
        kind, window, _ = parse_direction(direction)
        if kind == 'w' and not 1 <= window <= MAX_WINDOW:
            raise ValueError(
                f'{owner}: the window size K={window} of direction {direction!r} must be in '
                f'[1, {MAX_WINDOW}]: a window covers K x K tokens and the feature map is '
                f'zero-padded to multiples of K, so larger windows (bigger than the feature '
                f'maps of usual inputs) only add padding and cost.')
    return names


def check_ssm_args(owner: str, d_model: Any, d_state: Any, ratio: Any, ratio_name: str,
                   dt_rank: Any, dt_min: Any, dt_max: Any, dt_init_floor: Any) -> int:
    """Check the selective-scan arguments shared by the scan layers; return the inner width.

    ``ratio`` (``ssm_ratio`` / ``expand``) must be > 0 and give an inner width
    ``int(ratio * d_model)`` of at least 1; ``dt_rank`` is 'auto' or a positive integer;
    ``0 < dt_min <= dt_max`` and ``dt_init_floor >= 0``.
    """
    d_model = check_int(d_model, 'd_model', owner)
    check_int(d_state, 'd_state', owner)
    ratio = check_number(ratio, ratio_name, owner, low=0, low_open=True)
    if int(ratio * d_model) < 1:
        raise ValueError(f'{owner}: {ratio_name}={ratio!r} with d_model={d_model} gives '
                         f'int({ratio_name} * d_model) = 0 inner channels; it must be >= 1.')
    if dt_rank != 'auto':
        check_int(dt_rank, "dt_rank (or 'auto')", owner)
    dt_min = check_number(dt_min, 'dt_min', owner, low=0, low_open=True)
    check_number(dt_max, 'dt_max', owner, low=dt_min)
    check_number(dt_init_floor, 'dt_init_floor', owner, low=0)
    return int(ratio * d_model)


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
    """Base of the modules that run a selective scan (their ``scan_backend`` is switchable).

    ``scan_config``: the Triton kernels' launch configuration
    (:class:`~mmlocalmamba.ops.triton.ScanConfig`, an immutable value); None uses the tuned
    default. Meant for kernel development and benchmarks.
    """

    scan_backend: str = 'auto'
    scan_config = None


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
        triton_precompile (bool): on the first call of each kind (CUDA device, dtypes, with or
            without backward, train/eval), compile the Triton kernel variants the call needs in
            parallel processes first (:mod:`mmlocalmamba.models.precompile`).
    """

    def __init__(self, frozen_stages: int, num_stages: int, norm_eval: bool, with_cp: bool,
                 pretrained: Optional[str] = None, init_cfg: Optional[dict] = None,
                 triton_precompile: bool = True):
        owner = type(self).__name__
        if pretrained is not None and not isinstance(pretrained, str):
            raise ValueError(f'{owner}: pretrained must be a checkpoint path or URL (str) or '
                             f'None, got {pretrained!r}.')
        if init_cfg is not None and not isinstance(init_cfg, (dict, list)):
            raise ValueError(f'{owner}: init_cfg must be a dict, a list of dicts or None, got '
                             f'{init_cfg!r}.')
        super().__init__(init_cfg=pretrained_to_init_cfg(pretrained, init_cfg, owner))
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not (
                -1 <= frozen_stages <= num_stages):
            raise ValueError(f'frozen_stages must be an integer in [-1, {num_stages}], got '
                             f'{frozen_stages!r}.')
        self.frozen_stages = frozen_stages
        self.norm_eval = check_bool(norm_eval, 'norm_eval', owner)
        self.with_cp = check_bool(with_cp, 'with_cp', owner)
        self.triton_precompile = check_bool(triton_precompile, 'triton_precompile', owner)
        self.register_forward_pre_hook(precompile_pre_hook)

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
