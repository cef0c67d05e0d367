"""LocalVMamba on CUDA: the fused path (Triton scan + fused SCAttn merge + channels-last conv)
against the PyTorch path on the same GPU, whole backbone, forward and backward.

Skipped without CUDA (the parts are tested on CPU in test_local_vmamba / test_triton_merge).
"""
import copy

import pytest
import torch

from mmlocalmamba.models import LocalVMamba
from mmlocalmamba.models.layers import MultiScan

from .conftest import assert_backbones_agree, gpu, max_rel



def _pair(**kwargs):
    torch.manual_seed(0)
    ref = LocalVMamba(arch='tiny', scan_backend='torch', drop_path_rate=0., **kwargs)
    # non-trivial norms and gate biases, so that every affine path carries signal
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if 'norm' in name or 'attn' in name:
                p.add_(0.1 * torch.randn_like(p))
    fused = copy.deepcopy(ref)
    fused.set_scan_backend('triton')
    return ref.cuda(), fused.cuda()


@gpu
@pytest.mark.parametrize('size', [(64, 96), (70, 45)])
def test_fused_backbone_matches_torch_path_fp32(size):
    ref, fused = _pair()
    assert_backbones_agree(ref, fused, torch.randn(2, 3, *size, device='cuda'))


@gpu
def test_fused_backbone_under_bf16_autocast():
    ref, fused = _pair()
    x = torch.randn(2, 3, 64, 64, device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        outs_r, outs_f = ref(x), fused(x)
    for o_r, o_f in zip(outs_r, outs_f):
        assert torch.isfinite(o_f).all()
        assert max_rel(o_f.float(), o_r.float()) < 5e-2


@gpu
def test_merge_norm_routes_to_triton(monkeypatch):
    """merge_norm with the Triton backend on CUDA calls the fused merge; search layers and the
    'torch' backend never do."""
    from mmlocalmamba.ops.triton import merge as triton_merge
    calls = []
    real = triton_merge.scattn_merge_triton

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(triton_merge, 'scattn_merge_triton', spy)
    norm = torch.nn.LayerNorm(16).cuda()
    ys = torch.randn(2, 3, 10, 16, device='cuda')
    plain = MultiScan(('h', 'v', 'w2'), 16).cuda()
    out = plain.merge_norm(ys, norm, backend='triton')
    assert calls == [1]
    assert max_rel(out, norm(plain.merge(ys))) < 1e-5
    plain.merge_norm(ys, norm, backend='torch')
    search = MultiScan(('h', 'v', 'w2'), 16, search=True).cuda()
    search.merge_norm(ys, norm, backend='triton')
    assert calls == [1]
