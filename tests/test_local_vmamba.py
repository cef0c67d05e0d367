"""LocalVMamba against the official reference: manifests, golden fixtures, behaviour."""
import json
import os.path as osp
import warnings

import pytest
import torch

from mmlocalmamba.models.compat import MM_LocalVSSM
from mmlocalmamba.models.local_vmamba import LocalVMamba, LocalVMambaClassifier

from .conftest import check_golden_float64, max_rel, reference_path

TINY_ARCH = dict(dims=16, depths=[1, 1, 1, 1])


def manifest(name):
    with open(reference_path('manifests', f'{name}.json')) as f:
        return json.load(f)


def assert_manifest(model, name):
    ref = manifest(name)
    expected = [(k, v['shape']) for k, v in ref['state_dict'].items()]
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == ref['num_parameters']


@pytest.mark.parametrize('arch,name', [('tiny', 'local_vssm_tiny'), ('small', 'local_vssm_small'),
                                       ('tiny_search', 'local_vssm_tiny_search')])
def test_classifier_manifest(arch, name):
    assert_manifest(LocalVMambaClassifier(arch), name)


@pytest.mark.parametrize('arch,size', [('tiny', 't'), ('small', 's')])
def test_backbone_manifest_and_params(arch, size):
    name = f'backbone_det_mask_rcnn_local_vssm_{"tiny" if size == "t" else "small"}'
    assert_manifest(LocalVMamba(arch), name)


@pytest.mark.parametrize('name', [
    'backbone_det_mask_rcnn_local_vssm_tiny', 'backbone_det_mask_rcnn_local_vssm_small',
    'backbone_seg_upernet_local_vssm_tiny', 'backbone_seg_upernet_local_vssm_small'
])
def test_official_config_dicts_build_through_alias(name):
    kwargs = dict(manifest(name)['constructor_kwargs'])
    kwargs['pretrained'] = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = MM_LocalVSSM(**kwargs)
    assert_manifest(model, name)
    assert model.official_v_reverse
    messages = [str(w.message) for w in caught]
    leftovers = [m for m in messages if 'ignoring keyword arguments inherited from Swin' in m]
    assert len(leftovers) == 1 and "'embed_dims'" in leftovers[0] and "'num_heads'" in leftovers[0]
    # the inherited Swin init_cfg is never kept
    assert model.init_cfg is None
    assert any('not loading init_cfg' in m for m in messages)


def test_alias_drop_path_from_official_configs():
    kwargs = dict(manifest('backbone_seg_upernet_local_vssm_tiny')['constructor_kwargs'])
    kwargs['pretrained'] = None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = MM_LocalVSSM(**kwargs)
    last = model.layers[-1].blocks[-1].drop_path
    assert abs(last.drop_prob - 0.1) < 1e-7


def load_golden(name):
    return torch.load(reference_path('golden', f'{name}.pt'), weights_only=True)


def build_golden_model(golden):
    cfg = dict(golden['config'])
    if golden['class'] == 'VSSM':
        model = LocalVMambaClassifier(
            arch=dict(dims=cfg['dims'], depths=cfg['depths'], directions=cfg['directions']),
            num_classes=cfg['num_classes'], drop_path_rate=cfg['drop_path_rate'],
            official_v_reverse=True)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model = MM_LocalVSSM(**cfg)
    model.load_state_dict(golden['state_dict'])
    return model.eval()


def as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def run_golden(model, x):
    """The outputs of a LocalVMamba golden: the backbone maps or the logits, as a list."""
    return as_list(model(x))


GOLDEN_CASES = [('local_vssm_backbone', 0), ('local_vssm_backbone', 1), ('local_vssm_cls', 0),
                ('local_vssm_search_supernet', 0)]


@pytest.mark.parametrize('name,case', GOLDEN_CASES)
def test_golden_float64_outputs_and_gradients(name, case):
    golden = load_golden(name)
    model = build_golden_model(golden).double()
    assert 'input' in golden['cases'][case]['grads']
    check_golden_float64(run_golden, model, golden['cases'][case])


@pytest.mark.parametrize('name,case', GOLDEN_CASES)
def test_golden_float32_outputs(name, case):
    golden = load_golden(name)
    model = build_golden_model(golden)
    data = golden['cases'][case]
    with torch.no_grad():
        outs = as_list(model(data['input']))
    for out, ref in zip(outs, data['outputs']):
        assert out.dtype == torch.float32
        assert max_rel(out, ref) <= 1e-4


def test_fixed_v_reverse_differs_only_on_non_square_maps():
    golden = load_golden('local_vssm_backbone')
    model = build_golden_model(golden)
    fixed = build_golden_model(golden)
    for m in fixed.modules():
        if hasattr(m, 'official_v_reverse'):
            m.official_v_reverse = False
    with torch.no_grad():
        square = torch.randn(1, 3, 64, 64)
        for a, b in zip(model(square), fixed(square)):
            assert torch.allclose(a, b, atol=1e-6)
        nonsquare = golden['cases'][1]['input']
        diffs = [(a - b).abs().max().item() for a, b in zip(model(nonsquare), fixed(nonsquare))]
    assert max(diffs) > 1e-3


def test_fixed_v_reverse_is_equivariant_to_transpose():
    """With the true inverse, a v-only model sees a transposed image as an h-only model sees it."""
    torch.manual_seed(0)
    arch_v = dict(dims=8, depths=[1], directions=[['v']])
    arch_h = dict(dims=8, depths=[1], directions=[['h']])
    mv = LocalVMamba(arch_v, out_indices=(0, ), drop_path_rate=0.).eval()
    mh = LocalVMamba(arch_h, out_indices=(0, ), drop_path_rate=0.).eval()
    mh.load_state_dict(mv.state_dict())
    # transposing the image needs the patch-embed kernel transposed too
    with torch.no_grad():
        mh.patch_embed[0].weight.copy_(mv.patch_embed[0].weight.transpose(2, 3))
        mh.layers[0].blocks[0].op.conv2d.weight.copy_(
            mv.layers[0].blocks[0].op.conv2d.weight.transpose(2, 3))
        x = torch.randn(1, 3, 20, 36)
        out_v = mv(x)[0]
        out_h = mh(x.transpose(2, 3))[0]
    assert torch.allclose(out_v, out_h.transpose(2, 3), atol=1e-5)


def test_output_shapes_for_odd_sizes_and_out_indices():
    model = LocalVMamba(dict(TINY_ARCH, directions=[['h', 'w7'], ['v_flip', 'w2_flip'],
                                                     ['w3', 'h_flip'], ['v', 'w5']]),
                        out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 37, 53))  # patch grid 9x13 -> 5x7 -> 3x4 -> 2x2
    assert [tuple(o.shape) for o in outs] == [(2, 32, 5, 7), (2, 128, 2, 2)]
    assert not hasattr(model, 'outnorm0') and hasattr(model, 'outnorm3')


def test_dims_int_expands_and_default_directions():
    model = LocalVMamba(dict(dims=8, depths=[1, 2]), out_indices=(0, 1))
    assert model.dims == [8, 16]
    assert model.layer_directions == [('h', 'h_flip', 'v', 'v_flip')] * 3


def test_frozen_stages_and_train_mode():
    model = LocalVMamba(TINY_ARCH, frozen_stages=2)
    model.train()
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.layers[1].parameters())
    assert not any(p.requires_grad for p in model.outnorm1.parameters())
    assert all(p.requires_grad for p in model.layers[2].parameters())
    assert not model.layers[0].training and model.layers[2].training


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    model = LocalVMamba(TINY_ARCH, drop_path_rate=0.)
    model_cp = LocalVMamba(TINY_ARCH, drop_path_rate=0., with_cp=True)
    model_cp.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 32, 48)
    sum(o.sum() for o in model(x)).backward()
    sum(o.sum() for o in model_cp(x)).backward()
    for (name, p), q in zip(model.named_parameters(), model_cp.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_drop_path_rate_is_linear_over_blocks():
    model = LocalVMamba(dict(dims=8, depths=[2, 2, 1]), drop_path_rate=0.4, out_indices=(2, ))
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for layer in model.layers
             for b in layer.blocks]
    assert rates == pytest.approx([0., 0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), "Unknown LocalVMamba arch 'huge'; valid presets"),
    (dict(arch=dict(dims=8, depths=[1], heads=2)), r"Unknown LocalVMamba arch keys \['heads'\]"),
    (dict(arch=dict(dims=8, depths=[1, 1], directions=[['h']]), out_indices=(0, )),
     'expected 2 lists, got 1'),
    (dict(arch=dict(dims=8, depths=[1], directions=[['h', 'zigzag']]), out_indices=(0, )),
     "Unknown scan direction 'zigzag'"),
    (dict(arch=dict(dims=[8, 16], depths=[1])), 'same length'),
    (dict(arch=TINY_ARCH, out_indices=(4, )), r'out_indices \[4\] must be within'),
    (dict(arch=TINY_ARCH, scan_backend='cuda'), "Unknown scan_backend 'cuda'"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalVMamba(**kwargs)


def test_alias_rejects_unknown_keys_and_requires_directions():
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['colour'\]"):
        MM_LocalVSSM(dims=8, depths=[1, 1, 1, 1], directions=None, colour='red')
    with pytest.raises(TypeError, match='requires "directions"'):
        MM_LocalVSSM(dims=8, depths=[1, 1, 1, 1])


def test_alias_pretrained_becomes_init_cfg():
    with pytest.warns(DeprecationWarning, match='pretrained=...'):
        model = MM_LocalVSSM(dims=8, depths=[1, 1, 1, 1], directions=None, pretrained='x.pth')
    assert model.init_cfg == dict(type='Pretrained', checkpoint='x.pth')


def test_bfloat16_autocast_forward_is_close():
    model = LocalVMamba(TINY_ARCH).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    for a, b in zip(out, ref):
        assert torch.isfinite(a).all()
        assert max_rel(a.float(), b) < 0.1


@pytest.mark.parametrize('arch,name', [('tiny', 'local_vssm_tiny'), ('small', 'local_vssm_small')])
def test_flops_match_official_count(arch, name):
    from mmlocalmamba.utils.flops import count_flops
    with open(reference_path('complexity.json')) as f:
        ref = json.load(f)[name]['GFLOPs_official_method']
    flops = count_flops(LocalVMambaClassifier(arch))['total'] / 1e9
    assert abs(flops - ref) < 5e-4


def test_get_flops_tool_prints_params_and_flops(capsys):
    import runpy
    import sys
    argv = sys.argv
    sys.argv = ['get_flops.py', 'local_vssm_tiny']
    try:
        runpy.run_path(osp.join(osp.dirname(__file__), '..', 'tools', 'get_flops.py'),
                       run_name='__main__')
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert 'params: 25,527,160 (25.53 M)' in out and 'FLOPs:  5.729 G' in out


def test_set_scan_backend_switches_every_layer():
    model = LocalVMamba(TINY_ARCH, scan_backend='auto')
    model.set_scan_backend('torch')
    assert model.scan_backend == 'torch'
    assert {m.scan_backend for m in model.modules() if hasattr(m, 'scan_backend')
            and not isinstance(m, LocalVMamba)} == {'torch'}
    with pytest.raises(ValueError, match="Unknown scan_backend 'gpu'"):
        model.set_scan_backend('gpu')


def test_merge_norm_falls_back_to_pytorch_on_cpu():
    """The Triton backend is only a permission: on CPU tensors the PyTorch merge runs."""
    from mmlocalmamba.models.layers import MultiScan
    torch.manual_seed(0)
    ms = MultiScan(('h', 'v', 'w2'), 16)
    norm = torch.nn.LayerNorm(16)
    ys = torch.randn(2, 3, 10, 16)
    torch.testing.assert_close(ms.merge_norm(ys, norm, backend='triton'), norm(ms.merge(ys)),
                               rtol=0, atol=0)
