"""Compile the Triton kernel variants a workload needs in parallel processes, before it runs.

Triton compiles a kernel variant the first time it is launched, in the launching process and one
after another (threads do not help: the compiler holds the GIL for most of its passes). A first
LocalVMamba-T forward+backward at 800x1344 needs about 40 variants of this package's kernels,
half a minute on one core, and three backward variants take two thirds of it.

:func:`precompile` runs a workload twice over:

1. ``run()`` once with every launch of this package's kernels *recorded and skipped*, through
   Triton's ``jit_cache_hook`` (called before each compilation of a variant not yet compiled in
   this process). The recorded variant is Triton's own serialised specialisation (signature,
   constexprs, alignment attributes, options), the input of ``JITFunction.preload``. A skipped
   launch leaves its output buffers as allocated, so ``run`` must not depend on their values
   (the launchers and models never read tensor values on the host). Variants already compiled
   in this process launch for real. Triton's hook is process-wide: only launches of the
   calling thread are taken, and those of the backward passes ``run`` starts through
   :func:`claim_backward` (autograd runs the backward of CUDA tensors on its own device
   thread).
2. The recorded variants are compiled by ``workers`` child processes (:mod:`.compile_worker`),
   the slowest kind (backward kernels) first. The children load only the kernel modules (no
   torch), compile for the parent's GPU target through ``JITFunction.preload`` and write to
   the parent's Triton cache directory. Variants already in that cache load in milliseconds.

The real call then finds every variant in Triton's file cache. The cache key is Triton's own
(source, specialisation, options, target, compiler versions), so a variant compiled here is the
one the launch would have compiled.

A failure in a child (or a Triton without these hooks) only means the launch compiles the
variant itself, as without precompilation; :class:`PrecompileReport` says what happened.
"""
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ['PrecompileReport', 'precompile', 'record_variants', 'claim_backward',
           'compile_variants', 'usable_cpus']

#: Kernels of these modules are recorded (those of any other module compile as usual).
KERNEL_PACKAGE = __name__.rpartition('.')[0] + '.'

#: Runs the worker script without the current folder on ``sys.path`` (``python -P`` needs 3.11).
_RUN_WORKER = ('import runpy, sys; sys.path.pop(0); '
               'runpy.run_path(sys.argv[1], run_name="__main__")')

#: A recorded variant: (kernel module, kernel name, Triton's specialisation data (JSON)).
Variant = Tuple[str, str, str]


@dataclass
class PrecompileReport:
    """What :func:`precompile` did.

    Attributes:
        variants: the kernel variants the workload launched that were not yet compiled in this
            process.
        compiled: seconds per variant compiled by a child (a cache hit takes milliseconds),
            keyed by ``'module.kernel#i'``.
        failed: ``'module.kernel#i'`` -> the child's error, for variants left to the launch.
        workers: child processes started.
        seconds: wall time of the whole call (recording run + compilation).
        skipped: why nothing was compiled, when nothing was (e.g. no hook in this Triton).
    """

    variants: List[Variant] = field(default_factory=list)
    compiled: Dict[str, float] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    workers: int = 0
    seconds: float = 0.0
    skipped: Optional[str] = None

    def summary(self) -> str:
        """One line for a log."""
        if self.skipped:
            return f'Triton precompilation skipped: {self.skipped}'
        text = (f'{len(self.variants)} Triton kernel variant(s) precompiled by {self.workers} '
                f'process(es) in {self.seconds:.1f} s')
        if self.compiled:
            text += f' (slowest {max(self.compiled.values()):.1f} s)'
        if self.failed:
            text += f'; {len(self.failed)} left to the launch: {sorted(self.failed)}'
        return text


def _hook_support() -> Optional[str]:
    """None when this Triton has the recording hook and ``preload``, else why not."""
    try:
        from triton import knobs
        from triton.runtime.jit import JITFunction
    except ImportError as err:
        return f'this Triton has no compilation hooks ({err})'
    if not hasattr(knobs.runtime, 'jit_cache_hook') or not hasattr(JITFunction, 'preload'):
        return 'this Triton has no jit_cache_hook / JITFunction.preload'
    return None


class _Recording:
    """The state of one :func:`record_variants` block."""

    def __init__(self):
        self.variants: List[Variant] = []
        self.seen = set()
        self.thread = threading.get_ident()
        self.graph_tasks = set()  # autograd graph tasks claimed by claim_backward

    def owns_this_launch(self) -> bool:
        if threading.get_ident() == self.thread:
            return True
        if not self.graph_tasks:
            return False
        import torch
        return torch._C._current_graph_task_id() in self.graph_tasks


_ACTIVE = threading.local()  # .recording: the block the current thread is inside, if any


def claim_backward(tensor) -> None:
    """Within a :func:`record_variants` block, make the launches of the backward pass that
    starts from ``tensor`` (``torch.autograd.grad(tensor, ...)`` or ``tensor.backward()``)
    part of the recording, whichever thread autograd runs them on (for CUDA tensors its device
    thread, not the caller's). Outside a block, or for a tensor without gradient, nothing
    happens. Call it before starting the backward."""
    recording = getattr(_ACTIVE, 'recording', None)
    if recording is None or not getattr(tensor, 'requires_grad', False):
        return
    import torch

    def claim(grad):  # runs first in the backward, inside its graph task
        recording.graph_tasks.add(torch._C._current_graph_task_id())

    tensor.register_hook(claim)


@contextlib.contextmanager
def record_variants(prefix: str = KERNEL_PACKAGE):
    """Within the block, launches of the kernels of modules named ``prefix*`` that would
    compile a new variant are skipped and recorded instead, if they come from this thread or
    from a backward pass claimed by :func:`claim_backward`; yields the list they are appended
    to (each variant once, in launch order). Other kernels, and launches from other threads
    (Triton's hook is process-wide), compile and run as usual."""
    from triton import knobs
    previous = knobs.runtime.jit_cache_hook
    recording = _Recording()
    outer = getattr(_ACTIVE, 'recording', None)

    def hook(*args, fn, compile, **kwargs):
        if fn.module.startswith(prefix) and recording.owns_this_launch():
            spec = compile['specialization_data']
            if spec not in recording.seen:
                recording.seen.add(spec)
                recording.variants.append((fn.module, fn.name, spec))
            return True
        return previous(*args, fn=fn, compile=compile, **kwargs) if previous else None

    knobs.runtime.jit_cache_hook = hook
    _ACTIVE.recording = recording
    try:
        yield recording.variants
    finally:
        knobs.runtime.jit_cache_hook = previous
        _ACTIVE.recording = outer


def _cost_order(variants: Sequence[Variant]) -> List[int]:
    """Indices of ``variants``, the slowest to compile first (backward kernels, then the longer
    specialisations), so that the last child to finish does not start a long one."""
    return sorted(range(len(variants)),
                  key=lambda i: ('bwd' not in variants[i][1], -len(variants[i][2])))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def compile_variants(variants: Sequence[Variant], target: Tuple[str, Any, int],
                     cache_dir: str, workers: Optional[int] = None,
                     timeout: Optional[float] = None) -> PrecompileReport:
    """Compile ``variants`` in child processes into Triton's file cache ``cache_dir``.

    Args:
        variants: from :func:`record_variants`.
        target: ``(backend, arch, warp_size)`` of the GPU to compile for (the launching
            device's ``triton.runtime.driver.active.get_current_target()``).
        cache_dir: Triton's cache directory of the launching process.
        workers: child processes; default one per CPU this process may use, at most one per
            variant.
        timeout: seconds to wait for the children (None: no limit); a child still running then
            is killed and its variants are left to the launch.
    """
    report = PrecompileReport(variants=list(variants))
    if not variants:
        return report
    workers = usable_cpus() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f'workers must be a positive integer or None, got {workers!r}.')
    report.workers = min(workers, len(variants))
    order = _cost_order(variants)
    names = {i: f'{variants[i][0]}.{variants[i][1]}#{i}' for i in order}
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'compile_worker.py')
    with tempfile.TemporaryDirectory(prefix='mmlocalmamba-precompile-') as tmp:
        with open(os.path.join(tmp, 'tasks.json'), 'w') as f:
            json.dump(dict(target=list(target), cache_dir=cache_dir,
                           package_dir=os.path.dirname(os.path.dirname(os.path.dirname(
                               os.path.dirname(os.path.abspath(__file__))))),
                           tasks=[list(variants[i]) + [i] for i in order]), f)
        procs = []
        for w in range(report.workers):
            log = open(os.path.join(tmp, f'worker{w}.log'), 'w')
            procs.append((subprocess.Popen([sys.executable, '-c', _RUN_WORKER, worker, tmp],
                                           stdout=log, stderr=subprocess.STDOUT), log))
        deadline = None if timeout is None else time.monotonic() + timeout
        for proc, log in procs:
            try:
                proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        missing = None
        for i in order:
            done = os.path.join(tmp, f'{i}.done')
            if os.path.exists(done):
                with open(done) as f:
                    result = json.load(f)
                if 'error' in result:
                    report.failed[names[i]] = result['error']
                else:
                    report.compiled[names[i]] = result['seconds']
                continue
            if missing is None:  # the children's output, read once
                logs = ''
                for w in range(report.workers):
                    with open(os.path.join(tmp, f'worker{w}.log')) as f:
                        logs += f.read()
                missing = 'not compiled (worker stopped or timed out): ' + logs.strip()[-500:]
            report.failed[names[i]] = missing
    return report


def precompile(run: Callable[[], Any], workers: Optional[int] = None,
               target: Optional[Tuple[str, Any, int]] = None,
               timeout: Optional[float] = None) -> PrecompileReport:
    """Record the package's kernel variants ``run()`` would compile, then compile them in
    ``workers`` processes (see the module docstring).

    Args:
        run: the workload, e.g. a forward+backward on a tensor of the real input's shape,
            dtype and device; its kernels are skipped, so its results are meaningless.
        workers: child processes (default: one per usable CPU).
        target: the GPU target (default: the current device's).
        timeout: seconds to wait for the children.

    Returns:
        A :class:`PrecompileReport`; ``run``'s result is discarded.
    """
    start = time.perf_counter()
    reason = _hook_support()
    if reason is not None:
        return PrecompileReport(skipped=reason)
    from triton import knobs
    from triton.runtime import driver
    with record_variants() as recorded:
        run()
    if target is None:
        t = driver.active.get_current_target()
        target = (t.backend, t.arch, t.warp_size)
    report = compile_variants(recorded, target, knobs.cache.dir, workers=workers,
                              timeout=timeout)
    report.seconds = time.perf_counter() - start
    return report
