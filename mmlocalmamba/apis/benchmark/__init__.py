"""GPU benchmarks behind ``tools/benchmark.py`` and ``tools/dev/profile_backbone.py``.

Modules: :mod:`.measure` (timing, peak memory, environment), :mod:`.workloads`
(classification and backbone models and steps), :mod:`.steps` (mmdet / mmseg training steps
from configs on synthetic batches), :mod:`.scan` (the scan kernel alone), :mod:`.compiling`
(``torch.compile`` and fresh-Triton-cache first calls), :mod:`.profiling` (grouped kernel
tables), :mod:`.report` (ratios, markdown) and :mod:`.cli` (the sections and the command line).
Nothing here imports mmdet or mmseg at import time.
"""
from .cli import SECTIONS, main, parse_args, sections_of

__all__ = ['SECTIONS', 'main', 'parse_args', 'sections_of']
