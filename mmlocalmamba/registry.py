"""Registration of mmlocalmamba's modules, in one place.

Everything goes into mmengine's root registries, which every downstream registry (mmdet, mmseg,
mmpretrain, a user's own) falls back to, so the backbones are found from any scope once
``import mmlocalmamba`` has run (e.g. through
``custom_imports=dict(imports=['mmlocalmamba'], allow_failed_imports=False)``). The direction-search
hook (``ArchWeightsLoggerHook``) goes into the root ``HOOKS``, and the classifiers into timm's model
registry.
"""
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import HOOKS, MODELS

from .engine.arch_weights_hook import ArchWeightsLoggerHook
from .engine.layer_decay import LayerDecayOptimWrapperConstructor
from .models.compat import MM_LocalVSSM
from .models.compat_vim import MM_LocalVim
from .models.local_vim import LocalVim, LocalVimClassifier
from .models.local_vmamba import LocalVMamba, LocalVMambaClassifier
from .models.necks import LayerNorm2d, SimpleFeaturePyramid

__all__ = ['register_all']

_MODELS = (LocalVMamba, MM_LocalVSSM, LocalVMambaClassifier, LocalVim, MM_LocalVim,
           LocalVimClassifier, SimpleFeaturePyramid)
_HOOKS = (ArchWeightsLoggerHook, )


def register_all() -> None:
    """Register the models and hooks (idempotent)."""
    for registry, classes in ((MODELS, _MODELS), (HOOKS, _HOOKS)):
        for cls in classes:
            if registry.get(cls.__name__) is not cls:
                registry.register_module(module=cls, force=True)


# The classifiers in timm's model registry (``timm.create_model('local_vssm_tiny')``).
try:
    from .models import timm_models  # noqa: F401
except ImportError:  # pragma: no cover - timm is a core dependency
    timm_models = None


def _register_extras() -> None:
    """The channel LayerNorm under mmcv's norm name ``LN2d`` (for ``norm_cfg=dict(type='LN2d')``
    in detection heads) and the layer-wise lr-decay optimizer constructor."""
    if MODELS.get('LN2d') is not LayerNorm2d:
        MODELS.register_module(name='LN2d', module=LayerNorm2d, force=True)
    name = LayerDecayOptimWrapperConstructor.__name__
    if OPTIM_WRAPPER_CONSTRUCTORS.get(name) is not LayerDecayOptimWrapperConstructor:
        OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=LayerDecayOptimWrapperConstructor,
                                                   force=True)


register_all()
_register_extras()
