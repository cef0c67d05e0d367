"""Loading checkpoints safely under torch's ``weights_only=True``.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``: only tensors, containers and
allow-listed classes may appear. The official LocalMamba checkpoints carry an
``argparse.Namespace`` (the training arguments) and numpy scalars; mmengine checkpoints carry its
``HistoryBuffer`` (message hub) and numpy arrays/dtypes. This module allow-lists exactly those
harmless types (:data:`SAFE_GLOBALS`) and nothing else. A checkpoint that needs any other class
fails with :class:`UnsafeCheckpointError`, whose message names the offending class and how to opt
in explicitly (``trust_checkpoint=True`` / ``MMLOCALMAMBA_TRUST_CHECKPOINTS=1``) for files the user
trusts.
"""
import argparse
import collections
import os
import pickle
import re
from typing import Any, List, Optional

import torch

__all__ = ['UnsafeCheckpointError', 'safe_globals', 'safe_torch_load', 'register_safe_globals']

TRUST_ENV = 'MMLOCALMAMBA_TRUST_CHECKPOINTS'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects outside the allow-list."""


def _numpy_globals() -> List[Any]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
        return []
    out = [np.dtype, np.ndarray]
    core = getattr(np, '_core', None) or np.core
    multiarray = core.multiarray
    for name in ('_reconstruct', 'scalar'):
        if hasattr(multiarray, name):
            out.append(getattr(multiarray, name))
    # dtype classes (np.dtypes.Float64DType, ...) used when pickling dtypes with numpy >= 1.25.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        out.extend(getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType'))
    return out


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """The one use of ``getattr`` an mmengine checkpoint needs, and nothing else.

    mmengine's ``HistoryBuffer`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')``. A general ``getattr`` would open every attribute of
    every allow-listed object, so only plain functions of ``HistoryBuffer`` are given out.
    """
    from mmengine.logging import HistoryBuffer
    value = getattr(obj, name, None) if obj is HistoryBuffer else None
    if not (isinstance(name, str) and not name.startswith('_') and callable(value)):
        raise pickle.UnpicklingError(
            f'getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}) is not in the '
            f'allow-list of safe attribute look-ups')
    return value


def _mmengine_globals() -> List[Any]:
    out = []
    try:
        from mmengine.logging import HistoryBuffer
        out.extend([HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')])
    except ImportError:
        pass
    try:
        from mmengine.config import ConfigDict
        out.append(ConfigDict)
    except ImportError:
        pass
    return out


def safe_globals() -> List[Any]:
    """The allow-list: classes and functions a checkpoint may reference."""
    return ([argparse.Namespace, collections.OrderedDict, collections.defaultdict, bytes] +
            _numpy_globals() + _mmengine_globals())


_REGISTERED = False


def register_safe_globals() -> None:
    """Add :func:`safe_globals` to torch's weights_only allow-list (idempotent).

    This makes every ``torch.load(..., weights_only=True)`` in the process, mmengine's included,
    accept mmengine's own checkpoints and the official LocalMamba ones, without turning
    ``weights_only`` off.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(safe_globals())
    _REGISTERED = True


def _trusted(trust_checkpoint: Optional[bool]) -> bool:
    if trust_checkpoint is not None:
        return bool(trust_checkpoint)
    return os.environ.get(TRUST_ENV, '').lower() in ('1', 'true', 'yes')


def safe_torch_load(f, map_location='cpu', trust_checkpoint: Optional[bool] = None) -> Any:
    """``torch.load`` with ``weights_only=True`` and the allow-list of this module.

    Args:
        f: path or file-like object.
        map_location: as in ``torch.load``. Default: 'cpu'.
        trust_checkpoint: load with full unpickling (``weights_only=False``). Only for files the
            user trusts. None reads the environment variable ``MMLOCALMAMBA_TRUST_CHECKPOINTS``.

    Raises:
        FileNotFoundError: ``f`` is a path that does not exist.
        UnsafeCheckpointError: the checkpoint references a class outside the allow-list.
    """
    if isinstance(f, (str, os.PathLike)) and not os.path.isfile(f):
        raise FileNotFoundError(f'Checkpoint file not found: {os.fspath(f)!r}')
    if _trusted(trust_checkpoint):
        return torch.load(f, map_location=map_location, weights_only=False)
    register_safe_globals()
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else type(f).__name__
        found = re.search(r'Unsupported global: GLOBAL (\S+)', str(err))
        culprit = (f'it references {found.group(1)}, which is not' if found else
                   'it holds objects that are not')
        raise UnsafeCheckpointError(
            f'Refusing to unpickle checkpoint {name!r}: {culprit} in the allow-list of safe '
            f'types. If you trust '
            f'this file, load it with trust_checkpoint=True (or set {TRUST_ENV}=1), or allow the '
            f'specific class with torch.serialization.add_safe_globals([...]).') from err
