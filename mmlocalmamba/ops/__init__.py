from .local_scan import local_selective_scan
from .scan_orders import ALL_DIRECTIONS, multi_reverse, multi_scan, reverse, scan
from .selective_scan import available_backends, selective_scan, selective_scan_torch

__all__ = ['ALL_DIRECTIONS', 'scan', 'reverse', 'multi_scan', 'multi_reverse', 'selective_scan',
           'selective_scan_torch', 'available_backends', 'local_selective_scan']
