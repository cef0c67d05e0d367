"""Direction search on ImageNet-style classification data (the paper's setting).

Trains a supernet classifier (timm name, default ``local_vssm_tiny_search``) on an ImageFolder
directory, updating network and architecture weights together, then writes the found directions
(``directions.json``, ``directions.py`` snippet, ``directions.png`` heatmap) into the work dir.

Examples::

    python tools/search_cls.py /data/imagenet/train --val-root /data/imagenet/val \\
        --epochs 20 --batch-size 128 --work-dir work_dirs/search_vssm_tiny
    python tools/search_cls.py data/tiny_imagefolder --img-size 64 --epochs 1 \\
        --model-kwargs '{"arch": {"dims": 16, "depths": [1, 1, 1, 1], "directions": null}}'
"""
import argparse
import json
import os.path as osp
import sys

# allow running from a source checkout without installing the package
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmlocalmamba.search.trainer import search_classification  # noqa: E402
from mmlocalmamba.utils.cli import non_negative_float, non_negative_int  # noqa: E402
from mmlocalmamba.utils.cli import positive_float, positive_int  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Search LocalMamba scan directions on an ImageFolder classification set.')
    p.add_argument('train_root', help='ImageFolder directory: <class>/<image>')
    p.add_argument('--val-root', default=None, help='ImageFolder with the same classes')
    p.add_argument('--model', default='local_vssm_tiny_search',
                   help='timm name of a supernet (registered by mmlocalmamba)')
    p.add_argument('--model-kwargs', type=json.loads, default=None,
                   help='JSON object of extra model arguments, e.g. \'{"drop_path_rate": 0.1}\'')
    p.add_argument('--work-dir', default='work_dirs/search_cls')
    p.add_argument('--epochs', type=positive_int, default=100)
    p.add_argument('--max-iters', type=positive_int, default=None,
                   help='stop after this many iterations')
    p.add_argument('--batch-size', type=positive_int, default=128)
    p.add_argument('--img-size', type=positive_int, default=224)
    p.add_argument('--lr', type=positive_float, default=1e-3)
    p.add_argument('--weight-decay', type=non_negative_float, default=0.05)
    p.add_argument('--arch-lr-mult', type=non_negative_float, default=1.0,
                   help='learning-rate multiplier of the architecture weights (no weight decay)')
    p.add_argument('--warmup-iters', type=non_negative_int, default=0)
    p.add_argument('--num-workers', type=non_negative_int, default=4)
    p.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--log-interval', type=positive_int, default=20)
    p.add_argument('--topk', type=positive_int, default=4)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = search_classification(
        args.train_root, model=args.model, work_dir=args.work_dir, val_root=args.val_root,
        epochs=args.epochs, max_iters=args.max_iters, batch_size=args.batch_size,
        img_size=args.img_size, lr=args.lr, weight_decay=args.weight_decay,
        arch_lr_mult=args.arch_lr_mult, warmup_iters=args.warmup_iters,
        num_workers=args.num_workers, device=args.device, seed=args.seed,
        log_interval=args.log_interval, topk=args.topk, model_kwargs=args.model_kwargs)
    with open(out['paths']['snippet']) as f:
        print(f.read())
    for kind, path in out['paths'].items():
        print(f'{kind:>8}: {path}')
    return out


if __name__ == '__main__':
    main()
