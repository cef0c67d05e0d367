"""GPU benchmarks behind ``tools/benchmark.py`` and ``tools/profile_backbone.py``.

Modules: :mod:`.measure` (timing, peak memory, environment), :mod:`.workloads`
(classification and backbone models and steps), :mod:`.steps` (mmdet / mmseg training steps
from configs on synthetic batches), :mod:`.scan` (the scan kernel alone), :mod:`.compiling`
(``torch.compile`` and fresh-Triton-cache first calls) and :mod:`.profiling` (grouped kernel
tables). Nothing here imports mmdet or mmseg at import time.
"""
