"""mmlocalmamba: LocalMamba backbones (windowed selective scan) for OpenMMLab.

``import mmlocalmamba`` registers the backbones in mmengine's root ``MODELS`` registry.
"""
from . import registry  # noqa: F401  (registers the modules)
from .models import (LocalVim, LocalVimClassifier, LocalVMamba, LocalVMambaClassifier, MM_LocalVim,
                     MM_LocalVSSM)
from .version import __version__

__all__ = ['LocalVMamba', 'LocalVMambaClassifier', 'MM_LocalVSSM', 'LocalVim', 'LocalVimClassifier',
           'MM_LocalVim', '__version__']
