"""Registration of mmlocalmamba's modules, in one place.

Everything goes into mmengine's root registries, which every downstream registry (mmdet, mmseg,
mmpretrain, a user's own) falls back to, so the modules are found from any scope once
``import mmlocalmamba`` has run (e.g. through
``custom_imports=dict(imports=['mmlocalmamba'], allow_failed_imports=False)``):

* ``MODELS``: the backbones, their migration aliases, the classifiers, the simple feature
  pyramid neck and the channel LayerNorm under mmcv's norm name ``LN2d``;
* ``HOOKS``: ``ArchWeightsLoggerHook`` (direction search), ``RNGStateHook`` (exact resume);
* ``OPTIM_WRAPPER_CONSTRUCTORS``: ``LayerDecayOptimWrapperConstructor``,
  ``PlainGroupsOptimWrapperConstructor``;
* timm's model registry: ``local_vssm_*`` and ``local_vim_*`` classifiers; for these models
  ``timm.create_model(..., checkpoint_path=PATH)`` loads through mmlocalmamba's checked loader
  (:func:`~mmlocalmamba.utils.checkpoint.load_timm_checkpoint`; every other model keeps timm's
  loader).
* mmengine's FLOP counter: the handles of the ``mmlocalmamba::`` operators
  (:func:`mmlocalmamba.models.flops.install_flop_handles`), so that
  ``mmengine.analysis.get_model_complexity_info`` and mmdet's / mmseg's ``get_flops.py`` count
  the selective scans.

Importing changes nothing in torch's ``weights_only`` allow-list: the checked allow-list of
:mod:`mmlocalmamba.utils.safe_load` is active only around mmlocalmamba's own loads.
"""
import timm.models._factory as timm_factory
from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from timm.models import is_model, register_model

from .engine.arch_weights_hook import ArchWeightsLoggerHook
from .engine.layer_decay import LayerDecayOptimWrapperConstructor
from .engine.optim_constructor import PlainGroupsOptimWrapperConstructor
from .engine.rng_state_hook import RNGStateHook
from .models.compat import MM_LocalVSSM
from .models.compat_vim import MM_LocalVim
from .models.flops import install_flop_handles
from .models.local_vim import LocalVim, LocalVimClassifier
from .models.local_vmamba import LocalVMamba, LocalVMambaClassifier
from .models.necks import LayerNorm2d, SimpleFeaturePyramid
from .models.timm_models import TIMM_MODELS
from .utils.checkpoint import load_timm_checkpoint

__all__ = ['register_all']


class _TimmRegistry:
    """timm's model registry seen as the (name -> factory) registry the table below expects."""

    @staticmethod
    def get(name):
        return TIMM_MODELS[name] if is_model(name) else None

    @staticmethod
    def register_module(name, module, force=True):
        register_model(module)


TIMM = _TimmRegistry()

#: (registry, name, class or factory): every registered object of the package.
_ENTRIES = tuple((MODELS, cls.__name__, cls) for cls in (
    LocalVMamba, MM_LocalVSSM, LocalVMambaClassifier, LocalVim, MM_LocalVim, LocalVimClassifier,
    SimpleFeaturePyramid)) + (
        (MODELS, 'LN2d', LayerNorm2d),
        (HOOKS, 'ArchWeightsLoggerHook', ArchWeightsLoggerHook),
        (HOOKS, 'RNGStateHook', RNGStateHook),
        (OPTIM_WRAPPER_CONSTRUCTORS, 'LayerDecayOptimWrapperConstructor',
         LayerDecayOptimWrapperConstructor),
        (OPTIM_WRAPPER_CONSTRUCTORS, 'PlainGroupsOptimWrapperConstructor',
         PlainGroupsOptimWrapperConstructor),
    ) + tuple((TIMM, name, factory) for name, factory in TIMM_MODELS.items())


def register_all() -> None:
    """Register everything (idempotent)."""
    for registry, name, cls in _ENTRIES:
        if registry.get(name) is not cls:
            registry.register_module(name=name, module=cls, force=True)
    # timm.create_model calls this module attribute after building a model (checkpoint_path)
    timm_factory.load_checkpoint = load_timm_checkpoint
    install_flop_handles()


register_all()
