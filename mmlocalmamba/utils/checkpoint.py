"""Loading pretrained weights into the LocalMamba backbones.

One place that understands foreign checkpoints:

* official classification checkpoints (``{'state_dict': ...}`` or ``{'model': ...}``, optional
  ``module.`` prefixes, classifier keys that a backbone does not have);
* full mmdet / mmseg checkpoints (``{'state_dict': {'backbone.…': ...}}``), selected by
  ``prefix='backbone.'`` or detected automatically;
* plain state dicts.

Files and URLs are resolved with mmengine's ``CheckpointLoader`` schemes (local paths; http(s)
downloaded by rank 0 first, with a progress bar, into torch's hub cache; ``torchvision://`` and
the other mmengine prefixes) and unpickled by
:func:`~mmlocalmamba.utils.safe_load.safe_torch_load`'s checked ``weights_only=True`` loader (also
for downloads, which mmengine alone would unpickle in full), unless the user trusts the file
(``trust_checkpoint=True`` / ``MMLOCALMAMBA_TRUST_CHECKPOINTS=1``).

On top: missing and unexpected keys are reported through the mmengine logger; a shape mismatch
raises, naming the key and both shapes; a checkpoint from which no backbone tensor loads raises
:class:`CheckpointMismatchError`, naming the likely cause (the other LocalMamba family, a wrong
prefix, an empty state dict, numpy arrays instead of tensors).
"""
import contextlib
import os
import os.path as osp
import pickle
import re
from collections import Counter, OrderedDict
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple
from urllib.parse import urlparse

import torch
import torch.nn as nn
from mmengine.logging import MMLogger, print_log
from mmengine.runner.checkpoint import CheckpointLoader, load_from_http

from .safe_load import (CheckpointFormatError, checkpoint_file_problem, checkpoint_types_allowed,
                        is_trusted, load_error, plain_checkpoint_objects, safe_torch_load)

__all__ = ['extract_state_dict', 'load_pretrained', 'load_checkpoint_file',
           'CheckpointShapeError', 'CheckpointMismatchError', 'safe_mmengine_loading',
           'load_timm_checkpoint']

#: Keys of classification heads, skipped when loading into a backbone.
HEAD_PREFIXES = ('classifier.', 'head.', 'norm_f.', 'fc.')

#: Official release files that were never published (the URL answers 404).
UNPUBLISHED = {
    'local_vssm_tiny.ckpt':
    'The LocalVMamba-T ImageNet checkpoint (local_vssm_tiny.ckpt) was never published by the '
    'authors. Train from scratch (init_cfg=None) or give the path of your own checkpoint: '
    "init_cfg=dict(type='Pretrained', checkpoint='/path/to/local_vssm_tiny.ckpt').",
    'local_vim_small.ckpt':
    'No LocalVim-S ImageNet checkpoint link was published (the official README and UperNet '
    'config point at local_vssm_small.ckpt, a LocalVMamba file that does not fit LocalVim). '
    'Train from scratch (init_cfg=None) or give the path of your own checkpoint: '
    "init_cfg=dict(type='Pretrained', checkpoint='/path/to/local_vim_small.ckpt').",
}


class CheckpointShapeError(ValueError):
    """A checkpoint tensor does not fit the model parameter of the same name."""


class CheckpointMismatchError(ValueError):
    """No tensor of a checkpoint fits the model (another model family, prefix, ...)."""


_HTTP = ('http://', 'https://')


def _scheme(path: str) -> str:
    """The mmengine ``CheckpointLoader`` prefix that handles ``path`` ('' for local files)."""
    if path.startswith(_HTTP):
        return 'http'
    for prefix in CheckpointLoader._schemes:
        if prefix and re.match(prefix, path) is not None:
            return prefix
    return ''


@contextlib.contextmanager
def _replaced(get: Callable, put: Callable, remove: Callable,
              updates: Dict[str, Any]) -> Iterator[None]:
    """Set the items ``updates`` (None: remove the key) through ``put``/``remove``; restore the
    earlier items (read with ``get``) on exit."""

    def apply(items):
        for key, value in items.items():
            remove(key) if value is None else put(key, value)

    saved = {key: get(key) for key in updates}
    apply(updates)
    try:
        yield
    finally:
        apply(saved)


@contextlib.contextmanager
def _weights_only_env(trusted: bool) -> Iterator[None]:
    """Make mmengine's own ``torch.load`` calls of remote schemes use our unpickling.

    mmengine's http(s) loader unpickles downloads with ``weights_only=False`` (through
    ``torch.hub.load_state_dict_from_url``); its other loaders call ``torch.load`` without the
    argument. For the duration of the call, torch's documented switches force ``weights_only``
    (untrusted; our checked allow-list is active then) or lift it (trusted).
    """
    force, other = 'TORCH_FORCE_WEIGHTS_ONLY_LOAD', 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
    if trusted:
        force, other = other, force
    with _replaced(os.environ.get, os.environ.__setitem__, lambda key: os.environ.pop(key, None),
                   {force: '1', other: None}):
        if trusted:
            yield
        else:
            with checkpoint_types_allowed():
                yield


def _hub_cache_file(url: str) -> str:
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(url).path))


def _load_remote(checkpoint: str, scheme: str, map_location, trusted: bool) -> Any:
    name = osp.basename(urlparse(checkpoint).path)
    cached = _hub_cache_file(checkpoint) if scheme == 'http' else None
    try:
        with _weights_only_env(trusted):
            if scheme == 'http':
                obj = load_from_http(checkpoint, map_location=map_location, progress=True)
            else:
                obj = CheckpointLoader._schemes[scheme](checkpoint, map_location)
            return obj if trusted else plain_checkpoint_objects(obj)
    except Exception as err:  # noqa: B902 - downloads and unpickling raise many types
        if cached is not None and not osp.isfile(cached):
            hint = UNPUBLISHED.get(name, 'Download it yourself and give the local path.')
            raise FileNotFoundError(
                f'Could not download checkpoint {checkpoint!r} ({type(err).__name__}: '
                f'{err}). {hint}') from err
        if cached is None and not isinstance(err, pickle.UnpicklingError):
            raise  # e.g. an unknown model name of the scheme: mmengine's own message
        where = f'{checkpoint!r} (downloaded to {cached!r})' if cached else repr(checkpoint)
        problem = checkpoint_file_problem(cached) if cached else None
        if problem:
            raise CheckpointFormatError(
                f'Cannot load checkpoint {where}: the file {problem}. Delete the cached file '
                f'to download it again.') from err
        named = load_error(where, err)
        if named is None:
            raise
        raise named from err


def load_checkpoint_file(checkpoint, map_location='cpu',
                         trust_checkpoint: Optional[bool] = None) -> Any:
    """Load a checkpoint from a local path, an http(s) URL or another mmengine scheme.

    URLs are downloaded through mmengine's ``load_from_http`` (rank 0 first, with a progress
    bar; cached in ``torch.hub.get_dir()/checkpoints``); every file is unpickled with the checked
    ``weights_only=True`` loader of :mod:`mmlocalmamba.utils.safe_load`.

    Args:
        checkpoint: path, URL, or ``torchvision://``-style name.
        map_location: as in ``torch.load``. Default: 'cpu'.
        trust_checkpoint: full unpickling for a file the user trusts; None reads
            ``$MMLOCALMAMBA_TRUST_CHECKPOINTS``.

    Raises:
        FileNotFoundError: missing local file, or a download that failed (with the reason and,
            for known unpublished official files, what to do instead).
        CheckpointFormatError: the file is not a torch checkpoint.
        UnsafeCheckpointError: the checkpoint holds objects outside the allow-list.
    """
    checkpoint = os.fspath(checkpoint)
    scheme = _scheme(checkpoint)
    if scheme:
        return _load_remote(checkpoint, scheme, map_location, is_trusted(trust_checkpoint))
    path = osp.expanduser(checkpoint)
    if not osp.isfile(path):
        hint = UNPUBLISHED.get(osp.basename(path), '')
        raise FileNotFoundError(f'Checkpoint file not found: {checkpoint!r}. {hint}'.strip())
    return safe_torch_load(path, map_location=map_location, trust_checkpoint=trust_checkpoint)


@contextlib.contextmanager
def safe_mmengine_loading(trust_checkpoint: Optional[bool] = None) -> Iterator[None]:
    """Make mmengine's ``CheckpointLoader`` (``Runner.resume``, ``load_from``,
    ``load_checkpoint``) load local files and http(s) URLs through :func:`load_checkpoint_file`
    for the duration of the context; mmengine's loaders are restored on exit.

    This is how ``tools/train.py`` and ``tools/test.py`` resume and evaluate under
    torch >= 2.6: mmengine checkpoints (numpy arrays, ``HistoryBuffer``) load with
    ``weights_only=True`` and checked types, and the trust opt-in is honoured.
    """

    def load(filename, map_location=None):
        return load_checkpoint_file(filename, map_location=map_location,
                                    trust_checkpoint=trust_checkpoint)

    load.__name__ = 'load_from_mmlocalmamba'  # mmengine logs the name
    with _replaced(lambda prefix: CheckpointLoader._schemes.get(prefix),
                   lambda prefix, loader: CheckpointLoader.register_scheme(prefix, loader,
                                                                           force=True),
                   lambda prefix: CheckpointLoader._schemes.pop(prefix, None),
                   {prefix: load for prefix in ('', ) + _HTTP}):
        yield


def _unwrapped_state(checkpoint: dict, keys=('state_dict', 'model', 'state_dict_ema',
                                             'model_ema')) -> 'OrderedDict':
    """The state dict inside a checkpoint (first of ``keys`` present), ``module.`` stripped,
    values not filtered."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'A checkpoint must be a dict, got {type(checkpoint).__name__}.')
    state = checkpoint
    for key in keys:
        if key in checkpoint and isinstance(checkpoint[key], dict):
            state = checkpoint[key]
            break
    return OrderedDict((k[len('module.'):] if isinstance(k, str) and k.startswith('module.') else
                        k, v) for k, v in state.items())


def extract_state_dict(checkpoint: dict, prefix: Optional[str] = None) -> 'OrderedDict':
    """Get the backbone state dict out of any supported checkpoint layout.

    Args:
        checkpoint: the loaded object.
        prefix: keep only keys starting with it (and strip it), e.g. ``'backbone.'`` for full
            detector/segmentor checkpoints. None: strip ``backbone.`` automatically when every
            tensor key of the checkpoint that is not a head key carries it.
    """
    state = OrderedDict((k, v) for k, v in _unwrapped_state(checkpoint).items()
                        if isinstance(v, torch.Tensor))
    if prefix is None and state and any(k.startswith('backbone.') for k in state):
        prefix = 'backbone.'
    if prefix:
        selected = OrderedDict((k[len(prefix):], v) for k, v in state.items()
                               if k.startswith(prefix))
        if not selected:
            raise KeyError(f'No key of the checkpoint starts with prefix {prefix!r}; first keys: '
                           f'{list(state)[:5]}.')
        state = selected
    return state


def _split_head(state: Dict[str, torch.Tensor], model_keys: Iterable[str]) -> Tuple[dict, list]:
    model_keys = set(model_keys)
    kept, skipped = OrderedDict(), []
    for k, v in state.items():
        if k not in model_keys and k.startswith(HEAD_PREFIXES):
            skipped.append(k)
        else:
            kept[k] = v
    return kept, skipped


#: Key fragments that identify each LocalMamba family's state dicts.
_FAMILY_KEYS = {
    'LocalVMamba': ('.op.x_proj_weight', '.op.A_logs', 'patch_embed.0.weight'),
    'LocalVim': ('.mixer.A_log_0', '.mixer.in_proj.weight', 'patch_embed.proj.weight'),
}


def _family(keys: Iterable[str]) -> Optional[str]:
    keys = list(keys)
    for family, marks in _FAMILY_KEYS.items():
        if any(mark in k for k in keys for mark in marks):
            return family
    return None


def _prefix_guess(keys: Iterable[str], model_keys: set) -> Optional[Tuple[str, int]]:
    """The prefix that most checkpoint keys carry in front of a model key, and how many."""
    found = Counter()
    for key in keys:
        for i, char in enumerate(key):
            if char == '.' and key[i + 1:] in model_keys:
                found[key[:i + 1]] += 1
                break
    return found.most_common(1)[0] if found else None


def _why_nothing_loads(checkpoint: dict, state: Dict[str, Any], prefix: Optional[str],
                       model: nn.Module, source: str) -> str:
    """The message of :class:`CheckpointMismatchError`: what the checkpoint holds and why."""
    owner = type(model).__name__
    raw = _unwrapped_state(checkpoint)
    model_keys = set(model.state_dict())
    head = f'No tensor of checkpoint {source} fits the {owner} backbone: '
    if not raw:
        return head + ('its state dict is empty. The file was probably saved before training '
                       'wrote any weights, or from the wrong object.')
    arrays = [k for k, v in raw.items() if type(v).__module__ == 'numpy'
              and type(v).__name__ == 'ndarray']
    if arrays and not any(isinstance(v, torch.Tensor) for v in raw.values()):
        return head + (f'it holds {len(arrays)} numpy arrays instead of torch tensors (e.g. '
                       f'{arrays[0]!r}). Convert them first, e.g. '
                       f'{{k: torch.from_numpy(v) for k, v in state.items()}}.')
    tensors = [k for k, v in raw.items() if isinstance(v, torch.Tensor)]
    if not tensors:
        kinds = sorted({type(v).__name__ for v in raw.values()})
        return head + (f'its {len(raw)} entries hold no tensors (types: {", ".join(kinds)}); '
                       f'is it a checkpoint of weights at all?')
    ours, theirs = _family(model_keys), _family(tensors)
    if theirs is not None and ours is not None and theirs != ours:
        return head + (f'it is a {theirs} checkpoint (keys such as {tensors[0]!r}), and '
                       f'{owner} is a {ours} model. Build a {theirs} backbone for it, or give '
                       f'a {ours} checkpoint.')
    guess = _prefix_guess(tensors, model_keys)
    if guess is not None and guess[0] != (prefix or ''):
        return head + (f'its keys carry the prefix {guess[0]!r} ({guess[1]} of {len(tensors)} '
                       f'keys, e.g. {next(k for k in tensors if k.startswith(guess[0]))!r}); '
                       f'load it with prefix={guess[0]!r} (init_cfg=dict(type="Pretrained", '
                       f'checkpoint=..., prefix={guess[0]!r})).')
    used = f' after the prefix {prefix!r}' if prefix else ''
    return head + (f'none of its {len(state)} tensor keys{used} (e.g. '
                   f'{", ".join(repr(k) for k in list(state or tensors)[:3])}) is a key of the '
                   f'model (e.g. {", ".join(repr(k) for k in sorted(model_keys)[:3])}). It is '
                   f'probably the checkpoint of another model.')


def load_pretrained(model: nn.Module,
                    checkpoint,
                    prefix: Optional[str] = None,
                    logger: Optional[MMLogger] = None,
                    map_location='cpu',
                    new_key_prefixes: Tuple[str, ...] = ('outnorm', ),
                    trust_checkpoint: Optional[bool] = None) -> dict:
    """Load pretrained weights into a backbone (non-strict, checked).

    Args:
        model: the backbone. If it defines ``convert_pretrained_state(state_dict)``, that hook
            adapts the checkpoint first (e.g. resizing position embeddings).
        checkpoint: path/URL, or an already loaded checkpoint dict.
        prefix: see :func:`extract_state_dict`.
        logger: where to report (default: the current mmengine logger).
        new_key_prefixes: model keys that a classification checkpoint cannot have (the
            backbone's output norms): reported as newly initialised, not as missing.
        trust_checkpoint: see :func:`load_checkpoint_file`.

    Returns:
        dict with ``missing``, ``unexpected``, ``skipped_head`` and ``new`` key lists.

    Raises:
        CheckpointShapeError: a tensor's shape differs from the model's.
        CheckpointMismatchError: no tensor of the checkpoint fits the model.
    """
    logger = logger or MMLogger.get_current_instance()
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else '<dict>'
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint_file(checkpoint, map_location=map_location,
                                          trust_checkpoint=trust_checkpoint)
    state = extract_state_dict(checkpoint, prefix)
    convert = getattr(model, 'convert_pretrained_state', None)
    if convert is not None:
        state = convert(state)
    model_state = model.state_dict()
    state, skipped = _split_head(state, model_state)
    mismatched = [(k, tuple(v.shape), tuple(model_state[k].shape)) for k, v in state.items()
                  if k in model_state and v.shape != model_state[k].shape]
    if mismatched:
        lines = '; '.join(f'{k}: checkpoint {a} vs model {b}' for k, a, b in mismatched)
        raise CheckpointShapeError(
            f'{len(mismatched)} tensor(s) of {source} do not fit the model: {lines}. The '
            f'checkpoint was probably made for another model size or arch (compare dims, '
            f'depths, embed_dim, d_state).')
    if not any(k in model_state for k in state):
        raise CheckpointMismatchError(_why_nothing_loads(checkpoint, state, prefix, model,
                                                         source))
    result = model.load_state_dict(state, strict=False)
    new = [k for k in result.missing_keys if k.startswith(new_key_prefixes)]
    missing = [k for k in result.missing_keys if not k.startswith(new_key_prefixes)]
    unexpected = list(result.unexpected_keys)
    print_log(f'Loaded {len(state) - len(unexpected)} tensors from {source} into '
              f'{type(model).__name__}.', logger=logger)
    if skipped:
        print_log(f'Skipped {len(skipped)} classification-head tensors of the checkpoint '
                  f'({", ".join(sorted({k.split(".")[0] for k in skipped}))}).', logger=logger)
    if new:
        print_log(f'Newly initialised (not in the checkpoint): {", ".join(new)}.', logger=logger)
    if missing:
        print_log(f'Missing backbone keys ({len(missing)}): {", ".join(missing)}',
                  logger=logger, level=30)
    if unexpected:
        print_log(f'Unexpected keys ({len(unexpected)}): {", ".join(unexpected)}',
                  logger=logger, level=30)
    return dict(missing=missing, unexpected=unexpected, skipped_head=skipped, new=new)


def load_timm_checkpoint(model: nn.Module, checkpoint_path, use_ema: bool = True,
                         device='cpu', strict: bool = True, remap: bool = False,
                         filter_fn=None, weights_only: bool = True, **kwargs):
    """``timm.create_model(..., checkpoint_path=...)`` for the LocalMamba classifiers.

    timm's own loader unpickles with ``weights_only=True`` and only ``argparse.Namespace``
    allowed, which refuses the official checkpoints (numpy scalars) and ignores the trust
    opt-in. For LocalMamba models this loads through :func:`load_checkpoint_file` (checked
    allow-list, ``$MMLOCALMAMBA_TRUST_CHECKPOINTS``) with timm's semantics: the EMA weights first
    when ``use_ema``, ``module.`` stripped, then ``model.load_state_dict(strict=strict)``. Other
    models (and ``remap``/``filter_fn``/numpy files) go to timm's loader unchanged.
    """
    from timm.models import _helpers
    from ..models.local_vim import LocalVim
    from ..models.local_vmamba import LocalVMamba
    path = os.fspath(checkpoint_path)
    if (not isinstance(model, (LocalVMamba, LocalVim)) or remap or filter_fn is not None
            or path.lower().endswith(('.npz', '.npy', '.safetensors'))):
        return _helpers.load_checkpoint(model, checkpoint_path, use_ema=use_ema, device=device,
                                        strict=strict, remap=remap, filter_fn=filter_fn,
                                        weights_only=weights_only, **kwargs)
    checkpoint = load_checkpoint_file(path, map_location=device,
                                      trust_checkpoint=None if weights_only else True)
    keys = (('state_dict_ema', 'model_ema') if use_ema else ()) + ('state_dict', 'model')
    state = _unwrapped_state(checkpoint, keys)
    if not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(_why_nothing_loads(checkpoint, {}, None, model, path))
    return model.load_state_dict(state, strict=strict)
