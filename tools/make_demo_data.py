"""Generate the synthetic COCO / ADE20K demo datasets.

Examples::

    python tools/make_demo_data.py                      # data/demo/{coco,ade}
    python tools/make_demo_data.py --which coco --num-train 128 --img-size 320
    python tools/make_demo_data.py --force              # regenerate anyway

Datasets whose ``meta.json`` already records the same parameters are kept.
"""
import argparse

from mmlocalmamba.datasets.demo_data import generate_demo_data
from mmlocalmamba.utils.cli import positive_int


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Write deterministic synthetic demo datasets in COCO '
        '(instance segmentation) and ADE20K (semantic segmentation) format.')
    parser.add_argument('--out', default='data/demo',
                        help='root folder; datasets go to OUT/coco, OUT/ade')
    parser.add_argument('--which', choices=['coco', 'ade', 'all'],
                        default='all', help='which dataset(s) to write')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=positive_int, default=64)
    parser.add_argument('--num-val', type=positive_int, default=16)
    parser.add_argument('--img-size', type=positive_int, nargs='+', default=[256],
                        metavar='N', help='S (square) or H W')
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if the data is up to date')
    parser.add_argument('--quiet', action='store_true',
                        help='no progress bar while the images are written')
    args = parser.parse_args(argv)
    if len(args.img_size) not in (1, 2):
        parser.error('--img-size takes one (S) or two (H W) integers')
    return args


def main(argv=None):
    args = parse_args(argv)
    size = args.img_size * 2 if len(args.img_size) == 1 else args.img_size
    results = generate_demo_data(
        args.out, which=args.which, num_train=args.num_train,
        num_val=args.num_val, img_size=size, seed=args.seed, force=args.force,
        progress=not args.quiet)
    for name, summary in results.items():
        state = 'wrote' if summary['regenerated'] else 'up to date, kept'
        print(f'[{name}] {state}: {summary["root"]} '
              f'({summary["num_train"]} train / {summary["num_val"]} val '
              f'images, {summary["img_size"][0]}x{summary["img_size"][1]}, '
              f'classes {", ".join(summary["classes"])})')


if __name__ == '__main__':
    main()
