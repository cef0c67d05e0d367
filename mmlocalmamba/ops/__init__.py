"""Pure functions on tensors: scan orders, the selective-scan backends and their dispatchers.

Layout (lowest first): :mod:`.scan_orders` (index tables), :mod:`.pos_embed`,
:mod:`.triton` (the fused GPU kernels, a leaf package), then the dispatchers with the PyTorch
references beside them: :mod:`.selective_scan` (plain scan, backend choice), :mod:`.local_scan`
(LocalVMamba's K-direction scan), :mod:`.vim_scan` (LocalVim's), :mod:`.merge` (SCAttn merge).
"""
from .local_scan import local_selective_scan
from .merge import scattn_merge, scattn_merge_reference
from .scan_orders import ALL_DIRECTIONS, multi_reverse, multi_scan, reverse, scan
from .selective_scan import available_backends, selective_scan, selective_scan_torch

__all__ = ['ALL_DIRECTIONS', 'scan', 'reverse', 'multi_scan', 'multi_reverse', 'selective_scan',
           'selective_scan_torch', 'available_backends', 'local_selective_scan', 'scattn_merge',
           'scattn_merge_reference']
