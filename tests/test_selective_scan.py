import pytest
import torch
import torch.nn.functional as F

from mmlocalmamba.ops.selective_scan import (resolve_backend, selective_scan,
                                             selective_scan_torch)


def sequential_scan(u, delta, A, B, C, D, delta_bias, softplus):
    """Step-by-step recurrence in float64: the definition, written as plainly as possible."""
    u, delta, A, B, C, D = (t.double() for t in (u, delta, A, B, C, D))
    delta = delta + delta_bias.double()[:, None]
    if softplus:
        delta = F.softplus(delta)
    batch, channels, length = u.shape
    if B.dim() == 4:
        B = B.repeat_interleave(channels // B.shape[1], 1)
        C = C.repeat_interleave(channels // C.shape[1], 1)
    else:
        B, C = B[:, None].expand(-1, channels, -1, -1), C[:, None].expand(-1, channels, -1, -1)
    h = torch.zeros(batch, channels, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, -1)


def make_inputs(batch=2, channels=6, length=37, nstate=4, groups=3, dtype=torch.float64):
    u = torch.randn(batch, channels, length, dtype=dtype)
    delta = torch.randn(batch, channels, length, dtype=dtype) * 0.5
    A = -torch.rand(channels, nstate, dtype=dtype) * 3
    shape = (batch, groups, nstate, length) if groups else (batch, nstate, length)
    B = torch.randn(shape, dtype=dtype)
    C = torch.randn(shape, dtype=dtype)
    D = torch.randn(channels, dtype=dtype)
    bias = torch.randn(channels, dtype=dtype) * 0.3
    return u, delta, A, B, C, D, bias


@pytest.mark.parametrize('length', [1, 2, 5, 16, 37, 100])
@pytest.mark.parametrize('groups', [0, 1, 3])
def test_matches_sequential_definition(length, groups):
    args = make_inputs(length=length, groups=groups)
    ref = sequential_scan(*args, softplus=True)
    out = selective_scan_torch(*args, softplus=True)
    assert out.dtype == torch.float64
    assert (out - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_without_softplus():
    args = make_inputs()
    u, delta = args[0], args[1].abs()
    args = (u, delta) + args[2:]
    ref = sequential_scan(*args, softplus=False)
    assert torch.allclose(selective_scan_torch(*args, softplus=False), ref, atol=1e-12)


def test_gradients_match_sequential_definition():
    args = [t.requires_grad_() for t in make_inputs(length=29)]
    out = selective_scan_torch(*args, softplus=True)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), args)
    ref_args = [t.detach().clone().requires_grad_() for t in args]
    ref = sequential_scan(*ref_args, softplus=True)
    ref_grads = torch.autograd.grad((ref * w).sum(), ref_args)
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() <= 1e-10 * r.abs().max()


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs_use_fp32_state(dtype):
    args64 = make_inputs(length=64)
    args = [t.to(dtype) for t in args64]
    out = selective_scan_torch(*args, softplus=True)
    assert out.dtype == dtype
    # reference on the same (rounded) inputs in float64
    ref = sequential_scan(*[t.double() for t in args], softplus=True)
    err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert err < tol


def test_long_sequence_matches_definition():
    # ~sqrt(L) chunks of ~sqrt(L) steps: check the carry between many chunks
    args = make_inputs(batch=1, channels=2, length=5000, groups=0)
    out = selective_scan_torch(*args, softplus=True)
    ref = sequential_scan(*args, softplus=True)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_backend_resolution():
    assert resolve_backend('auto', torch.device('cpu')) == 'torch'
    assert resolve_backend('torch', 'cpu') == 'torch'
    with pytest.raises(ValueError, match="Unknown selective-scan backend 'cuda'"):
        resolve_backend('cuda', 'cpu')
    with pytest.raises(RuntimeError, match='needs CUDA tensors'):
        resolve_backend('triton', 'cpu')
    args = make_inputs(length=8)
    assert torch.equal(selective_scan(*args, softplus=True, backend='torch'),
                       selective_scan_torch(*args, softplus=True))
