"""Parity of the fused LocalVim layer scan (``mmlocalmamba.ops.triton.vim``) with the reference.

CPU: the kernel tables, and the kernels themselves through Triton's interpreter
(``TRITON_INTERPRET=1``) on tiny problems against the float64 reference, forward and every
gradient: window padding, a middle class token, an odd grid, K = 4 mixed directions, the
official ``v`` reverse, low-rank and full delta, sequence segments, batch groups and other
tiles.
"""
import textwrap

import pytest
import torch

from mmlocalmamba.ops import vim_scan as vim_scan_module
from mmlocalmamba.ops.scan_orders import stacked_tables, vim_kernel_tables
from mmlocalmamba.ops.triton.vim import vim_projection_weight, vim_scan_triton
from mmlocalmamba.ops.vim_scan import vim_gather_index, vim_inverse_index

from .conftest import cpu_only, run_in_triton_interpreter

MIXED = ('h', 'v_flip', 'w2', 'w3_flip')


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
    from tests.test_triton_vim import make_vim_layer
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
    script = INTERPRETER_SCRIPT.format(grid=INTERPRETER_CASES[case])
    assert run_in_triton_interpreter(script, timeout=1200) < 1e-5
