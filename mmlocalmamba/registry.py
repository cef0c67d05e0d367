"""Registration of mmlocalmamba's modules, in one place.

Everything goes into mmengine's root registries, which every downstream registry (mmdet, mmseg,
mmpretrain, a user's own) falls back to, so the backbones are found from any scope once
``import mmlocalmamba`` has run (e.g. through
``custom_imports=dict(imports=['mmlocalmamba'], allow_failed_imports=False)``). The direction-search
hook (``ArchWeightsLoggerHook``) goes into the root ``HOOKS``, and the classifiers into timm's model
registry.
"""
from mmengine.registry import HOOKS, MODELS

from .engine.arch_weights_hook import ArchWeightsLoggerHook
from .models.compat import MM_LocalVSSM
from .models.compat_vim import MM_LocalVim
from .models.local_vim import LocalVim, LocalVimClassifier
from .models.local_vmamba import LocalVMamba, LocalVMambaClassifier

__all__ = ['register_all']

_MODELS = (LocalVMamba, MM_LocalVSSM, LocalVMambaClassifier, LocalVim, MM_LocalVim,
           LocalVimClassifier)
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


register_all()
