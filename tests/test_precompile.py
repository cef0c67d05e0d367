"""Parallel precompilation of the Triton kernels (``ops/triton/precompile.py``,
``models/precompile.py``).

On CPU: the recording run, the child processes and the cache keys, through a stand-in driver
that compiles for sm_90 without a GPU (in a subprocess: the stand-in and the ``is_cuda`` patch
must not leak into other tests); the model's recording run leaves no trace. On the GPU: a
backbone's first call precompiles and then compiles nothing itself, with the same results.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mmlocalmamba.models.precompile import _recording_run, precompile_workers

from .conftest import gpu, rel_l2

triton = pytest.importorskip('triton')

_OFFLINE = textwrap.dedent('''
    import json, os, sys, torch
    from triton.runtime.jit import JITFunction
    from triton import knobs
    from mmlocalmamba.ops.triton.compile_worker import stand_in_driver

    stand_in_driver(('cuda', 90, 32), torch.device('cpu'))
    torch.Tensor.is_cuda = property(lambda self: True)
    from mmlocalmamba.ops.scan_orders import kernel_tables
    from mmlocalmamba.ops.triton.precompile import precompile

    def run():
        x = torch.randn(1, 8, 5, 7, dtype=torch.bfloat16)
        w = torch.randn(2, 1 + 2 * 4, 8, dtype=torch.bfloat16)
        dt_w = torch.randn(2, 8, 1, dtype=torch.bfloat16)
        tables = kernel_tables(5, 7, ('h', 'w2_flip'))
        from mmlocalmamba.ops.triton.scan import local_selective_scan_triton
        local_selective_scan_triton(x, w, dt_w, torch.randn(2, 8), torch.randn(16, 4),
                                    torch.randn(16), tables)

    out = {}
    report = precompile(run, workers=2, target=('cuda', 90, 32))
    out['variants'] = [v[1] for v in report.variants]
    out['compiled'] = sorted(report.compiled)
    out['failed'] = report.failed
    out['entries'] = len(os.listdir(knobs.cache.dir))
    # The launch path: every launch compiles through the JIT (warmup) and must hit the cache.
    launches = []
    def compile_only(self, grid):
        def call(*a, **k):
            launches.append(self.fn.__name__)
            self.warmup(*a, grid=grid, **k)
        return call
    JITFunction.__getitem__ = compile_only
    run()
    out['launches'] = launches
    out['entries_after'] = len(os.listdir(knobs.cache.dir))
    print('RESULT' + json.dumps(out))
''')


def _offline(tmp_path, env_extra=None):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / 'cache'), **(env_extra or {}))
    env.pop('TRITON_INTERPRET', None)
    proc = subprocess.run([sys.executable, '-c', _OFFLINE], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith('RESULT')][-1]
    return json.loads(line[len('RESULT'):])


def test_precompiled_variants_are_what_the_launches_load(tmp_path):
    out = _offline(tmp_path)
    assert out['failed'] == {}
    assert out['variants'] and len(out['compiled']) == len(out['variants'])
    assert 'scan_fwd_kernel' in out['variants']
    # One cache entry per variant, and the launches afterwards compile nothing new: the
    # children's cache keys are the launching process's.
    assert out['entries'] == len(out['variants'])
    assert set(out['launches']) == set(out['variants'])
    assert out['entries_after'] == out['entries']


def test_recording_skips_only_the_package_kernels_and_restores_the_hook():
    from triton import knobs

    from mmlocalmamba.ops.triton.precompile import record_variants

    calls = []

    def previous(**kwargs):
        calls.append(kwargs['fn'].module)
        return None

    class Info:
        def __init__(self, module):
            self.module, self.name = module, 'k'

    knobs.runtime.jit_cache_hook = previous
    try:
        with record_variants() as recorded:
            hook = knobs.runtime.jit_cache_hook
            mine = dict(fn=Info('mmlocalmamba.ops.triton.scan_kernels'),
                        compile=dict(specialization_data='{"a": 1}'))
            assert hook(key=1, repr='', is_manual_warmup=False, already_compiled=False,
                        **mine) is True
            assert hook(key=1, repr='', is_manual_warmup=False, already_compiled=False,
                        **mine) is True  # a repeat is recorded once
            other = dict(fn=Info('somebody.kernels'), compile=dict(specialization_data='{}'))
            assert hook(key=2, repr='', is_manual_warmup=False, already_compiled=False,
                        **other) is None  # not skipped: handed to the previous hook
        assert recorded == [('mmlocalmamba.ops.triton.scan_kernels', 'k', '{"a": 1}')]
        assert calls == ['somebody.kernels']
        assert knobs.runtime.jit_cache_hook is previous
    finally:
        knobs.runtime.jit_cache_hook = None


def test_recording_leaves_other_threads_launches_alone():
    """Triton's hook is process-wide: a launch from another thread during the recording run
    (another model serving requests) must compile and run, not be skipped."""
    import threading

    from triton import knobs

    from mmlocalmamba.ops.triton.precompile import record_variants

    class Info:
        module, name = 'mmlocalmamba.ops.triton.scan_kernels', 'k'

    answers = []
    with record_variants() as recorded:
        hook = knobs.runtime.jit_cache_hook
        call = dict(key=1, repr='', is_manual_warmup=False, already_compiled=False, fn=Info(),
                    compile=dict(specialization_data='{"b": 2}'))
        worker = threading.Thread(target=lambda: answers.append(hook(**call)))
        worker.start()
        worker.join()
        answers.append(hook(**call))
    assert answers == [None, True]
    assert len(recorded) == 1


def test_recording_takes_the_claimed_backward_on_another_thread():
    """Autograd runs the backward of CUDA tensors on its device thread, not the caller's: the
    recording run claims its backward (claim_backward), whose launches are then recorded;
    another thread's backward is not (seen on the H200: with the thread check alone, every
    backward variant compiled in the recording run, one after another). Here the device thread
    is a plain thread running the backward, and a launch is the hook's call in a backward."""
    import threading

    from triton import knobs

    from mmlocalmamba.ops.triton.precompile import claim_backward, record_variants

    class Info:
        module, name = 'mmlocalmamba.ops.triton.scan_kernels', 'scan_bwd_kernel'

    answers = []

    class Launch(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, spec):
            ctx.spec = spec
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            answers.append(knobs.runtime.jit_cache_hook(
                key=1, repr='', is_manual_warmup=False, already_compiled=False, fn=Info(),
                compile=dict(specialization_data=ctx.spec)))
            return grad * 2, None

    def backward_on_another_thread(loss):
        worker = threading.Thread(target=torch.autograd.grad, args=(loss, leaf))
        worker.start()
        worker.join()

    leaf = torch.randn(3, requires_grad=True)
    with record_variants() as recorded:
        ours = Launch.apply(leaf, '{"ours": 1}').sum()
        theirs = Launch.apply(leaf, '{"theirs": 1}').sum()
        claim_backward(ours)
        backward_on_another_thread(ours)
        backward_on_another_thread(theirs)
    assert answers == [True, None]
    assert [v[2] for v in recorded] == ['{"ours": 1}']
    assert knobs.runtime.jit_cache_hook is None
    claim_backward(torch.ones(1, requires_grad=True))  # outside a block: nothing happens


def test_a_variant_that_fails_is_reported_and_left_to_the_launch(tmp_path):
    from mmlocalmamba.ops.triton.precompile import compile_variants

    report = compile_variants([('mmlocalmamba.ops.triton.scan_kernels', 'scan_fwd_kernel',
                                '{"name": "wrong"}')], ('cuda', 90, 32), str(tmp_path),
                              workers=1, timeout=300)
    assert not report.compiled
    (name, error), = report.failed.items()
    assert name.endswith('scan_fwd_kernel#0') and 'Error' in error
    assert 'left to the launch' in report.summary()


@pytest.mark.parametrize('workers', [0, -1, 1.5, True])
def test_bad_worker_counts_are_refused(workers):
    from mmlocalmamba.ops.triton.precompile import compile_variants
    with pytest.raises(ValueError, match='workers must be a positive integer'):
        compile_variants([('m', 'k', '{}')], ('cuda', 90, 32), '/tmp', workers=workers)


def test_workers_share_the_cpus_among_the_local_processes(monkeypatch):
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '1')
    alone = precompile_workers()
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    assert precompile_workers() == max(1, alone // 4)


def _small_vmamba(**kw):
    from mmlocalmamba.models import LocalVMamba
    return LocalVMamba(arch=dict(dims=8, depths=[1, 1], directions=[['h', 'w2']] * 2,
                                 d_state=4), out_indices=(0, 1), drop_path_rate=0.3, **kw)


def test_the_recording_run_leaves_no_trace():
    model = _small_vmamba().train()
    model.register_buffer('counter', torch.zeros(3))
    model.register_forward_hook(lambda m, args, out: m.counter.add_(1))  # like BN statistics
    x = torch.randn(2, 3, 16, 20)
    state = torch.get_rng_state()
    _recording_run(model, x, backward=True)
    assert torch.equal(torch.get_rng_state(), state)  # drop path drew from a forked generator
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.counter, torch.zeros(3))


def test_the_recording_run_takes_its_backward_outside_autocast():
    """The pre-hook runs inside the forward's autocast region; a training loop runs the backward
    outside it (mmengine's AMP wrapper does), and the recorded variants must be the ones that
    backward launches (under autocast, the backward's matmuls give other dtypes: one LocalVim
    variant differed and compiled in the launch on the H200)."""
    states = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            states.append(torch.is_autocast_enabled('cpu'))
            return grad * 2

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return Probe.apply(self.lin(x))

    with torch.autocast('cpu', dtype=torch.bfloat16):
        _recording_run(Net(), torch.randn(2, 4), backward=True)
    assert states == [False]


def test_cpu_calls_do_not_record_or_mark_anything():
    model = _small_vmamba()
    model(torch.randn(1, 3, 16, 16))
    assert not model.__dict__.get('_precompiled')


def test_triton_precompile_must_be_a_bool():
    with pytest.raises(ValueError, match='triton_precompile must be'):
        _small_vmamba(triton_precompile='yes')


def _kernel_entries(cache_dir) -> int:
    """Compiled kernels in a Triton cache folder: entries holding a cubin (the others are the
    launcher stubs and driver utilities that launching builds, one per kernel signature)."""
    return sum(any(f.endswith('.cubin') for f in os.listdir(os.path.join(cache_dir, entry)))
               for entry in os.listdir(cache_dir))


@gpu
@pytest.mark.parametrize('arch', ['vmamba', 'vim'])
def test_first_gpu_call_precompiles_everything_it_needs(arch, tmp_path, monkeypatch):
    """On a fresh cache, the first forward+backward precompiles its variants; the call itself
    then adds no kernel to Triton's cache (every launch loaded a precompiled variant), its
    outputs equal a model without precompilation bit for bit (drop path included: the
    recording run draws from a forked generator), and a second call records nothing.

    The gradients are compared in norm, not bit for bit: the scan backward adds dB, dC and
    d dt with fp32 atomics, whose order varies from run to run (two runs of the same model
    differ in the last bits, and by a bf16 rounding step where those sums are cast). A trace
    of the recording run in the gradients (accumulated ``.grad``, other drop-path masks) would
    be off by O(1)."""
    from triton import knobs

    from mmlocalmamba.models import LocalVim
    from mmlocalmamba.ops.triton import precompile as ops_precompile
    monkeypatch.setattr(knobs.cache, 'dir', str(tmp_path))
    reports = []
    original = ops_precompile.precompile

    def spy(*args, **kwargs):
        reports.append(original(*args, **kwargs))
        return reports[-1]

    monkeypatch.setattr(ops_precompile, 'precompile', spy)
    # Every variant a launch compiles or loads from the file cache in this process (the hook
    # sees each before it compiles; the recording run's own hook passes on what it does not
    # take): what the real call launched, to name a variant the recording missed.
    launched = []

    def observe(*args, fn, compile, **kwargs):
        if fn.module.startswith(ops_precompile.KERNEL_PACKAGE):
            launched.append((fn.module, fn.name, compile['specialization_data']))
        return None

    monkeypatch.setattr(knobs.runtime, 'jit_cache_hook', observe)
    if arch == 'vmamba':
        make = lambda flag: _small_vmamba(triton_precompile=flag)  # noqa: E731
        x = torch.randn(2, 3, 37, 53, device='cuda')
    else:
        make = lambda flag: LocalVim(  # noqa: E731
            arch=dict(embed_dim=32, depth=2, directions=[['h', 'v_flip', 'w2', 'w7_flip']] * 2),
            img_size=64, out_indices=(0, 1), drop_path_rate=0.2, triton_precompile=flag)
        x = torch.randn(2, 3, 48, 80, device='cuda')
    model, plain = make(True).cuda(), make(False).cuda()
    plain.load_state_dict(model.state_dict())
    results = []
    for m in (model, plain):
        torch.manual_seed(1)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = m(x)
        sum(o.float().sum() for o in out).backward()
        results.append([o.detach() for o in out] + [p.grad for p in m.parameters()])
        if m is model:
            (report, ) = reports
            assert report.variants and not report.failed, report.summary()
            assert len(report.compiled) == len(report.variants), report.summary()
            missed = [v for v in launched if v not in report.variants]
            assert not missed, 'launched but not recorded:\n' + '\n'.join(map(str, missed)) + (
                '\nrecorded:\n' + '\n'.join(map(str, report.variants)))
            assert _kernel_entries(tmp_path) == len(report.variants), report.summary()
            launched.clear()
    n_out = len(out)
    for a, b in zip(results[0][:n_out], results[1][:n_out]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    names = [name for name, _ in model.named_parameters()]
    for name, a, b in zip(names, results[0][n_out:], results[1][n_out:]):
        assert (a is None) == (b is None), name
        assert a is None or rel_l2(a, b) < 1e-2, (name, rel_l2(a, b))
    with torch.autocast('cuda', dtype=torch.bfloat16):
        model(torch.randn(1, 3, 40, 45, device='cuda'))  # a new size: same kind of call
    assert len(reports) == 1


_DDP = textwrap.dedent('''
    import os, sys, tempfile, torch, torch.distributed as dist
    import torch.nn as nn
    from mmlocalmamba.models.precompile import _recording_run

    class Net(nn.Module):
        """Runs the recording run inside its forward, as the pre-hook does under DDP."""
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))
            self.record = True
        def forward(self, x):
            if self.record:
                self.record = False
                try:
                    _recording_run(self, x, backward=True)
                finally:
                    self.record = True
            return self.body(x)

    store = tempfile.mktemp()
    dist.init_process_group('gloo', init_method='file://' + store, rank=0, world_size=1)
    torch.manual_seed(0)
    plain = Net()
    plain.record = False
    wrapped = Net()
    wrapped.load_state_dict(plain.state_dict())
    ddp = nn.parallel.DistributedDataParallel(wrapped)
    for step in range(2):
        x = torch.randn(5, 4)
        ddp(x).square().sum().backward()
        plain(x).square().sum().backward()
    for a, b in zip(wrapped.parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad)
    del ddp
    dist.destroy_process_group()
    print('DDP-OK')
''')


def test_the_recording_run_inside_a_ddp_forward_leaves_the_reducer_alone():
    """Under DistributedDataParallel the pre-hook runs inside DDP's forward: its gradients
    (``torch.autograd.grad``) must not reach DDP's reducer, or the real backward would find
    parameters already marked ready. Two steps, gradients equal to a plain model's."""
    proc = subprocess.run([sys.executable, '-c', _DDP], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and 'DDP-OK' in proc.stdout, proc.stderr[-3000:]
