import os
import os.path as osp
import subprocess
import sys

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


def run_in_triton_interpreter(script: str, timeout: int = 600) -> float:
    """Run ``script`` in a subprocess under Triton's CPU interpreter (``TRITON_INTERPRET=1``)
    and return the number it prints after ``MAXERR`` (its worst relative error)."""
    pytest.importorskip('triton')
    env = dict(os.environ, TRITON_INTERPRET='1')
    out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return float(out.stdout.split('MAXERR')[-1])
