"""LocalVim: official layouts (manifests), golden fixtures, position-embedding resize, alias."""
import json
import warnings

import pytest
import torch
from mmengine.registry import MODELS

import mmlocalmamba  # noqa: F401  (registers the models)
from mmlocalmamba.models import LocalVim, LocalVimClassifier, MM_LocalVim
from mmlocalmamba.models.local_vim import LOCAL_VIM_ARCHS
from mmlocalmamba.ops.pos_embed import resize_grid_embed
from mmlocalmamba.utils.checkpoint import load_pretrained

from .conftest import check_golden_float64, max_rel, reference_path

SMALL_DIRS = [['h', 'v_flip', 'w7', 'w7_flip'], ['h_flip', 'v', 'w2', 'w2_flip']]


def _manifest(name):
    with open(reference_path('manifests', f'{name}.json')) as f:
        return json.load(f)


def _layout(model):
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def _ref_layout(manifest):
    return [(k, v['shape']) for k, v in manifest['state_dict'].items()]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- manifests
@pytest.mark.parametrize('name,arch', [('local_vim_tiny', 'tiny'), ('local_vim_small', 'small'),
                                       ('local_vim_tiny_middle_cls_token', 'tiny_middle_cls'),
                                       ('local_vim_tiny_search', 'tiny_search')])
def test_classifier_manifest(name, arch):
    manifest = _manifest(name)
    with torch.device('meta'):
        model = LocalVimClassifier(arch)
    assert _layout(model) == _ref_layout(manifest)
    assert sum(p.numel() for p in model.parameters()) == manifest['num_parameters']
    assert sorted(n for n, _ in model.named_buffers()) == sorted(
        manifest['buffers_in_state_dict'])


def test_small_searched_has_small_shapes_and_searched_directions():
    with torch.device('meta'):
        searched = LocalVimClassifier('small_searched')
    assert _layout(searched) == _ref_layout(_manifest('local_vim_small'))
    assert searched.layer_directions[0] == ('h', 'v_flip', 'w7', 'w7_flip')
    assert LOCAL_VIM_ARCHS['small']['directions'] == [['h', 'h_flip', 'w2', 'w2_flip']] * 20
    assert LOCAL_VIM_ARCHS['small_searched']['directions'] == LOCAL_VIM_ARCHS['tiny'][
        'directions']


@pytest.mark.parametrize('name', [
    'backbone_seg_upernet_local_vim_tiny', 'backbone_seg_upernet_local_vim_small',
    'backbone_det_vitdet_local_vim_tiny', 'backbone_det_vitdet_local_vim_small'
])
def test_alias_manifest(name):
    manifest = _manifest(name)
    with torch.device('meta'):
        model = _quiet(MM_LocalVim, **manifest['constructor_kwargs'])
    assert _layout(model) == _ref_layout(manifest)
    assert sum(p.numel() for p in model.parameters()) == manifest['num_parameters']
    assert isinstance(model.layers[0].norm, torch.nn.LayerNorm)  # as the official configs build


def test_presets_use_rmsnorm_like_the_checkpoints():
    # The released ImageNet models have weight-only block norms (RMSNorm) ...
    cls_keys = _manifest('local_vim_tiny')['state_dict']
    assert 'layers.0.norm.weight' in cls_keys and 'layers.0.norm.bias' not in cls_keys
    # ... and the native backbone presets follow them: the seg layout minus the norm biases.
    seg = _manifest('backbone_seg_upernet_local_vim_tiny')
    with torch.device('meta'):
        model = LocalVim('tiny', img_size=512, out_indices=(4, 9, 14, 19))
    block_norm_bias = [f'layers.{i}.norm.bias' for i in range(20)]
    expected = [(k, s) for k, s in _ref_layout(seg) if k not in block_norm_bias]
    assert _layout(model) == expected
    assert isinstance(model.layers[0].norm, torch.nn.RMSNorm)


# --------------------------------------------------------------------------- goldens
def _build_golden(fixture, official_v_reverse=True):
    cfg = fixture['config']
    arch = dict(
        embed_dim=cfg['embed_dim'],
        depth=cfg['depth'],
        directions=cfg['directions'],
        rms_norm=cfg['rms_norm'],
        fused_add_norm=cfg['fused_add_norm'],
        if_rope=cfg['if_rope'],
        if_rope_residual=cfg['if_rope_residual'],
        middle_cls_token=cfg.get('use_middle_cls_token', False))
    kwargs = dict(arch=arch, img_size=cfg['img_size'], patch_size=cfg['patch_size'],
                  drop_path_rate=cfg['drop_path_rate'], official_v_reverse=official_v_reverse,
                  scan_backend='torch')
    if fixture['class'] == 'VisionMamba':
        model = LocalVimClassifier(num_classes=cfg['num_classes'], **kwargs)
    else:
        model = LocalVim(out_indices=cfg['out_indices'], **kwargs)
    state = fixture['state_dict']
    assert list(model.state_dict()) == list(state)
    model.load_state_dict(state)
    return model.eval()


def _run_golden(model, fixture, x):
    if fixture['forward'] == 'vim_features':
        num = len(fixture['cases'][0]['outputs']) - 1
        return list(model.forward_features(x, list(range(num)))) + [model(x)]
    return list(model(x))


_GOLDENS = {
    'local_vim_backbone': 2,
    'local_vim_cls': 1,
    'local_vim_middle_cls': 1,
    'local_vim_search_supernet': 1
}


@pytest.mark.parametrize('name', sorted(_GOLDENS))
def test_golden(name):
    fixture = torch.load(reference_path('golden', f'{name}.pt'), weights_only=True)
    assert len(fixture['cases']) == _GOLDENS[name]
    model = _build_golden(fixture)
    for case in fixture['cases']:
        with torch.no_grad():
            outs = _run_golden(model, fixture, case['input'])
        for out, ref in zip(outs, case['outputs'], strict=True):
            assert out.dtype == torch.float32 and out.shape == ref.shape
            assert max_rel(out.double(), ref) <= 1e-4
    model.double()
    for case in fixture['cases']:
        check_golden_float64(lambda m, x: _run_golden(m, fixture, x), model, case)


def test_golden_backbone_v_reverse_policy():
    """The corrected v reverse agrees with the official one on square grids only."""
    fixture = torch.load(reference_path('golden', 'local_vim_backbone.pt'), weights_only=True)
    model = _build_golden(fixture, official_v_reverse=False)
    square, non_square = fixture['cases']
    with torch.no_grad():
        outs = model(square['input'])
        assert max(max_rel(o.double(), r) for o, r in zip(outs, square['outputs'])) <= 1e-4
        outs = model(non_square['input'])
        assert max(max_rel(o.double(), r) for o, r in zip(outs, non_square['outputs'])) > 1e-2


# --------------------------------------------------------------------------- position embedding
def _small_arch(**kw):
    return dict(dict(embed_dim=32, depth=2, directions=SMALL_DIRS), **kw)


@pytest.mark.parametrize('size,grid', [((512, 512), (32, 32)), ((800, 1344), (50, 84))])
def test_224_model_runs_at_other_sizes(size, grid):
    model = LocalVim(_small_arch(), img_size=224, out_indices=(0, 1), scan_backend='torch').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert [tuple(o.shape) for o in outs] == [(1, 32, *grid)] * 2
    assert all(torch.isfinite(o).all() for o in outs)


def test_patch_embed_pads_to_the_patch_grid():
    model = LocalVim(_small_arch(), img_size=224, out_indices=-1)
    tokens, grid = model.patch_embed(torch.randn(1, 3, 800, 1333))
    assert grid == (50, 84) and tokens.shape == (1, 50 * 84, 32)


def test_middle_cls_backbone_at_other_size():
    model = LocalVim(_small_arch(if_rope=False, middle_cls_token=True), img_size=64,
                     out_indices=-1, scan_backend='torch').eval()
    with torch.no_grad():
        out, = model(torch.randn(2, 3, 48, 80))
    assert out.shape == (2, 32, 3, 5)


def test_224_checkpoint_loads_into_512_model(tmp_path):
    src = LocalVimClassifier(_small_arch(), num_classes=5, img_size=224, scan_backend='torch')
    ckpt = tmp_path / 'vim_224.ckpt'
    torch.save({'state_dict': src.state_dict()}, ckpt)
    model = LocalVim(_small_arch(), img_size=512, out_indices=(0, 1), scan_backend='torch',
                     init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))
    model.init_weights()
    expected = resize_grid_embed(src.pos_embed.detach(), (14, 14), (32, 32))
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    torch.testing.assert_close(model.rope.freqs_cos,
                               resize_grid_embed(src.rope.freqs_cos, (14, 14), (32, 32)))
    assert model.pos_embed.shape == (1, 1024, 32)
    # The 224 model resized on the fly at 512 computes the same thing as the converted model.
    native = LocalVim(_small_arch(), img_size=224, out_indices=(0, 1), scan_backend='torch')
    _quiet(load_pretrained, native, str(ckpt))
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), native.eval()(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_middle_cls_checkpoint_resize(tmp_path):
    arch = _small_arch(if_rope=False, middle_cls_token=True)
    src = LocalVimClassifier(arch, num_classes=3, img_size=112)
    model = LocalVim(arch, img_size=160, out_indices=-1)
    load_pretrained(model, {'state_dict': src.state_dict()})
    pos = model.pos_embed.detach()
    assert pos.shape == (1, 101, 32)
    torch.testing.assert_close(pos[:, 50], src.pos_embed.detach()[:, 24])
    torch.testing.assert_close(model.cls_token, src.cls_token)


# --------------------------------------------------------------------------- norm mismatch
def _rms_checkpoint():
    return {'state_dict': LocalVimClassifier(_small_arch(), num_classes=3).state_dict()}


def test_norm_mismatch_warns_loudly():
    model = LocalVim(_small_arch(rms_norm=False), out_indices=-1)
    with pytest.warns(UserWarning, match='NORM TYPE MISMATCH'):
        result = load_pretrained(model, _rms_checkpoint())
    assert 'layers.0.norm.bias' in result['missing']


def test_no_norm_warning_when_types_agree():
    model = LocalVim(_small_arch(), out_indices=-1)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        result = load_pretrained(model, _rms_checkpoint())
    assert result['missing'] == [] and result['unexpected'] == []


def test_localvmamba_checkpoint_refused():
    state = {'patch_embed.0.weight': torch.zeros(96, 3, 4, 4), 'layers.0.blocks.0.norm.weight':
             torch.zeros(96)}
    with pytest.raises(ValueError, match='LocalVMamba'):
        load_pretrained(LocalVim(_small_arch()), {'state_dict': state})


# --------------------------------------------------------------------------- alias & registry
def _official_dict(**overrides):
    kw = dict(_manifest('backbone_seg_upernet_local_vim_tiny')['constructor_kwargs'])
    kw.update(embed_dim=32, depth=2, directions=SMALL_DIRS, out_indices=[0, 1], img_size=(64, 64))
    kw.update(overrides)
    return kw


def test_alias_pretrained_ckpt_becomes_init_cfg():
    with pytest.warns(DeprecationWarning, match='pretrained_ckpt'):
        model = MM_LocalVim(**_official_dict())
    release = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/'
    assert model.init_cfg == dict(type='Pretrained', checkpoint=release + 'local_vim_tiny.ckpt')
    assert model.official_v_reverse and isinstance(model.layers[0].norm, torch.nn.LayerNorm)


def test_alias_drops_the_localvmamba_checkpoint_of_the_official_s_config():
    url = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_small.ckpt'
    with pytest.warns(UserWarning, match='LocalVMamba checkpoint'):
        model = MM_LocalVim(**_official_dict(pretrained_ckpt=url))
    assert model.init_cfg is None


def test_alias_ignores_leftovers_and_rejects_unknown_keys():
    with pytest.warns(UserWarning, match='ignoring'):
        model = MM_LocalVim(**_official_dict(num_heads=3, embed_dims=192, pretrained_ckpt=None))
    assert model.embed_dim == 32
    with pytest.raises(TypeError, match='unexpected keyword'):
        _quiet(MM_LocalVim, **_official_dict(foo=1))
    with pytest.raises(NotImplementedError, match='if_bidirectional'):
        _quiet(MM_LocalVim, **_official_dict(if_bidirectional=True))
    with pytest.raises(TypeError, match='directions'):
        MM_LocalVim(embed_dim=32, depth=2)


def test_alias_output_matches_native_model():
    alias = _quiet(MM_LocalVim, **_official_dict(pretrained_ckpt=None, official_v_reverse=False))
    native = LocalVim(
        _small_arch(rms_norm=False, fused_add_norm=False), img_size=64, out_indices=(0, 1))
    native.load_state_dict(alias.state_dict())
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        for a, b in zip(alias.eval()(x), native.eval()(x)):
            torch.testing.assert_close(a, b)


def test_registry_builds():
    model = MODELS.build(dict(type='LocalVim', arch=_small_arch(), out_indices=(0, 1)))
    assert isinstance(model, LocalVim)
    alias = _quiet(MODELS.build, dict(type='MM_LocalVim', **_official_dict(pretrained_ckpt=None)))
    assert isinstance(alias, MM_LocalVim)


# --------------------------------------------------------------------------- options & errors
def test_with_cp_and_frozen_stages():
    torch.manual_seed(0)
    model = LocalVim(_small_arch(), img_size=64, out_indices=(0, 1), drop_path_rate=0.)
    cp_model = LocalVim(_small_arch(), img_size=64, out_indices=(0, 1), drop_path_rate=0.,
                        with_cp=True)
    cp_model.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for m in (model, cp_model):
        sum(o.square().sum() for o in m(x)).backward()
    torch.testing.assert_close(cp_model.pos_embed.grad, model.pos_embed.grad)

    frozen = LocalVim(_small_arch(), img_size=64, out_indices=(0, 1), frozen_stages=1).train()
    assert not frozen.pos_embed.requires_grad and not frozen.patch_embed.proj.weight.requires_grad
    assert not any(p.requires_grad for p in frozen.layers[0].parameters())
    assert not frozen.outnorm_0.weight.requires_grad and frozen.outnorm_1.weight.requires_grad
    assert all(p.requires_grad for p in frozen.layers[1].parameters())
    assert not frozen.layers[0].training and frozen.layers[1].training


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(arch='huge'), ValueError, 'Unknown LocalVim arch'),
    (dict(arch=dict(embed_dim=32, depth=2, heads=3)), ValueError, 'Unknown LocalVim arch keys'),
    (dict(arch=dict(embed_dim=32)), ValueError, 'needs "embed_dim" and "depth"'),
    (dict(arch=_small_arch(middle_cls_token=True)), ValueError, 'rotary'),
    (dict(arch=_small_arch(), out_indices=(2, )), ValueError, 'out_indices'),
    (dict(arch=_small_arch(), out_indices=(1, 0)), ValueError, 'increasing'),
    (dict(arch=_small_arch(), frozen_stages=5), ValueError, 'frozen_stages'),
    (dict(arch=_small_arch(), scan_backend='cuda'), ValueError, 'scan_backend'),
    (dict(arch=dict(embed_dim=32, depth=1, directions=[['h', 'w0']])), ValueError, 'direction'),
])
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        LocalVim(**kwargs)


# --------------------------------------------------------------------------- complexity
@pytest.mark.parametrize('name,arch', [('local_vim_tiny', 'tiny'), ('local_vim_small', 'small')])
def test_flops_match_the_reference(name, arch):
    from mmlocalmamba.models.flops import local_vim_paper_flops
    from mmlocalmamba.utils.flops import count_flops
    with open(reference_path('complexity.json')) as f:
        ref = json.load(f)[name]
    model = LocalVimClassifier(arch)
    assert sum(p.numel() for p in model.parameters()) == ref['params']
    assert round(local_vim_paper_flops(model) / 1e9, 3) == ref['GFLOPs_official_method']
    full = count_flops(model, (1, 3, 224, 224))['total']
    assert round(full / 1e9, 3) == ref['GFLOPs_fvcore_all_directions_plus_scan_formula']


def test_search_supernet_with_custom_candidates():
    model = LocalVim(arch=dict(embed_dim=32, depth=2, directions=None,
                               candidates=['h', 'v_flip', 'w3']), out_indices=(1, ))
    assert model.is_search and model.layer_directions == [('h', 'v_flip', 'w3')] * 2
    out = model(torch.randn(1, 3, 64, 80))
    assert out[0].shape == (1, 32, 4, 5)
    with pytest.raises(ValueError, match='only applies to a search supernet'):
        LocalVim(arch=dict(embed_dim=32, depth=1, directions=[['h']], candidates=['h']))
