"""LocalMamba classifiers in timm's model registry.

After ``import mmlocalmamba`` these names work with ``timm.create_model``:

========================== ============================================================
``local_vssm_tiny``        LocalVMamba-T, searched directions (25.5M params)
``local_vssm_small``       LocalVMamba-S, searched directions (49.7M params)
``local_vssm_tiny_search`` the LocalVMamba search supernet (dims 32, all 8 candidates)
``local_vim_tiny``         LocalVim-T (8.0M params); ``local_vim_small`` (27.8M, the
                           official definition that wins: ``[h, h_flip, w2, w2_flip]``
                           everywhere), ``local_vim_small_searched``,
                           ``local_vim_tiny_middle_cls_token``
``local_vim_tiny_search``  the LocalVim search supernet (embed 128, depth 20)
========================== ============================================================

The factories build the same models (and default ``drop_path_rate``) as the official timm
factories, with the official state-dict layout. Keyword arguments go to the model class
(``num_classes``, ``drop_path_rate``, ...; timm's ``in_chans`` becomes ``in_channels``).

No weights are downloaded: ``pretrained=True`` raises :class:`PretrainedWeightsError`. Load a local
file instead with ``timm.create_model(name, checkpoint_path=PATH)`` (strict; official
``{'model': ...}``/``{'state_dict': ...}`` checkpoints work) or
:func:`mmlocalmamba.utils.checkpoint.load_pretrained`.
"""
from typing import Callable, Dict

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .local_vmamba import LocalVMambaClassifier

__all__ = ['PretrainedWeightsError', 'TIMM_MODELS', 'default_cfgs']

#: timm-style "has no weights" configs (the ``pretrained_cfg`` of the models).
default_cfgs: Dict[str, dict] = {}
#: timm names -> factory functions (registered with timm by :mod:`mmlocalmamba.registry`).
TIMM_MODELS: Dict[str, Callable[..., nn.Module]] = {}

_TIMM_ONLY_KEYS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir')


class PretrainedWeightsError(RuntimeError):
    """``pretrained=True`` was asked for; mmlocalmamba never downloads weights."""


def _cfg(**kwargs) -> dict:
    cfg = dict(url='', num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7),
               crop_pct=0.875, interpolation='bicubic', mean=IMAGENET_DEFAULT_MEAN,
               std=IMAGENET_DEFAULT_STD, first_conv='patch_embed.0',
               classifier='classifier.head', license='apache-2.0',
               paper_ids='arXiv:2403.09338', paper_name='LocalMamba')
    cfg.update(kwargs)
    return cfg


def _build(name: str, cls, defaults: dict, pretrained: bool, kwargs: dict) -> nn.Module:
    if pretrained:
        raise PretrainedWeightsError(
            f'{name}: mmlocalmamba does not download pretrained weights. Create the model with '
            f'pretrained=False and load a local checkpoint, e.g. '
            f"timm.create_model('{name}', checkpoint_path='/path/to/{name}.ckpt') or "
            f'mmlocalmamba.utils.checkpoint.load_pretrained(model, "/path/to/{name}.ckpt").')
    for key in _TIMM_ONLY_KEYS:
        kwargs.pop(key, None)
    if 'in_chans' in kwargs:
        kwargs['in_channels'] = kwargs.pop('in_chans')
    model = cls(**{**defaults, **kwargs})
    cfg = dict(default_cfgs[name], architecture=name)
    if 'num_classes' in kwargs:
        cfg['num_classes'] = kwargs['num_classes']
    model.pretrained_cfg = model.default_cfg = cfg
    return model


def _register(name: str, cls, defaults: dict, **cfg) -> None:
    default_cfgs[name] = _cfg(**cfg)

    def factory(pretrained: bool = False, **kwargs) -> nn.Module:
        return _build(name, cls, defaults, pretrained, kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    factory.__doc__ = f'``{name}``: {cls.__name__}({defaults}); pretrained=False only.'
    globals()[name] = factory
    TIMM_MODELS[name] = factory


_register('local_vssm_tiny', LocalVMambaClassifier, dict(arch='tiny', drop_path_rate=0.2))
_register('local_vssm_small', LocalVMambaClassifier, dict(arch='small', drop_path_rate=0.2))
_register('local_vssm_tiny_search', LocalVMambaClassifier,
          dict(arch='tiny_search', drop_path_rate=0.1))


#: LocalVim presets whose official timm name is not ``local_vim_<preset>``.
_VIM_NAMES = {'tiny_middle_cls': 'local_vim_tiny_middle_cls_token'}


def _register_vim() -> None:
    """Register the LocalVim classifiers if :mod:`.local_vim` is available."""
    try:
        from . import local_vim
    except ImportError:
        return
    cls = getattr(local_vim, 'LocalVimClassifier', None)
    archs = getattr(local_vim, 'LOCAL_VIM_ARCHS', None)
    if cls is None or not archs:
        return
    for arch in archs:
        name = _VIM_NAMES.get(arch, f'local_vim_{arch}')
        if name not in default_cfgs:
            _register(name, cls, dict(arch=arch), pool_size=None, first_conv='patch_embed.proj',
                      classifier='head')


_register_vim()
