"""Export the scan directions found by a direction search.

From a supernet checkpoint (mmdet/mmseg checkpoint with a ``backbone.`` prefix, a checkpoint of
tools/search_cls.py, or an official-style classification checkpoint), pick the top-k directions
of every layer by softmax(multi_scan.weights), listed in candidate order, and write

* ``OUT_DIR/directions.json``  (probabilities, choice, inferred dims/depths),
* ``OUT_DIR/directions.py``    (config snippet with ``directions=[...]``, also printed),
* ``OUT_DIR/directions.png``   (heatmap: layers x candidates, chosen cells framed).

Examples::

    python tools/search_directions.py \\
        work_dirs/mask-rcnn_localvmamba-demo-search_fpn_1xb4-8e_demo-coco/epoch_8.pth
    python tools/search_directions.py supernet.pth --topk 4 --out-dir searched/ --name tiny
"""
import argparse
import os.path as osp

from mmlocalmamba.search.export import export_all
from mmlocalmamba.utils.cli import positive_int


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Pick the top-k scan directions per layer from a direction-search '
        'supernet checkpoint; write JSON, a config snippet and a heatmap PNG.')
    parser.add_argument('checkpoint', help='supernet checkpoint (.pth)')
    parser.add_argument('--topk', type=positive_int, default=4, help='directions kept per layer')
    parser.add_argument('--out-dir', default=None,
                        help='output folder (default: the checkpoint folder)')
    parser.add_argument('--name', default='directions', help='output file name stem')
    parser.add_argument('--candidates', nargs='+', default=None, metavar='DIR',
                        help='candidate list of the supernet, if custom and not stored in the '
                        'checkpoint (default: stored list, else h h_flip v v_flip w2 w2_flip w7 '
                        'w7_flip)')
    parser.add_argument('--prefix', default=None,
                        help="state-dict prefix of the backbone (default: 'backbone.' when "
                        'present)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out_dir = args.out_dir or osp.dirname(osp.abspath(args.checkpoint))
    result, paths = export_all(args.checkpoint, out_dir, topk=args.topk,
                               candidates=args.candidates, prefix=args.prefix, name=args.name)
    with open(paths['snippet']) as f:
        print(f.read())
    for kind, path in paths.items():
        print(f'{kind:>8}: {path}')
    return result


if __name__ == '__main__':
    main()
