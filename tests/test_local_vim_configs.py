"""LocalVim det/seg configs: each builds and runs one train step and one prediction on CPU.

The configs are loaded as shipped, then shrunk (tiny backbone, small images, no checkpoint) so
one step takes seconds; the data go through the configs' own pipelines on a few synthetic
COCO / ADE20K images (mmlocalmamba.datasets.demo_data). Also: the simple feature pyramid neck,
LN2d in mmcv's norm builder, and the layer-wise lr-decay optimizer constructor.
"""
import copy
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import mmlocalmamba  # noqa: F401
from mmlocalmamba.datasets import demo_data
from mmlocalmamba.engine.layer_decay import LayerDecayOptimWrapperConstructor, layer_id
from mmlocalmamba.models.necks import SimpleFeaturePyramid

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_ARCH = dict(embed_dim=32, depth=2, directions=[['h', 'v_flip', 'w2', 'w7_flip'],
                                                    ['h_flip', 'v', 'w2_flip', 'w7']])


def _config(name):
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    return cfg


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco'))
    demo_data.make_coco_demo(root, num_train=2, num_val=1, img_size=(96, 128), seed=0)
    return root


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('ade'))
    demo_data.make_ade20k_demo(root, num_train=2, num_val=1, img_size=(64, 96), seed=0)
    return root


def _batch(dataset_cfg, registry, n=2):
    dataset = registry.build(dataset_cfg)
    return pseudo_collate([dataset[i % len(dataset)] for i in range(n)])


def _step_and_predict(cfg, scope, train_set, test_set):
    """One optimizer step on a train batch and one prediction on a test batch."""
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import DATASETS, MODELS
    else:
        from mmseg.registry import DATASETS, MODELS
    torch.manual_seed(0)
    np.random.seed(0)  # the data pipelines draw from numpy
    model = MODELS.build(cfg.model)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    before = model.backbone.layers[0].mixer.in_proj.weight.detach().clone()
    model.train()
    losses = model.train_step(_batch(train_set, DATASETS), optim_wrapper)
    assert losses and all(torch.isfinite(v).all() for v in losses.values())
    assert not torch.equal(before, model.backbone.layers[0].mixer.in_proj.weight)
    model.eval()
    with torch.no_grad():
        preds = model.test_step(_batch(test_set, DATASETS, n=1))
    return model, optim_wrapper, preds


# --------------------------------------------------------------------------- detection
def _shrink_det_heads(cfg, width=32):
    """Neck and heads 256 -> ``width`` channels, fewer proposals and RoI samples."""
    cfg.model.neck.out_channels = width
    cfg.model.rpn_head.update(in_channels=width, feat_channels=width)
    roi = cfg.model.roi_head
    roi.bbox_roi_extractor.out_channels = roi.mask_roi_extractor.out_channels = width
    for head in roi.bbox_head:
        head.update(in_channels=width, conv_out_channels=width, fc_out_channels=width)
    roi.mask_head.update(in_channels=width, conv_out_channels=width)
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
    for stage in cfg.model.train_cfg.rcnn:
        stage.sampler.num = 32
    cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=50)
    cfg.model.test_cfg.rcnn.max_per_img = 10


def _shrink_det(cfg, root):
    cfg.model.backbone.update(arch=TINY_ARCH, img_size=(128, 128), out_indices=(1, ),
                              init_cfg=None)
    cfg.model.neck.in_channels = 32
    _shrink_det_heads(cfg)
    cfg.model.data_preprocessor.batch_augments[0].size = (128, 128)
    cfg.optim_wrapper.paramwise_cfg.num_layers = 2
    metainfo = dict(classes=demo_data.COCO_DEMO_CLASSES)
    train_set = copy.deepcopy(cfg.train_dataloader.dataset.dataset)  # inside RepeatDataset
    for t in train_set.pipeline:
        if t.type == 'RandomResize':  # small images: keep every crop larger than an anchor
            t.update(scale=(128, 128), ratio_range=(0.5, 2.0))
        elif t.type == 'RandomCrop':
            t.crop_size = (128, 128)
    train_set.update(data_root=root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                     data_prefix=dict(img='train/'), filter_cfg=None)
    test_set = copy.deepcopy(cfg.val_dataloader.dataset)
    for t in test_set.pipeline:
        if t.type == 'Resize':
            t.scale = (160, 96)
    test_set.update(data_root=root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                    data_prefix=dict(img='val/'))
    return train_set, test_set


@pytest.mark.parametrize('name,arch,dim',
                         [('cascade-mask-rcnn_localvim-t_sfp_lsj-100e_coco.py', 'tiny', 192),
                          ('cascade-mask-rcnn_localvim-s_sfp_lsj-100e_coco.py', 'small', 384)])
def test_det_config(name, arch, dim, coco_root):
    cfg = _config(osp.join('mmdet', name))
    backbone = cfg.model.backbone
    assert backbone.type == 'LocalVim' and backbone.arch == arch
    assert backbone.img_size == (1024, 1024) and backbone.out_indices == (19, )
    assert cfg.model.neck.type == 'SimpleFeaturePyramid' and cfg.model.neck.in_channels == dim
    assert cfg.model.type == 'CascadeRCNN' and len(cfg.model.roi_head.bbox_head) == 3
    assert cfg.optim_wrapper.constructor == 'LayerDecayOptimWrapperConstructor'
    assert cfg.optim_wrapper.paramwise_cfg.num_layers == 20
    assert 'local_vssm' not in backbone.init_cfg.checkpoint
    train_set, test_set = _shrink_det(cfg, coco_root)
    model, optim_wrapper, preds = _step_and_predict(cfg, 'mmdet', train_set, test_set)
    assert len(preds) == 1 and hasattr(preds[0], 'pred_instances')
    assert 'masks' in preds[0].pred_instances
    # layer-wise decay: the last backbone layer learns at the full rate, embeddings slowest
    scales = {g['lr_scale'] for g in optim_wrapper.optimizer.param_groups}
    assert scales == {0.7**3, 0.7**2, 0.7, 1.0}


def test_det_demo_config(coco_root):
    cfg = _config(
        osp.join('mmdet', 'cascade-mask-rcnn_localvim-demo_sfp_1xb4-lsj-12e_demo-coco.py'))
    assert cfg.model.backbone.arch['depth'] == 4 and cfg.model.backbone.init_cfg is None
    assert all(h.num_classes == 4 for h in cfg.model.roi_head.bbox_head)
    _shrink_det_heads(cfg)
    train_set = dict(cfg.train_dataloader.dataset, data_root=coco_root, filter_cfg=None)
    test_set = dict(cfg.val_dataloader.dataset, data_root=coco_root)
    _, _, preds = _step_and_predict(cfg, 'mmdet', train_set, test_set)
    assert preds[0].pred_instances.labels.max() < 4 if len(preds[0].pred_instances) else True


# --------------------------------------------------------------------------- segmentation
def _shrink_seg(cfg, root):
    tiny4 = dict(TINY_ARCH, depth=4, directions=TINY_ARCH['directions'] * 2)
    cfg.model.backbone.update(arch=tiny4, img_size=(64, 64), out_indices=(0, 1, 2, 3),
                              init_cfg=None)
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.neck.update(in_channels=[32] * 4, out_channels=32)
    bn = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
    cfg.model.decode_head.update(in_channels=[32] * 4, channels=16, norm_cfg=bn)
    cfg.model.auxiliary_head.update(in_channels=32, channels=16, norm_cfg=bn)
    train_set = copy.deepcopy(cfg.train_dataloader.dataset)
    for t in train_set.pipeline:
        if t.type == 'RandomResize':
            t.scale = (128, 64)
        elif t.type == 'RandomCrop':
            t.crop_size = (64, 64)
    train_set.data_root = root
    test_set = copy.deepcopy(cfg.val_dataloader.dataset)
    for t in test_set.pipeline:
        if t.type == 'Resize':
            t.scale = (128, 48)  # non-square: 48x72 -> 3x5 tokens
    test_set.data_root = root
    return train_set, test_set


@pytest.mark.parametrize('name,arch,dim',
                         [('upernet_localvim-t_mln_8xb2-160k_ade20k-512x512.py', 'tiny', 192),
                          ('upernet_localvim-s_mln_8xb2-160k_ade20k-512x512.py', 'small', 384)])
def test_seg_config(name, arch, dim, ade_root):
    cfg = _config(osp.join('mmseg', name))
    backbone = cfg.model.backbone
    assert backbone.type == 'LocalVim' and backbone.arch == arch
    assert backbone.out_indices == (4, 9, 14, 19)
    assert cfg.model.neck.type == 'MultiLevelNeck' and cfg.model.neck.in_channels == [dim] * 4
    assert cfg.model.decode_head.in_channels == [dim] * 4
    assert cfg.tta_model.type == 'SegTTAModel' and cfg.tta_pipeline
    ckpt = backbone.init_cfg.checkpoint
    assert 'local_vssm' not in ckpt and f'local_vim_{arch}.ckpt' in ckpt
    train_set, test_set = _shrink_seg(cfg, ade_root)
    model, _, preds = _step_and_predict(cfg, 'mmseg', train_set, test_set)
    assert preds[0].pred_sem_seg.data.shape[-2:] == preds[0].gt_sem_seg.data.shape[-2:]
    if arch == 'tiny':  # test-time augmentation through the config's TTA pipeline
        from mmseg.registry import DATASETS, MODELS
        tta = MODELS.build(dict(cfg.tta_model, module=model)).eval()
        tta_set = dict(test_set, pipeline=cfg.tta_pipeline)
        data = _batch(tta_set, DATASETS, n=1)
        with torch.no_grad():
            out = tta.test_step(data)
        assert out[0].pred_sem_seg.data.shape == preds[0].pred_sem_seg.data.shape


# --------------------------------------------------------------------------- building blocks
def test_simple_feature_pyramid_shapes():
    neck = SimpleFeaturePyramid(in_channels=32, out_channels=16)
    outs = neck((torch.randn(2, 32, 6, 10), ))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 24, 40), (2, 16, 12, 20), (2, 16, 6, 10),
                                              (2, 16, 3, 5), (2, 16, 2, 3)]
    with pytest.raises(ValueError, match='scale_factors'):
        SimpleFeaturePyramid(32, scale_factors=(3.0, ))
    with pytest.raises(ValueError, match='LN2d'):
        SimpleFeaturePyramid(32, norm_cfg=dict(type='BN'))


def test_ln2d_in_mmcv_norm_builder():
    from mmcv.cnn import build_norm_layer
    name, layer = build_norm_layer(dict(type='LN2d', requires_grad=True), 8)
    x = torch.randn(2, 8, 3, 4)
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8, ), eps=layer.eps)
    torch.testing.assert_close(layer(x), ref.permute(0, 3, 1, 2))
    assert name.startswith('ln')


def test_layer_decay_rules():
    assert layer_id('backbone.pos_embed', 20) == 0
    assert layer_id('backbone.patch_embed.proj.weight', 20) == 0
    assert layer_id('backbone.layers.0.mixer.in_proj.weight', 20) == 1
    assert layer_id('backbone.layers.19.norm.weight', 20) == 20
    assert layer_id('backbone.outnorm_0.weight', 20) == 21
    assert layer_id('neck.stages.0.0.weight', 20) == 21

    from mmlocalmamba.models import LocalVim
    model = torch.nn.Module()
    model.backbone = LocalVim(TINY_ARCH, img_size=32)
    constructor = LayerDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.1)),
        dict(num_layers=2, layer_decay_rate=0.5))
    groups = constructor(model).optimizer.param_groups
    by_param = {id(p): g for g in groups for p in g['params']}
    backbone = model.backbone
    assert by_param[id(backbone.pos_embed)]['lr'] == 0.125
    assert by_param[id(backbone.pos_embed)]['weight_decay'] == 0.
    in_proj = backbone.layers[1].mixer.in_proj.weight
    assert by_param[id(in_proj)]['lr'] == 0.5 and by_param[id(in_proj)]['weight_decay'] == 0.1
    assert by_param[id(backbone.layers[1].mixer.A_log_0)]['weight_decay'] == 0.
    assert by_param[id(backbone.outnorm_0.weight)]['lr'] == 1.0
    with pytest.raises(ValueError, match='num_layers'):
        LayerDecayOptimWrapperConstructor(dict(optimizer=dict(type='AdamW', lr=1.0)),
                                          dict(layer_decay_rate=0.5))
