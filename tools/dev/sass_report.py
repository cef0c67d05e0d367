"""Compile Triton kernels for an H100 / H200 (sm_90) on a machine WITHOUT a GPU and report each
kernel's registers, spills and the instruction mix of its loops (SASS).

The machinery of ``tools/scan_sass_report.py`` (the LocalVMamba scan) and
``tools/dev/vim_sass_report.py`` (the fused LocalVim layer): Triton compiles through a stand-in
driver; ptxas and cuobjdump come with the triton wheel. Use the device's triton version for
register counts that match there (see those tools' docstrings).
"""
import collections
import os
import re
import subprocess

import torch

__all__ = ['sass_loops', 'capture_compiles', 'report']


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


def capture_compiles(run, capability: int = 90):
    """Call ``run()`` with every Triton kernel launch replaced by a compile for
    ``sm_<capability>`` (nothing executes; CPU tensors pass the launchers' CUDA checks).

    Returns:
        [(kernel name, launch keyword arguments, compiled kernel)] in launch order.
    """
    from triton.runtime.jit import JITFunction

    from mmlocalmamba.ops.triton.compile_worker import stand_in_driver
    stand_in_driver(('cuda', capability, 32), torch.device('cpu'))
    compiled = []

    def compile_only(self, grid):
        def call(*a, **k):
            compiled.append((self.fn.__name__, k, self.warmup(*a, grid=grid, **k)))
        return call

    JITFunction.__getitem__ = compile_only
    torch.Tensor.is_cuda = property(lambda self: True)  # the launchers' CUDA checks
    run()
    return compiled


def report(compiled, dump=None):
    """Print registers, stack bytes, the instruction count and per-loop instruction counts of
    each kernel variant (kernel name + its True constexpr flags); with ``dump``, write .sass /
    .ttgir / .ptx."""
    import triton
    tools = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin')
    if dump:
        os.makedirs(dump, exist_ok=True)
    seen = set()
    for name, kwargs, kern in compiled:
        modes = ','.join(k for k, v in kwargs.items() if k.isupper() and v is True)
        tag = f'{name}[{modes}]'
        if tag in seen:
            continue
        seen.add(tag)
        path = os.path.join(dump or '/tmp', f'{name}_{len(seen)}.cubin')
        with open(path, 'wb') as f:
            f.write(kern.asm['cubin'])
        usage = subprocess.run([os.path.join(tools, 'cuobjdump'), '--dump-resource-usage', path],
                               capture_output=True, text=True).stdout
        regs = re.search(r'REG:(\d+).*?STACK:(\d+)', usage)
        sass = subprocess.run([os.path.join(tools, 'cuobjdump'), '-sass', path],
                              capture_output=True, text=True).stdout
        total = len(re.findall(r'^\s+/\*[0-9a-f]{4,}\*/\s+[^;]*;', sass, re.M))
        print(f'{tag}: {regs.group(1)} registers, {regs.group(2)} bytes stack, {total} '
              f'instructions')
        for start, end, ops in sass_loops(sass):
            top = ', '.join(f'{k}:{v}' for k, v in ops.most_common(12))
            print(f'    loop {start:#x}-{end:#x}: {sum(ops.values())} instructions ({top})')
        if dump:
            for ext, text in (('sass', sass), ('ttgir', kern.asm['ttgir']),
                              ('ptx', kern.asm['ptx'])):
                with open(path[:-5] + 'txt.' + ext, 'w') as f:
                    f.write(text)
