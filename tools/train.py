"""Train an mmdet or mmseg model; LocalMamba backbones are registered automatically.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp]
                          [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

The logic lives in :mod:`mmlocalmamba.apis.runner`.
"""
import sys

from mmlocalmamba.apis.runner import train_main

if __name__ == '__main__':
    train_main(sys.argv[1:])
