"""A new image size or batch launches the Triton kernel variants an earlier size compiled, for
LocalVMamba and LocalVim layers (issue: "a new input height or width triggers no new Triton
compilation").

The variants are recorded without a GPU: Triton is given a stand-in driver for sm_90 and every
launch of the package's kernels is recorded and skipped (``record_variants``), in a fresh
process. A specialised integer whose value changes with the size (a length, or a stride that
is a multiple of one, whose divisibility by 16 then changes) shows as a second variant. On the
H200 the x_dbl strides did so (rows of 40 values): a LocalVim call at 1x40x45 compiled a new
forward variant after 2x48x80. The x_dbl rows are now padded to a multiple of 16 values
(``scan.ROW_ALIGN``); the layers here have rows of 40 (4 x (2 + 8), and 32 + 8) padded to 48.
"""
import inspect
import json
import subprocess
import sys
import textwrap

import pytest

from .conftest import cpu_only, run_in_triton_interpreter

triton = pytest.importorskip('triton')

_SCRIPT = textwrap.dedent('''
    import json, sys, torch
    from mmlocalmamba.ops.triton.compile_worker import stand_in_driver
    stand_in_driver(('cuda', 90, 32), torch.device('cpu'))
    torch.Tensor.is_cuda = property(lambda self: True)
    from mmlocalmamba.ops.scan_orders import kernel_tables, vim_kernel_tables
    from mmlocalmamba.ops.triton.precompile import record_variants
    from mmlocalmamba.ops.triton.scan import local_selective_scan_triton
    from mmlocalmamba.ops.triton.vim import vim_scan_triton

    def grads(*tensors):
        return [t.requires_grad_() for t in tensors]

    def vmamba(batch, height, width, dim=96, nstate=1, rank=6, k=4):
        # channels-last input, as the depth-wise conv gives it; x_dbl rows of 4 * (2 + 8) values
        x, = grads(torch.randn(batch, height, width, dim, dtype=torch.bfloat16))
        w, dt_w, bias, a_log, d = grads(
            torch.randn(k, rank + 2 * nstate, dim, dtype=torch.bfloat16),
            torch.randn(k, dim, rank, dtype=torch.bfloat16), torch.randn(k, dim),
            torch.randn(k * dim, nstate), torch.randn(k * dim))
        tables = kernel_tables(height, width, ('h', 'v_flip', 'w2', 'w7_flip'))
        y = local_selective_scan_triton(x.permute(0, 3, 1, 2), w, dt_w, bias, a_log, d, tables)
        y.float().sum().backward()

    def vim(batch, height, width, k=4, dim=64, nstate=16, rank=2, cls_pos=None):
        # x_dbl rows of 2 + 32 values
        tokens = height * width + (cls_pos is not None)
        xz, = grads(torch.randn(batch, tokens, 2 * dim, dtype=torch.bfloat16))
        params = grads(torch.randn(k, dim, 4), torch.randn(k, dim),
                       torch.randn(k, rank + 2 * nstate, dim), torch.randn(k, dim, rank),
                       torch.randn(k, dim), torch.randn(k, dim, nstate), torch.randn(k, dim))
        tables = vim_kernel_tables(height, width, ('h', 'v_flip', 'w2', 'w7_flip'),
                                   cls_pos=cls_pos)
        out = vim_scan_triton(xz.transpose(1, 2), *params, tables, torch.bfloat16)
        out.float().sum().backward()

    run = dict(vmamba=vmamba, vim=vim)[sys.argv[1]]
    result = {}
    for size in json.loads(sys.argv[2]):
        with record_variants() as recorded:
            run(*size)
        result[str(size)] = sorted(json.loads(spec)['key'] for _, _, spec in recorded)
    print('RESULT' + json.dumps(result))
''')

#: batch, height, width: other token and window-padded step counts (odd and even, and by 4), the
#: other batch size; all long enough that the scans run in segments (the segment passes are
#: variants of their own).
_SIZES = [(2, 24, 40), (2, 25, 41), (1, 23, 37), (2, 30, 40), (2, 29, 47)]


@pytest.mark.parametrize('family', ['vmamba', 'vim'])
def test_new_sizes_and_batches_launch_no_new_variant(family):
    proc = subprocess.run([sys.executable, '-c', _SCRIPT, family, json.dumps(_SIZES)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith('RESULT')][-1]
    variants = json.loads(line[len('RESULT'):])
    first = next(iter(variants.values()))
    assert first
    for size, keys in variants.items():
        new = sorted(set(keys) - set(first))
        assert not new, (size, new)


def test_rows_are_padded_only_where_they_need_it():
    """x_dbl rows of a multiple of 16 values are left as they are (the released models': their
    kernels and variants are unchanged by the padding); others gain zero columns."""
    import torch

    from mmlocalmamba.ops.triton.scan import _dbl_width, projection_weight
    from mmlocalmamba.ops.triton.vim import _row_width
    # LocalVMamba-T / S stages (K = 4, N = 16, R = 6, 12, 24, 48) and LocalVim-T / S (R = 12, 24)
    assert [_dbl_width(4, 16, r) for r in (6, 12, 24, 48)] == [160, 192, 256, 384]
    assert [_row_width(16, r) for r in (12, 24)] == [48, 64]
    assert _dbl_width(4, 1, 6) == 48 and _dbl_width(3, 16, 6) == 128 and _row_width(16, 8) == 48
    xpw = torch.randn(3, 6 + 2, 5, dtype=torch.float64)  # K = 3, N = 1, R = 6: 30 -> 32 rows
    w = projection_weight(xpw, 1)
    assert w.shape == (32, 5) and not w[30:].any()
    assert torch.equal(w[:3], xpw[:, 6:7, :].reshape(3, 5))


@cpu_only
def test_padded_rows_in_triton_interpreter():
    """The kernels with padded x_dbl rows, forward and gradients against float64 (Triton's
    interpreter): LocalVMamba with N = 1 (rows of 3 x (2 + 8) = 30 values, padded to 32), low
    rank, segments and full delta, through the launcher as the model calls it; LocalVim with
    N = 8 (16 + 8 = 24, padded to 32), a class token, low rank and full delta. The other
    interpreter tests have rows of a multiple of 16 (no padding)."""
    from . import test_triton_scan as tscan
    from . import test_triton_vim as tvim
    setup = tscan._INTERPRETER_SETUP.replace('B, D, H, W, N, R = 1, 6, 3, 5, 4, 2',
                                             'B, D, H, W, N, R = 1, 6, 3, 5, 1, 2')
    assert setup != tscan._INTERPRETER_SETUP
    scan = textwrap.dedent(setup + '''
    assert ts.projection_weight(xw, N).shape[0] == 32
''' + tscan.LAUNCHER_LOOP + '''
    print('MAXERR', max(errs))
''')
    assert run_in_triton_interpreter(scan, timeout=1200) < 1e-5
    vim = tvim.INTERPRETER_SCRIPT.replace('rank=2, nstate=4', 'rank=2, nstate=8')
    assert vim != tvim.INTERPRETER_SCRIPT
    cases = (3, 5, ('h', 'v_flip', 'w2', 'w3_flip'), [
        (2, 7, False, True, 'VimConfig()'),
        (1, None, True, True, 'VimConfig(scan=ScanConfig(lowrank_max=0))')])
    script = vim.format(grid=cases, helper=inspect.getsource(tvim.make_vim_layer))
    assert run_in_triton_interpreter(script, timeout=1200) < 1e-5
