"""The classifiers as timm models: timm's model checks, pretrained loading, features, optimizers.

The first four tests carry the checks of timm's own ``tests/test_models.py``
(``test_model_default_cfgs``, ``test_model_forward``, ``test_model_backward``,
``test_model_forward_features``) for every registered name, at small input sizes. LocalVMamba is
a hierarchical model and gets timm's standard checks (unpooled NHWC maps); LocalVim is a plain,
ViT-like model and gets the checks timm applies to its plain ViTs (unpooled tokens).
"""
import argparse
import math

import numpy as np
import pytest
import timm
from timm.optim import create_optimizer_v2
import torch

import mmlocalmamba  # noqa: F401  (registers the timm names)
from mmlocalmamba.models import LocalVimClassifier, LocalVMambaClassifier
from mmlocalmamba.models.timm_models import (TIMM_MODELS, PretrainedWeightsError,
                                             checkpoint_filter_fn)

NAMES = sorted(TIMM_MODELS)
VMAMBA_NAMES = [n for n in NAMES if n.startswith('local_vssm')]
RELEASE = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/'
PUBLISHED = {
    'local_vssm_small': RELEASE + 'local_vssm_small.ckpt',
    'local_vim_tiny': RELEASE + 'local_vim_tiny.ckpt',
    'local_vim_tiny_middle_cls_token': RELEASE + 'local_vim_tiny_middle_cls_token.ckpt',
}
FWD_SIZE, BWD_SIZE, FEAT_SIZE = 64, 32, (64, 96)
# small archs for the loading tests (the published ones are 50-200 MB)
SMALL_ARCH = {
    'local_vssm_small': dict(dims=16, depths=[1, 1, 2, 1]),
    'local_vim_tiny': dict(embed_dim=32, depth=2),
    'local_vim_tiny_middle_cls_token': dict(embed_dim=32, depth=2, if_rope=False,
                                            if_rope_residual=False, middle_cls_token=True),
}


def _is_vmamba(name):
    return name in VMAMBA_NAMES


def test_every_name_is_registered_with_a_pretrained_cfg():
    assert set(timm.list_models('local_*')) == set(NAMES) and len(NAMES) == 8
    assert set(timm.list_models('local_*', pretrained=True)) == {f'{n}.in1k' for n in PUBLISHED}
    for name in NAMES:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.architecture == name
        assert cfg.url == PUBLISHED.get(name, '')


# --------------------------------------------------------------------------- timm's four checks
@pytest.mark.parametrize('name', NAMES)
def test_model_default_cfgs(name):
    model = timm.create_model(name, pretrained=False).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert cfg['classifier'] + '.weight' in state
    assert cfg['first_conv'] + '.weight' in state
    x = torch.randn(1, 3, FWD_SIZE, FWD_SIZE)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        if _is_vmamba(name):
            # unpooled maps in the model's output_fmt (NHWC), pool_size at the cfg's input size
            assert model.output_fmt == 'NHWC'
            assert tuple(cfg['pool_size']) == tuple(s // 32 for s in cfg['input_size'][1:])
            assert feats.shape == (1, FWD_SIZE // 32, FWD_SIZE // 32, model.num_features)
        else:
            # unpooled tokens (B, T, C), as timm's plain ViTs give them
            tokens = (FWD_SIZE // 16)**2 + int(model.middle_cls_token)
            assert feats.shape == (1, tokens, model.num_features)

        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape == (1, model.head_hidden_size)
        torch.testing.assert_close(out, pre)

        model.reset_classifier(0, '')
        unpooled = model(x)
        if _is_vmamba(name):
            assert unpooled.shape == feats.shape
        else:
            assert unpooled.shape == feats.shape and unpooled.ndim == 3

        fresh = timm.create_model(name, pretrained=False, num_classes=0, global_pool='').eval()
        assert fresh(x).shape == feats.shape


@pytest.mark.parametrize('name', NAMES)
def test_model_forward(name):
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, FWD_SIZE, FWD_SIZE)
    out = model(x)
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()
    # gradient checkpointing changes nothing in the output
    model.set_grad_checkpointing()
    assert model.with_cp
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_model_backward(name):
    model = timm.create_model(name, pretrained=False, num_classes=42).train()
    out = model(torch.randn(2, 3, BWD_SIZE, BWD_SIZE))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing}'
    assert out.shape == (2, 42)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', NAMES)
def test_model_forward_features(name):
    model = timm.create_model(name, pretrained=False, features_only=True).eval()
    channels = model.feature_info.channels()
    reductions = model.feature_info.reduction()
    if _is_vmamba(name):
        dims = model.model.dims
        assert channels == dims and reductions == [4, 8, 16, 32]
    else:
        depth = len(model.model.layers)
        assert model.feature_info.out_indices == (depth - 3, depth - 2, depth - 1)
        assert reductions == [16, 16, 16]
    assert len(channels) >= 3
    height, width = FEAT_SIZE  # non-square
    with torch.no_grad():
        outs = model(torch.randn(1, 3, height, width))
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape == (1, c, math.ceil(height / r), math.ceil(width / r))
        assert torch.isfinite(o).all()


# --------------------------------------------------------------------------- features_only
def test_features_only_prunes_what_the_features_do_not_need():
    arch = SMALL_ARCH['local_vim_tiny']
    model = timm.create_model('local_vim_tiny', features_only=True, out_indices=(0, ), arch=arch)
    inner = model.model
    assert len(inner.layers) == 1 and isinstance(inner.head, torch.nn.Identity)
    assert isinstance(inner.norm_f, torch.nn.Identity)
    vm = timm.create_model('local_vssm_small', features_only=True, out_indices=(1, ),
                           arch=SMALL_ARCH['local_vssm_small'])
    assert len(vm.model.layers) == 2 and isinstance(vm.model.layers[1].downsample,
                                                     torch.nn.Identity)
    assert [o.shape for o in vm(torch.randn(1, 3, 64, 64))] == [(1, 32, 8, 8)]


def test_intermediates_agree_with_the_official_outputs():
    vim = LocalVimClassifier(dict(SMALL_ARCH['local_vim_tiny_middle_cls_token'], depth=3),
                             img_size=64).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        official = vim.forward_features(x, [0, 2])
        final, tokens = vim.forward_intermediates(x, [0, 2], output_fmt='NLC')
        maps = vim.forward_intermediates(x, [0, 2], intermediates_only=True)
        logits = vim(x)
    for a, b in zip(tokens, official):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the maps drop the middle class token (index 6 of 3 x 4 + 1 tokens)
    assert maps[0].shape == (1, 32, 3, 4)
    torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2),
                               torch.cat([official[1][:, :6], official[1][:, 7:]], 1))
    torch.testing.assert_close(vim.forward_head(final), logits, rtol=0, atol=0)
    torch.testing.assert_close(vim.forward_head(final, pre_logits=True), final[:, 6])
    with pytest.raises(ValueError, match='norm=True'):
        vim.forward_intermediates(x, norm=True)

    vm = LocalVMambaClassifier(SMALL_ARCH['local_vssm_small']).eval()
    with torch.no_grad():
        final, stages = vm.forward_intermediates(x, output_fmt='NHWC')
        last = vm.forward_intermediates(x, 1, norm=True, stop_early=True, intermediates_only=True)
        torch.testing.assert_close(final, vm.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(stages[-1], final, rtol=0, atol=0)
        torch.testing.assert_close(last[0], vm.classifier.norm(final).permute(0, 3, 1, 2))
    assert [s.shape[1:3] for s in stages] == [(12, 16), (6, 8), (3, 4), (2, 2)]


# --------------------------------------------------------------------------- pretrained weights
def _official_checkpoint(model):
    """The layout of the released files: ``model`` entry, DDP prefixes, training metadata."""
    state = {f'module.{k}': v.clone() for k, v in model.state_dict().items()}
    return {'model': state, 'epoch': 299, 'max_accuracy': np.float64(81.2),
            'args': argparse.Namespace(model='local', lr=1e-3)}


@pytest.fixture
def fake_download(monkeypatch):
    """Make ``torch.hub`` 'download' a checkpoint written here; records the URLs asked for."""
    files = {}
    asked = []

    def download(url, dst, hash_prefix=None, progress=True):
        asked.append(url)
        torch.save(files[url], dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    files['asked'] = asked
    return files


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_pretrained_true_loads_the_published_checkpoint(name, fake_download, tmp_path):
    arch = SMALL_ARCH[name]
    extra = {} if _is_vmamba(name) else dict(img_size=224)
    source = timm.create_model(name, arch=arch, **extra)
    fake_download[PUBLISHED[name]] = _official_checkpoint(source)
    extra = {} if _is_vmamba(name) else dict(img_size=112)  # LocalVim: tables resized
    model = timm.create_model(name, pretrained=True, arch=arch, cache_dir=tmp_path, **extra)
    assert fake_download['asked'] == [PUBLISHED[name]]
    ref = source.state_dict()
    resized = {'pos_embed', 'rope.freqs_cos', 'rope.freqs_sin'}
    for key, value in model.state_dict().items():
        if key in resized:
            assert value.shape != ref[key].shape
        else:
            assert torch.equal(value, ref[key]), key
    # the file is cached: a second model does not download again
    timm.create_model(name, pretrained=True, arch=arch, cache_dir=tmp_path, **extra)
    assert len(fake_download['asked']) == 1


def test_pretrained_adapts_classes_and_input_channels(fake_download, tmp_path):
    name = 'local_vssm_small'
    source = timm.create_model(name, arch=SMALL_ARCH[name])
    fake_download[PUBLISHED[name]] = _official_checkpoint(source)
    model = timm.create_model(name, pretrained=True, arch=SMALL_ARCH[name], num_classes=5,
                              in_chans=1, cache_dir=tmp_path)
    assert model.get_classifier().out_features == 5
    assert torch.equal(model.classifier.norm.weight, source.classifier.norm.weight)
    # timm's adapt_input_conv: one channel gets the sum over the three
    torch.testing.assert_close(model.patch_embed[0].weight,
                               source.patch_embed[0].weight.sum(1, keepdim=True))
    feats = timm.create_model(name, pretrained=True, arch=SMALL_ARCH[name], features_only=True,
                              cache_dir=tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(feats(x), source.eval().forward_intermediates(x,
                                                                      intermediates_only=True)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('name', sorted(set(NAMES) - set(PUBLISHED)))
def test_pretrained_true_without_published_weights_says_so(name):
    with pytest.raises(PretrainedWeightsError, match='no pretrained weights exist') as err:
        timm.create_model(name, pretrained=True)
    assert 'checkpoint_path' in str(err.value)
    if name in ('local_vssm_tiny', 'local_vim_small', 'local_vim_small_searched'):
        assert 'never published' in str(err.value)


def test_pretrained_from_a_local_file_through_the_cfg_overlay(tmp_path):
    arch = dict(dims=16, depths=[1, 1, 1, 1])
    source = timm.create_model('local_vssm_tiny', arch=arch, num_classes=3)
    path = tmp_path / 'mine.ckpt'
    torch.save(_official_checkpoint(source), path)
    model = timm.create_model('local_vssm_tiny', pretrained=True, arch=arch, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=3))
    for key, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_checkpoint_filter_refuses_a_localvmamba_file_for_localvim():
    vssm = timm.create_model('local_vssm_small', arch=SMALL_ARCH['local_vssm_small'])
    vim = timm.create_model('local_vim_tiny', arch=SMALL_ARCH['local_vim_tiny'])
    with pytest.raises(ValueError, match='LocalVMamba'):
        checkpoint_filter_fn(_official_checkpoint(vssm), vim)


# --------------------------------------------------------------------------- optimizers, heads
def test_group_matcher_gives_timm_layer_groups():
    from timm.models import group_parameters
    vm = LocalVMambaClassifier(SMALL_ARCH['local_vssm_small'])
    groups = group_parameters(vm, vm.group_matcher())
    # stem, 5 blocks (downsample and head norm join the block before), the head
    assert len(groups) == 7
    assert all(n.startswith('patch_embed') for n in groups[0])
    assert 'layers.0.downsample.reduction.weight' in groups[1]
    assert 'classifier.norm.weight' in groups[5]
    assert groups[6] == ['classifier.head.weight', 'classifier.head.bias']
    assert len(group_parameters(vm, vm.group_matcher(coarse=True))) == 6
    vim = LocalVimClassifier(SMALL_ARCH['local_vim_tiny_middle_cls_token'])
    groups = group_parameters(vim, vim.group_matcher())
    assert len(groups) == 4 and {'cls_token', 'pos_embed'} <= set(groups[0])
    assert 'norm_f.weight' in groups[2] and groups[3] == ['head.weight', 'head.bias']
    total = sum(len(g) for g in groups.values())
    assert total == len(list(vim.parameters()))
    # timm's layer-decay optimizer takes the groups
    create_optimizer_v2(vim, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.8)


@pytest.mark.parametrize('cls,arch', [(LocalVMambaClassifier, SMALL_ARCH['local_vssm_small']),
                                      (LocalVimClassifier, SMALL_ARCH['local_vim_tiny'])])
def test_no_weight_decay_reaches_timm_optimizers(cls, arch):
    model = cls(arch)
    names = model.no_weight_decay()
    ssm = {n for n in dict(model.named_parameters()) if n.split('.')[-1].startswith(('A_log', 'D'))}
    assert ssm and ssm <= names
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    params = dict(model.named_parameters())
    no_decay = {id(p) for g in opt.param_groups if g['weight_decay'] == 0 for p in g['params']}
    assert all(id(params[n]) in no_decay for n in ssm)


def test_take_indices_follows_timm():
    from mmlocalmamba.models.base import take_indices
    assert take_indices(4, None) == ([0, 1, 2, 3], 3)
    assert take_indices(20, 3) == ([17, 18, 19], 19)
    assert take_indices(4, (0, -1)) == ([0, 3], 3)
    with pytest.raises(ValueError, match='last 5 of 4'):
        take_indices(4, 5)
    with pytest.raises(ValueError, match='index 4 is out of range'):
        take_indices(4, [4])


def test_reset_classifier_and_arguments():
    model = LocalVimClassifier(SMALL_ARCH['local_vim_tiny'], num_classes=4)
    assert model.get_classifier().out_features == 4
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.num_classes == 7
    assert list(model.state_dict())[-2:] != ['head.weight', 'head.bias']  # official order kept
    with pytest.raises(ValueError, match="global_pool='token' needs a class token"):
        model.reset_classifier(0, 'token')
    with pytest.raises(ValueError, match='global_pool must be one of'):
        LocalVMambaClassifier(SMALL_ARCH['local_vssm_small'], global_pool='max')
    with pytest.raises(ValueError, match='disagree'):
        LocalVMambaClassifier(SMALL_ARCH['local_vssm_small'], in_chans=1, in_channels=3)
    assert LocalVMambaClassifier(SMALL_ARCH['local_vssm_small'], in_channels=1).in_chans == 1
    with pytest.raises(TypeError, match='no out_indices'):
        LocalVMambaClassifier(SMALL_ARCH['local_vssm_small'], out_indices=(0, ))
