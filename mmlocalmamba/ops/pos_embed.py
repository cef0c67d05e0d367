"""Position embeddings of the plain LocalVim backbone: grid resizing and 2-D rotary embedding."""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['resize_grid_embed', 'resize_pos_embed', 'rope_tables', 'apply_rope', 'rotate_half']


def resize_grid_embed(embed: torch.Tensor, src_hw: Tuple[int, int],
                      dst_hw: Tuple[int, int], mode: str = 'bicubic') -> torch.Tensor:
    """Resize per-token embeddings laid out on a row-major grid.

    ``(..., Hs*Ws, C)`` -> ``(..., C, Hs, Ws)`` -> ``F.interpolate(mode, align_corners=False)`` ->
    ``(..., Hd*Wd, C)``. Differentiable; a no-op when the grids are equal.

    Args:
        embed: (N, C) or (1, N, C) with ``N = Hs * Ws``.
        src_hw, dst_hw: source and destination grids (rows, columns).
    """
    src_hw, dst_hw = tuple(src_hw), tuple(dst_hw)
    if embed.shape[-2] != src_hw[0] * src_hw[1]:
        raise ValueError(f'Cannot view {embed.shape[-2]} embeddings as a {src_hw[0]}x{src_hw[1]} '
                         f'grid.')
    if src_hw == dst_hw:
        return embed
    squeeze = embed.dim() == 2
    x = embed.unsqueeze(0) if squeeze else embed
    channels = x.shape[-1]
    x = x.reshape(1, src_hw[0], src_hw[1], channels).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=dst_hw, mode=mode, align_corners=False)
    x = x.flatten(2).transpose(1, 2)
    return x[0] if squeeze else x


def resize_pos_embed(pos_embed: torch.Tensor, src_hw: Tuple[int, int], dst_hw: Tuple[int, int],
                     src_cls_pos: Optional[int] = None,
                     dst_cls_pos: Optional[int] = None) -> torch.Tensor:
    """Resize an absolute position embedding (1, N(+1), C), keeping a middle class-token entry.

    The class-token entry (at ``src_cls_pos``) is taken out, the grid part resized bicubically,
    and the entry put back at ``dst_cls_pos``.
    """
    if src_cls_pos is None:
        return resize_grid_embed(pos_embed, src_hw, dst_hw)
    if dst_cls_pos is None:
        raise ValueError('dst_cls_pos is needed when the embedding has a class-token entry.')
    cls = pos_embed[:, src_cls_pos:src_cls_pos + 1]
    grid = torch.cat([pos_embed[:, :src_cls_pos], pos_embed[:, src_cls_pos + 1:]], dim=1)
    grid = resize_grid_embed(grid, src_hw, dst_hw)
    return torch.cat([grid[:, :dst_cls_pos], cls, grid[:, dst_cls_pos:]], dim=1)


def rope_tables(dim: int, grid: int, pt_seq_len: int = 14,
                theta: float = 10000.) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cos/sin tables of the 2-D rotary embedding of Vim / LocalVim (EVA-style, "fast" form).

    Half of the ``dim`` channels encode the row, half the column: with ``dim // 4`` frequencies
    ``f_j = theta^(-2j / (dim/2))`` and positions ``t = arange(grid) / grid * pt_seq_len``, each
    angle ``t * f_j`` is repeated twice (interleaved) to ``dim / 2`` values; channels
    ``[0, dim/2)`` use the row position, ``[dim/2, dim)`` the column position.

    Returns:
        (cos, sin), each (grid * grid, dim), float32.
    """
    if dim % 4:
        raise ValueError(f'Rotary embedding needs the channels to be a multiple of 4, got {dim}.')
    half = dim // 2
    freqs = theta**(-torch.arange(0, half, 2, dtype=torch.float64)[:half // 2] / half)
    t = torch.arange(grid, dtype=torch.float64) / grid * pt_seq_len
    angles = (t[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (grid, dim/2)
    rows = angles[:, None, :].expand(grid, grid, half)
    cols = angles[None, :, :].expand(grid, grid, half)
    full = torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim)
    return full.cos().float(), full.sin().float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs: (a, b) -> (-b, a). (..., C) -> (..., C)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin``; x (B, L, C), tables (L, C)."""
    return x * cos + rotate_half(x) * sin


def grid_side(num: int, what: str = 'embedding') -> int:
    """Side of a square grid of ``num`` tokens (raises if ``num`` is not a square)."""
    side = int(round(math.sqrt(num)))
    if side * side != num:
        raise ValueError(f'The {what} has {num} entries, which is not a square grid; give the '
                         f'source grid explicitly.')
    return side
