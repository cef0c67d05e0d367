"""Console commands of the package (``[project.scripts]`` in ``pyproject.toml``).

``mmlocalmamba-train`` and ``mmlocalmamba-test`` are ``tools/train.py`` and ``tools/test.py``
(mmdet or mmseg configs, ``mmlocalmamba::`` bases included); ``mmlocalmamba-search-cls`` is
``tools/search_cls.py``. Each returns the exit status 0 after a successful run.
"""
from typing import Optional, Sequence

__all__ = ['train', 'test', 'search_cls']


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



def search_cls(argv: Optional[Sequence[str]] = None) -> int:
    """``mmlocalmamba-search-cls TRAIN_ROOT [options]``: see ``search_cls.search_cls_main``."""
    from .search_cls import search_cls_main
    search_cls_main(argv)
    return 0
