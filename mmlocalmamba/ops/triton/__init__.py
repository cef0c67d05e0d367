"""Triton kernels of mmlocalmamba: a leaf package.

* :mod:`.common` -- availability, the minimum Triton version, the interpreter check;
* :mod:`.config` -- launch configurations as immutable values;
* :mod:`.scan_kernels` / :mod:`.scan` -- the fused selective scans (kernels / launchers and
  autograd);
* :mod:`.merge_kernels` / :mod:`.merge` -- the fused SCAttn merge + ``out_norm``;
* :mod:`.vim_kernels` / :mod:`.vim` -- the fused LocalVim layer (conv, gated scan, backward).

Nothing here imports the dispatchers above it (:mod:`mmlocalmamba.ops.selective_scan`,
:mod:`~mmlocalmamba.ops.local_scan`, :mod:`~mmlocalmamba.ops.vim_scan`,
:mod:`~mmlocalmamba.ops.merge`), which choose the backend
and run float64 and CPU tensors through the PyTorch references. Triton itself is imported only
when a kernel is first launched.
"""
from .common import (MIN_TRITON_VERSION, interpreting, is_available, triton_version,
                     unavailable_reason)
from .config import (DEFAULT_SCAN_CONFIG, DEFAULT_VIM_CONFIG, ConvTile, ScanConfig, Tile,
                     VimConfig)

__all__ = ['MIN_TRITON_VERSION', 'interpreting', 'is_available', 'triton_version',
           'unavailable_reason', 'DEFAULT_SCAN_CONFIG', 'ScanConfig', 'Tile',
           'DEFAULT_VIM_CONFIG', 'VimConfig', 'ConvTile']
