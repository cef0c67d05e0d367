"""Direction search on ImageFolder classification data (the paper's setting), on mmengine.

Trains a supernet classifier (timm name, default ``local_vssm_tiny_search``) on an ImageFolder
directory, updating network and architecture weights together, with mmengine's Runner
(checkpoints every epoch, ``--resume``, ``--amp``, ``--launcher pytorch``), then writes the found
directions (``directions.json``, ``directions.py`` snippet, ``directions.png`` heatmap) into the
work dir.

Examples::

    python tools/search_cls.py /data/imagenet/train --val-root /data/imagenet/val \\
        --epochs 20 --batch-size 128 --work-dir work_dirs/search_vssm_tiny
    torchrun --nproc_per_node=8 tools/search_cls.py /data/imagenet/train --launcher pytorch \\
        --amp --work-dir work_dirs/search_vssm_tiny [--resume]
    python tools/search_cls.py data/tiny_imagefolder --img-size 64 --epochs 1 \\
        --model-kwargs '{"arch": {"dims": 16, "depths": [1, 1, 1, 1], "directions": null}}'

The logic lives in :mod:`mmlocalmamba.apis.search_cls`.
"""
import sys

from mmlocalmamba.apis.search_cls import search_cls_main

if __name__ == '__main__':
    search_cls_main(sys.argv[1:])
