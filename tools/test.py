"""Evaluate an mmdet or mmseg checkpoint; LocalMamba backbones are registered automatically.

    python tools/test.py CONFIG CHECKPOINT [--tta] [--show-dir DIR] [--out FILE.pkl]
                         [--metrics-out FILE.json] [--allow-partial-checkpoint]
                         [--work-dir DIR] [--cfg-options KEY=VALUE ...]
                         [--launcher {none,pytorch,slurm,mpi}]

A checkpoint without weights for some parts of the model (e.g. a backbone-only or ImageNet
checkpoint) is refused unless --allow-partial-checkpoint is given. Checkpoints load with the
checked weights-only loader; MMLOCALMAMBA_TRUST_CHECKPOINTS=1 unpickles a trusted file in full.

The logic lives in :mod:`mmlocalmamba.apis.runner`.
"""
import sys

from mmlocalmamba.apis.runner import test_main

if __name__ == '__main__':
    test_main(sys.argv[1:])
