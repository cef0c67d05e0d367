"""Registration of mmlocalmamba's modules, in one place.

Everything goes into mmengine's root registries, which every downstream registry (mmdet, mmseg,
mmpretrain, a user's own) falls back to, so the backbones are found from any scope once
``import mmlocalmamba`` has run (e.g. through
``custom_imports=dict(imports=['mmlocalmamba'], allow_failed_imports=False)``).
"""
from mmengine.registry import MODELS

from .models.compat import MM_LocalVSSM
from .models.compat_vim import MM_LocalVim
from .models.local_vim import LocalVim, LocalVimClassifier
from .models.local_vmamba import LocalVMamba, LocalVMambaClassifier

__all__ = ['register_all']

_MODELS = (LocalVMamba, MM_LocalVSSM, LocalVMambaClassifier, LocalVim, MM_LocalVim,
           LocalVimClassifier)


def register_all() -> None:
    """Register the models (idempotent)."""
    for cls in _MODELS:
        if MODELS.get(cls.__name__) is not cls:
            MODELS.register_module(module=cls, force=True)


register_all()
