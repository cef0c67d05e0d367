from .compat import MM_LocalVSSM
from .compat_vim import MM_LocalVim
from .layers import BiAttn, MultiScan
from .local_vim import LOCAL_VIM_ARCHS, LocalVim, LocalVimClassifier
from .local_vmamba import LOCAL_VMAMBA_ARCHS, LocalVMamba, LocalVMambaClassifier

__all__ = ['LocalVMamba', 'LocalVMambaClassifier', 'MM_LocalVSSM', 'BiAttn', 'MultiScan',
           'LOCAL_VMAMBA_ARCHS', 'LocalVim', 'LocalVimClassifier', 'MM_LocalVim', 'LOCAL_VIM_ARCHS']
