"""Compile the Triton scan kernels for an H100 (sm_90) on a machine WITHOUT a GPU and report each
kernel's registers, spills and the instruction mix of its loops (SASS), at a LocalVMamba-T stage.

Triton compiles through a stand-in driver; ptxas and cuobjdump come with the triton wheel. Use
the device's triton version (3.6.0 on the H100 machines) for register counts that match there:

    pip download --no-deps -d /tmp/tri triton==3.6.0 && \
        pip install --no-deps --target /tmp/tri36 /tmp/tri/triton-3.6.0-*.whl
    PYTHONPATH=/tmp/tri36 python tools/dev/scan_sass_report.py --stage 1 [--dump work_dirs/sass]

Other launch configurations: ``--config "ScanConfig(...)"`` (mmlocalmamba/ops/triton/config.py).
"""
import argparse
import collections
import math
import os
import re
import subprocess

import torch


def _mix(lines):
    ops = collections.Counter()
    for line in lines:
        m = re.match(r'(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)', line)
        if m:
            ops[m.group(1)] += 1
    return ops


def sass_loops(sass):
    """(start, end, instruction Counter) of every backward branch (a loop) in cuobjdump SASS."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in
           (re.match(r'\s+/\*([0-9a-f]{4,})\*/\s+(.*?);', line) for line in sass.splitlines()) if m]
    where = {a: i for i, (a, _) in enumerate(ins)}
    loops = []
    for i, (addr, text) in enumerate(ins):
        m = re.search(r'BRA\s+.*?0x([0-9a-f]+)', text)
        if m and int(m.group(1), 16) < addr and int(m.group(1), 16) in where:
            body = [t for _, t in ins[where[int(m.group(1), 16)]:i + 1]]
            loops.append((int(m.group(1), 16), addr, _mix(body)))
    return loops


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--stage', type=int, default=1, help='LocalVMamba-T stage 1..4')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--dump', help='folder for .sass / .ttgir / .ptx of each kernel')
    parser.add_argument('--config', default='ScanConfig()',
                        help='launch configuration, e.g. "ScanConfig(bwd=Tile(T=8), '
                        'bwd_scratch=True)"')
    args = parser.parse_args()

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    class StandInDriver:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget('cuda', 90, 32)

        def get_active_torch_device(self):
            return torch.device('cpu')

    driver.set_active(StandInDriver())
    compiled = []

    def compile_only(self, grid):
        def call(*a, **k):
            compiled.append((self.fn.__name__, k, self.warmup(*a, grid=grid, **k)))
        return call

    JITFunction.__getitem__ = compile_only
    torch.Tensor.is_cuda = property(lambda self: True)  # the wrapper's CUDA check
    from mmlocalmamba.ops.scan_orders import kernel_tables
    from mmlocalmamba.ops.triton import ScanConfig, Tile
    from mmlocalmamba.ops.triton.scan import local_selective_scan_triton

    i = args.stage - 1
    height = width = 56 >> i
    chans, rank, nstate, dirs = 192 << i, math.ceil((96 << i) / 16), 16, 4
    bf16 = torch.bfloat16
    params = [torch.randn(args.batch, chans, height, width, dtype=bf16),
              torch.randn(dirs, rank + 2 * nstate, chans, dtype=bf16),
              torch.randn(dirs, chans, rank, dtype=bf16), torch.randn(dirs, chans),
              torch.randn(dirs * chans, nstate), torch.randn(dirs * chans)]
    params = [p.requires_grad_(True) for p in params]
    tables = kernel_tables(height, width, ('h', 'h_flip', 'w7', 'w7_flip'))
    config = eval(args.config, {'ScanConfig': ScanConfig, 'Tile': Tile})  # noqa: S307 (dev tool)
    y = local_selective_scan_triton(*params, tables, config=config)
    y.backward(torch.randn_like(y))

    tools = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin')
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    seen = set()
    for name, kwargs, kern in compiled:
        modes = ','.join(k for k, v in kwargs.items() if k.isupper() and v is True)
        tag = f'{name}[{modes}]'
        if tag in seen:
            continue
        seen.add(tag)
        path = os.path.join(args.dump or '/tmp', f'{name}_{len(seen)}.cubin')
        with open(path, 'wb') as f:
            f.write(kern.asm['cubin'])
        usage = subprocess.run([os.path.join(tools, 'cuobjdump'), '--dump-resource-usage', path],
                               capture_output=True, text=True).stdout
        regs = re.search(r'REG:(\d+).*?STACK:(\d+)', usage)
        sass = subprocess.run([os.path.join(tools, 'cuobjdump'), '-sass', path],
                              capture_output=True, text=True).stdout
        print(f'{tag}: {regs.group(1)} registers, {regs.group(2)} bytes stack')
        for start, end, ops in sass_loops(sass):
            top = ', '.join(f'{k}:{v}' for k, v in ops.most_common(12))
            print(f'    loop {start:#x}-{end:#x}: {sum(ops.values())} instructions ({top})')
        if args.dump:
            for ext, text in (('sass', sass), ('ttgir', kern.asm['ttgir']),
                              ('ptx', kern.asm['ptx'])):
                with open(path[:-5] + 'txt.' + ext, 'w') as f:
                    f.write(text)


if __name__ == '__main__':
    main()
