"""The official models' golden fixtures in fp32 on the GPU's fused path (Triton backend).

The same cases as the CPU fp32 golden tests of ``test_local_vmamba.py`` / ``test_local_vim.py``,
run on CUDA with ``scan_backend='triton'`` (the fused LocalVMamba scan and merge, the fused
LocalVim layer), with TF32 off for convolutions and matrix products so fp32 means fp32; every
output within the CPU fp32 tests' tolerance of the official float64 outputs. The compact
fixtures of ``tests/data`` run the same check where ``../shared/reference`` is not there (the
GPU machine gets only the checkout). Skipped on CPU.
"""
import pytest
import torch

from .conftest import compact_fixture, gpu, max_rel
from .test_compact_goldens import FIXTURES as COMPACT
from .test_local_vim import _GOLDENS as VIM_GOLDENS
from .test_local_vim import _build_golden as build_vim_golden
from .test_local_vim import _run_golden as run_vim_golden
from .test_local_vmamba import GOLDEN_CASES, build_golden_model, load_golden, run_golden


@pytest.fixture
def strict_fp32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _on_triton(model):
    model = model.cuda()
    switched = [m for m in model.modules() if hasattr(m, 'set_scan_backend')]
    assert switched
    for m in switched:
        m.set_scan_backend('triton')
    return model


def _check(outs, refs):
    outs = list(outs)
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert max_rel(out.cpu(), ref) <= 1e-4


@gpu
@pytest.mark.parametrize('name,case', GOLDEN_CASES)
def test_local_vmamba_golden_fp32_on_triton(name, case, strict_fp32):
    golden = load_golden(name)
    model = _on_triton(build_golden_model(golden))
    data = golden['cases'][case]
    with torch.no_grad():
        _check(run_golden(model, data['input'].cuda()), data['outputs'])


@gpu
@pytest.mark.parametrize('name', sorted(VIM_GOLDENS))
def test_local_vim_golden_fp32_on_triton(name, strict_fp32):
    fixture = load_golden(name)
    model = _on_triton(build_vim_golden(fixture))
    for case in fixture['cases']:
        with torch.no_grad():
            _check(run_vim_golden(model, fixture, case['input'].cuda()), case['outputs'])


@gpu
@pytest.mark.parametrize('name', sorted(COMPACT))
def test_compact_golden_fp32_on_triton(name, strict_fp32):
    fixture = compact_fixture(name)
    build, runner = COMPACT[name]
    model = _on_triton(build(fixture))
    case = fixture['cases'][0]
    with torch.no_grad():
        _check(runner(fixture)(model, case['input'].cuda()), case['outputs'])
