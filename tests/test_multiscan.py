"""MultiScan.merge: the K directions' SCAttn in one call (``models/layers.py``)."""
import torch

from mmlocalmamba.models.layers import MultiScan

from .conftest import rel_l2


def test_merge_gates_all_directions_in_one_call():
    """A (B, K, L, C) tensor goes through the SCAttn once, as (B*K, L, C) (a fifth of the
    kernel launches on the GPU), and equals the per-direction sum in float64, forward and
    backward; a list of K tensors takes the per-direction path."""
    torch.manual_seed(0)
    merge = MultiScan(('h', 'v', 'w2', 'w7'), 48).double()
    with torch.no_grad():
        for p in merge.parameters():
            p.normal_()
    calls = []
    merge.attn.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    ys = torch.randn(3, 4, 37, 48, dtype=torch.float64, requires_grad=True)
    out = merge.merge(ys)
    assert calls == [torch.Size([12, 37, 48])]
    ref = merge.merge(list(ys.unbind(1)))
    assert len(calls) == 5
    assert rel_l2(out, ref) < 1e-14
    params = [ys] + list(merge.parameters())
    for a, b in zip(torch.autograd.grad(out.square().sum(), params),
                    torch.autograd.grad(ref.square().sum(), params)):
        assert rel_l2(a, b) < 1e-13
