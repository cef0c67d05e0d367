"""Evaluate an mmdet or mmseg checkpoint; LocalMamba backbones are registered automatically.

    python tools/test.py CONFIG CHECKPOINT [--tta] [--show-dir DIR] [--out FILE.pkl]
                         [--metrics-out FILE.json]
                         [--work-dir DIR] [--cfg-options KEY=VALUE ...]
                         [--launcher {none,pytorch,slurm,mpi}]

The logic lives in :mod:`mmlocalmamba.apis.runner`.
"""
import sys

from mmlocalmamba.apis.runner import test_main

if __name__ == '__main__':
    test_main(sys.argv[1:])
