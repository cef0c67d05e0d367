"""Parity of the fused LocalVim layer scan (``mmlocalmamba.ops.triton.vim``) with the reference.

CPU: the kernel tables, the dispatch (CPU and float64 keep the reference), and the kernels
themselves through Triton's interpreter (``TRITON_INTERPRET=1``) on tiny problems against the
float64 reference, forward and every gradient: window padding, a middle class token, an odd
grid, K = 4 mixed directions, the official ``v`` reverse, low-rank and full delta, sequence
segments, batch groups and other tiles.
GPU (skipped without CUDA): the same parity for fp32 / fp16 / bf16 inputs and under bf16
autocast at odd sizes, the 32 x 32 (UperNet 512^2) and 64 x 64 (1024^2 LSJ) grids, outputs fully
written, the dispatch and the custom operator's CUDA backward, and the whole LocalVim backbone
(fused against the 'torch' backend).
"""
import copy
import inspect
import textwrap

import pytest
import torch

from mmlocalmamba.ops import vim_scan as vim_scan_module
from mmlocalmamba.ops.scan_orders import direction_code, stacked_tables, vim_kernel_tables
from mmlocalmamba.ops.triton.vim import vim_projection_weight, vim_scan_triton
from mmlocalmamba.ops.vim_scan import local_vim_scan, vim_gather_index, vim_inverse_index

from .conftest import (assert_backbones_agree, cpu_only, gpu, max_rel, rel_l2,
                       run_in_triton_interpreter)

MIXED = ('h', 'v_flip', 'w2', 'w3_flip')
NAMES = ('xz', 'conv_weight', 'conv_bias', 'x_proj_weight', 'dt_proj_weight', 'dt_proj_bias',
         'A_log', 'D')


def make_vim_layer(batch, d_inner, height, width, num_dirs, cls_pos=None, rank=3, nstate=16,
                   d_conv=4, device='cpu', dtype=torch.float64, bias=True):
    """Random inputs and parameters of one LocalVim layer's scan (trained-looking ranges)."""
    g = torch.Generator().manual_seed(4321 + height * 31 + width)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(
            device, dtype)

    tokens = height * width + (cls_pos is not None)
    return [rnd(batch, 2 * d_inner, tokens), rnd(num_dirs, d_inner, d_conv, scale=0.5),
            rnd(num_dirs, d_inner, scale=0.2) if bias else None,
            rnd(num_dirs, rank + 2 * nstate, d_inner, scale=d_inner**-0.5),
            rnd(num_dirs, d_inner, rank, scale=rank**-0.5),
            rnd(num_dirs, d_inner, scale=0.5, shift=-2.0),
            torch.log(torch.rand(num_dirs, d_inner, nstate, generator=g, dtype=torch.float64) * 8 +
                      0.5).to(device, dtype), rnd(num_dirs, d_inner)]


def run_vim(params, height, width, directions, cls_pos, official, backend, grad_out):
    """Outputs and gradients of ``local_vim_scan`` (None for an absent conv bias)."""
    leaves = [None if p is None else p.detach().clone().requires_grad_(True) for p in params]
    y = local_vim_scan(leaves[0], height, width, directions, *leaves[1:], cls_pos=cls_pos,
                       official_v_reverse=official, backend=backend)
    present = [p for p in leaves if p is not None]
    grads = iter(torch.autograd.grad((y * grad_out.to(y.dtype)).sum(), present))
    return y.detach(), [None if p is None else next(grads) for p in leaves]


# ----------------------------------------------------------------------------- CPU tests
@pytest.mark.parametrize('height,width,cls_pos', [(3, 5, None), (3, 5, 7), (5, 4, 0),
                                                  (4, 4, 16), (7, 9, 31)])
@pytest.mark.parametrize('official', [False, True])
def test_vim_kernel_tables_match_the_reference_tables(height, width, cls_pos, official):
    directions = MIXED + ('v', 'w7')
    tables = vim_kernel_tables(height, width, directions, official, cls_pos)
    tokens = height * width + (cls_pos is not None)
    gather_ids = vim_gather_index(height, width, directions, cls_pos)
    length = gather_ids.shape[1]
    assert tables.num_tokens == tokens and tables.gather.shape == (len(directions), length)
    for t in (tables.gather, tables.steps, tables.order, tables.lengths):
        assert t.dtype == torch.int32
    # gather: positions in the T tokens of what vim_multi_scan reads (T: a zero token)
    x = torch.arange(1, tokens + 1, dtype=torch.float64)[None, None]
    seqs = vim_scan_module.vim_multi_scan(x, height, width, directions, cls_pos)[0, :, 0]
    gathered = torch.cat([x[0, 0], x.new_zeros(1)])[tables.gather.long()]
    assert torch.equal(gathered, seqs)
    # scatter: step inverse[p] writes position p (vim_multi_reverse), nothing else is written
    scatter = tables.scatter if tables.separate_scatter else tables.gather
    inverse = vim_inverse_index(height, width, directions, cls_pos, official) % length
    for k in range(len(directions)):
        assert torch.equal(scatter[k, inverse[k]].long(), torch.arange(tokens))
        written = torch.zeros(length, dtype=torch.bool)
        written[inverse[k]] = True
        assert (scatter[k, ~written] == tokens).all()
        # steps: the step that reads each position (every direction reads every token once)
        assert torch.equal(tables.gather[k, tables.steps[k].long()].long(), torch.arange(tokens))
    lengths = stacked_tables(height, width, directions, official, cls_pos)[2]
    assert torch.equal(tables.lengths.long(), lengths)
    steps = torch.arange(length)
    expected_order = torch.where(steps[None] < lengths[:, None], steps[None], length)
    assert torch.equal(tables.order.long(), expected_order)
    assert tables.uniform == bool((lengths == length).all())
    assert tables.separate_scatter == (official and height != width)


def test_vim_kernel_tables_errors():
    with pytest.raises(ValueError, match='cls_pos'):
        vim_kernel_tables(3, 3, ['h'], cls_pos=10)
    with pytest.raises(ValueError, match='Unknown scan direction'):
        vim_kernel_tables(3, 3, ['h', 'diag'])


def test_vim_projection_weight_layout():
    nstate, rank = 4, 3
    xpw = torch.randn(2, rank + 2 * nstate, 5, dtype=torch.float64)
    w = vim_projection_weight(xpw, nstate)
    assert w.shape == (2, 16, 5)  # [B 4 | C 4 | dt 8 (3 + zeros)]
    assert torch.equal(w[:, :nstate], xpw[:, rank:rank + nstate])
    assert torch.equal(w[:, nstate:2 * nstate], xpw[:, rank + nstate:])
    assert torch.equal(w[:, 8:8 + rank], xpw[:, :rank])
    assert not w[:, 8 + rank:].any()
    # rows of 32 + 8 values are padded to 48 (a multiple of 16: strides independent of the size)
    xpw = torch.randn(2, 2 + 2 * 16, 5, dtype=torch.float64)
    w = vim_projection_weight(xpw, 16)
    assert w.shape == (2, 48, 5)
    assert torch.equal(w[:, 32:34], xpw[:, :2]) and not w[:, 34:].any()


def test_cpu_and_float64_keep_the_reference(monkeypatch):
    """The dispatcher never takes the fused path for CPU or float64 tensors."""
    from mmlocalmamba.ops.triton import vim as triton_vim

    def fail(*args, **kwargs):
        raise AssertionError('the fused path was taken')

    for name in ('vim_scan_triton', 'vim_scan_forward', 'vim_scan_backward'):
        monkeypatch.setattr(triton_vim, name, fail)
    params = make_vim_layer(2, 6, 3, 5, 4, cls_pos=7, nstate=4)
    grad_out = torch.randn(2, 4, 16, 6, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        run_vim([p.to(dtype) for p in params], 3, 5, MIXED, 7, True, 'auto', grad_out)
    with pytest.raises(RuntimeError, match='CUDA'):
        run_vim(params, 3, 5, MIXED, 7, True, 'triton', grad_out)


@cpu_only
def test_fused_launcher_needs_cuda():
    params = [p.float() for p in make_vim_layer(1, 4, 3, 3, 2, nstate=4)]
    tables = vim_kernel_tables(3, 3, ['h', 'v'])
    with pytest.raises(RuntimeError, match='CUDA'):
        vim_scan_triton(*params, tables)


INTERPRETER_SCRIPT = textwrap.dedent('''
    import torch
    from mmlocalmamba.ops.scan_orders import vim_kernel_tables
    from mmlocalmamba.ops.triton import ScanConfig, Tile
    from mmlocalmamba.ops.triton.config import ConvTile, VimConfig
    from mmlocalmamba.ops.triton import vim as tv
    from mmlocalmamba.ops.vim_scan import _vim_scan_reference
    {helper}
    H, W, DIRS, CASES = {grid!r}
    errs = []
    for batch, cls_pos, official, bias, cfg in CASES:
        p64 = make_vim_layer(batch, 6, H, W, len(DIRS), cls_pos=cls_pos, rank=2, nstate=4,
                             bias=bias)
        leaves = [None if p is None else p.requires_grad_(True) for p in p64]
        ref = _vim_scan_reference(leaves[0], H, W, DIRS, *leaves[1:], cls_pos, official,
                                  'torch')
        g = torch.randn_like(ref)
        present = [p for p in leaves if p is not None]
        gref = torch.autograd.grad((ref * g).sum(), present)
        p32 = [p.detach().float().requires_grad_(True) for p in present]
        tables = vim_kernel_tables(H, W, DIRS, official, cls_pos)
        args = list(p32)
        if not bias:
            args.insert(2, None)
        y = tv.vim_scan_triton(*args, tables, None, eval(cfg))
        assert y.dtype == torch.float32 and y.shape == ref.shape
        grads = torch.autograd.grad((y * g.float()).sum(), p32)
        err = [((y.double() - ref).norm() / ref.norm()).item()]
        err += [((a.double() - b).norm() / b.norm()).item() for a, b in zip(grads, gref)]
        errs.append(max(err))
    print('MAXERR', max(errs))
''')

SEGMENTS = 'target_programs=10**6, min_segment=4'
INTERPRETER_CASES = {
    # window padding (w2, w3 on 3 x 5), middle class token, official v reverse (a separate
    # scatter table), default tiles (lane reduce-scatter), low-rank dt; then the full delta
    # without conv bias and small conv tiles (several step / channel blocks)
    'cls_official': ((3, 5, MIXED, [
        (2, 7, True, True, 'VimConfig()'),
        (1, None, False, False,
         'VimConfig(scan=ScanConfig(lowrank_max=0), conv=ConvTile(BT=8, BD=4), '
         'conv_bwd=ConvTile(BT=4, BD=2, num_warps=1), conv_dx=ConvTile(BT=8, BD=4))'),
    ])),
    # sequence segments: summaries reused from the forward; with batch groups recomputed,
    # other scan tiles (plain channel sums), a class token at the first step
    'segments_groups': ((5, 3, ('w2_flip', 'h_flip', 'v', 'w3'), [
        (1, 0, False, True, f'VimConfig(scan=ScanConfig({SEGMENTS}))'),
        (2, 15, True, True,
         f'VimConfig(scan=ScanConfig({SEGMENTS}, ck_max_bytes=1000, ck_every=1, '
         'fwd=Tile(CH=2, DL=32, num_warps=1), bwd=Tile(CH=2, DL=8, T=2, num_warps=1)))'),
    ])),
}


@cpu_only
@pytest.mark.parametrize('case', sorted(INTERPRETER_CASES))
def test_vim_kernels_in_triton_interpreter(case):
    """The fused kernels' logic on CPU against the float64 reference, forward and gradients."""
    script = INTERPRETER_SCRIPT.format(grid=INTERPRETER_CASES[case],
                                       helper=inspect.getsource(make_vim_layer))
    assert run_in_triton_interpreter(script, timeout=1200) < 1e-5


# ----------------------------------------------------------------------------- GPU tests
GRIDS = [
    # (height, width, directions, cls_pos)
    (9, 13, ('h', 'v_flip', 'w2', 'w7_flip'), None),  # odd, non-square, window padding
    (13, 9, ('h_flip', 'v', 'w2_flip', 'w7'), 58),  # the middle class token
    (14, 14, ('h', 'h_flip', 'v', 'v_flip'), 98),  # 224^2 classification, middle class token
    (5, 3, ('v', 'v_flip', 'w2_flip', 'w7'), 0),
]


def _check(y, grads, y_ref, g_ref, tol_y, tol_g, dtypes=None):
    assert y.shape == y_ref.shape and torch.isfinite(y).all()
    assert rel_l2(y, y_ref) < tol_y
    for i, (name, a, b) in enumerate(zip(NAMES, grads, g_ref)):
        if b is None:
            assert a is None
            continue
        if dtypes is not None:
            assert a.dtype == dtypes[i], name
        assert rel_l2(a, b) < tol_g, name


@gpu
@pytest.mark.parametrize('height,width,directions,cls_pos', GRIDS)
@pytest.mark.parametrize('official', [False, True])
def test_fused_vim_scan_fp32_matches_fp64_reference(height, width, directions, cls_pos,
                                                    official):
    params = make_vim_layer(2, 40, height, width, 4, cls_pos=cls_pos, device='cuda')
    tokens = height * width + (cls_pos is not None)
    grad_out = torch.randn(2, 4, tokens, 40, device='cuda', dtype=torch.float64)
    y_ref, g_ref = run_vim(params, height, width, directions, cls_pos, official, 'torch',
                           grad_out)
    p32 = [p.float() for p in params]
    y, grads = run_vim(p32, height, width, directions, cls_pos, official, 'triton', grad_out)
    assert y.dtype == torch.float32
    _check(y, grads, y_ref, g_ref, 2e-5, 5e-5, [p.dtype for p in p32])


@gpu
@pytest.mark.parametrize('dtype,tol', [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize('cls_pos', [None, 55])
def test_fused_vim_scan_half_inputs(dtype, tol, cls_pos):
    directions = ('h', 'v_flip', 'w2', 'w7_flip')
    params = make_vim_layer(2, 48, 11, 10, 4, cls_pos=cls_pos, device='cuda')
    params = [p.to(dtype).double() for p in params]  # the reference sees the rounded values
    tokens = 110 + (cls_pos is not None)
    grad_out = torch.randn(2, 4, tokens, 48, device='cuda', dtype=torch.float64)
    y_ref, g_ref = run_vim(params, 11, 10, directions, cls_pos, True, 'torch', grad_out)
    y, grads = run_vim([p.to(dtype) for p in params], 11, 10, directions, cls_pos, True,
                       'triton', grad_out)
    assert y.dtype == dtype
    _check(y, grads, y_ref, g_ref, tol, 3 * tol, [dtype] * 8)


@gpu
@pytest.mark.parametrize('xz_dtype', [torch.bfloat16, torch.float32])
def test_fused_vim_scan_under_bf16_autocast(xz_dtype):
    """What the model runs: parameters fp32, xz from the autocast in-projection (bf16) or fp32;
    conv output and projections in bf16, output in promote(bf16, xz dtype) as the reference."""
    directions = ('h', 'h_flip', 'w7', 'w7_flip')
    params = make_vim_layer(2, 64, 14, 14, 4, rank=12, device='cuda', dtype=torch.float32)
    params[0] = params[0].to(xz_dtype)
    grad_out = torch.randn(2, 4, 196, 64, device='cuda')
    y_ref, g_ref = run_vim([p.double() for p in params], 14, 14, directions, None, False,
                           'torch', grad_out.double())
    with torch.autocast('cuda', dtype=torch.bfloat16):
        y_amp, _ = run_vim(params, 14, 14, directions, None, False, 'torch', grad_out)
        y, grads = run_vim(params, 14, 14, directions, None, False, 'triton', grad_out)
    assert y.dtype == y_amp.dtype == xz_dtype
    _check(y, grads, y_ref, g_ref, 2e-2, 6e-2, [p.dtype for p in params])


@gpu
@pytest.mark.parametrize('rank', [12, 24])
def test_fused_vim_scan_low_rank_and_full_delta(rank):
    """LocalVim-T (rank 12: dt projected in the kernels) and -S (rank 24: the delta GEMM)."""
    directions = ('h', 'v', 'w2', 'w2_flip')
    params = make_vim_layer(2, 96, 9, 11, 4, rank=rank, device='cuda')
    grad_out = torch.randn(2, 4, 99, 96, device='cuda', dtype=torch.float64)
    y_ref, g_ref = run_vim(params, 9, 11, directions, None, False, 'torch', grad_out)
    y, grads = run_vim([p.float() for p in params], 9, 11, directions, None, False, 'triton',
                       grad_out)
    _check(y, grads, y_ref, g_ref, 2e-5, 5e-5)


@gpu
@pytest.mark.parametrize('side,cls_pos,dtype', [(32, None, torch.float32),
                                                (64, None, torch.float32),
                                                (64, None, torch.bfloat16),
                                                (32, 512, torch.float32)])
def test_fused_vim_scan_det_seg_grids(side, cls_pos, dtype):
    """UperNet 512^2 (32 x 32 tokens) and ViTDet LSJ 1024^2 (64 x 64): batch 1-2, so sequence
    segments; w7 pads 32 -> 35 and 64 -> 70. LocalVim-T widths (Di 384, rank 12)."""
    directions = ('h', 'v_flip', 'w7', 'w2_flip')
    batch = 2 if side == 32 else 1
    params = make_vim_layer(batch, 384, side, side, 4, cls_pos=cls_pos, rank=12, device='cuda')
    params = [p.to(dtype).double() for p in params]
    tokens = side * side + (cls_pos is not None)
    grad_out = torch.randn(batch, 4, tokens, 384, device='cuda', dtype=torch.float64)
    y_ref, g_ref = run_vim(params, side, side, directions, cls_pos, False, 'torch', grad_out)
    y, grads = run_vim([p.to(dtype) for p in params], side, side, directions, cls_pos, False,
                       'triton', grad_out)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    _check(y, grads, y_ref, g_ref, tol, 3 * tol if dtype != torch.float32 else 2e-4)


@gpu
def test_fused_vim_outputs_fully_written_over_poisoned_memory():
    params = [p.float() for p in make_vim_layer(2, 40, 9, 11, 4, cls_pos=49, device='cuda')]
    for _ in range(2):
        junk = torch.full((1 << 22, ), float('nan'), device='cuda')
        del junk  # the caching allocator hands this block out again
        y, grads = run_vim(params, 9, 11, ('w7_flip', 'v', 'w2', 'h_flip'), 49, True, 'triton',
                           torch.randn(2, 4, 100, 40, device='cuda'))
        assert torch.isfinite(y).all()
        assert all(torch.isfinite(g).all() for g in grads)


@gpu
def test_dispatch_and_custom_op_take_the_fused_path(monkeypatch):
    """'triton' and 'auto' on CUDA run the fused kernels; the operator's CUDA backward calls
    the fused backward (no recompute through torch.func.vjp); float64 keeps the reference."""
    from mmlocalmamba.ops.triton import vim as triton_vim
    calls = []
    for name in ('vim_scan_triton', 'vim_scan_forward', 'vim_scan_backward'):
        real = getattr(triton_vim, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(triton_vim, name, spy)

    def no_vjp(*args, **kwargs):
        raise AssertionError('recompute_grads called on the fused path')

    monkeypatch.setattr(vim_scan_module, 'recompute_grads', no_vjp)
    params = [p.float() for p in make_vim_layer(2, 16, 4, 5, 4, cls_pos=10, nstate=8,
                                                device='cuda')]
    grad_out = torch.randn(2, 4, 21, 16, device='cuda')
    eager = ['vim_scan_triton', 'vim_scan_forward', 'vim_scan_backward']
    for backend in ('auto', 'triton'):
        run_vim(params, 4, 5, MIXED, 10, False, backend, grad_out)
    assert calls == eager * 2
    leaves = [p.clone().requires_grad_(True) for p in params]
    y = torch.ops.mmlocalmamba.vim_scan(leaves[0], 4, 5, [direction_code(d) for d in MIXED],
                                        *leaves[1:], 10, False, 'auto', None)
    torch.autograd.grad((y * grad_out).sum(), leaves)
    assert calls[6:] == ['vim_scan_forward', 'vim_scan_backward']
    calls.clear()
    run_vim([p.double() for p in params], 4, 5, MIXED, 10, False, 'triton', grad_out.double())
    assert not calls


def _vim_pair(**kwargs):
    from mmlocalmamba.models import LocalVim
    torch.manual_seed(0)
    ref = LocalVim(scan_backend='torch', drop_path_rate=0., **kwargs)
    with torch.no_grad():  # non-trivial norms, so that every affine path carries signal
        for name, p in ref.named_parameters():
            if 'norm' in name:
                p.add_(0.1 * torch.randn_like(p))
    fused = copy.deepcopy(ref)
    fused.set_scan_backend('triton')
    return ref.cuda(), fused.cuda()


@gpu
@pytest.mark.parametrize('arch,size', [('tiny', (224, 224)), ('tiny', (160, 208)),
                                       ('tiny_middle_cls', (224, 224)),
                                       ('tiny_middle_cls', (176, 144))])
def test_fused_local_vim_backbone_matches_torch_path_fp32(arch, size):
    ref, fused = _vim_pair(arch=arch, out_indices=(4, 9, 19))
    assert_backbones_agree(ref, fused, torch.randn(2, 3, *size, device='cuda'))


@gpu
def test_fused_local_vim_backbone_under_bf16_autocast():
    """A training step's values under bf16 autocast: outputs, input and parameter gradients of
    the fused path against the 'torch' path under the same autocast."""
    ref, fused = _vim_pair(arch='tiny', out_indices=(4, 19))
    x = torch.randn(2, 3, 224, 224, device='cuda')
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        outs_r, outs_f = ref(xr), fused(xf)
        weights = [torch.randn_like(o) for o in outs_r]
        losses = [sum((o.float() * w).sum() for o, w in zip(outs, weights))
                  for outs in (outs_r, outs_f)]
    for o_r, o_f in zip(outs_r, outs_f):
        assert o_f.dtype == o_r.dtype and torch.isfinite(o_f).all()
        assert max_rel(o_f.float(), o_r.float()) < 5e-2
    for loss in losses:
        loss.backward()
    assert rel_l2(xf.grad, xr.grad) < 5e-2
    grads_r = torch.cat([p.grad.flatten() for p in ref.parameters() if p.grad is not None])
    grads_f = torch.cat([p.grad.flatten() for p in fused.parameters() if p.grad is not None])
    assert rel_l2(grads_f, grads_r) < 5e-2
