"""The shipped mmdet/mmseg configs: they load, follow the paper's recipe, build, train and predict.

Every config under ``configs/mmdet`` and ``configs/mmseg`` is loaded with ``Config.fromfile``,
shrunk to a tiny LocalVMamba (dims 16, one block per stage) and tiny inputs, and runs one
training step (with the optimiser the config builds, paramwise rules included) and one
prediction on CPU.
"""
import json
import os.path as osp
import urllib.error

import pytest
import torch

from .conftest import reference_path

import mmdet  # noqa: F401  (test requirements: the mmdet/mmseg stack)
import mmseg  # noqa: F401

from mmengine.config import Config, DictAction  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PAPER_CONFIGS = [
    'mmdet/mask-rcnn_localvmamba-t_fpn_1x_coco.py',
    'mmdet/mask-rcnn_localvmamba-s_fpn_1x_coco.py',
    'mmdet/mask-rcnn_localvmamba-t_fpn_ms-crop-3x_coco.py',
    'mmdet/mask-rcnn_localvmamba-s_fpn_ms-crop-3x_coco.py',
    'mmseg/upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py',
    'mmseg/upernet_localvmamba-s_8xb2-160k_ade20k-512x512.py',
]
DEMO_CONFIGS = [
    'mmdet/mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py',
    'mmseg/upernet_localvmamba-demo_1xb4-300iter_demo-ade-128x128.py',
]
# The Mask R-CNN / UperNet + LocalVMamba configs (other backbones' configs have their own tests).
CONFIGS = [osp.join(ROOT, 'configs', name) for name in PAPER_CONFIGS + DEMO_CONFIGS]
SEG_CONFIGS = [p for p in CONFIGS if '/mmseg/' in p]
RELEASE = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/'
TINY_DIMS = [16, 32, 64, 128]


def _name(path):
    return osp.relpath(path, osp.join(ROOT, 'configs'))


def _tiny(path):
    """Load a config through the tools' loader with a tiny backbone and no pretrained weights."""
    from mmlocalmamba.apis import load_config
    options = {
        'model.backbone.arch': dict(_delete_=True, dims=16, depths=[1, 1, 1, 1]),
        'model.backbone.init_cfg': None,
    }
    cfg = load_config(path, options)
    if cfg.default_scope == 'mmdet':
        cfg.model.neck.in_channels = TINY_DIMS
        # fewer RoIs/proposals: same code paths, a fraction of the CPU time
        cfg.model.train_cfg.rcnn.sampler.num = 64
        cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
    else:
        cfg.model.decode_head.in_channels = TINY_DIMS
        cfg.model.auxiliary_head.in_channels = TINY_DIMS[cfg.model.auxiliary_head.in_index]
        cfg.model.data_preprocessor.size = (64, 96)
    return cfg


def test_all_configs_present():
    missing = [p for p in CONFIGS if not osp.isfile(p)]
    assert not missing


@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_config_loads_with_fromfile(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope in ('mmdet', 'mmseg')
    assert 'mmlocalmamba' in cfg.custom_imports['imports']
    assert cfg.custom_imports['allow_failed_imports'] is False
    assert cfg.model.backbone.type == 'LocalVMamba'
    # _delete_ dropped the Swin keys of the inherited config
    assert not {'embed_dims', 'num_heads', 'window_size', 'convert_weights'} & set(
        cfg.model.backbone)
    assert {'type': 'RNGStateHook'} in [dict(h) for h in cfg.custom_hooks]


@pytest.mark.parametrize(
    'name, manifest, detection',
    [(PAPER_CONFIGS[0], 'det_mask_rcnn_local_vssm_tiny', True),
     (PAPER_CONFIGS[2], 'det_mask_rcnn_local_vssm_tiny', True),
     (PAPER_CONFIGS[1], 'det_mask_rcnn_local_vssm_small', True),
     (PAPER_CONFIGS[3], 'det_mask_rcnn_local_vssm_small', True),
     (PAPER_CONFIGS[4], 'seg_upernet_local_vssm_tiny', False),
     (PAPER_CONFIGS[5], 'seg_upernet_local_vssm_small', False)])
def test_paper_recipe(name, manifest, detection):
    """Backbone, drop path and pretrained file as the official configs; the paper's optimiser."""
    from mmlocalmamba.models.local_vmamba import LOCAL_VMAMBA_ARCHS
    official = json.load(open(reference_path('manifests', f'backbone_{manifest}.json')))
    kwargs = official['constructor_kwargs']
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    backbone = cfg.model.backbone
    arch = LOCAL_VMAMBA_ARCHS[backbone.arch]
    assert arch['depths'] == kwargs['depths']
    assert [list(d) for d in arch['directions']] == kwargs['directions']
    assert arch['dims'] == [kwargs['dims'] * 2**i for i in range(4)]
    assert backbone.drop_path_rate == kwargs['drop_path_rate']
    assert list(backbone.out_indices) == kwargs['out_indices'] == [0, 1, 2, 3]
    assert backbone.init_cfg == dict(type='Pretrained',
                                      checkpoint=RELEASE + osp.basename(kwargs['pretrained']))
    optim = cfg.optim_wrapper.optimizer
    assert optim.type == 'AdamW'
    if detection:
        assert (optim.lr, optim.weight_decay) == (1e-4, 0.05)
        assert cfg.model.neck.in_channels == [96, 192, 384, 768]
        epochs = 36 if 'ms-crop-3x' in name else 12
        assert cfg.train_cfg.max_epochs == epochs
        if 'ms-crop-3x' in name:  # multi-scale training
            assert 'RandomChoiceResize' in str(cfg.train_pipeline)
    else:
        assert (optim.lr, optim.weight_decay) == (6e-5, 0.01)
        assert cfg.train_cfg.max_iters == 160000
        assert [s.type for s in cfg.param_scheduler] == ['LinearLR', 'PolyLR']
        assert cfg.model.decode_head.num_classes == 150
        assert cfg.crop_size == (512, 512)
    # batch 16 = 8 GPUs x 2 images
    assert cfg.train_dataloader.batch_size * 8 == 16


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=_name)
def test_seg_configs_have_multiscale_flip_tta(path):
    cfg = Config.fromfile(path)
    assert cfg.tta_model.type == 'SegTTAModel'
    tta = cfg.tta_pipeline[1]
    assert tta.type == 'TestTimeAug'
    scales = [t for t in tta.transforms[0] if t.type == 'Resize']
    flips = sorted(t.prob for t in tta.transforms[1] if t.type == 'RandomFlip')
    assert len(scales) >= 2 and flips == [0.0, 1.0]
    if _name(path) in PAPER_CONFIGS:
        assert [t.scale_factor for t in scales] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def test_decay_free_parameters():
    """Norm layers (patch-embed LayerNorm included) and A_logs/Ds get no weight decay."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS
    cfg = _tiny(osp.join(ROOT, 'configs', 'mmdet', 'mask-rcnn_localvmamba-t_fpn_1x_coco.py'))
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            decay[names[id(p)]] = group['weight_decay']
    free = ('backbone.patch_embed.2.weight', 'backbone.layers.0.blocks.0.norm.weight',
            'backbone.layers.0.blocks.0.op.A_logs', 'backbone.layers.0.blocks.0.op.Ds',
            'backbone.layers.0.blocks.0.op.out_norm.weight', 'backbone.outnorm0.weight',
            'backbone.layers.0.downsample.norm.bias')
    for name in free:
        assert decay[name] == 0.0, name
    for name in ('backbone.layers.0.blocks.0.op.in_proj.weight', 'backbone.patch_embed.0.weight',
                 'backbone.layers.0.blocks.0.op.x_proj_weight', 'neck.lateral_convs.0.conv.weight'):
        assert decay[name] == 0.05, name


def test_unpublished_tiny_checkpoint_error_says_what_to_do(monkeypatch):
    """The T configs point at local_vssm_tiny.ckpt, which is not published: a clear error."""
    from mmengine.registry import MODELS

    from mmlocalmamba.apis import load_config

    def no_download(url, dst, *args, **kwargs):
        raise urllib.error.HTTPError(url, 404, 'Not Found', None, None)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_download)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: '/nonexistent-hub-dir-for-test')
    cfg = load_config(osp.join(ROOT, 'configs', 'mmdet', 'mask-rcnn_localvmamba-t_fpn_1x_coco.py'),
                      {'model.backbone.arch': dict(_delete_=True, dims=16, depths=[1, 1, 1, 1])})
    backbone = MODELS.build(cfg.model.backbone)
    with pytest.raises(FileNotFoundError, match='never published') as err:
        backbone.init_weights()
    assert 'init_cfg' in str(err.value)


def test_cfg_options_turn_pretraining_off_or_point_to_a_file():
    """The two ways the T configs document: init_cfg=None, or init_cfg.checkpoint=PATH."""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    path = osp.join(ROOT, 'configs', 'mmdet', 'mask-rcnn_localvmamba-t_fpn_1x_coco.py')
    off = parser.parse_args(['--cfg-options', 'model.backbone.init_cfg=None']).cfg_options
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(off)
    assert cfg.model.backbone.init_cfg is None
    mine = parser.parse_args(
        ['--cfg-options', 'model.backbone.init_cfg.checkpoint=/ckpt/mine.pth']).cfg_options
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(mine)
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint='/ckpt/mine.pth')


def _det_batch(num_classes):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    h, w = 64, 96
    for i in range(2):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                             scale_factor=(1.0, 1.0), img_id=i))
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 8:40, 10:50] = 1
        masks[1, 20:60, 50:90] = 1
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[10., 8., 50., 40.], [50., 20., 90., 60.]]),
            labels=torch.tensor([0, num_classes - 1]),
            masks=BitmapMasks(masks.numpy(), h, w))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _seg_batch(num_classes):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    h, w = 64, 96
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             pad_shape=(h, w)))
        label = torch.randint(0, num_classes, (1, h, w), generator=g)
        label[:, :4] = 255  # ignored pixels
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_config_trains_one_step_and_predicts(path):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS
    torch.manual_seed(0)
    cfg = _tiny(path)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    detection = cfg.default_scope == 'mmdet'
    num_classes = (cfg.model.roi_head.bbox_head.num_classes if detection else
                   cfg.model.decode_head.num_classes)
    make_batch = _det_batch if detection else _seg_batch
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(wrapper.optimizer).__name__ == 'AdamW'

    model.train()
    before = model.backbone.patch_embed[0].weight.detach().clone()
    log_vars = model.train_step(make_batch(num_classes), wrapper)
    assert torch.isfinite(log_vars['loss']) and log_vars['loss'] > 0
    assert not torch.equal(before, model.backbone.patch_embed[0].weight)  # a step was taken

    model.eval()
    with torch.no_grad():
        preds = model.test_step(make_batch(num_classes))
    assert len(preds) == 2
    if detection:
        inst = preds[0].pred_instances
        assert inst.bboxes.shape[1] == 4 and len(inst.scores) == len(inst.labels)
        assert torch.isfinite(inst.bboxes).all()
        assert ((inst.labels >= 0) & (inst.labels < num_classes)).all()
        assert inst.masks.shape[1:] == (64, 96)
    else:
        seg = preds[0].pred_sem_seg.data
        assert seg.shape == (1, 64, 96)
        assert int(seg.min()) >= 0 and int(seg.max()) < num_classes
        assert preds[0].seg_logits.data.shape == (num_classes, 64, 96)
