"""GPU benchmarks: LocalVMamba / LocalVim next to Swin, ConvNeXt, DeiT, ViT; JSON + markdown.

Sections (``--what``, comma-separated; default ``all``): ``cls``, ``backbone``, ``det``, ``seg``,
``vim``, ``det_vim``, ``scan``, ``compile`` (see ``mmlocalmamba/apis/benchmark/cli.py``). Run
from the repository root with the repository on ``PYTHONPATH`` (or the package installed)::

    python tools/benchmark.py --json work_dirs/bench.json --md work_dirs/bench.md
    python tools/benchmark.py --what det,seg --step-iters 10 --json work_dirs/bench.json --merge
    python tools/benchmark.py --what none --profile cls,det --json work_dirs/profile.json
    python tools/benchmark.py --what det,seg,vim --device cpu --tiny   # code paths, on a CPU
    python tools/benchmark.py --plot work_dirs/bench.json --png docs/benchmarks.png
"""
from mmlocalmamba.apis.benchmark import main

if __name__ == '__main__':
    main()
