"""The kernels' Triton cache keys do not depend on which kernel's key a process computes first
(``mmlocalmamba.ops.triton.jit_keys``).

Triton 3.6 merges a callee's ``tl.constexpr`` globals into its caller before it computes the
callee's key, so a kernel's key depended on the kernels used before it: on the H200 machine a
LocalVim backward kernel had one key after LocalVMamba had run and another in the
precompilation's fresh child process, and its launch compiled it again
(``test_first_gpu_call_precompiles_everything_it_needs[vim]``, run after the ``vmamba`` case).
Here that merge order is reproduced on any Triton, in fresh processes.
"""
import json
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip('triton')

_SCRIPT = textwrap.dedent('''
    import importlib, json, sys
    from triton.runtime import jit

    def merge_before_key(self, func):  # the order of Triton 3.6's DependenciesFinder
        self.used_global_vals.update(func.used_global_vals)
        key = func.cache_key + str(getattr(func, 'noinline', False))
        self.hasher.update(key.encode('utf-8'))

    jit.DependenciesFinder._update_hash = merge_before_key
    if sys.argv[1] == 'vmamba_first':  # as a process that ran LocalVMamba before LocalVim
        scan = importlib.import_module('mmlocalmamba.ops.triton.scan_kernels')
        for name in sorted(dir(scan)):
            if name.endswith('_kernel'):
                getattr(scan, name).cache_key
    vim = importlib.import_module('mmlocalmamba.ops.triton.vim_kernels')
    merge = importlib.import_module('mmlocalmamba.ops.triton.merge_kernels')
    scan = importlib.import_module('mmlocalmamba.ops.triton.scan_kernels')
    out = {}
    for module in (vim, scan, merge):  # fresh: the LocalVim kernels' keys first
        for name in sorted(dir(module)):
            fn = getattr(module, name)
            if isinstance(fn, jit.JITFunction) and name.endswith('_kernel'):
                out[module.__name__ + '.' + name] = [
                    fn.cache_key, sorted(key[0] for key in fn.used_global_vals)]
    print('RESULT' + json.dumps(out))
''')


def _keys(order):
    proc = subprocess.run([sys.executable, '-c', _SCRIPT, order], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith('RESULT')][-1]
    return json.loads(line[len('RESULT'):])


def test_kernel_keys_do_not_depend_on_what_ran_first():
    if not hasattr(triton.runtime.jit, 'DependenciesFinder') or not hasattr(
            triton.runtime.jit.DependenciesFinder, '_update_hash'):
        pytest.skip('this Triton computes keys without DependenciesFinder._update_hash')
    fresh, after_vmamba = _keys('fresh'), _keys('vmamba_first')
    assert fresh.keys() == after_vmamba.keys()
    assert any('vim_kernels' in name for name in fresh)
    differ = [name for name in fresh if fresh[name] != after_vmamba[name]]
    assert not differ, differ
    # the globals of the whole call tree: the backward's softplus (through its helpers)
    name = 'mmlocalmamba.ops.triton.vim_kernels.vim_scan_bwd_kernel'
    assert {'LN2', 'LOG2E'} <= set(fresh[name][1])


def test_settling_a_namespace_without_kernels_does_nothing():
    from mmlocalmamba.ops.triton.jit_keys import settle_cache_keys
    assert settle_cache_keys({'x': 1}) == 1


def test_keys_that_do_not_settle_are_reported(monkeypatch):
    """A Triton whose keys never reach a fixed point: a warning naming the functions, and the
    import goes on (the kernels work; only a cache entry may be compiled twice)."""
    import triton.language as tl

    from mmlocalmamba.ops.triton import jit_keys

    @triton.jit
    def probe_kernel(x_ptr):
        tl.store(x_ptr, 1.0)

    if not isinstance(probe_kernel, triton.runtime.jit.JITFunction):
        pytest.skip("Triton's interpreter has no cache keys")
    states = iter(range(10**6))
    monkeypatch.setattr(jit_keys, '_state', lambda fns: next(states))
    with pytest.warns(RuntimeWarning, match="probe_kernel.*did not settle"):
        assert jit_keys.settle_cache_keys({'probe_kernel': probe_kernel}) == jit_keys._MAX_PASSES
