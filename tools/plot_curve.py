"""Plot the per-epoch COCO bbox/segm mAP of a detection work dir to a PNG (and JSON).

    python tools/plot_curve.py WORK_DIR --out docs/demo_curve.png [--json docs/demo_curve.json]

Reads mmengine's ``WORK_DIR/<timestamp>/vis_data/scalars.json`` and prints a Markdown table of
the numbers. The logic lives in :mod:`mmlocalmamba.apis.curves`.
"""
import argparse
import json
import sys

from mmlocalmamba.apis.curves import plot_map_curve, read_scalars


def parse_args(argv):
    parser = argparse.ArgumentParser(description='Plot per-epoch mAP of a detection run.')
    parser.add_argument('work_dir')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--json', help='also write the per-epoch numbers here')
    parser.add_argument('--title', default='Mask R-CNN + LocalVMamba, demo data (CPU)')
    return parser.parse_args(argv)


if __name__ == '__main__':
    args = parse_args(sys.argv[1:])
    scalars = read_scalars(args.work_dir)
    plot_map_curve(scalars, args.out, title=args.title)
    keys = ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'train/loss']
    print('| epoch | ' + ' | '.join(k.split('/')[-1] for k in keys) + ' |')
    print('|---' * (len(keys) + 1) + '|')
    for epoch in sorted(scalars['coco/bbox_mAP']):
        row = [scalars.get(k, {}).get(epoch) for k in keys]
        print(f'| {epoch} | ' + ' | '.join('' if v is None else f'{v:.3f}' for v in row) + ' |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({k: {str(e): v for e, v in sorted(d.items())} for k, d in scalars.items()},
                      f, indent=1)
    print(f'wrote {args.out}' + (f' and {args.json}' if args.json else ''))
