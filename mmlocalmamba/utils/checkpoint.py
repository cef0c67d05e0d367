"""Loading pretrained weights into the LocalMamba backbones.

One place that understands foreign checkpoints:

* official classification checkpoints (``{'state_dict': ...}`` or ``{'model': ...}``, optional
  ``module.`` prefixes, classifier keys that a backbone does not have);
* full mmdet / mmseg checkpoints (``{'state_dict': {'backbone.…': ...}}``), selected by
  ``prefix='backbone.'`` or detected automatically;
* plain state dicts.

Loading goes through :func:`~mmlocalmamba.utils.safe_load.safe_torch_load` (``weights_only=True``
with an allow-list). Missing and unexpected keys are reported through the mmengine logger; a shape
mismatch raises, naming the key and both shapes.
"""
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, Iterable, Optional, Tuple
from urllib.parse import urlparse

import torch
import torch.nn as nn
from mmengine.logging import MMLogger, print_log

from .safe_load import safe_torch_load

__all__ = ['extract_state_dict', 'load_pretrained', 'load_checkpoint_file',
           'CheckpointShapeError']

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


def _is_url(path: str) -> bool:
    return urlparse(str(path)).scheme in ('http', 'https')


def load_checkpoint_file(checkpoint: str, map_location='cpu') -> dict:
    """Load a checkpoint from a local path or an http(s) URL (cached in torch's hub dir).

    Raises:
        FileNotFoundError: missing local file, or a download that failed (with the reason and,
            for known unpublished official files, what to do instead).
    """
    checkpoint = os.fspath(checkpoint)
    name = osp.basename(urlparse(checkpoint).path) if _is_url(checkpoint) else ''
    if _is_url(checkpoint):
        cache_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
        local = osp.join(cache_dir, name)
        if not osp.isfile(local):
            os.makedirs(cache_dir, exist_ok=True)
            try:
                torch.hub.download_url_to_file(checkpoint, local, progress=False)
            except Exception as err:  # network errors come in many types
                hint = UNPUBLISHED.get(name, 'Download it yourself and give the local path.')
                raise FileNotFoundError(
                    f'Could not download checkpoint {checkpoint!r} ({type(err).__name__}: '
                    f'{err}). {hint}') from err
        checkpoint = local
    elif not osp.isfile(checkpoint):
        hint = UNPUBLISHED.get(osp.basename(checkpoint), '')
        raise FileNotFoundError(f'Checkpoint file not found: {checkpoint!r}. {hint}'.strip())
    return safe_torch_load(checkpoint, map_location=map_location)


def extract_state_dict(checkpoint: dict, prefix: Optional[str] = None) -> 'OrderedDict':
    """Get the backbone state dict out of any supported checkpoint layout.

    Args:
        checkpoint: the loaded object.
        prefix: keep only keys starting with it (and strip it), e.g. ``'backbone.'`` for full
            detector/segmentor checkpoints. None: strip ``backbone.`` automatically when every
            tensor key of the checkpoint that is not a head key carries it.
    """
    if not isinstance(checkpoint, dict):
        raise TypeError(f'A checkpoint must be a dict, got {type(checkpoint).__name__}.')
    state = checkpoint
    for key in ('state_dict', 'model', 'state_dict_ema', 'model_ema'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            state = checkpoint[key]
            break
    state = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                        for k, v in state.items() if isinstance(v, torch.Tensor))
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


def load_pretrained(model: nn.Module,
                    checkpoint,
                    prefix: Optional[str] = None,
                    logger: Optional[MMLogger] = None,
                    map_location='cpu',
                    new_key_prefixes: Tuple[str, ...] = ('outnorm', )) -> dict:
    """Load pretrained weights into a backbone (non-strict, checked).

    Args:
        model: the backbone. If it defines ``convert_pretrained_state(state_dict)``, that hook
            adapts the checkpoint first (e.g. resizing position embeddings).
        checkpoint: path/URL, or an already loaded checkpoint dict.
        prefix: see :func:`extract_state_dict`.
        logger: where to report (default: the current mmengine logger).
        new_key_prefixes: model keys that a classification checkpoint cannot have (the
            backbone's output norms): reported as newly initialised, not as missing.

    Returns:
        dict with ``missing``, ``unexpected``, ``skipped_head`` and ``new`` key lists.

    Raises:
        CheckpointShapeError: a tensor's shape differs from the model's.
    """
    logger = logger or MMLogger.get_current_instance()
    source = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else '<dict>'
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint_file(checkpoint, map_location=map_location)
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
            f'{len(mismatched)} tensor(s) of {source} do not fit the model: {lines}.')
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
