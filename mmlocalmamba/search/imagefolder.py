"""Object crops of a COCO-format detection dataset as a classification ImageFolder.

The classification direction search (:mod:`.trainer`) reads ``root/<class>/<image>`` folders.
:func:`coco_to_imagefolder` makes one from any COCO-format dataset (the synthetic demo data of
``tools/make_demo_data.py``, or real COCO): every annotated object becomes a square crop around
its box, resized to ``size`` x ``size``, in the folder of its category. Only PIL and the standard
library are used.
"""
import json
import os
import os.path as osp
from typing import Dict, Sequence

from PIL import Image

__all__ = ['coco_to_imagefolder']


def _safe(name: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)


def coco_to_imagefolder(coco_root: str,
                        out_root: str,
                        splits: Sequence[str] = ('train', 'val'),
                        size: int = 64,
                        context: float = 1.3,
                        min_size: float = 8.0,
                        grayscale: bool = False) -> Dict[str, Dict[str, int]]:
    """Write ``out_root/<split>/<category>/<image id>_<ann id>.png`` crops.

    Args:
        coco_root: folder with ``annotations/instances_<split>.json`` and images in
            ``<split>/`` (the layout of the demo data; real COCO: ``train2017``... give
            ``splits=('train2017', 'val2017')``).
        out_root: output folder.
        splits: splits to convert.
        size: side of the saved crops in pixels.
        context: crop side = ``context * max(box width, box height)``, centred on the box.
        min_size: skip objects whose larger box side is smaller (pixels). ``iscrowd`` objects
            are always skipped.
        grayscale: save grey-level crops (3 equal channels), e.g. to take away a colour cue
            (the demo data paints every class in its own colour).

    Returns:
        ``{split: {category: number of crops}}``.

    Raises:
        FileNotFoundError: an annotation file is missing.
    """
    counts: Dict[str, Dict[str, int]] = {}
    for split in splits:
        ann_file = osp.join(coco_root, 'annotations', f'instances_{split}.json')
        if not osp.isfile(ann_file):
            raise FileNotFoundError(f'COCO annotation file not found: {ann_file!r}')
        with open(ann_file) as f:
            coco = json.load(f)
        cats = {c['id']: _safe(c['name']) for c in coco['categories']}
        images = {img['id']: img for img in coco['images']}
        by_image: Dict[int, list] = {}
        for ann in coco['annotations']:
            if not ann.get('iscrowd', 0) and max(ann['bbox'][2:]) >= min_size:
                by_image.setdefault(ann['image_id'], []).append(ann)
        split_counts = {name: 0 for name in cats.values()}
        for name in cats.values():
            os.makedirs(osp.join(out_root, split, name), exist_ok=True)
        for img_id, anns in sorted(by_image.items()):
            with Image.open(osp.join(coco_root, split, images[img_id]['file_name'])) as img:
                img = img.convert('L').convert('RGB') if grayscale else img.convert('RGB')
                for ann in anns:
                    x, y, w, h = ann['bbox']
                    side = context * max(w, h)
                    cx, cy = x + w / 2, y + h / 2
                    box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2,
                                                        cx + side / 2, cy + side / 2))
                    crop = img.crop(box).resize((size, size), Image.BICUBIC)
                    name = cats[ann['category_id']]
                    crop.save(osp.join(out_root, split, name, f'{img_id}_{ann["id"]}.png'))
                    split_counts[name] += 1
        counts[split] = split_counts
    return counts
