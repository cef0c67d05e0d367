import os
import os.path as osp

import pytest
import torch

REFERENCE = osp.abspath(
    os.environ.get('MMLOCALMAMBA_REFERENCE',
                   osp.join(osp.dirname(__file__), '..', '..', 'shared', 'reference')))


def reference_path(*parts):
    path = osp.join(REFERENCE, *parts)
    if not osp.exists(path):
        pytest.skip(f'reference material not found: {path}')
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
