"""Direction search: architecture parameters, logging hook, timm registry, export, round trip,
search runs on demo detection data and on a tiny ImageFolder."""
import copy
import glob
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

from mmlocalmamba.models.local_vmamba import LocalVMamba
from mmlocalmamba.ops.scan_orders import ALL_DIRECTIONS
from mmlocalmamba.search import (ARCH_PARAM_KEY, arch_param_names, arch_parameters,
                                 arch_paramwise_cfg, arch_probabilities, export_all,
                                 export_directions, format_snippet, normalized_entropy,
                                 search_space, select_topk, split_parameters)

from .conftest import reference_path

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = dict(dims=16, depths=[1, 1, 1, 1])


def supernet(**arch):
    return LocalVMamba(arch=dict(TINY, directions=None, **arch), drop_path_rate=0.)


def plant_alphas(model, seed=1):
    """Give every layer clearly different architecture weights; returns them."""
    gen = torch.Generator().manual_seed(seed)
    planted = []
    with torch.no_grad():
        for p in arch_parameters(model):
            p.copy_(2.0 * torch.randn(p.shape, generator=gen))
            planted.append(p.detach().flatten().double().clone())
    return planted


def expected_topk(alpha, k=4):
    return sorted(torch.topk(torch.softmax(alpha, 0), k).indices.tolist())


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exec_snippet(text):
    scope = {}
    exec(compile(text, '<snippet>', 'exec'), scope)  # noqa: S102 - our own generated text
    return scope


# ---------------------------------------------------------------------------------------------
# Search space and architecture parameters
# ---------------------------------------------------------------------------------------------
def test_custom_candidates_arch_key():
    model = supernet(candidates=['h', 'v', 'w3_flip'])
    assert model.is_search
    assert model.layer_directions == [('h', 'v', 'w3_flip')] * 4
    assert [p.shape for p in arch_parameters(model)] == [(3, 1, 1, 1)] * 4
    assert model(torch.randn(1, 3, 32, 32))[0].shape == (1, 16, 8, 8)
    # default = the paper's 8, presets untouched
    assert supernet().layer_directions == [ALL_DIRECTIONS] * 4
    assert LocalVMamba('tiny_search').layer_directions[0] == ALL_DIRECTIONS
    with pytest.raises(ValueError, match='only applies to a search supernet'):
        LocalVMamba(arch=dict(TINY, candidates=['h', 'v']))
    with pytest.raises(ValueError, match='must not repeat'):
        supernet(candidates=['h', 'h'])
    with pytest.raises(ValueError, match='Unknown scan direction'):
        supernet(candidates=['h', 'diagonal'])


def test_arch_parameter_helpers_and_paramwise_cfg():
    from mmengine.optim import DefaultOptimWrapperConstructor
    model = supernet()
    names = arch_param_names(model)
    assert names == [f'layers.{i}.blocks.0.op.{ARCH_PARAM_KEY}' for i in range(4)]
    assert all(p.shape == (8, 1, 1, 1) for p in arch_parameters(model))
    net, arch = split_parameters(model)
    assert len(arch) == 4 and len(net) + 4 == len(list(model.parameters()))
    assert normalized_entropy(torch.full((8, ), 1 / 8)) == pytest.approx(1.0)
    assert normalized_entropy(torch.tensor([1.0, 0, 0, 0])) == pytest.approx(0.0, abs=1e-9)
    assert search_space(model) == {
        'layers': [n[:-len('.weights')] for n in names],
        'candidates': [list(ALL_DIRECTIONS)] * 4}
    assert arch_param_names(LocalVMamba(arch=dict(TINY))) == []

    optim = DefaultOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(custom_keys=arch_paramwise_cfg(lr_mult=10.)))(model).optimizer
    arch_ids = {id(p) for p in arch_parameters(model)}
    for group in optim.param_groups:
        is_arch = id(group['params'][0]) in arch_ids
        assert group['lr'] == pytest.approx(1e-2 if is_arch else 1e-3)
        assert group['weight_decay'] == pytest.approx(0. if is_arch else 0.05)
    assert sum(id(g['params'][0]) in arch_ids for g in optim.param_groups) == 4


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def test_export_picks_topk_of_softmax_for_planted_alphas(tmp_path):
    model = supernet()
    planted = plant_alphas(model)
    state = model.state_dict()
    det_ckpt = {'meta': {'epoch': 1}, 'state_dict': {f'backbone.{k}': v for k, v in state.items()}}
    det_ckpt['state_dict']['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    path = tmp_path / 'epoch_1.pth'
    torch.save(det_ckpt, path)
    result = export_directions(str(path))
    assert result.layers == [f'layers.{i}.blocks.0.op.multi_scan' for i in range(4)]
    for alpha, chosen, dirs, probs in zip(planted, result.chosen, result.directions, result.probs):
        assert chosen == expected_topk(alpha)
        assert dirs == [ALL_DIRECTIONS[i] for i in chosen]
        np.testing.assert_allclose(probs, torch.softmax(alpha, 0).numpy(), rtol=1e-12)
    assert result.arch == dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1])
    # same choice from a classification checkpoint and a bare state dict, any k
    assert export_directions({'model': state}).directions == result.directions
    for k in (1, 2, 8):
        got = export_directions(state, topk=k).chosen
        assert got == [expected_topk(a, k) for a in planted]
    with pytest.raises(ValueError, match='topk'):
        export_directions(state, topk=9)
    with pytest.raises(ValueError, match='8 entries but 3 candidates'):
        export_directions(state, candidates=['h', 'v', 'w2'])
    with pytest.raises(KeyError, match='not a direction-search supernet'):
        export_directions(LocalVMamba(arch=dict(TINY)).state_dict())


def test_select_topk_ties_and_order():
    assert select_topk(torch.tensor([0.1, 0.3, 0.3, 0.2, 0.1]), 2) == [1, 2]
    assert select_topk(torch.full((8, ), 0.125), 4) == [0, 1, 2, 3]
    assert select_topk(torch.tensor([0.4, 0.0, 0.1, 0.5]), 2) == [0, 3]


@pytest.mark.parametrize('name,arch', [
    ('local_vssm_search_supernet', dict(dims=[16, 32, 64, 128], depths=[1, 1, 2, 1])),
    ('local_vim_search_supernet', dict(embed_dim=64, depth=2))])
def test_export_official_supernet_fixtures(name, arch):
    """The golden supernets' weights are N(0, 1): the official selection is top-4, ascending."""
    golden = torch.load(reference_path('golden', f'{name}.pt'), weights_only=True)
    state = golden['state_dict']
    alphas = [v.flatten().double() for k, v in state.items() if k.endswith(ARCH_PARAM_KEY)]
    result = export_directions(state)
    assert len(result.directions) == len(alphas) == sum(arch.get('depths', [arch.get('depth')]))
    assert result.chosen == [expected_topk(a) for a in alphas]
    assert result.arch == arch


def test_local_vim_supernet_export_and_round_trip():
    from mmlocalmamba.models.local_vim import LocalVim
    arch = dict(embed_dim=32, depth=3)
    model = LocalVim(arch=dict(arch, directions=None), img_size=64, out_indices=(0, 2))
    assert arch_param_names(model) == [f'layers.{i}.mixer.{ARCH_PARAM_KEY}' for i in range(3)]
    planted = plant_alphas(model)
    ckpt = {'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()}}
    result = export_directions(ckpt)
    assert result.chosen == [expected_topk(a) for a in planted]
    assert result.arch == arch
    snippet_arch = exec_snippet(format_snippet(result))['model']['backbone']['arch']
    rebuilt = LocalVim(arch=snippet_arch, img_size=64, out_indices=(0, 2))
    assert not rebuilt.is_search
    assert [list(d) for d in rebuilt.layer_directions] == result.directions


def test_files_snippet_png_and_round_trip(tmp_path):
    model = supernet()
    plant_alphas(model, seed=3)
    ckpt = {'state_dict': model.state_dict(), 'search_space': search_space(model)}
    result, paths = export_all(ckpt, str(tmp_path / 'out'), topk=4)

    with open(paths['json']) as f:
        data = json.load(f)
    assert data['directions'] == result.directions and data['topk'] == 4
    assert len(data['probs']) == 4 and all(len(p) == 8 for p in data['probs'])

    from PIL import Image
    assert osp.getsize(paths['png']) > 5000
    with Image.open(paths['png']) as img:
        img.load()
        assert img.format == 'PNG' and img.size[0] > 300 and img.size[1] > 200
        pixels = np.asarray(img.convert('RGB'))
    assert pixels.std() > 10  # a picture, not a blank canvas
    # the chosen cells are framed in pure red
    assert ((pixels[..., 0] > 200) & (pixels[..., 1] < 40) & (pixels[..., 2] < 40)).sum() > 100

    # round trip: the snippet (and the JSON) build a normal backbone with these directions
    with open(paths['snippet']) as f:
        arch = exec_snippet(f.read())['model']['backbone']['arch']
    assert arch['directions'] == result.directions
    rebuilt = LocalVMamba(arch=arch)
    assert not rebuilt.is_search
    assert [list(d) for d in rebuilt.layer_directions] == result.directions
    assert arch_param_names(rebuilt) == []
    assert rebuilt(torch.randn(1, 3, 32, 32))[3].shape == (1, 128, 1, 1)


def test_custom_candidates_stored_in_checkpoint_and_generic_snippet():
    model = supernet(candidates=['h', 'v', 'w2', 'w5_flip', 'v_flip'])
    planted = plant_alphas(model)
    ckpt = {'state_dict': model.state_dict(), 'search_space': search_space(model)}
    result = export_directions(ckpt, topk=2)
    cands = ['h', 'v', 'w2', 'w5_flip', 'v_flip']
    assert result.directions == [[cands[i] for i in expected_topk(a, 2)] for a in planted]
    # without the stored list the candidates must be given
    with pytest.raises(ValueError, match='candidates'):
        export_directions(model.state_dict(), topk=2)
    assert export_directions(model.state_dict(), topk=2,
                             candidates=cands).directions == result.directions
    # a model that is not LocalVMamba-shaped gets a plain directions list
    renamed = {k.replace('layers.', 'blocks_'): v for k, v in model.state_dict().items()}
    generic = export_directions(renamed, topk=2, candidates=cands)
    assert generic.arch is None
    assert exec_snippet(format_snippet(generic))['directions'] == result.directions


def test_search_directions_cli(tmp_path, capsys):
    model = supernet()
    planted = plant_alphas(model, seed=5)
    path = tmp_path / 'supernet.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()}},
               path)
    result = load_tool('search_directions').main([str(path), '--out-dir', str(tmp_path / 'x'),
                                                  '--topk', '3', '--name', 'found'])
    assert result.chosen == [expected_topk(a, 3) for a in planted]
    out = capsys.readouterr().out
    assert 'directions=[' in out and 'found.png' in out
    assert all((tmp_path / 'x' / f'found.{ext}').is_file() for ext in ('json', 'py', 'png'))


# ---------------------------------------------------------------------------------------------
# timm registry
# ---------------------------------------------------------------------------------------------
def test_timm_registry():
    import timm

    import mmlocalmamba  # noqa: F401
    from mmlocalmamba.models.local_vmamba import LocalVMambaClassifier
    from mmlocalmamba.models.timm_models import PretrainedWeightsError
    names = timm.list_models('local_*')
    assert {'local_vssm_tiny', 'local_vssm_small', 'local_vssm_tiny_search'} <= set(names)
    model = timm.create_model('local_vssm_tiny_search', num_classes=10, in_chans=3)
    assert isinstance(model, LocalVMambaClassifier) and model.is_search
    assert model.classifier.head.out_features == 10
    assert model.layers[2].blocks[0].drop_path.drop_prob == pytest.approx(0.1 * 4 / 14)
    with open(reference_path('manifests', 'local_vssm_tiny_search.json')) as f:
        ref = json.load(f)
    full = timm.create_model('local_vssm_tiny_search')
    assert sum(p.numel() for p in full.parameters()) == ref['num_parameters']
    assert timm.data.resolve_data_config({}, model=full)['input_size'] == (3, 224, 224)
    with pytest.raises(PretrainedWeightsError, match='checkpoint_path'):
        timm.create_model('local_vssm_tiny', pretrained=True)


def test_timm_registry_local_vim():
    import timm

    import mmlocalmamba  # noqa: F401
    from mmlocalmamba.models.local_vim import LocalVimClassifier
    assert {'local_vim_tiny', 'local_vim_small', 'local_vim_tiny_middle_cls_token',
            'local_vim_tiny_search'} <= set(timm.list_models('local_vim*'))
    with open(reference_path('manifests', 'local_vim_tiny_search.json')) as f:
        ref = json.load(f)
    model = timm.create_model('local_vim_tiny_search')
    assert isinstance(model, LocalVimClassifier) and model.is_search
    assert list(model.state_dict()) == list(ref['state_dict'])
    assert sum(p.numel() for p in model.parameters()) == ref['num_parameters']
    assert len(arch_param_names(model)) == 20


# ---------------------------------------------------------------------------------------------
# Search runs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('path,base', [
    ('mmdet/mask-rcnn_localvmamba-demo-search_fpn_1xb4-8e_demo-coco.py',
     'mmdet/mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py'),
    ('mmdet/mask-rcnn_localvmamba-t-search_fpn_1x_coco.py',
     'mmdet/mask-rcnn_localvmamba-t_fpn_1x_coco.py'),
    ('mmseg/upernet_localvmamba-demo-search_1xb4-300iter_demo-ade-128x128.py',
     'mmseg/upernet_localvmamba-demo_1xb4-300iter_demo-ade-128x128.py'),
    ('mmseg/upernet_localvmamba-t-search_8xb2-160k_ade20k-512x512.py',
     'mmseg/upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py'),
])
def test_search_configs(path, base):
    from mmengine.config import Config
    from mmengine.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', path))
    base_cfg = Config.fromfile(osp.join(ROOT, 'configs', base))
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys[ARCH_PARAM_KEY] == dict(
        lr_mult=10.0, decay_mult=0.0)
    assert 'ArchWeightsLoggerHook' in [h['type'] for h in cfg.custom_hooks]
    backbone = MODELS.build(cfg.model.backbone)
    assert backbone.is_search and backbone.depths == MODELS.build(base_cfg.model.backbone).depths
    # the heads take the supernet's widths
    head = cfg.model.get('neck', cfg.model.get('decode_head'))
    assert list(head.in_channels) == backbone.dims


def test_search_on_demo_detection_data_then_export_and_rebuild(tmp_path):
    from mmlocalmamba.apis.runner import build_runner, load_config
    config = osp.join(ROOT, 'configs', 'mmdet',
                      'mask-rcnn_localvmamba-demo-search_fpn_1xb4-8e_demo-coco.py')
    from mmlocalmamba.datasets.demo_data import make_coco_demo

    data_root = str(tmp_path / 'coco') + '/'
    # 56 px: stage maps 14/7/4/2, so the w7 windows need little padding (short scans on CPU)
    make_coco_demo(data_root, num_train=4, num_val=1, img_size=56, seed=0, max_objects=2)
    cfg = load_config(config)
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['multi_scan.weights'] == dict(
        lr_mult=10.0, decay_mult=0.0)
    cfg.model.backbone.arch = dict(TINY, directions=None)
    cfg.model.neck.in_channels = [16, 32, 64, 128]
    cfg.work_dir = str(tmp_path / 'work')
    ds = cfg.train_dataloader.dataset
    ds.data_root = data_root
    ds.pipeline = [dict(t, scale=(56, 56)) if t['type'] == 'Resize' else t for t in ds.pipeline]
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=100, max_per_img=50)
    cfg.model.train_cfg.rcnn.sampler.num = 32
    cfg.train_dataloader.batch_size = 2
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_interval=10)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    cfg.custom_hooks = [dict(type='ArchWeightsLoggerHook', interval=1)]

    runner = build_runner(cfg)
    before = [p.detach().clone() for p in arch_parameters(runner.model)]
    runner.train()
    after = [p.detach().clone() for p in arch_parameters(runner.model)]
    assert len(after) == 4
    assert all(not torch.equal(a, b) for a, b in zip(before, after))  # the search moved them
    # optimizer: arch weights at 10x the backbone's lr, no decay
    groups = runner.optim_wrapper.optimizer.param_groups
    group_of = {id(p): g for g in groups for p in g['params']}
    patch = runner.model.backbone.patch_embed[0].weight
    for p in arch_parameters(runner.model):
        assert group_of[id(p)]['weight_decay'] == 0
        assert group_of[id(p)]['lr'] == pytest.approx(10 * group_of[id(patch)]['lr'])
    # logging through mmengine
    hub = runner.message_hub
    entropy = hub.get_scalar('train/arch_entropy').current()
    assert 0.9 < entropy <= 1.0
    probs = hub.get_info('arch_probs')
    assert len(probs) == 4 and all(abs(sum(p) - 1) < 1e-5 for p in probs.values())
    log_file = runner.logger.handlers[-1].baseFilename
    with open(log_file) as f:
        log = f.read()
    assert 'arch_entropy' in log and 'Architecture weights, softmax per layer' in log

    ckpt_path = osp.join(cfg.work_dir, 'epoch_1.pth')
    from mmlocalmamba.utils.safe_load import safe_torch_load
    assert safe_torch_load(ckpt_path)['search_space']['candidates'] == [list(ALL_DIRECTIONS)] * 4
    result, paths = export_all(ckpt_path, str(tmp_path / 'export'))
    expected = {n: arch_probabilities(runner.model.backbone)[n] for n in result.layers}
    for name, chosen in zip(result.layers, result.chosen):
        assert chosen == expected_topk(torch.log(expected[name].double()))
    assert result.arch == dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1])
    rebuilt = LocalVMamba(arch=dict(result.arch, directions=result.directions))
    assert [list(d) for d in rebuilt.layer_directions] == result.directions
    assert osp.getsize(paths['png']) > 0


def _tiny_imagefolder(root):
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls, base in (('cat', 40), ('dog', 200)):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            img = np.clip(base + 30 * rng.standard_normal((28, 28, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f'{i}.png')
    return str(root)


CLS_SEARCH = dict(batch_size=4, img_size=28, lr=1e-3, arch_lr_mult=10., num_workers=0,
                  log_interval=1, model_kwargs=dict(arch=dict(TINY, directions=None),
                                                    drop_path_rate=0.))


def test_classification_search_on_tiny_imagefolder(tmp_path):
    """The classification search on mmengine's Runner: train, validate, checkpoint, export."""
    pytest.importorskip('torchvision')
    from mmlocalmamba.apis.search_cls import search_classification
    data = _tiny_imagefolder(tmp_path / 'data')
    work = tmp_path / 'work'
    out = search_classification(data, model='local_vssm_tiny_search', work_dir=str(work),
                                val_root=data, epochs=1, **CLS_SEARCH)
    assert [h['iter'] for h in out['history']] == [1, 2]
    assert all(np.isfinite(h['loss']) for h in out['history'])
    assert 0.0 <= out['val_acc'] <= 1.0
    for path in out['paths'].values():
        assert osp.getsize(path) > 0
    assert json.load(open(work / 'arch_history.json'))[-1]['iter'] == 2
    result = out['result']
    assert len(result.directions) == 4 and all(len(d) == 4 for d in result.directions)
    # an mmengine checkpoint: the classifier under backbone., the classes, the search space
    assert osp.basename(out['checkpoint']) == 'epoch_1.pth'
    from mmlocalmamba.utils.safe_load import safe_torch_load
    state = safe_torch_load(out['checkpoint'])  # an mmengine checkpoint (HistoryBuffer inside)
    assert state['meta']['dataset_meta']['classes'] == ('cat', 'dog')
    assert state['search_space']['candidates'] == [list(ALL_DIRECTIONS)] * 4
    alphas = [v.flatten().double() for k, v in state['state_dict'].items()
              if k.startswith('backbone.') and k.endswith(ARCH_PARAM_KEY)]
    assert result.chosen == [expected_topk(a) for a in alphas]
    assert all(k.startswith('backbone.') for k in state['state_dict'])
    # the architecture weights: own learning rate, no weight decay; SSM parameters: no decay
    groups = out['runner'].optim_wrapper.optimizer.param_groups
    names = {id(p): n for n, p in out['runner'].model.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g['params']}
    arch = [n for n in by_name if n.endswith(ARCH_PARAM_KEY)]
    assert len(arch) == 4
    for n in arch:
        assert by_name[n]['weight_decay'] == 0 and by_name[n]['lr'] == pytest.approx(
            10 * by_name['backbone.patch_embed.0.weight']['lr'])
    assert by_name['backbone.layers.0.blocks.0.op.A_logs']['weight_decay'] == 0
    assert by_name['backbone.patch_embed.0.weight']['weight_decay'] == 0.05
    rebuilt = LocalVMamba(arch=dict(TINY, directions=copy.deepcopy(result.directions)))
    assert [list(d) for d in rebuilt.layer_directions] == result.directions
    with pytest.raises(ValueError, match='no direction-search layers'):
        search_classification(data, model='local_vssm_tiny', work_dir=str(tmp_path / 'w2'),
                              epochs=1, num_workers=0, model_kwargs=dict(arch=dict(TINY)))


def test_classification_search_resumes(tmp_path):
    """A search stopped after its first epoch continues from that checkpoint (``--resume``):
    the same weights, iterations and export as the run that was not stopped."""
    pytest.importorskip('torchvision')
    import shutil

    from mmlocalmamba.apis.search_cls import search_classification
    data = _tiny_imagefolder(tmp_path / 'data')
    straight = search_classification(data, work_dir=str(tmp_path / 'straight'), epochs=2,
                                     **CLS_SEARCH)
    # the stopped run: its work dir holds the epoch-1 checkpoint of the same search
    stopped = tmp_path / 'stopped'
    stopped.mkdir()
    shutil.copy(tmp_path / 'straight' / 'epoch_1.pth', stopped / 'epoch_1.pth')
    (stopped / 'last_checkpoint').write_text(str(stopped / 'epoch_1.pth'))
    resumed = search_classification(data, work_dir=str(stopped), epochs=2, resume='auto',
                                    **CLS_SEARCH)
    assert [h['iter'] for h in straight['history']] == [1, 2, 3, 4]
    assert [h['iter'] for h in resumed['history']] == [3, 4]
    assert osp.basename(resumed['checkpoint']) == 'epoch_2.pth'
    assert resumed['runner'].iter == straight['runner'].iter == 4
    from mmlocalmamba.utils.safe_load import safe_torch_load
    a = safe_torch_load(straight['checkpoint'])['state_dict']
    b = safe_torch_load(resumed['checkpoint'])['state_dict']
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert resumed['result'].directions == straight['result'].directions


def test_classification_search_two_processes(tmp_path):
    """tools/search_cls.py under torchrun with 2 CPU processes (gloo, DDP): one export."""
    pytest.importorskip('torchvision')
    import socket
    import subprocess
    import sys
    data = _tiny_imagefolder(tmp_path / 'data')
    work = tmp_path / 'work'
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
           f'--master_port={port}', osp.join(ROOT, 'tools', 'search_cls.py'), data, '--val-root',
           data,
           '--launcher', 'pytorch', '--epochs', '1', '--batch-size', '2', '--img-size', '28',
           '--num-workers', '0', '--log-interval', '1', '--work-dir', str(work),
           '--model-kwargs', json.dumps(dict(arch=dict(TINY, directions=None)))]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = open(glob.glob(str(work / '*' / '*.log'))[0]).read()
    assert 'Distributed training: True' in log
    assert 'Epoch(train) [1][2/2]' in log  # 8 images, 2 processes, 2 per batch
    assert 'accuracy/top1' in log
    assert out.stdout.count('directions=[') == 1  # the main process prints the snippet
    assert json.load(open(work / 'directions.json'))['topk'] == 4


_SEARCH_THREADS_PROBE = r"""
import glob, json, sys
from mmengine.model import is_model_wrapper
from mmlocalmamba.apis.search_cls import search_classification
data, work, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = search_classification(data, launcher="pytorch", work_dir=work, epochs=1, batch_size=2,
                            img_size=28, num_workers=0, model_kwargs=kwargs)
names = [open(p).read().strip() for p in glob.glob('/proc/self/task/*/comm')]
print(json.dumps(dict(wrapped=is_model_wrapper(out['runner'].model), threads=names)))
"""


@pytest.mark.skipif(not osp.isdir('/proc/self/task'), reason='thread names from /proc (Linux)')
def test_classification_search_under_a_launcher_ends_with_the_gloo_group_gone(tmp_path):
    """The runner search_cls returns must not keep the DDP wrapper, and with it the gloo group
    and its threads, alive until interpreter exit (whose teardown can abort the process)."""
    pytest.importorskip('torchvision')
    import socket
    import subprocess
    import sys
    data = _tiny_imagefolder(tmp_path / 'data')
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(port), OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', _SEARCH_THREADS_PROBE, data,
                          str(tmp_path / 'work'), json.dumps(dict(arch=dict(TINY,
                                                                           directions=None)))],
                         capture_output=True, text=True, cwd=str(tmp_path), timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert not found['wrapped']
    assert not [n for n in found['threads'] if 'gloo' in n], found['threads']


def test_coco_objects_to_imagefolder(tmp_path):
    from PIL import Image

    from mmlocalmamba.datasets.demo_data import COCO_DEMO_CLASSES, make_coco_demo
    from mmlocalmamba.search.imagefolder import coco_to_imagefolder
    make_coco_demo(str(tmp_path / 'coco'), num_train=3, num_val=1, img_size=64, seed=0)
    counts = coco_to_imagefolder(str(tmp_path / 'coco'), str(tmp_path / 'folder'), size=24,
                                 grayscale=True, min_size=0)
    ann = json.load(open(tmp_path / 'coco' / 'annotations' / 'instances_train.json'))
    assert sum(counts['train'].values()) == len(ann['annotations'])
    assert sorted(counts['train']) == sorted(COCO_DEMO_CLASSES)
    crops = sorted((tmp_path / 'folder' / 'train').glob('*/*.png'))
    assert len(crops) == len(ann['annotations'])
    with Image.open(crops[0]) as img:
        pixels = np.asarray(img)
    assert pixels.shape == (24, 24, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    with pytest.raises(FileNotFoundError, match='instances_test'):
        coco_to_imagefolder(str(tmp_path / 'coco'), str(tmp_path / 'x'), splits=['test'])
