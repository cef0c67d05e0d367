"""The fused LocalVMamba scan kernel alone, at the four stage shapes of LocalVMamba-T.

Batch 128 at 224x224 (bf16 activations as under autocast): forward and forward + backward time
of the scan given its projection, the whole op with the projection, and the achieved memory
bandwidth next to the measured device-to-device copy bandwidth. CUDA only.
"""
import math
from typing import Callable, Dict, List

import torch

from .measure import time_calls

SCAN_DIRECTIONS = ('h', 'h_flip', 'w7', 'w7_flip')
# LocalVMamba-T: dims 96 * 2^i, inner channels 2x, dt rank ceil(C/16), N = 16, 224x224 input.
TINY_STAGES = [dict(stage=i, height=56 >> i, width=56 >> i, channels=192 << i,
                    rank=math.ceil((96 << i) / 16)) for i in range(4)]


def scan_inputs(batch, stage, device, dtype=torch.bfloat16, num_dirs=4, nstate=16):
    """Stage-shaped inputs of one SS2D scan (bf16 activations as under autocast)."""
    chans, rank = stage['channels'], stage['rank']
    height, width = stage['height'], stage['width']
    x = torch.randn(batch, chans, height, width, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    x_proj = torch.randn(num_dirs, rank + 2 * nstate, chans, device=device) * chans**-0.5
    dt_w = torch.randn(num_dirs, chans, rank, device=device) * rank**-0.5
    dt_b = torch.randn(num_dirs, chans, device=device) * 0.5 - 4.0
    a_logs = torch.log(torch.arange(1, nstate + 1, device=device, dtype=torch.float32)).repeat(
        num_dirs * chans, 1)
    ds = torch.ones(num_dirs * chans, device=device)
    return [x, x_proj, dt_w, dt_b, a_logs, ds]


def scan_bytes(batch, stage, num_dirs=4, nstate=16):
    """Bytes of the scan at a stage shape.

    ``official``: what the official kernel interface reads and writes (u, delta, B, C in, y out,
    all fp32, per direction). ``fused``: what this kernel must move at least (x and x_dbl in
    bf16 read once, y in fp32 written once).
    """
    tokens = stage['height'] * stage['width']
    chans, rank = stage['channels'], stage['rank']
    big = batch * num_dirs * chans * tokens
    official = 4 * (3 * big + 2 * batch * num_dirs * nstate * tokens)
    fused = (2 * batch * chans * tokens + 2 * batch * tokens * num_dirs * (rank + 2 * nstate) +
             4 * big)
    return official, fused


def bench_scan(batch: int, iters: int, warmup: int, copy_tbps: float, device: torch.device,
               log: Callable[[str], None]) -> List[Dict[str, object]]:
    """One row per stage (see the module docstring)."""
    from ...ops.scan_orders import kernel_tables
    from ...ops.triton import scan as ts
    rows = []
    for stage in TINY_STAGES:
        params = scan_inputs(batch, stage, device)
        x, x_proj, dt_w, dt_b, a_logs, ds = params
        height, width, chans = stage['height'], stage['width'], stage['channels']
        tables = kernel_tables(height, width, SCAN_DIRECTIONS, False, x.device)
        x_cl = x.permute(0, 2, 3, 1).reshape(batch, height * width, chans)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            x_dbl = ts.project(x_cl, x_proj, 16)
        leaves = [x_cl.detach().requires_grad_(True), x_dbl.detach().requires_grad_(True)]
        leaves += [p.detach().requires_grad_(True) for p in (dt_w, dt_b, a_logs, ds)]

        def scan():
            # the scan given the projection (for ranks above the in-kernel limit this includes
            # the delta GEMM, see ops.triton.scan.scan_projected)
            with torch.autocast('cuda', dtype=torch.bfloat16):
                return ts.scan_projected(*leaves, tables, 16)

        def kernel_fwd():
            with torch.no_grad():
                return scan()

        y = kernel_fwd()
        grad = torch.randn_like(y)

        def kernel_fwd_bwd():
            torch.autograd.grad(scan(), leaves, grad)

        op_leaves = [p.detach().requires_grad_(True) for p in params]

        def op_fwd_bwd():
            with torch.autocast('cuda', dtype=torch.bfloat16):
                out = ts.local_selective_scan_triton(*op_leaves, tables)
            torch.autograd.grad(out, op_leaves, grad)

        fwd = time_calls(kernel_fwd, device, iters, warmup)['ms']
        fwd_bwd = time_calls(kernel_fwd_bwd, device, iters, warmup)['ms']
        op = time_calls(op_fwd_bwd, device, iters, warmup)['ms']
        official_bytes, fused_bytes = scan_bytes(batch, stage)
        row = dict(stage=stage['stage'], B=batch, K=4, D=chans, L=height * width, N=16,
                   R=stage['rank'], fwd_ms=fwd, fwd_bwd_ms=fwd_bwd, op_fwd_bwd_ms=op,
                   official_bytes=official_bytes, fused_bytes=fused_bytes,
                   fwd_official_tbps=official_bytes / fwd / 1e9,
                   fwd_fused_tbps=fused_bytes / fwd / 1e9)
        row['fwd_pct_copy_official'] = 100 * row['fwd_official_tbps'] / copy_tbps
        row['fwd_pct_copy_fused'] = 100 * row['fwd_fused_tbps'] / copy_tbps
        rows.append(row)
        log(f"  scan stage {row['stage']}: L={row['L']} D={chans} fwd {fwd:.3f} ms "
            f"({row['fwd_official_tbps']:.2f} TB/s official-equivalent = "
            f"{row['fwd_pct_copy_official']:.0f}% of copy; {row['fwd_fused_tbps']:.2f} TB/s own "
            f"bytes), fwd+bwd {fwd_bwd:.3f} ms, op with projection fwd+bwd {op:.3f} ms")
        del params, leaves, op_leaves, y, grad, x_cl, x_dbl
        torch.cuda.empty_cache()
    return rows
