"""What ``torch.compile`` gains, and what the first call costs (issue 15).

* :func:`compile_pair`: one workload eager and under ``torch.compile`` at two input sizes:
  steady step times, the first compiled call at each size (compilation included), and Dynamo's
  counters (graphs, graph breaks, frames compiled).
* :func:`triton_first_call`: the first forward + backward of the LocalVMamba-T backbone at a
  list of shapes, in order, in a fresh process with an empty ``TRITON_CACHE_DIR``: the cost of
  compiling our Triton kernels, and whether a new height or width compiles them again.
"""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log

from .measure import autocast, synchronize, time_calls, wall_s


def _log(msg: str) -> None:
    print_log(msg, logger='current')


def dynamo_counters() -> Dict[str, int]:
    """Dynamo's counts so far: graphs captured, graph breaks, frames compiled (a recompilation
    for a new size compiles its frames again)."""
    from torch._dynamo.utils import counters
    return dict(unique_graphs=int(counters['stats'].get('unique_graphs', 0)),
                graph_breaks=int(sum(counters['graph_break'].values())),
                frames=int(counters['frames'].get('ok', 0)))


def compile_pair(make_step: Callable[[Tuple[int, ...]], Callable[[], object]],
                 compile_fn: Callable[[], None], sizes: Sequence[Tuple[int, ...]],
                 device: torch.device, iters: int, warmup: int,
                 timer: Optional[Callable] = None) -> Dict[str, object]:
    """Eager and compiled times of a workload at two sizes.

    Args:
        make_step: ``make_step(size)`` returns the step function at ``size``; it reads the
            model as it is when called (``compile_fn`` swaps the compiled module in).
        compile_fn: puts ``torch.compile`` in place (e.g. ``model.backbone =
            torch.compile(model.backbone)``).
        sizes: the two input sizes. Eager runs first at both (their warm-up absorbs the Triton
            compilation of our kernels), then compiled at the first and the second size.
        timer: ``timer(step, device, iters, warmup)`` returning milliseconds (default: the
            median of :func:`~.measure.time_calls`).

    Returns:
        ``eager_ms`` / ``compiled_ms`` / ``first_call_s`` lists (one per size), ``speedup``
        (eager / compiled at each size), Dynamo ``counters`` after each compiled size; where
        compiling or a compiled call fails, ``error`` (the traceback) and the times so far.
    """
    import torch._dynamo
    timer = timer or _time_ms
    out = dict(sizes=[list(s) for s in sizes], eager_ms=[], compiled_ms=[], first_call_s=[],
               counters=[])
    for size in sizes:
        out['eager_ms'].append(timer(make_step(size), device, iters, warmup))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        compile_fn()
        for size in sizes:
            step = make_step(size)
            out['first_call_s'].append(wall_s(step, device))
            out['compiled_ms'].append(timer(step, device, iters, max(warmup - 1, 0)))
            out['counters'].append(dynamo_counters())
    except Exception:  # noqa: BLE001  (kept with the eager times)
        out['error'] = traceback.format_exc(limit=-8)
    out['speedup'] = [e / c for e, c in zip(out['eager_ms'], out['compiled_ms'])]
    return out


def _time_ms(step, device, iters, warmup) -> float:
    return time_calls(step, device, iters, warmup)['ms']


# ----------------------------------------------------------------------------- fresh Triton cache
def triton_first_call(shapes: Sequence[Tuple[int, int]], batch: int, device: str,
                      dtype: str = 'bf16', arch='tiny', timeout: float = 600,
                      log: Callable[[str], None] = _log,
                      precompile: bool = True) -> Dict[str, object]:
    """The first forward + backward at each shape, in order, in a fresh process whose
    ``TRITON_CACHE_DIR`` is a new empty directory (removed afterwards); ``precompile`` is the
    backbone's ``triton_precompile`` (False: every variant compiles in the launch, serially).

    Returns the child's record (see :func:`triton_first_call_child`) plus ``process_s``, the
    child's whole wall time (interpreter start and imports included).
    """
    cache = tempfile.mkdtemp(prefix='mmlocalmamba-triton-cache-')
    fd, result_path = tempfile.mkstemp(prefix='mmlocalmamba-first-call-', suffix='.json')
    os.close(fd)
    spec = dict(shapes=[list(s) for s in shapes], batch=batch, device=device, dtype=dtype,
                arch=arch, result_path=result_path, precompile=precompile)
    env = dict(os.environ, TRITON_CACHE_DIR=cache)
    # the child imports the same mmlocalmamba as this process
    root = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    env['PYTHONPATH'] = os.pathsep.join([root] + [p for p in [env.get('PYTHONPATH')] if p])
    code = ('import json, sys; from mmlocalmamba.apis.benchmark.compiling import '
            'triton_first_call_child as run; run(json.loads(sys.argv[1]))')
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, '-c', code, json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=timeout)
        process_s = time.perf_counter() - start
        with open(result_path) as f:
            text = f.read()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        os.remove(result_path)
    if proc.returncode != 0 or not text:
        raise RuntimeError(f'the fresh-cache process failed (exit {proc.returncode}):\n'
                           f'{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}')
    result = json.loads(text)
    result.update(process_s=process_s, cache_was_fresh=result.pop('cache_entries_at_start') == 0,
                  precompile=precompile)
    for row in result['shapes']:
        log(f"  fresh Triton cache{'' if precompile else ', no precompilation'} "
            f"{row['height']}x{row['width']}: first fwd+bwd "
            f"{row['first_s']:.1f} s ({row['new_cache_entries']} new cache entries), "
            f"then {row['warm_s'] * 1e3:.0f} ms")
    return result


def _cache_entries(path: Optional[str]) -> int:
    return len(os.listdir(path)) if path and osp.isdir(path) else 0


def triton_first_call_child(spec: Dict[str, object]) -> None:
    """Body of the fresh-cache process: writes its record as JSON to ``spec['result_path']``."""
    start = time.perf_counter()
    from ...models import LocalVMamba
    from .workloads import features
    device = torch.device(spec['device'])
    cache = os.environ.get('TRITON_CACHE_DIR')
    at_start = _cache_entries(cache)
    model = LocalVMamba(arch=spec['arch'], out_indices=(0, 1, 2, 3),
                        triton_precompile=spec['precompile']).to(device).train()
    setup_s = time.perf_counter() - start
    rows: List[Dict[str, object]] = []
    for height, width in spec['shapes']:
        images = torch.randn(spec['batch'], 3, height, width, device=device)

        def fwd_bwd():
            with autocast(device, spec['dtype']):
                loss = sum(f.float().mean() for f in features(model, images))
            loss.backward()
            model.zero_grad(set_to_none=True)

        before = _cache_entries(cache)
        first = wall_s(fwd_bwd, device)
        rows.append(dict(height=height, width=width, first_s=first, warm_s=wall_s(fwd_bwd, device),
                         new_cache_entries=_cache_entries(cache) - before))
    synchronize(device)
    with open(spec['result_path'], 'w') as f:
        json.dump(dict(cache_dir=cache, cache_entries_at_start=at_start, setup_s=setup_s,
                       batch=spec['batch'], shapes=rows), f)
