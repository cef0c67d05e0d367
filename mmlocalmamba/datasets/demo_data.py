"""Deterministic synthetic demo datasets in the real COCO and ADE20K formats.

COCO and ADE20K cannot be downloaded in an offline environment, so this
module draws small look-alike datasets that the unmodified mmdet / mmseg
dataset classes read:

* :func:`make_coco_demo` writes a COCO *instance segmentation* dataset of
  coloured geometric shapes (``circle``, ``square``, ``triangle``, ``star``)
  on textured backgrounds. Every object is described by a polygon and its
  pixels are painted from the rasterised polygon, so annotation and image
  agree exactly (``bbox`` is the tight box of the painted pixels, ``area``
  their count); a fraction of objects is stored as (uncompressed) RLE masks
  instead of polygons.
* :func:`make_ade20k_demo` writes an ADE20K-style semantic segmentation
  dataset (``images/{training,validation}/*.jpg`` and single-channel
  ``annotations/{training,validation}/*.png``) whose label maps use the
  ADE20K convention: ``0`` is "other", classes are ``1..K`` and become
  ``0..K-1`` (``0 -> 255``) with ``reduce_zero_label=True``.

Both generators are deterministic: each image is drawn from its own random
generator seeded by ``(seed, split, index)`` and written with fixed encoder
settings, so re-running with the same arguments reproduces identical bytes.
Only numpy, PIL and the standard library are required (pycocotools is
imported lazily by :func:`check_coco_annotations`).
"""
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.logging import print_log
from mmengine.utils import track_iter_progress
from PIL import Image

__all__ = [
    'COCO_DEMO_CLASSES', 'COCO_DEMO_PALETTE', 'ADE_DEMO_CLASSES',
    'ADE_DEMO_PALETTE', 'DEMO_DATA_VERSION', 'polygon_to_mask', 'mask_to_rle',
    'make_coco_demo', 'make_ade20k_demo', 'check_coco_annotations',
    'generate_demo_data'
]

#: Bumped whenever the drawing code changes, so cached data is regenerated.
DEMO_DATA_VERSION = 1

#: COCO demo classes; category ids are ``1..4`` in this order.
COCO_DEMO_CLASSES = ('circle', 'square', 'triangle', 'star')
#: One clearly different RGB colour per COCO demo class (also the fill base).
COCO_DEMO_PALETTE = [(220, 50, 50), (50, 170, 60), (40, 90, 220),
                     (235, 200, 30)]

#: ADE demo classes; stored as ``1..5`` in the PNGs (``0`` = other).
ADE_DEMO_CLASSES = ('sky', 'ground', 'disc', 'box', 'stripes')
#: Visualisation palette of the ADE demo classes (RGB).
ADE_DEMO_PALETTE = [(110, 160, 220), (120, 90, 50), (200, 40, 160),
                    (240, 140, 20), (230, 230, 230)]

JPEG_QUALITY = 95
_SPLIT_CODES = {'train': 0, 'val': 1}
_MIN_SIZE = 32

SizeLike = Union[int, Sequence[int]]


# --------------------------------------------------------------------------
# Generic helpers
# --------------------------------------------------------------------------
def _parse_size(img_size: SizeLike) -> Tuple[int, int]:
    """Return ``(H, W)`` from an int or a pair, checking it is usable."""
    if isinstance(img_size, (int, np.integer)):
        size = (int(img_size), int(img_size))
    else:
        size = tuple(int(s) for s in img_size)
    if len(size) != 2 or min(size) < _MIN_SIZE:
        raise ValueError(f'img_size must be an int or (H, W) with both sides '
                         f'>= {_MIN_SIZE}, got {img_size!r}')
    return size


def _check_counts(num_train: int, num_val: int, seed: int) -> None:
    for name, value in (('num_train', num_train), ('num_val', num_val),
                        ('seed', seed)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f'{name} must be a non-negative int, '
                             f'got {value!r}')


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent generator per image: changing counts keeps old images."""
    return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinearly upsample a ``(gh, gw[, C])`` grid to ``(h, w[, C])``."""
    gh, gw = grid.shape[:2]
    ys = np.linspace(0, gh - 1, h)
    xs = np.linspace(0, gw - 1, w)
    y0 = np.minimum(np.floor(ys).astype(int), gh - 2)
    x0 = np.minimum(np.floor(xs).astype(int), gw - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    if grid.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bot = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def _textured_background(rng: np.random.Generator, h: int, w: int,
                         base: np.ndarray, smooth_amp: float,
                         pixel_sigma: float) -> np.ndarray:
    """Float RGB image: base colour + low-frequency blotches + pixel noise."""
    cells = int(rng.integers(3, 7))
    blotches = _upsample(rng.uniform(-1, 1, (cells, cells, 3)), h, w)
    noise = rng.normal(0, pixel_sigma, (h, w, 3))
    return base[None, None, :] + smooth_amp * blotches + noise


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _save_jpeg(img: np.ndarray, path: str) -> None:
    Image.fromarray(img).save(
        path, format='JPEG', quality=JPEG_QUALITY, subsampling=0)


def _save_label_png(label: np.ndarray, path: str) -> None:
    Image.fromarray(label.astype(np.uint8)).save(path, format='PNG')


def _indices(num: int, progress: bool, task: str):
    """``range(num)``; with ``progress``, a log line and an mmengine progress bar over it."""
    if not progress or num == 0:
        return range(num)
    print_log(f'{task}: {num} images', logger='current')
    return track_iter_progress(list(range(num)), file=sys.stdout)  # the current stdout


def _remove_stale(directory: str, suffix: str, keep: set) -> None:
    """Delete files ending in ``suffix`` that a previous run left behind."""
    for name in os.listdir(directory):
        if name.endswith(suffix) and name not in keep:
            os.remove(osp.join(directory, name))


def polygon_to_mask(polygon: Sequence[float], h: int, w: int) -> np.ndarray:
    """Rasterise a flat ``[x1, y1, x2, y2, ...]`` polygon to a bool mask.

    A pixel ``(row, col)`` is inside when its centre ``(col + 0.5,
    row + 0.5)`` is inside the polygon (even-odd rule). This matches the
    COCO pixel convention used by pycocotools up to boundary pixels.
    """
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        raise ValueError('a polygon needs at least 3 vertices')
    mask = np.zeros((h, w), dtype=bool)
    x_lo = max(int(np.floor(pts[:, 0].min())) - 1, 0)
    x_hi = min(int(np.ceil(pts[:, 0].max())) + 1, w)
    y_lo = max(int(np.floor(pts[:, 1].min())) - 1, 0)
    y_hi = min(int(np.ceil(pts[:, 1].max())) + 1, h)
    if x_lo >= x_hi or y_lo >= y_hi:
        return mask
    py, px = np.mgrid[y_lo:y_hi, x_lo:x_hi] + 0.5
    inside = np.zeros(py.shape, dtype=bool)
    nxt = np.roll(pts, -1, axis=0)
    for (x1, y1), (x2, y2) in zip(pts, nxt):
        if y1 == y2:
            continue  # horizontal edges never cross a horizontal ray
        crosses = (y1 > py) != (y2 > py)
        x_cross = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (px < x_cross)
    mask[y_lo:y_hi, x_lo:x_hi] = inside
    return mask


def mask_to_rle(mask: np.ndarray) -> Dict:
    """Encode a bool mask as uncompressed COCO RLE (column-major counts)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=np.uint8).flatten(order='F')
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts  # COCO RLE always starts with a zero run
    return {'size': [int(h), int(w)], 'counts': [int(c) for c in counts]}


def _mask_bbox(mask: np.ndarray) -> List[float]:
    """``[x, y, w, h]`` of the pixels of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()),
            float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# --------------------------------------------------------------------------
# COCO instance segmentation demo
# --------------------------------------------------------------------------
def _shape_polygon(label: int, cx: float, cy: float, r: float,
                   angle: float) -> np.ndarray:
    """Vertices ``(N, 2)`` of class ``label`` inscribed in circle ``r``."""
    name = COCO_DEMO_CLASSES[label]
    if name == 'circle':
        theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        radii = np.full_like(theta, r)
    elif name == 'square':
        theta = np.arange(4) * np.pi / 2 + np.pi / 4
        radii = np.full_like(theta, r)
    elif name == 'triangle':
        theta = np.arange(3) * 2 * np.pi / 3 - np.pi / 2
        radii = np.full_like(theta, r)
    else:  # star: 5 points, alternating outer / inner radius
        theta = np.arange(10) * np.pi / 5 - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    theta = theta + angle
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)],
                    axis=1)


def _place_circles(rng: np.random.Generator, h: int, w: int,
                   num: int) -> List[Tuple[float, float, float]]:
    """Up to ``num`` non-overlapping ``(cx, cy, r)`` fully inside the image."""
    short = min(h, w)
    r_min, r_max = max(0.07 * short, 4.0), max(0.18 * short, 5.0)
    placed: List[Tuple[float, float, float]] = []
    for _ in range(num * 30):
        if len(placed) == num:
            break
        r = rng.uniform(r_min, r_max)
        cx = rng.uniform(r + 1, w - r - 1)
        cy = rng.uniform(r + 1, h - r - 1)
        if all(np.hypot(cx - x, cy - y) > r + q + 2 for x, y, q in placed):
            placed.append((cx, cy, r))
    return placed


def _draw_coco_image(rng: np.random.Generator, h: int, w: int,
                     max_objects: int,
                     rle_fraction: float) -> Tuple[np.ndarray, List[Dict]]:
    """Draw one image; return it and its objects (label, polygon, mask)."""
    grey = rng.uniform(95, 165)
    base = grey + rng.uniform(-12, 12, 3)
    img = _textured_background(rng, h, w, base, 28.0, 7.0)
    objects = []
    num = int(rng.integers(1, max_objects + 1))
    for cx, cy, r in _place_circles(rng, h, w, num):
        label = int(rng.integers(len(COCO_DEMO_CLASSES)))
        poly = _shape_polygon(label, cx, cy, r, rng.uniform(0, 2 * np.pi))
        poly = np.round(poly, 2)  # the stored polygon is the drawn one
        mask = polygon_to_mask(poly.ravel(), h, w)
        if not mask.any():
            continue
        colour = np.asarray(COCO_DEMO_PALETTE[label], float)
        colour = colour + rng.uniform(-25, 25, 3)
        yy, xx = np.nonzero(mask)
        shade = rng.uniform(-12, 12) * ((xx - cx) + (yy - cy)) / (2 * r)
        fill = colour[None, :] + shade[:, None] + rng.normal(
            0, 5, (len(yy), 3))
        img[yy, xx] = fill
        objects.append(
            dict(label=label, polygon=poly, mask=mask,
                 use_rle=bool(rng.uniform() < rle_fraction)))
    return _to_uint8(img), objects


def _coco_annotation(obj: Dict, ann_id: int, img_id: int) -> Dict:
    """COCO annotation dict of one drawn object."""
    mask = obj['mask']
    if obj['use_rle']:
        segmentation = mask_to_rle(mask)
    else:
        segmentation = [[float(v) for v in obj['polygon'].ravel()]]
    return {
        'id': ann_id,
        'image_id': img_id,
        'category_id': obj['label'] + 1,
        'segmentation': segmentation,
        'area': float(mask.sum()),
        # tight box of the painted pixels: for sharp star / triangle tips
        # the polygon extent can exceed the pixels by more than 1px
        'bbox': _mask_bbox(mask),
        'iscrowd': 0,
    }


def _write_coco_split(out_dir: str, split: str, num: int, h: int, w: int,
                      seed: int, max_objects: int,
                      rle_fraction: float, progress: bool = False) -> Tuple[str, int]:
    """Write images and the annotation json of one split."""
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations, names = [], [], set()
    for index in _indices(num, progress, f'COCO demo {split} -> {img_dir}'):
        img_id = index + 1
        file_name = f'{img_id:012d}.jpg'
        names.add(file_name)
        img, objects = _draw_coco_image(
            _image_rng(seed, split, index), h, w, max_objects, rle_fraction)
        _save_jpeg(img, osp.join(img_dir, file_name))
        images.append({'id': img_id, 'file_name': file_name,
                       'height': h, 'width': w})
        for obj in objects:
            annotations.append(
                _coco_annotation(obj, len(annotations) + 1, img_id))
    _remove_stale(img_dir, '.jpg', names)
    coco = {
        'info': {'description': 'mmlocalmamba synthetic COCO-format demo',
                 'version': str(DEMO_DATA_VERSION), 'seed': int(seed)},
        'licenses': [],
        'images': images,
        'annotations': annotations,
        'categories': [{'id': i + 1, 'name': n, 'supercategory': 'shape'}
                       for i, n in enumerate(COCO_DEMO_CLASSES)],
    }
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    os.makedirs(osp.dirname(ann_file), exist_ok=True)
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file, len(annotations)


def make_coco_demo(out_dir: str,
                   num_train: int = 64,
                   num_val: int = 16,
                   img_size: SizeLike = (256, 256),
                   seed: int = 0,
                   max_objects: int = 5,
                   rle_fraction: float = 0.1,
                   progress: bool = False) -> Dict:
    """Write a synthetic COCO instance segmentation dataset.

    Layout: ``out_dir/{train,val}/<12-digit id>.jpg`` and
    ``out_dir/annotations/instances_{train,val}.json``.

    Args:
        out_dir: Dataset root (created if missing).
        num_train: Number of training images.
        num_val: Number of validation images.
        img_size: ``(H, W)`` or a single int for square images.
        seed: Seed; the same seed reproduces identical files.
        max_objects: Each image holds ``1..max_objects`` shapes (fewer when
            they do not fit without overlapping).
        rle_fraction: Probability that an object is stored as an
            uncompressed RLE mask (``iscrowd=0``) instead of a polygon.
        progress: Log each split and show an mmengine progress bar.

    Returns:
        dict: Summary with paths, image / instance counts and classes.
    """
    _check_counts(num_train, num_val, seed)
    h, w = _parse_size(img_size)
    if max_objects < 1:
        raise ValueError(f'max_objects must be >= 1, got {max_objects}')
    if not 0.0 <= rle_fraction <= 1.0:
        raise ValueError(f'rle_fraction must be in [0, 1], got {rle_fraction}')
    summary = {'root': osp.abspath(out_dir), 'format': 'coco',
               'img_size': [h, w], 'seed': int(seed),
               'classes': list(COCO_DEMO_CLASSES),
               'palette': [list(c) for c in COCO_DEMO_PALETTE]}
    for split, num in (('train', num_train), ('val', num_val)):
        ann_file, num_inst = _write_coco_split(
            out_dir, split, num, h, w, seed, max_objects, rle_fraction, progress)
        summary[f'{split}_img_dir'] = osp.join(summary['root'], split)
        summary[f'{split}_ann_file'] = osp.abspath(ann_file)
        summary[f'num_{split}'] = num
        summary[f'num_{split}_instances'] = num_inst
    return summary


def check_coco_annotations(ann_file: str,
                           tol: float = 1.0,
                           area_rtol: float = 0.15) -> Dict:
    """Validate a COCO annotation file with pycocotools.

    Every annotation must decode (``COCO.annToMask``) to a non-empty mask
    whose tight bounding box has its corners within ``tol`` pixels of the
    corners of ``bbox`` and whose pixel count is within ``area_rtol``
    (relative) of ``area``; the bbox must lie inside its image.
    pycocotools rasterises polygons slightly differently from
    :func:`polygon_to_mask`, hence the tolerances.

    Returns:
        dict: ``num_images``, ``num_annotations`` and ``max_bbox_error``.

    Raises:
        ValueError: Describing the first inconsistent annotation.
    """
    from pycocotools.coco import COCO  # optional dependency, lazy
    coco = COCO(ann_file)
    max_err = 0.0
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.imgs[ann['image_id']]
        x, y, bw, bh = ann['bbox']
        if bw <= 0 or bh <= 0 or x < 0 or y < 0 or \
                x + bw > img['width'] or y + bh > img['height']:
            raise ValueError(f'annotation {ann["id"]}: bbox {ann["bbox"]} '
                             f'is empty or outside its image')
        mask = coco.annToMask(ann).astype(bool)
        if not mask.any():
            raise ValueError(f'annotation {ann["id"]}: empty mask')
        if abs(float(mask.sum()) - ann['area']) > area_rtol * ann['area']:
            raise ValueError(f'annotation {ann["id"]}: area {ann["area"]} '
                             f'but the mask has {int(mask.sum())} pixels')
        mx, my, mw, mh = _mask_bbox(mask)
        err = float(np.abs(np.subtract([mx, my, mx + mw, my + mh],
                                       [x, y, x + bw, y + bh])).max())
        max_err = max(max_err, err)
        if err > tol:
            raise ValueError(f'annotation {ann["id"]}: bbox {ann["bbox"]} '
                             f'differs from mask bbox by {err:.2f}px')
    return {'num_images': len(coco.imgs), 'num_annotations': len(coco.anns),
            'max_bbox_error': max_err}


# --------------------------------------------------------------------------
# ADE20K semantic segmentation demo
# --------------------------------------------------------------------------
def _disc_mask(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return (xx - cx)**2 + (yy - cy)**2 <= r * r


def _random_rect(rng: np.random.Generator, h: int, w: int, lo: float,
                 hi: float) -> Tuple[slice, slice]:
    """Random axis-aligned rectangle with sides in ``[lo, hi]`` of H / W."""
    rh = max(int(rng.uniform(lo, hi) * h), 3)
    rw = max(int(rng.uniform(lo, hi) * w), 3)
    y0 = int(rng.integers(0, h - rh + 1))
    x0 = int(rng.integers(0, w - rw + 1))
    return slice(y0, y0 + rh), slice(x0, x0 + rw)


def _draw_ade_image(rng: np.random.Generator, h: int,
                    w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one scene; return RGB image and label map (0 = other)."""
    label = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]

    # sky (1) above a wavy horizon, ground (2) below it
    horizon = rng.uniform(0.3, 0.6) * h + 0.04 * h * np.sin(
        2 * np.pi * rng.uniform(0.5, 2.0) * xx / w + rng.uniform(0, 6.3))
    sky = yy < horizon
    t = (yy / h)[..., None]
    top = np.array([60., 110., 200.]) + rng.uniform(-15, 15, 3)
    low = np.array([175., 205., 235.]) + rng.uniform(-15, 15, 3)
    sky_img = top * (1 - t) + low * t + rng.normal(0, 4, (h, w, 3))
    ground_base = np.array([120., 90., 50.]) + rng.uniform(-20, 20, 3)
    ground_img = _textured_background(rng, h, w, ground_base, 30.0, 10.0)
    img = np.where(sky[..., None], sky_img, ground_img)
    label[:] = np.where(sky, 1, 2)

    # stripes (5): a rectangle of alternating dark / light bands
    if rng.uniform() < 0.85:
        ys, xs = _random_rect(rng, h, w, 0.2, 0.4)
        period = int(rng.integers(6, 11))
        direction = int(rng.integers(3))
        coord = (yy, xx, yy + xx)[direction][ys, xs]
        light = (coord // (period // 2)) % 2 == 0
        dark, bright = rng.uniform(10, 50), rng.uniform(200, 245)
        band = np.where(light, bright, dark)[..., None].repeat(3, axis=2)
        img[ys, xs] = band + rng.normal(0, 4, band.shape)
        label[ys, xs] = 5

    # boxes (4): orange axis-aligned rectangles
    for _ in range(int(rng.integers(1, 3))):
        ys, xs = _random_rect(rng, h, w, 0.1, 0.25)
        colour = np.asarray(ADE_DEMO_PALETTE[3], float) + rng.uniform(
            -20, 20, 3)
        region = img[ys, xs]
        img[ys, xs] = colour + rng.normal(0, 5, region.shape)
        label[ys, xs] = 4

    # discs (3): magenta circles
    short = min(h, w)
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.05, 0.12) * short
        disc = _disc_mask(h, w, rng.uniform(r, w - r), rng.uniform(r, h - r),
                          r)
        colour = np.asarray(ADE_DEMO_PALETTE[2], float) + rng.uniform(
            -20, 20, 3)
        img[disc] = colour + rng.normal(0, 5, (int(disc.sum()), 3))
        label[disc] = 3

    # other (0): a small patch of random-coloured clutter
    ys, xs = _random_rect(rng, h, w, 0.06, 0.12)
    img[ys, xs] = rng.uniform(0, 255, img[ys, xs].shape)
    label[ys, xs] = 0
    return _to_uint8(img), label


def make_ade20k_demo(out_dir: str,
                     num_train: int = 64,
                     num_val: int = 16,
                     img_size: SizeLike = (256, 256),
                     seed: int = 0,
                     progress: bool = False) -> Dict:
    """Write a synthetic ADE20K-layout semantic segmentation dataset.

    Layout (as mmseg's ADE20K configs expect)::

        out_dir/images/training/ADE_train_00000001.jpg
        out_dir/annotations/training/ADE_train_00000001.png
        out_dir/images/validation/ADE_val_00000001.jpg
        out_dir/annotations/validation/ADE_val_00000001.png

    Label PNGs are single-channel uint8 with ``0`` = other and
    ``i + 1`` = ``ADE_DEMO_CLASSES[i]``; load them with
    ``reduce_zero_label=True``.

    Args:
        out_dir: Dataset root (created if missing).
        num_train: Number of training images.
        num_val: Number of validation images.
        img_size: ``(H, W)`` or a single int for square images.
        seed: Seed; the same seed reproduces identical files.
        progress: Log each split and show an mmengine progress bar.

    Returns:
        dict: Summary with paths, counts, classes and palette.
    """
    _check_counts(num_train, num_val, seed)
    h, w = _parse_size(img_size)
    root = osp.abspath(out_dir)
    summary = {'root': root, 'format': 'ade20k', 'img_size': [h, w],
               'seed': int(seed), 'reduce_zero_label': True,
               'classes': list(ADE_DEMO_CLASSES),
               'palette': [list(c) for c in ADE_DEMO_PALETTE]}
    for split, folder, num in (('train', 'training', num_train),
                               ('val', 'validation', num_val)):
        img_dir = osp.join(root, 'images', folder)
        ann_dir = osp.join(root, 'annotations', folder)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        stems = set()
        for index in _indices(num, progress, f'ADE20K demo {split} -> {img_dir}'):
            stem = f'ADE_{split}_{index + 1:08d}'
            stems.add(stem)
            img, label = _draw_ade_image(_image_rng(seed, split, index), h, w)
            _save_jpeg(img, osp.join(img_dir, stem + '.jpg'))
            _save_label_png(label, osp.join(ann_dir, stem + '.png'))
        _remove_stale(img_dir, '.jpg', {s + '.jpg' for s in stems})
        _remove_stale(ann_dir, '.png', {s + '.png' for s in stems})
        summary[f'{split}_img_dir'] = img_dir
        summary[f'{split}_ann_dir'] = ann_dir
        summary[f'num_{split}'] = num
    return summary


# --------------------------------------------------------------------------
# Cached generation (used by tools/make_demo_data.py)
# --------------------------------------------------------------------------
_GENERATORS = {'coco': make_coco_demo, 'ade': make_ade20k_demo}
META_FILE = 'meta.json'


def _load_meta(path: str) -> Optional[Dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _outputs_exist(summary: Dict) -> bool:
    """Whether every split directory still holds the generated images."""
    for split in ('train', 'val'):
        img_dir = summary.get(f'{split}_img_dir')
        if img_dir is None or not osp.isdir(img_dir):
            return False
        if len(os.listdir(img_dir)) != summary.get(f'num_{split}'):
            return False
        ann = summary.get(f'{split}_ann_file', summary.get(f'{split}_ann_dir'))
        if ann is None or not osp.exists(ann):
            return False
    return True


def generate_demo_data(root: str,
                       which: str = 'all',
                       num_train: int = 64,
                       num_val: int = 16,
                       img_size: SizeLike = (256, 256),
                       seed: int = 0,
                       force: bool = False,
                       progress: bool = False) -> Dict[str, Dict]:
    """Generate ``root/coco`` and/or ``root/ade`` unless already up to date.

    Each dataset directory gets a ``meta.json`` holding the generation
    parameters and summary; a dataset is regenerated only when the
    parameters (or :data:`DEMO_DATA_VERSION`) differ, its files are missing,
    or ``force`` is set. ``progress`` logs each split through mmengine and shows a progress
    bar while the images are written.

    Returns:
        dict: ``{name: summary}`` where each summary has an extra
        ``'regenerated'`` flag.
    """
    if which not in ('coco', 'ade', 'all'):
        raise ValueError(f"which must be 'coco', 'ade' or 'all', got {which!r}")
    h, w = _parse_size(img_size)
    names = ['coco', 'ade'] if which == 'all' else [which]
    results = {}
    for name in names:
        out_dir = osp.join(root, name)
        params = {'kind': name, 'num_train': int(num_train),
                  'num_val': int(num_val), 'img_size': [h, w],
                  'seed': int(seed), 'version': DEMO_DATA_VERSION}
        meta_path = osp.join(out_dir, META_FILE)
        meta = _load_meta(meta_path)
        if not force and meta is not None and meta.get('params') == params \
                and _outputs_exist(meta.get('summary', {})):
            results[name] = dict(meta['summary'], regenerated=False)
            continue
        if osp.exists(meta_path):
            os.remove(meta_path)  # invalid until the new data is complete
        summary = _GENERATORS[name](out_dir, num_train=num_train,
                                    num_val=num_val, img_size=(h, w),
                                    seed=seed, progress=progress)
        with open(meta_path, 'w') as f:
            json.dump({'params': params, 'summary': summary}, f, indent=2)
        results[name] = dict(summary, regenerated=True)
    return results
