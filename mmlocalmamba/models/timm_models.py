"""The LocalMamba classifiers for timm: pretrained configs, checkpoint conversion, factories.

After ``import mmlocalmamba`` (:mod:`mmlocalmamba.registry` registers :data:`TIMM_MODELS` with
timm) these names work with ``timm.create_model``:

* ``local_vssm_tiny``: LocalVMamba-T, searched directions (25.5M params);
* ``local_vssm_small``: LocalVMamba-S, searched directions (49.7M); weights ``in1k``;
* ``local_vssm_tiny_search``: the LocalVMamba search supernet (dims 32, 8 candidates);
* ``local_vim_tiny``: LocalVim-T (8.0M); weights ``in1k``;
* ``local_vim_tiny_middle_cls_token``: LocalVim-T, no rope, middle class token; weights ``in1k``;
* ``local_vim_small``: LocalVim-S (27.8M) as the official factory builds it
  (``[h, h_flip, w2, w2_flip]`` in every layer);
* ``local_vim_small_searched``: LocalVim-S width with the searched T directions;
* ``local_vim_tiny_search``: the LocalVim search supernet (embed 128, depth 20).

The models are built by timm's ``build_model_with_cfg``, with the official state-dict layout and
default ``drop_path_rate``. Keyword arguments go to :class:`~.LocalVMambaClassifier` /
:class:`~.LocalVimClassifier` (``num_classes``, ``in_chans``, ``global_pool``,
``drop_path_rate``, ``img_size``, even ``arch``).

* ``pretrained=True`` downloads the published checkpoint from the config's ``url`` (timm's loader,
  cached in torch's hub directory) and converts it with :func:`checkpoint_filter_fn`; a different
  ``num_classes`` drops the head and a different ``in_chans`` adapts the patch embedding, as timm
  does. Models without published weights raise :class:`PretrainedWeightsError` unless a
  ``pretrained_cfg_overlay=dict(file=PATH)`` gives them one.
* ``features_only=True`` wraps the model in timm's feature getter (``forward_intermediates``):
  LocalVMamba gives its 4 stage outputs (strides 4, 8, 16, 32), LocalVim the mixer outputs of its
  last 3 layers (stride 16; ``out_indices`` picks others), all as NCHW maps.
"""
import contextlib
from typing import Callable, Dict

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, resolve_pretrained_cfg

from ..utils.checkpoint import extract_state_dict
from ..utils.safe_load import checkpoint_types_allowed
from .local_vim import LocalVimClassifier
from .local_vmamba import LocalVMambaClassifier

__all__ = ['PretrainedWeightsError', 'TIMM_MODELS', 'default_cfgs', 'checkpoint_filter_fn']

_RELEASE = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/'


class PretrainedWeightsError(RuntimeError):
    """``pretrained=True`` for a model whose weights were never published."""


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official LocalMamba checkpoint -> the state dict of ``model`` (timm's filter hook).

    Takes what :func:`~mmlocalmamba.utils.checkpoint.extract_state_dict` takes (a ``model`` /
    ``state_dict`` entry, ``module.`` prefixes, non-tensor entries dropped), then lets the model
    adapt it (:meth:`~.LocalVim.convert_pretrained_state`: position and rope tables resized to
    the model's grid, LocalVMamba checkpoints refused by LocalVim). The layout is otherwise the
    official one, so nothing is renamed.
    """
    state = extract_state_dict(state_dict)
    convert = getattr(model, 'convert_pretrained_state', None)
    return convert(state) if convert is not None else state


def _cfg(url: str = '', **kwargs) -> dict:
    return dict(url=url, num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875,
                interpolation='bicubic', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                license='apache-2.0', paper_ids='arXiv:2403.09338',
                paper_name='LocalMamba: Visual State Space Model with Windowed Selective Scan',
                origin_url='https://github.com/hunto/LocalMamba', **kwargs)


def _vmamba_cfg(url: str = '', **kwargs) -> dict:
    return _cfg(url, pool_size=(7, 7), first_conv='patch_embed.0', classifier='classifier.head',
                **kwargs)


def _vim_cfg(url: str = '', **kwargs) -> dict:
    return _cfg(url, first_conv='patch_embed.proj', classifier='head', **kwargs)


_NEVER_PUBLISHED = ('The authors never published these weights.', )

#: timm pretrained configs, one per model (tag ``in1k`` where published weights exist).
default_cfgs = generate_default_cfgs({
    'local_vssm_tiny': _vmamba_cfg(notes=_NEVER_PUBLISHED + (
        'The official release has no local_vssm_tiny.ckpt (the link answers 404).', )),
    'local_vssm_small.in1k': _vmamba_cfg(_RELEASE + 'local_vssm_small.ckpt'),
    'local_vssm_tiny_search': _vmamba_cfg(notes=('A search supernet: no trained weights.', )),
    'local_vim_tiny.in1k': _vim_cfg(_RELEASE + 'local_vim_tiny.ckpt'),
    'local_vim_tiny_middle_cls_token.in1k': _vim_cfg(
        _RELEASE + 'local_vim_tiny_middle_cls_token.ckpt'),
    'local_vim_small': _vim_cfg(notes=_NEVER_PUBLISHED + (
        'The official README links LocalVim-S to local_vssm_small.ckpt, a LocalVMamba file.', )),
    'local_vim_small_searched': _vim_cfg(notes=_NEVER_PUBLISHED),
    'local_vim_tiny_search': _vim_cfg(notes=('A search supernet: no trained weights.', )),
})


def _check_weights_exist(variant: str, kwargs: dict) -> None:
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    if cfg.url or cfg.file or cfg.state_dict is not None or cfg.hf_hub_id:
        return
    notes = ' '.join(cfg.notes or ())
    raise PretrainedWeightsError(
        f'{variant}: no pretrained weights exist. {notes} Use pretrained=False, or load your own '
        f"file: timm.create_model('{variant}', checkpoint_path='/path/to/{variant}.ckpt'), or "
        f"pretrained=True with pretrained_cfg_overlay=dict(file='/path/to/{variant}.ckpt').")


def _create(cls, variant: str, pretrained: bool, feature_out_indices, **kwargs) -> nn.Module:
    if pretrained:
        _check_weights_exist(variant, kwargs)
    # timm reads the download with torch.load(weights_only=True); the checked allow-list of the
    # official checkpoints' types (numpy scalars, argparse.Namespace) is active around it, as
    # around every load of mmlocalmamba. features_only=True: timm's feature getter
    # (forward_intermediates); out_indices= overrides the default.
    with checkpoint_types_allowed() if pretrained else contextlib.nullcontext():
        return build_model_with_cfg(
            cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(feature_cls='getter', out_indices=feature_out_indices), **kwargs)


def _local_vmamba(variant: str, pretrained: bool, **kwargs) -> nn.Module:
    return _create(LocalVMambaClassifier, variant, pretrained, (0, 1, 2, 3), **kwargs)


def _local_vim(variant: str, pretrained: bool, **kwargs) -> nn.Module:
    # timm's choice for plain ViTs: the last 3 layers
    return _create(LocalVimClassifier, variant, pretrained, 3, **kwargs)


def _factory(variant: str, create: Callable[..., nn.Module], doc: str,
             **model_args) -> Callable[..., nn.Module]:
    """timm entry point ``variant(pretrained=False, **kwargs)`` building ``create(...)`` with
    ``model_args`` as defaults of the keyword arguments."""

    def factory(pretrained: bool = False, **kwargs) -> nn.Module:
        return create(variant, pretrained, **dict(model_args, **kwargs))

    factory.__name__ = factory.__qualname__ = variant
    factory.__module__ = __name__
    factory.__doc__ = f'{doc} Defaults: {model_args}.'
    return factory


#: timm names -> factory functions (registered with timm by :mod:`mmlocalmamba.registry`).
TIMM_MODELS: Dict[str, Callable[..., nn.Module]] = {
    fn.__name__: fn
    for fn in (
        _factory('local_vssm_tiny', _local_vmamba, 'LocalVMamba-T (no published weights).',
                 arch='tiny', drop_path_rate=0.2),
        _factory('local_vssm_small', _local_vmamba, 'LocalVMamba-S.', arch='small',
                 drop_path_rate=0.2),
        _factory('local_vssm_tiny_search', _local_vmamba,
                 'The LocalVMamba direction-search supernet.', arch='tiny_search',
                 drop_path_rate=0.1),
        _factory('local_vim_tiny', _local_vim, 'LocalVim-T.', arch='tiny'),
        _factory('local_vim_tiny_middle_cls_token', _local_vim,
                 'LocalVim-T with a middle class token and no rope.', arch='tiny_middle_cls'),
        _factory('local_vim_small', _local_vim,
                 'LocalVim-S as the official factory builds it (no published weights).',
                 arch='small'),
        _factory('local_vim_small_searched', _local_vim,
                 'LocalVim-S width with the searched directions (no published weights).',
                 arch='small_searched'),
        _factory('local_vim_tiny_search', _local_vim, 'The LocalVim direction-search supernet.',
                 arch='tiny_search'),
    )
}
globals().update(TIMM_MODELS)
