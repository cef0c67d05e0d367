import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

REFERENCE = osp.abspath(
    os.environ.get('MMLOCALMAMBA_REFERENCE',
                   osp.join(osp.dirname(__file__), '..', '..', 'shared', 'reference')))


def reference_path(*parts):
    path = osp.join(REFERENCE, *parts)
    if not osp.exists(path):
        pytest.skip(f'reference material not found: {path}')
    return path


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs CUDA and the Triton kernels (skipped on CPU)')
    config.addinivalue_line('markers', 'slow: takes more than about a minute on 2 CPU cores')


def pytest_runtest_logreport(report):
    """With ``MMLOCALMAMBA_FAILURE_LOG`` set (tools/dev/gpu_checks.sh sets it), each failure's
    report is appended to that file the moment it happens: a run stopped at its time limit
    prints no summary, and on the GPU machine that lost the only trace of a failure."""
    path = os.environ.get('MMLOCALMAMBA_FAILURE_LOG')
    if path and report.failed:
        with open(path, 'a') as f:
            f.write(f'==== {report.nodeid} ({report.when})\n{report.longreprtext}\n')


def _gpu_kernels_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    from mmlocalmamba.ops.selective_scan import available_backends
    return 'triton' in available_backends()


#: CUDA with the Triton kernels usable (the GPU tests; they are skipped on CPU machines).
CUDA = _gpu_kernels_usable()
_skip_without_gpu = pytest.mark.skipif(not CUDA, reason='needs CUDA and triton')


def gpu(test):
    """Mark ``test`` as a GPU test (marker ``gpu``; skipped without CUDA and triton)."""
    return pytest.mark.gpu(_skip_without_gpu(test))

#: Marks a test that exercises the kernels on the CPU (skipped where the GPU tests run them).
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason='the GPU tests cover the kernels')


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` in float64 (b is the reference)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (b is the reference)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_backbones_agree(ref, fused, x, out_tol=1e-4, input_tol=1e-3, param_tol=2e-3):
    """Forward and backward of two copies of a backbone (e.g. the 'torch' and the fused
    backend) on the same input: every output, the input gradient and the worst parameter
    gradient agree within ``max_rel`` tolerances (``ref`` is the reference)."""
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    outs_r, outs_f = ref(xr), fused(xf)
    for o_r, o_f in zip(outs_r, outs_f):
        assert o_f.shape == o_r.shape
        assert max_rel(o_f, o_r) < out_tol
    weights = [torch.randn_like(o) for o in outs_r]
    sum((o * w).sum() for o, w in zip(outs_r, weights)).backward()
    sum((o * w).sum() for o, w in zip(outs_f, weights)).backward()
    assert max_rel(xf.grad, xr.grad) < input_tol
    worst = max(max_rel(pf.grad, pr.grad)
                for pr, pf in zip(ref.parameters(), fused.parameters()) if pr.grad is not None)
    assert worst < param_tol


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_in_triton_interpreter(script: str, timeout: int = 600) -> float:
    """Run ``script`` in a subprocess under Triton's CPU interpreter (``TRITON_INTERPRET=1``)
    and return the number it prints after ``MAXERR`` (its worst relative error)."""
    pytest.importorskip('triton')
    env = dict(os.environ, TRITON_INTERPRET='1')
    out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return float(out.stdout.split('MAXERR')[-1])


# --------------------------------------------------------------------------- golden fixtures
#: The compact golden fixtures in the repository (made by tools/dev/make_test_fixtures.py).
DATA = osp.join(osp.dirname(__file__), 'data')


def compact_fixture(name: str) -> dict:
    """A fixture of ``tests/data`` (a cut of a reference golden; in every clone, never skipped)."""
    return torch.load(osp.join(DATA, f'{name}.pt'), map_location='cpu', weights_only=True)


def check_golden_float64(run, model, case: dict, tol: float = 1e-9) -> None:
    """``run(model, x)`` in float64 against a golden case: every output, and where the case has
    them the loss ``sum_i (out_i * loss_weights_i).sum()`` and its gradients (input and
    parameters), each within ``tol`` relative (``max_rel``). ``model`` must be in float64."""
    x = case['input'].double().requires_grad_()
    outs = list(run(model, x))
    assert len(outs) == len(case['outputs'])
    for out, ref in zip(outs, case['outputs']):
        assert out.shape == ref.shape
        assert max_rel(out, ref) <= tol
    if 'grads' not in case:
        return
    loss = sum((o * w.double()).sum() for o, w in zip(outs, case['loss_weights']))
    assert abs(loss.item() - case['loss'].item()) <= tol * abs(case['loss'].item())
    params = dict(model.named_parameters())
    names = list(case['grads'])
    grads = torch.autograd.grad(loss, [x if n == 'input' else params[n] for n in names])
    for name, grad in zip(names, grads):
        assert max_rel(grad, case['grads'][name]) <= tol, name
