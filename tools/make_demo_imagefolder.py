"""Turn the objects of a COCO-format dataset into a classification ImageFolder.

For trying the classification direction search (tools/search_cls.py) without ImageNet::

    python tools/make_demo_data.py --which coco --num-train 1000 --img-size 192
    python tools/make_demo_imagefolder.py data/demo/coco data/demo/shapes --size 64 --gray
    python tools/search_cls.py data/demo/shapes/train --val-root data/demo/shapes/val --img-size 64
"""
import argparse
import json

from mmlocalmamba.search.imagefolder import coco_to_imagefolder
from mmlocalmamba.utils.cli import positive_float, positive_int


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Write square crops of every object of a COCO-format dataset into '
        'OUT/<split>/<category>/ (an ImageFolder).')
    parser.add_argument('coco_root', help='folder with annotations/instances_<split>.json')
    parser.add_argument('out_root')
    parser.add_argument('--splits', nargs='+', default=['train', 'val'])
    parser.add_argument('--size', type=positive_int, default=64, help='crop side in pixels')
    parser.add_argument('--context', type=positive_float, default=1.3,
                        help='crop side / larger box side')
    parser.add_argument('--gray', action='store_true',
                        help='grey-level crops (removes the colour cue of the demo classes)')
    args = parser.parse_args(argv)
    counts = coco_to_imagefolder(args.coco_root, args.out_root, splits=args.splits,
                                 size=args.size, context=args.context, grayscale=args.gray)
    print(json.dumps(counts, indent=1))
    return counts


if __name__ == '__main__':
    main()
