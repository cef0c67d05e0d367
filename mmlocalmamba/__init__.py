"""mmlocalmamba: LocalMamba backbones (windowed selective scan) for OpenMMLab.

``import mmlocalmamba`` registers the backbones in mmengine's root ``MODELS`` registry and lets
mmengine resolve ``mmlocalmamba::<path>`` config bases (see :mod:`mmlocalmamba.utils.mim`).
"""
from . import registry  # noqa: F401  (registers the modules)
from .utils.mim import register_config_package
from .models import (LocalVim, LocalVimClassifier, LocalVMamba, LocalVMambaClassifier, MM_LocalVim,
                     MM_LocalVSSM)
from .version import __version__

register_config_package()

__all__ = ['LocalVMamba', 'LocalVMambaClassifier', 'MM_LocalVSSM', 'LocalVim', 'LocalVimClassifier',
           'MM_LocalVim', '__version__']
