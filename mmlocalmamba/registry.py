"""Registration of mmlocalmamba's modules, in one place.

Everything goes into mmengine's root registries, which every downstream registry (mmdet, mmseg,
mmpretrain, a user's own) falls back to, so the backbones are found from any scope once
``import mmlocalmamba`` has run (e.g. through
``custom_imports=dict(imports=['mmlocalmamba'], allow_failed_imports=False)``).
"""
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import MODELS

from .engine.layer_decay import LayerDecayOptimWrapperConstructor
from .models.compat import MM_LocalVSSM
from .models.compat_vim import MM_LocalVim
from .models.local_vim import LocalVim, LocalVimClassifier
from .models.local_vmamba import LocalVMamba, LocalVMambaClassifier
from .models.necks import LayerNorm2d, SimpleFeaturePyramid

__all__ = ['register_all']

_MODELS = (LocalVMamba, MM_LocalVSSM, LocalVMambaClassifier, LocalVim, MM_LocalVim,
           LocalVimClassifier, SimpleFeaturePyramid)


def register_all() -> None:
    """Register the models (idempotent)."""
    for cls in _MODELS:
        if MODELS.get(cls.__name__) is not cls:
            MODELS.register_module(module=cls, force=True)



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
