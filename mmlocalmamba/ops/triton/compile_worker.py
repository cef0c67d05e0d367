"""A child process of :func:`mmlocalmamba.ops.triton.precompile.compile_variants` (run as a
script with the task folder as its last argument; :func:`stand_in_driver` is also imported by
the SASS reports).

It reads ``TASK_DIR/tasks.json`` (the GPU target, Triton's cache directory, the folder holding
the ``mmlocalmamba`` package and the variants ``[module, kernel, specialisation, index]``, the
slowest first), claims variants one at a time by creating ``TASK_DIR/<index>`` exclusively (so
the children share the list without a coordinator), compiles each with
``JITFunction.preload`` and writes ``TASK_DIR/<index>.done`` (``{"seconds": ...}`` or
``{"error": ...}``).

Only the kernel modules are imported (the package's ``__init__`` files are bypassed, so torch
is not loaded), and Triton is given a stand-in driver that reports the parent's target: nothing
touches the GPU.
"""
import importlib
import json
import os
import sys
import time
import traceback
import types


def _kernel_modules(package_dir: str) -> None:
    """Make ``mmlocalmamba.ops.triton.<kernels>`` importable without running the package's
    ``__init__`` modules (which import torch and the model registry)."""
    parts = ['mmlocalmamba', 'ops', 'triton']
    for depth in range(1, len(parts) + 1):
        name = '.'.join(parts[:depth])
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(package_dir, *parts[:depth])]
        sys.modules[name] = module


def stand_in_driver(target, torch_device=None) -> None:
    """Make Triton's active driver a stand-in that reports the GPU ``target`` ``(backend,
    arch, warp_size)``, device 0 and stream 0, so kernels compile without a GPU
    (``torch_device``: what it gives as the active torch device, for launchers given CPU
    tensors, as ``tools/dev/sass_report.py`` does). Also used by the SASS reports."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    gpu = GPUTarget(*target)

    class StandIn:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return gpu

        def get_active_torch_device(self):
            return torch_device

    driver.set_active(StandIn())


def _claim(task_dir: str, index: int) -> bool:
    try:
        os.close(os.open(os.path.join(task_dir, str(index)), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def main(task_dir: str) -> None:
    with open(os.path.join(task_dir, 'tasks.json')) as f:
        job = json.load(f)
    _kernel_modules(job['package_dir'])
    from triton import knobs
    knobs.cache.dir = job['cache_dir']
    stand_in_driver(job['target'])
    for module, kernel, spec, index in job['tasks']:
        if not _claim(task_dir, index):
            continue
        start = time.perf_counter()
        try:
            getattr(importlib.import_module(module), kernel).preload(spec)
            result = {'seconds': time.perf_counter() - start}
        except Exception:  # reported to the parent; the launch compiles it instead
            result = {'error': traceback.format_exc(limit=3)[-2000:]}
        path = os.path.join(task_dir, f'{index}.done')
        with open(path + '.tmp', 'w') as f:
            json.dump(result, f)
        os.replace(path + '.tmp', path)


if __name__ == '__main__':
    main(sys.argv[-1])
