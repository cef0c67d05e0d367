"""Paint a trained model's predictions (DetInferencer / MMSegInferencer) into one PNG.

    python tools/visualize.py CONFIG CHECKPOINT IMAGE_OR_DIR [...] --out FILE.png
                              [--limit 4] [--score-thr 0.3] [--columns 4] [--device cpu]

Works offline: the config file and the checkpoint are given explicitly. A directory contributes
its first ``--limit`` images. The logic lives in :mod:`mmlocalmamba.apis.inference`.
"""
import argparse
import sys

from mmlocalmamba.apis.inference import collect_images, visualize_predictions
from mmlocalmamba.utils.cli import positive_int, probability


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Paint a trained model's predictions into one PNG.")
    parser.add_argument('config', help='mmdet or mmseg config file')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('images', nargs='+', help='image files or directories')
    parser.add_argument('--out', required=True, help='PNG file to write')
    parser.add_argument('--limit', type=positive_int, default=4,
                        help='images taken from a directory')
    parser.add_argument('--score-thr', type=probability, default=0.3,
                        help='hide detections below this score')
    parser.add_argument('--columns', type=positive_int, default=4, help='images per row')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


if __name__ == '__main__':
    args = parse_args(sys.argv[1:])
    images = collect_images(args.images, limit=args.limit)
    path = visualize_predictions(args.config, args.checkpoint, images, args.out,
                                 device=args.device, score_thr=args.score_thr,
                                 columns=args.columns)
    print(f'wrote {path} ({len(images)} images)')
