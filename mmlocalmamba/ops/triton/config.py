"""Launch configuration of the Triton scan kernels, as immutable values.

A launcher takes a :class:`ScanConfig` argument (default :data:`DEFAULT_SCAN_CONFIG`); nothing
reads a setting from the environment or from mutable module state. The values and the
measurements behind them are in ``docs/kernel_notes.md``.
"""
from dataclasses import dataclass, field
from typing import Optional

__all__ = ['Tile', 'ScanConfig', 'DEFAULT_SCAN_CONFIG', 'ConvTile', 'VimConfig',
           'DEFAULT_VIM_CONFIG']


@dataclass(frozen=True)
class Tile:
    """One kernel's work split and launch options.

    A program (``num_warps`` warps) owns ``CH * DL`` channels of one (batch, direction): ``DL``
    lanes along channels, ``32 / DL`` along states (``DL = 32``: a thread owns one channel and
    all its states). ``T`` (backward only): steps whose states are recomputed into registers per
    chunk. ``maxnreg``: register cap (None: Triton's choice).
    """

    CH: int = 1
    DL: int = 32
    num_warps: int = 1
    maxnreg: Optional[int] = None
    T: int = 4

    def constexprs(self) -> dict:
        """The tile's kernel constants (``CH``, ``DL``)."""
        return dict(CH=self.CH, DL=self.DL)

    def launch_options(self) -> dict:
        """Triton launch options (``num_warps`` and, when set, ``maxnreg``)."""
        opts = dict(num_warps=self.num_warps)
        if self.maxnreg is not None:
            opts['maxnreg'] = self.maxnreg
        return opts


@dataclass(frozen=True)
class ScanConfig:
    """How the scans are cut into programs and passes.

    Attributes:
        fwd: forward, checkpoint and summary passes (``maxnreg=80``: 25 one-warp programs per
            SM, so the 3,072 programs of LocalVMamba-T's stage 1 at batch 128 run in one wave).
        bwd: the backward kernel (``T`` steps recomputed per chunk).
        target_programs: below this many programs, the scan order is cut into segments that
            run in parallel (summary pass, carry combine, output pass) ...
        min_segment: ... of at least this many steps each.
        lowrank_max: dt ranks up to this are projected to delta inside the kernels; above it,
            ``delta = dt @ W^T`` is one batched GEMM outside and the kernels read it in full.
        ck_every: the backward's checkpoints are every ``ck_every * bwd.T`` steps (a chunk
            between two checkpoints first advances from the previous one). 1 (every chunk):
            7 % faster at stage 1 than 2, for a larger transient buffer (4.9 instead of 2.5 GB at
            batch 128) and +0.5 GiB of training peak (H200, 2026-12-01).
        ck_max_bytes: above this checkpoint size the backward runs in batch groups (8 GB keeps
            LocalVMamba-T's stage 1 at batch 128 in one group).
        du_atomic: the backward adds the K directions' input gradients atomically into one
            buffer instead of writing K buffers and summing them.
        inline_asm: softplus through the SFU's ``lg2.approx`` with a ``log1p`` series, and the
            backward's decay recomputed through ``ex2.approx`` kept apart from the recompute's
            (fewer registers). Triton's interpreter has no inline assembly: it always runs the
            plain formulas.
    """

    fwd: Tile = field(default_factory=lambda: Tile(CH=1, DL=32, num_warps=1, maxnreg=80))
    bwd: Tile = field(default_factory=lambda: Tile(CH=1, DL=32, num_warps=1, T=4))
    target_programs: int = 2048
    min_segment: int = 64
    lowrank_max: int = 16
    ck_every: int = 1
    ck_max_bytes: float = 8e9
    du_atomic: bool = True
    inline_asm: bool = True

    @property
    def ck_spacing(self) -> int:
        """Steps between two backward checkpoints."""
        return self.bwd.T * self.ck_every


#: The configuration the dispatchers use (tuned on an H100; see docs/kernel_notes.md).
DEFAULT_SCAN_CONFIG = ScanConfig()


@dataclass(frozen=True)
class ConvTile:
    """Work split of the LocalVim conv kernels: a program owns ``BT`` steps (or tokens) x ``BD``
    channels of one (batch, direction) and runs ``num_warps`` warps."""

    BT: int = 32
    BD: int = 64
    num_warps: int = 4

    def constexprs(self) -> dict:
        """The tile's kernel constants (``BT``, ``BD``)."""
        return dict(BT=self.BT, BD=self.BD)

    def launch_options(self) -> dict:
        """Triton launch options (``num_warps``)."""
        return dict(num_warps=self.num_warps)


@dataclass(frozen=True)
class VimConfig:
    """Launch configuration of the fused LocalVim layer (:mod:`mmlocalmamba.ops.triton.vim`).

    Attributes:
        scan: the scan passes (the LocalVMamba kernels' settings: tiles, segments, checkpoints,
            dt-rank threshold, inline assembly; the gated kernels use the same tiles). The
            forward tile is capped at 96 registers instead of 80: at 80 the gated forward
            spills 168 bytes (61 local loads / stores per two steps in the loop) at LocalVim-T
            widths (rank 12), at 96 it spills nothing (local SASS report; not yet measured).
        conv: the causal conv1d + SiLU forward, in scan order.
        conv_bwd: its backward in scan order (d pre-activation, weight / bias partial sums).
        conv_dx: the input gradient in natural token order (both halves of ``xz``).
    """

    scan: ScanConfig = field(default_factory=lambda: ScanConfig(
        fwd=Tile(CH=1, DL=32, num_warps=1, maxnreg=96)))
    conv: ConvTile = field(default_factory=ConvTile)
    conv_bwd: ConvTile = field(default_factory=ConvTile)
    conv_dx: ConvTile = field(default_factory=ConvTile)


#: The configuration the LocalVim dispatcher uses (not yet measured on a GPU).
DEFAULT_VIM_CONFIG = VimConfig()
