"""Parity of the fused SCAttn merge + out_norm kernels with the PyTorch reference.

The GPU tests compare ``scattn_merge_triton`` (fp32 / bf16 / fp16, contiguous and strided ``ys``)
with ``scattn_merge_reference`` run in float64, forward and the gradients of ``ys`` and all 8
parameters; they are skipped without CUDA. On the CPU the kernels run once through Triton's
interpreter (``TRITON_INTERPRET=1``, in a subprocess) on tiny problems, and the reference is
checked against the same computation written with torch modules (and the model's own
``MultiScan`` + ``out_norm``).
"""
import textwrap

import pytest
import torch
import torch.nn as nn

from mmlocalmamba.models.layers import MultiScan
from mmlocalmamba.ops.merge import scattn_merge, scattn_merge_reference
from mmlocalmamba.ops.triton.merge import scattn_merge_triton

from .conftest import cpu_only, gpu, max_rel, run_in_triton_interpreter


PARAM_NAMES = ('attn_w', 'attn_b', 'w1', 'b1', 'w2', 'b2', 'out_w', 'out_b')


def make_params(num_ch, rank=None, seed=0, device='cpu', dtype=torch.float64):
    """Random SCAttn + out_norm parameters (affines away from 1 / 0), in PARAM_NAMES order."""
    rank = rank or max(1, num_ch // 8)
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(
            device, dtype)

    return [rnd(num_ch, scale=0.5, shift=1.0), rnd(num_ch, scale=0.5),
            rnd(rank, num_ch, scale=num_ch**-0.5), rnd(rank, scale=0.3),
            rnd(num_ch, rank, scale=rank**-0.5), rnd(num_ch, scale=0.3),
            rnd(num_ch, scale=0.5, shift=1.0), rnd(num_ch, scale=0.5)]


def call(fn, ys, params, eps=1e-5):
    attn_w, attn_b, w1, b1, w2, b2, out_w, out_b = params
    return fn(ys, attn_w, attn_b, eps, w1, b1, w2, b2, out_w, out_b, eps)


def run(fn, ys, params, dout):
    """(output, grads of ys and the 8 params) of fn, all leaves fresh."""
    ys = ys.detach().requires_grad_(True)
    params = [p.detach().requires_grad_(True) for p in params]
    out = call(fn, ys, params)
    grads = torch.autograd.grad((out * dout.to(out.dtype)).sum(), [ys] + params)
    return out.detach(), grads


# ----------------------------------------------------------------------------- CPU tests


@pytest.mark.parametrize('shape', [(2, 3, 37, 48), (1, 1, 5, 16)])
def test_reference_matches_module_computation(shape):
    """The reference is the SCAttn merge + out_norm of the model, written with torch modules."""
    batch, num_dirs, length, num_ch = shape
    rank = max(1, num_ch // 8)
    ys = torch.randn(shape, dtype=torch.float64)
    params = make_params(num_ch, rank, seed=3)

    norm = nn.LayerNorm(num_ch).double()
    reduce = nn.Linear(num_ch, rank).double()
    act = nn.GELU()
    select = nn.Linear(rank, num_ch).double()
    sigmoid = nn.Sigmoid()
    out_norm = nn.LayerNorm(num_ch).double()
    with torch.no_grad():
        for param, value in zip([norm.weight, norm.bias, reduce.weight, reduce.bias,
                                 select.weight, select.bias, out_norm.weight, out_norm.bias],
                                params):
            param.copy_(value)
    outs = 0
    for k in range(num_dirs):
        y = ys[:, k]
        gate = sigmoid(select(act(reduce(norm(y).mean(dim=1, keepdim=True)))))
        outs = outs + y * gate
    expected = out_norm(outs)

    got = call(scattn_merge_reference, ys, params)
    assert got.shape == (batch, length, num_ch) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)

    # ... and the model's own modules (MultiScan.merge with its BiAttn, then out_norm).
    merge = MultiScan(['h'] * num_dirs, num_ch).double()
    attn = merge.attn
    with torch.no_grad():
        for param, value in zip([attn.norm.weight, attn.norm.bias, attn.global_reduce.weight,
                                 attn.global_reduce.bias, attn.channel_select.weight,
                                 attn.channel_select.bias], params[:6]):
            param.copy_(value)
    torch.testing.assert_close(got, out_norm(merge.merge(ys)), rtol=1e-12, atol=1e-12)

    # fp32 / bf16 ys: the math runs in fp32, the output is fp32.
    got32 = call(scattn_merge_reference, ys.bfloat16(), [p.float() for p in params])
    assert got32.dtype == torch.float32


def test_argument_checks(monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    params = make_params(8, 2, dtype=torch.float32)
    ys = torch.randn(2, 2, 5, 8)
    with pytest.raises(ValueError, match='4-D'):
        call(scattn_merge_triton, ys[0], params)
    with pytest.raises(TypeError, match='dtype|float'):
        call(scattn_merge_triton, ys.int(), params)
    bad = list(params)
    bad[0] = torch.ones(7)
    with pytest.raises(ValueError, match='attn_w'):
        call(scattn_merge_triton, ys, bad)
    bad = list(params)
    bad[4] = torch.ones(8, 3)
    with pytest.raises(ValueError, match='w2'):
        call(scattn_merge_triton, ys, bad)
    bad = list(params)
    bad[3] = torch.ones(3)
    with pytest.raises(ValueError, match='b1'):
        call(scattn_merge_triton, ys, bad)
    with pytest.raises(ValueError, match='empty'):
        call(scattn_merge_triton, ys[:, :, :0], params)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='CUDA|triton'):
            call(scattn_merge_triton, ys, params)
    # float64 is the reference's (the dispatcher runs it on any device); the kernels refuse it.
    with pytest.raises(TypeError, match='float64'):
        call(scattn_merge_triton, ys.double(), [p.double() for p in params])
    for backend in ('auto', 'torch', 'triton') if torch.cuda.is_available() else ('auto',
                                                                                   'torch'):
        out = call(lambda *a: scattn_merge(*a, backend=backend), ys.double(),
                   [p.double() for p in params])
        torch.testing.assert_close(out, call(scattn_merge_reference, ys.double(),
                                             [p.double() for p in params]))


INTERPRETER_SCRIPT = textwrap.dedent('''
    import torch
    from mmlocalmamba.ops.merge import scattn_merge_reference
    from mmlocalmamba.ops.triton.merge import scattn_merge_triton

    def max_rel(a, b):
        a, b = a.double(), b.double()
        return ((a - b).abs().max() / b.abs().max()).item()

    def run(fn, ys, params, dout, z=None, **kw):
        ys = ys.detach().requires_grad_(True)
        params = [p.detach().requires_grad_(True) for p in params]
        leaves = [ys] + params
        if z is not None:
            z = z.detach().requires_grad_(True)
            leaves.append(z)
        aw, ab, w1, b1, w2, b2, ow, ob = params
        out = fn(ys, aw, ab, 1e-5, w1, b1, w2, b2, ow, ob, 1e-5, z=z, **kw)
        loss = out.sum() if dout is None else (out.double() * dout).sum()
        grads = torch.autograd.grad(loss, leaves)
        return out, grads

    g = torch.Generator().manual_seed(0)
    B, K, L, C, R = 2, 3, 13, 12, 2
    ys64 = torch.randn(B, K, L, C, generator=g, dtype=torch.float64)
    p64 = [torch.randn(C, generator=g, dtype=torch.float64) * 0.5 + 1,
           torch.randn(C, generator=g, dtype=torch.float64) * 0.5,
           torch.randn(R, C, generator=g, dtype=torch.float64) * C**-0.5,
           torch.randn(R, generator=g, dtype=torch.float64) * 0.3,
           torch.randn(C, R, generator=g, dtype=torch.float64) * R**-0.5,
           torch.randn(C, generator=g, dtype=torch.float64) * 0.3,
           torch.randn(C, generator=g, dtype=torch.float64) * 0.5 + 1,
           torch.randn(C, generator=g, dtype=torch.float64) * 0.5]
    dout = torch.randn(B, L, C, generator=g, dtype=torch.float64)
    p32 = [p.float() for p in p64]
    strided = ys64.float().transpose(1, 2).contiguous().transpose(1, 2)  # (B, K, L, C) view
    assert not strided.is_contiguous()
    cases = [('fp32', ys64.float(), 4096), ('fp32 strided', strided, 4096),
             ('fp32 4 row blocks', ys64.float(), 64), ('bf16', ys64.bfloat16(), 64)]
    worst = 0.0
    for name, ys, tile in cases:
        ref, gref = run(scattn_merge_reference, ys.double(), p64, dout)
        out, grads = run(scattn_merge_triton, ys, p32, dout, tile_elements=tile)
        assert out.dtype == torch.float32 and out.shape == (B, L, C) and out.is_contiguous()
        assert grads[0].dtype == ys.dtype and grads[0].shape == ys.shape
        errs = [max_rel(out, ref)] + [max_rel(a, b) for a, b in zip(grads, gref)]
        print(name, 'out %.2e' % errs[0], 'dys %.2e' % errs[1],
              'params %.2e' % max(errs[2:]))
        if ys.dtype == torch.bfloat16:  # dys is rounded to bf16
            assert errs[1] < 1e-2, errs
            errs = errs[:1] + errs[2:]
        worst = max(worst, max(errs))
    # out.sum(): dout is an expanded (stride 0) tensor.
    ref, gref = run(scattn_merge_reference, ys64, p64, None)
    out, grads = run(scattn_merge_triton, ys64.float(), p32, None, tile_elements=64)
    errs = [max_rel(a, b) for a, b in zip(grads, gref)]
    print('sum', 'dys %.2e' % errs[0], 'params %.2e' % max(errs[1:]))
    worst = max(worst, max(errs))
    # the fused output gate: out * SiLU(z), in z's dtype, z strided (a chunk of a wider tensor)
    z64 = torch.randn(B, L, 2 * C, generator=g, dtype=torch.float64)[..., :C]
    ref, gref = run(scattn_merge_reference, ys64, p64, dout, z=z64)
    out, grads = run(scattn_merge_triton, ys64.float(), p32, dout, z=z64.float(),
                     tile_elements=64)
    assert out.dtype == torch.float32 and grads[-1].shape == z64.shape
    errs = [max_rel(out, ref)] + [max_rel(a, b) for a, b in zip(grads, gref)]
    print('gate', 'out %.2e' % errs[0], 'dz %.2e' % errs[-1], 'params %.2e' % max(errs[1:-1]))
    worst = max(worst, max(errs))
    out, grads = run(scattn_merge_triton, ys64.float(), p32, dout, z=z64.bfloat16(),
                     tile_elements=64)
    assert out.dtype == torch.bfloat16 and grads[-1].dtype == torch.bfloat16
    print('MAXERR', worst)
''')


@cpu_only
def test_kernels_in_triton_interpreter():
    """The kernels' logic on CPU: Triton's interpreter runs them like numpy programs."""
    assert run_in_triton_interpreter(INTERPRETER_SCRIPT) < 1e-5


# ----------------------------------------------------------------------------- GPU tests

SHAPES = [(2, 4, 37, 48), (2, 3, 49, 1536), (3, 4, 196, 192), (1, 2, 1, 8)]


def _compare(shape, dtype, strided, tol_out, tol_dys, tol_params):
    batch, num_dirs, length, num_ch = shape
    g = torch.Generator().manual_seed(sum(shape))
    ys = torch.randn(shape, generator=g, dtype=torch.float64).to('cuda', dtype)
    if strided:  # a (B, K, L, C) view with L outermost after B and padded rows (unit-stride C)
        padded = torch.zeros(batch, length, num_dirs, num_ch + 3, device='cuda', dtype=dtype)
        padded[..., :num_ch] = ys.transpose(1, 2)
        ys = padded.transpose(1, 2)[..., :num_ch]
        assert not ys.is_contiguous()
    params = make_params(num_ch, seed=sum(shape), device='cuda')
    dout = torch.randn(batch, length, num_ch, generator=g, dtype=torch.float64).cuda()
    ref, gref = run(scattn_merge_reference, ys.double(), params, dout)
    out, grads = run(scattn_merge_triton, ys, [p.float() for p in params], dout)
    assert out.dtype == torch.float32 and out.shape == (batch, length, num_ch)
    assert out.is_contiguous() and torch.isfinite(out).all()
    assert max_rel(out, ref) < tol_out
    assert grads[0].dtype == dtype and grads[0].shape == ys.shape
    assert max_rel(grads[0], gref[0]) < tol_dys, 'ys'
    for name, a, b in zip(PARAM_NAMES, grads[1:], gref[1:]):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        assert max_rel(a, b) < tol_params, name


@gpu
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('strided', [False, True])
def test_fp32_matches_fp64_reference(shape, strided):
    _compare(shape, torch.float32, strided, 1e-5, 1e-4, 1e-4)


@gpu
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_inputs_match_fp64_reference(shape, dtype):
    # The reference sees the same rounded ys; only dys is rounded to the input dtype.
    _compare(shape, dtype, False, 1e-5, 1e-2 if dtype == torch.bfloat16 else 2e-3, 1e-4)


@gpu
def test_strided_channels_and_deterministic():
    """Channel stride != 1 (a permuted tensor) and bitwise-identical repeated runs."""
    shape = (2, 3, 50, 40)
    ys = torch.randn(2, 40, 3, 50, device='cuda').permute(0, 2, 3, 1)  # (B, K, L, C)
    params = make_params(40, seed=5, device='cuda')
    dout = torch.randn(2, 50, 40, device='cuda', dtype=torch.float64)
    ref, gref = run(scattn_merge_reference, ys.double(), params, dout)
    p32 = [p.float() for p in params]
    out, grads = run(scattn_merge_triton, ys, p32, dout)
    assert ys.shape == shape and out.shape == (2, 50, 40)
    assert max_rel(out, ref) < 1e-5
    for a, b in zip(grads, gref):
        assert max_rel(a, b) < 1e-4
    out2, grads2 = run(scattn_merge_triton, ys, p32, dout)
    assert torch.equal(out, out2)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads2))


@gpu
@pytest.mark.parametrize('zdtype,tol', [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_output_gate_matches_fp64_reference(zdtype, tol):
    """The fused SS2D output gate: out * SiLU(z) in z's dtype, with z a strided chunk."""
    shape = (2, 4, 37, 48)
    g = torch.Generator().manual_seed(3)
    ys = torch.randn(shape, generator=g, dtype=torch.float64).cuda()
    params = make_params(48, seed=3, device='cuda')
    z = torch.randn(2, 37, 96, generator=g, dtype=torch.float64).cuda()[..., :48]
    dout = torch.randn(2, 37, 48, generator=g, dtype=torch.float64).cuda()
    leaves = [ys.clone().requires_grad_(True)] + [p.clone().requires_grad_(True) for p in params]
    zl = z.clone().requires_grad_(True)
    ref = scattn_merge_reference(leaves[0], *leaves[1:3], 1e-5, *leaves[3:], 1e-5, z=zl)
    gref = torch.autograd.grad((ref * dout).sum(), leaves + [zl])
    tl = [ys.float().requires_grad_(True)] + [p.float().requires_grad_(True) for p in params]
    zt = z.to(zdtype).requires_grad_(True)
    out = scattn_merge_triton(tl[0], *tl[1:3], 1e-5, *tl[3:], 1e-5, z=zt)
    assert out.dtype == zdtype and out.shape == (2, 37, 48)
    grads = torch.autograd.grad((out.double() * dout).sum(), tl + [zt])
    assert max_rel(out, ref) < tol
    assert grads[-1].dtype == zdtype
    for a, b in zip(grads, gref):
        assert max_rel(a, b) < 5 * tol
