"""One FLOP count: mmengine's counter with the handles of the mmlocalmamba operators.

``mmengine.analysis.get_model_complexity_info`` (what mmdet's and mmseg's ``get_flops.py``
call), :func:`mmlocalmamba.utils.flops.count_flops` and ``tools/get_flops.py`` must all give the
same numbers, and the handles must count what the rules say. The reference numbers at 224x224
are checked in ``test_local_vmamba.py`` / ``test_local_vim.py``.
"""
import warnings

import pytest
import torch
import torch.nn as nn
from mmengine.analysis import ActivationAnalyzer, FlopAnalyzer, get_model_complexity_info

from mmlocalmamba.models import LocalVim, LocalVimClassifier, LocalVMamba, LocalVMambaClassifier
from mmlocalmamba.models.layers import MultiScan
from mmlocalmamba.utils import flops as flops_module
from mmlocalmamba.utils.flops import count_flops


def _complexity(model, shape):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        return get_model_complexity_info(model.eval(), input_shape=shape, show_table=False,
                                         show_arch=False)


def test_mmengine_gives_the_paper_number_for_localvmamba_t():
    info = _complexity(LocalVMambaClassifier('tiny'), (3, 224, 224))
    assert abs(info['flops'] / 1e9 - 5.729) < 5e-4  # paper: 5.7 G; official VSSM.flops()


@pytest.mark.parametrize('model,shape', [
    (LocalVMambaClassifier(dict(dims=16, depths=[1, 1, 2, 1]), num_classes=7), (3, 64, 96)),
    (LocalVMamba(dict(dims=16, depths=[1, 1], directions=None), out_indices=(0, 1)), (3, 60, 44)),
    (LocalVimClassifier(dict(embed_dim=32, depth=2, if_rope=False, if_rope_residual=False,
                             middle_cls_token=True), img_size=64), (3, 80, 112)),
    (LocalVim(dict(embed_dim=32, depth=2), out_indices=(0, 1)), (3, 48, 64)),
], ids=['localvmamba_cls', 'localvmamba_supernet', 'localvim_middle_cls', 'localvim'])
def test_mmengine_and_count_flops_agree(model, shape):
    info = _complexity(model, shape)
    counts = count_flops(model, (1, ) + shape)
    assert info['flops'] == counts['total'] > 0
    # every LocalMamba operator in the trace has a handle
    for analyzer_cls in (FlopAnalyzer, ActivationAnalyzer):
        analyzer = analyzer_cls(model, (torch.zeros((1, ) + shape), ))
        analyzer.unsupported_ops_warnings(False)
        assert analyzer.total() > 0
        assert not [op for op in analyzer.unsupported_ops() if op.startswith('mmlocalmamba::')]
    assert ('local_scan' in counts) == isinstance(model, LocalVMamba)
    assert ('vim_scan' in counts) == isinstance(model, LocalVim)


def test_local_scan_handle_counts_the_official_rule():
    # one SS2D layer: C = 16, Di = 32, N = 16, R = 1; directions h and w7 on an 8 x 12 map, where
    # w7 pads to 14 x 14 = 196 tokens, the common length L
    model = LocalVMamba(dict(dims=[16], depths=[1], directions=[['h', 'w7']]), patch_size=1,
                        out_indices=(0, ))
    counts = count_flops(model, (2, 3, 8, 12))
    batch, k, length, di, n, r = 2, 2, 196, 32, 16, 1
    expected = (batch * k * length * di * (r + 2 * n) + batch * k * length * r * di +
                9 * batch * length * k * di * n + batch * k * di * length)
    assert counts['local_scan'] == expected


def test_vim_scan_handle_counts_every_direction_with_its_length():
    # C = 16, Di = 32, N = 16, R = 1, d_conv 4; a 3 x 5 grid with a middle class token:
    # h has 15 + 1 tokens, w2 pads to 4 x 6 = 24 (+ 1)
    model = LocalVimClassifier(dict(embed_dim=16, depth=1, directions=[['h', 'w2']],
                                    if_rope=False, if_rope_residual=False,
                                    middle_cls_token=True), img_size=48, patch_size=16)
    counts = count_flops(model, (1, 3, 48, 80))
    di, n, r, dc = 32, 16, 1, 4
    expected = sum(di * (length + dc - 1) * dc + length * di * (r + 2 * n) + length * r * di +
                   9 * length * di * n + di * length for length in (16, 25))
    assert counts['vim_scan'] == expected


class _FusedMerge(nn.Module):
    """The merge as the fused operator that CUDA models record (here on its CPU reference)."""

    def __init__(self, merge: MultiScan, norm: nn.LayerNorm):
        super().__init__()
        self.merge, self.norm = merge, norm

    def forward(self, ys):
        attn = self.merge.attn
        return torch.ops.mmlocalmamba.scattn_merge(
            ys, attn.norm.weight, attn.norm.bias, attn.norm.eps, attn.global_reduce.weight,
            attn.global_reduce.bias, attn.channel_select.weight, attn.channel_select.bias,
            self.norm.weight, self.norm.bias, self.norm.eps, None, 'torch')[0]


class _ModuleMerge(_FusedMerge):

    def forward(self, ys):
        return self.merge.merge_norm(ys, self.norm, backend='torch')


def test_fused_merge_counts_like_the_pytorch_merge():
    merge, norm = MultiScan(('h', 'v', 'w2', 'w7'), 64), nn.LayerNorm(64)
    ys = torch.randn(2, 4, 30, 64)
    fused = count_flops(_FusedMerge(merge, norm), inputs=ys)
    modules = count_flops(_ModuleMerge(merge, norm), inputs=ys)
    assert list(fused) == ['scattn_merge', 'total']
    assert fused['total'] == modules['total'] > 0


def test_count_flops_warns_without_custom_ops(monkeypatch):
    monkeypatch.setattr(flops_module, 'HAS_CUSTOM_OPS', False)
    with pytest.warns(UserWarning, match='not counted'):
        count_flops(nn.Linear(4, 2), (3, 4))
