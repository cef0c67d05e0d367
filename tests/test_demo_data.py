"""Tests of the synthetic COCO / ADE20K demo data generators."""
import filecmp
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from mmlocalmamba.datasets import demo_data as dd

SIZE = (64, 64)
NUM_TRAIN, NUM_VAL = 4, 2
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _all_files(root):
    out = []
    for dirpath, _, names in os.walk(root):
        out += [osp.relpath(osp.join(dirpath, n), root) for n in names]
    return sorted(out)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco'))
    return dd.make_coco_demo(root, NUM_TRAIN, NUM_VAL, SIZE, seed=0,
                             rle_fraction=0.3)


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('ade'))
    return dd.make_ade20k_demo(root, NUM_TRAIN, NUM_VAL, SIZE, seed=0)


# ---------------------------------------------------------------- helpers
def test_polygon_to_mask_uses_pixel_centres():
    # axis-aligned box x in [1, 5], y in [1, 4]: centres 1.5..4.5, 1.5..3.5
    mask = dd.polygon_to_mask([1, 1, 5, 1, 5, 4, 1, 4], 6, 7)
    expected = np.zeros((6, 7), bool)
    expected[1:4, 1:5] = True
    np.testing.assert_array_equal(mask, expected)
    # a large triangle covers about its geometric area (0.5 * 40 * 30)
    tri = dd.polygon_to_mask([5, 5, 45, 5, 5, 35], 50, 50)
    assert abs(int(tri.sum()) - 600) <= 25
    with pytest.raises(ValueError):
        dd.polygon_to_mask([0, 0, 1, 1], 4, 4)


def test_mask_to_rle_roundtrip():
    mask_utils = pytest.importorskip('pycocotools.mask')
    rng = np.random.default_rng(3)
    for first in (0, 1):
        mask = rng.uniform(size=(9, 7)) < 0.4
        mask[0, 0] = bool(first)
        rle = dd.mask_to_rle(mask)
        assert rle['size'] == [9, 7]
        assert sum(rle['counts']) == 63
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 9, 7))
        np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match='img_size'):
        dd.make_coco_demo(str(tmp_path), 1, 1, img_size=(16, 64))
    with pytest.raises(ValueError, match='num_train'):
        dd.make_ade20k_demo(str(tmp_path), -1, 1, img_size=64)
    with pytest.raises(ValueError, match='which'):
        dd.generate_demo_data(str(tmp_path), which='voc')


# ------------------------------------------------------------ determinism
@pytest.mark.parametrize('make', [dd.make_coco_demo, dd.make_ade20k_demo])
def test_same_seed_same_bytes_other_seed_differs(make, tmp_path):
    kwargs = dict(num_train=2, num_val=1, img_size=(48, 64))
    make(str(tmp_path / 'a'), seed=5, **kwargs)
    make(str(tmp_path / 'b'), seed=5, **kwargs)
    make(str(tmp_path / 'c'), seed=6, **kwargs)
    files = _all_files(tmp_path / 'a')
    assert len(files) == (5 if make is dd.make_coco_demo else 6)
    assert files == _all_files(tmp_path / 'b') == _all_files(tmp_path / 'c')
    for rel in files:
        assert filecmp.cmp(tmp_path / 'a' / rel, tmp_path / 'b' / rel,
                           shallow=False), rel
    differ = [not filecmp.cmp(tmp_path / 'a' / rel, tmp_path / 'c' / rel,
                              shallow=False) for rel in files]
    assert all(differ), files


# ------------------------------------------------------------------- COCO
def test_coco_layout_and_summary(coco):
    root = coco['root']
    assert sorted(os.listdir(osp.join(root, 'train'))) == [
        f'{i:012d}.jpg' for i in range(1, NUM_TRAIN + 1)]
    assert len(os.listdir(osp.join(root, 'val'))) == NUM_VAL
    with Image.open(osp.join(root, 'val', '000000000001.jpg')) as img:
        assert img.format == 'JPEG' and img.size == SIZE[::-1]
    data = json.load(open(coco['train_ann_file']))
    assert [c['name'] for c in data['categories']] == list(
        dd.COCO_DEMO_CLASSES)
    assert [c['id'] for c in data['categories']] == [1, 2, 3, 4]
    assert len(data['annotations']) == coco['num_train_instances']
    per_image = np.bincount([a['image_id'] for a in data['annotations']])
    assert per_image[1:].min() >= 1 and per_image.max() <= 5
    assert len({a['id'] for a in data['annotations']}) == len(
        data['annotations'])
    kinds = {type(a['segmentation']).__name__ for a in data['annotations']}
    assert kinds == {'list', 'dict'}  # polygons and some RLE masks
    assert all(a['iscrowd'] == 0 for a in data['annotations'])


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_annotations_match_masks(coco, split):
    from pycocotools.coco import COCO
    api = COCO(coco[f'{split}_ann_file'])
    anns = api.loadAnns(api.getAnnIds())
    assert len(anns) == coco[f'num_{split}_instances'] > 0
    for ann in anns:
        img = api.imgs[ann['image_id']]
        x, y, w, h = ann['bbox']
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= img['width'] and y + h <= img['height']
        if isinstance(ann['segmentation'], list):
            pts = np.asarray(ann['segmentation'][0]).reshape(-1, 2)
            shoelace = 0.5 * abs(
                np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) -
                np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
            assert shoelace > 0
            assert abs(shoelace - ann['area']) <= 0.2 * ann['area']
        mask = api.annToMask(ann).astype(bool)
        ys, xs = np.nonzero(mask)
        corners = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose(corners, [x, y, x + w, y + h], atol=1.0)
    stats = dd.check_coco_annotations(coco[f'{split}_ann_file'])
    assert stats['num_annotations'] == len(anns)
    assert stats['max_bbox_error'] <= 1.0


def test_coco_pixels_have_class_colour(coco):
    """The painted pixels under each mask carry the colour of its class."""
    data = json.load(open(coco['train_ann_file']))
    palette = np.asarray(dd.COCO_DEMO_PALETTE, float)
    names = {i['id']: i['file_name'] for i in data['images']}
    h, w = SIZE
    for ann in data['annotations']:
        img = np.asarray(Image.open(
            osp.join(coco['train_img_dir'], names[ann['image_id']])), float)
        seg = ann['segmentation']
        if isinstance(seg, list):
            mask = dd.polygon_to_mask(seg[0], h, w)
        else:  # uncompressed column-major RLE
            flat = np.repeat(np.arange(len(seg['counts'])) % 2,
                             seg['counts']).astype(bool)
            mask = flat.reshape(w, h).T
        assert int(mask.sum()) == ann['area']
        mean = img[mask].mean(axis=0)
        nearest = np.argmin(np.linalg.norm(palette - mean, axis=1))
        assert nearest + 1 == ann['category_id']


def test_check_coco_annotations_rejects_wrong_bbox(coco, tmp_path):
    data = json.load(open(coco['val_ann_file']))
    data['annotations'][0]['bbox'][0] += 3
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match='differs from mask bbox'):
        dd.check_coco_annotations(str(bad))


def test_mmdet_coco_dataset_loads(coco):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    from mmengine.registry import init_default_scope
    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')
    ds = CocoDataset(
        data_root=coco['root'],
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=dict(classes=dd.COCO_DEMO_CLASSES),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True)
        ])
    assert len(ds) == NUM_TRAIN
    num_inst = 0
    for i in range(len(ds)):
        out = ds[i]
        n = len(out['gt_bboxes'])
        assert out['img'].shape == (*SIZE, 3)
        assert len(out['gt_masks']) == n == len(out['gt_bboxes_labels'])
        assert not out['gt_ignore_flags'].any()
        assert set(out['gt_bboxes_labels'].tolist()) <= {0, 1, 2, 3}
        areas = out['gt_masks'].areas
        assert (areas > 0).all()
        num_inst += n
    assert num_inst == coco['num_train_instances']


# ------------------------------------------------------------------ ADE20K
def test_ade_layout_and_labels(ade):
    root = ade['root']
    for split, folder, num in (('train', 'training', NUM_TRAIN),
                               ('val', 'validation', NUM_VAL)):
        imgs = sorted(os.listdir(osp.join(root, 'images', folder)))
        anns = sorted(os.listdir(osp.join(root, 'annotations', folder)))
        assert imgs == [f'ADE_{split}_{i:08d}.jpg' for i in range(1, num + 1)]
        assert [a.replace('.png', '.jpg') for a in anns] == imgs
    seen = set()
    for name in os.listdir(ade['train_ann_dir']):
        with Image.open(osp.join(ade['train_ann_dir'], name)) as png:
            assert png.mode == 'L' and png.size == SIZE[::-1]
            label = np.asarray(png)
        values = set(np.unique(label).tolist())
        assert values <= set(range(len(dd.ADE_DEMO_CLASSES) + 1))
        assert 0 in values  # a little "other" region per image
        assert 0 < (label == 0).mean() < 0.1
        seen |= values
    assert seen == set(range(len(dd.ADE_DEMO_CLASSES) + 1))
    assert ade['classes'] == list(dd.ADE_DEMO_CLASSES)
    assert len(dd.ADE_DEMO_PALETTE) == len(dd.ADE_DEMO_CLASSES)


def test_mmseg_dataset_reduce_zero_label(ade):
    from mmengine.registry import init_default_scope
    from mmseg.datasets import BaseSegDataset
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    init_default_scope('mmseg')
    ds = BaseSegDataset(
        data_root=ade['root'],
        data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'),
        img_suffix='.jpg',
        seg_map_suffix='.png',
        reduce_zero_label=True,
        metainfo=dict(classes=dd.ADE_DEMO_CLASSES,
                      palette=dd.ADE_DEMO_PALETTE),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', reduce_zero_label=True)
        ])
    assert len(ds) == NUM_TRAIN
    assert ds.metainfo['classes'] == dd.ADE_DEMO_CLASSES
    k = len(dd.ADE_DEMO_CLASSES)
    for i in range(len(ds)):
        out = ds[i]
        seg = out['gt_seg_map']
        assert seg.shape == SIZE and out['img'].shape == (*SIZE, 3)
        assert set(np.unique(seg).tolist()) <= set(range(k)) | {255}
        raw = np.asarray(Image.open(out['seg_map_path'])).astype(int)
        expected = np.where(raw == 0, 255, raw - 1)
        np.testing.assert_array_equal(seg, expected)
        assert osp.basename(out['seg_map_path'])[:-4] == osp.basename(
            out['img_path'])[:-4]


# ------------------------------------------------------- caching and CLI
def test_generate_demo_data_caches_and_cleans(tmp_path):
    root = str(tmp_path)
    kw = dict(num_train=3, num_val=1, img_size=40)
    first = dd.generate_demo_data(root, which='ade', **kw)
    assert first['ade']['regenerated'] and 'coco' not in first
    meta = json.load(open(osp.join(root, 'ade', 'meta.json')))
    assert meta['params']['img_size'] == [40, 40]
    again = dd.generate_demo_data(root, which='ade', **kw)
    assert not again['ade']['regenerated']
    assert dd.generate_demo_data(root, which='ade', force=True,
                                 **kw)['ade']['regenerated']
    # fewer images: the stale ones must go (mmseg lists the folder)
    kw['num_train'] = 1
    assert dd.generate_demo_data(root, which='ade', **kw)['ade']['regenerated']
    assert os.listdir(osp.join(root, 'ade', 'images', 'training')) == [
        'ADE_train_00000001.jpg']
    assert len(os.listdir(osp.join(root, 'ade', 'annotations',
                                   'training'))) == 1
    # deleted outputs are noticed
    os.remove(osp.join(root, 'ade', 'images', 'training',
                       'ADE_train_00000001.jpg'))
    assert dd.generate_demo_data(root, which='ade', **kw)['ade']['regenerated']


def test_cli_writes_both_and_skips(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        'make_demo_data', osp.join(REPO, 'tools', 'make_demo_data.py'))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    argv = ['--out', str(tmp_path), '--num-train', '1', '--num-val', '1',
            '--img-size', '40', '48']
    cli.main(argv)
    out = capsys.readouterr().out
    assert out.count('wrote') == 2 and '40x48' in out
    assert osp.isfile(tmp_path / 'coco' / 'annotations' /
                      'instances_val.json')
    assert osp.isfile(tmp_path / 'ade' / 'annotations' / 'validation' /
                      'ADE_val_00000001.png')
    cli.main(argv)
    assert capsys.readouterr().out.count('up to date') == 2
    with pytest.raises(SystemExit):
        cli.main(['--img-size', '1', '2', '3'])
