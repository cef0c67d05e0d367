from .compat import MM_LocalVSSM
from .layers import BiAttn, MultiScan
from .local_vmamba import LOCAL_VMAMBA_ARCHS, LocalVMamba, LocalVMambaClassifier

__all__ = ['LocalVMamba', 'LocalVMambaClassifier', 'MM_LocalVSSM', 'BiAttn', 'MultiScan',
           'LOCAL_VMAMBA_ARCHS']
