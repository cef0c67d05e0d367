"""Triton cache keys of the package's kernels that do not depend on the order kernels are first
used in (a leaf module: it imports only triton, as the kernel modules do).

A ``@triton.jit`` function's cache key covers its source, the keys of the functions it calls and
the ``tl.constexpr`` globals it uses, its callees' included. Triton 3.6 (and earlier) merges a
callee's globals into its caller *before* it computes the callee's key, so a callee whose key
is not computed yet contributes no globals: a kernel's key then depends on which other kernels
had their keys computed before it in the process. On the H200 machine a LocalVim backward
kernel got one key in a process that had run LocalVMamba first (its shared helpers' keys
known, their ``LN2`` / ``LOG2E`` merged) and another in the precompilation's child process
(fresh), so the launch missed the child's cache entry and compiled the variant again.

:func:`settle_cache_keys`, run at the end of each kernel module, computes every key of the
module to its fixed point (each function's globals the union of its own and all its callees'),
the same in every process whatever runs first; on a Triton that merges after computing, the
first pass already gives Triton's own keys and nothing changes.
"""
import warnings
from typing import Any, Dict, List

__all__ = ['settle_cache_keys']

#: Passes at most (the depth of the package's call chains is about 5; each pass adds a level).
_MAX_PASSES = 32


def _jit_functions(namespace: Dict[str, Any]) -> List[Any]:
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:  # pragma: no cover - the kernel modules need triton anyway
        return []
    fns = [v for v in namespace.values() if isinstance(v, JITFunction)]
    # Triton versions without these attributes compute keys their own way: leave them alone.
    return [f for f in fns if hasattr(f, 'hash') and hasattr(f, 'used_global_vals')]


def _state(fns) -> list:
    return [(f.hash, tuple(sorted(f.used_global_vals))) for f in fns]


def settle_cache_keys(namespace: Dict[str, Any]) -> int:
    """Compute the cache keys of the ``@triton.jit`` functions in ``namespace`` (a kernel
    module's ``globals()``: its own functions and the helpers it imports) to their fixed point.

    Each pass forgets the keys (keeping the globals found so far) and computes them again: a
    caller then merges its callees' globals of the previous pass at least, so the globals grow
    until every function carries those of its whole call tree. Helpers imported from another
    kernel module are settled by that module first (it is imported first).

    Returns:
        The passes run (the last one changed nothing); ``_MAX_PASSES`` with a warning when the
        keys did not settle (a Triton whose keys this does not understand: the kernels still
        work, a launch may then compile a variant the precompilation already compiled).
    """
    fns = _jit_functions(namespace)
    for f in fns:
        f.cache_key  # noqa: B018 - computes the key
    before = _state(fns)
    for passes in range(1, _MAX_PASSES + 1):
        for f in fns:
            f.hash = None
        for f in fns:
            f.cache_key  # noqa: B018
        after = _state(fns)
        if after == before:
            return passes
        before = after
    names = sorted(getattr(f, '__name__', repr(f)) for f in fns)
    warnings.warn(f'The Triton cache keys of {names} did not settle in {_MAX_PASSES} passes; '
                  'their keys may depend on which kernels ran first in a process.',
                  RuntimeWarning, stacklevel=2)
    return _MAX_PASSES
