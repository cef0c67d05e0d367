"""Console commands of the package (``[project.scripts]`` in ``pyproject.toml``).

``mmlocalmamba-train`` and ``mmlocalmamba-test`` are ``tools/train.py`` and ``tools/test.py``
(mmdet or mmseg configs, ``mmlocalmamba::`` bases included). Each returns the exit status 0
after a successful run.
"""
from typing import Optional, Sequence

__all__ = ['train', 'test']


def train(argv: Optional[Sequence[str]] = None) -> int:
    """``mmlocalmamba-train CONFIG [options]``: see :func:`mmlocalmamba.apis.runner.train_main`."""
    from .runner import train_main
    train_main(argv)
    return 0


def test(argv: Optional[Sequence[str]] = None) -> int:
    """``mmlocalmamba-test CONFIG CHECKPOINT [options]``: see ``runner.test_main``."""
    from .runner import test_main
    test_main(argv)
    return 0

