"""Scan orders of LocalMamba: the 1-D sequences a 2-D token grid is read in.

A direction turns a token grid of ``H x W`` (flat row-major index ``p = h * W + w``) into a
sequence of length ``L`` and back. Every direction is described by two integer tables:

* ``gather`` (``L``,): ``seq[t] = x[gather[t]]``; the value ``H * W`` (one past the last token)
  means "a zero padding token".
* ``inverse`` (``H * W``,): ``out[p] = seq[inverse[p]]`` brings scan outputs back to row-major
  order (outputs at padding positions are dropped).

Directions (the names of the official code):

* ``h`` / ``h_flip``: row-major, and its reverse.
* ``v`` / ``v_flip``: column-major, and its reverse.
* ``wK`` / ``wK_flip`` for any window size ``K >= 1`` (``w2``, ``w7``, ...): the grid is zero-padded
  at the bottom/right to multiples of ``K``; windows are visited in row-major order and tokens
  inside a window in row-major order; ``L = ceil(H/K)*K * ceil(W/K)*K``. ``_flip`` reverses the whole
  padded sequence, so padding tokens of the last window row come first.

The official code's reverse of ``v``/``v_flip`` is not the inverse of the scan when ``H != W``
(it reads ``seq[(p mod H) * W + p // H]``). ``official_v_reverse=True`` reproduces that for
migrated models; the default is the true inverse. Both agree on square grids.

All tables are cached per ``(H, W, direction, official_v_reverse)`` and per device.
"""
import re
from collections import namedtuple
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = [
    'ALL_DIRECTIONS', 'parse_direction', 'check_direction', 'direction_code', 'direction_name',
    'scan_length', 'gather_index',
    'inverse_index', 'stacked_tables', 'stacked_gather_index', 'stacked_inverse_index',
    'ScanTables', 'kernel_tables', 'VimTables', 'vim_kernel_tables', 'scan', 'reverse',
    'multi_scan', 'multi_reverse', 'direction_lists'
]

#: The 8 candidate directions of the paper, in the official order (search space order).
ALL_DIRECTIONS: Tuple[str, ...] = ('h', 'h_flip', 'v', 'v_flip', 'w2', 'w2_flip', 'w7',
                                   'w7_flip')

_DIRECTION_RE = re.compile(r'^(h|v|w([1-9][0-9]*))(_flip)?$')
_VALID_FORMS = ("'h', 'h_flip', 'v', 'v_flip', 'wK' or 'wK_flip' with a window size K >= 1 "
                "(e.g. 'w2', 'w7_flip')")


def parse_direction(direction: str) -> Tuple[str, int, bool]:
    """Split a direction name into ``(kind, window, flip)``.

    ``kind`` is ``'h'``, ``'v'`` or ``'w'``; ``window`` is the window size (0 for h/v).

    Raises:
        ValueError: for anything that is not a valid direction name.
    """
    match = _DIRECTION_RE.fullmatch(direction) if isinstance(direction, str) else None
    if match is None:
        raise ValueError(f'Unknown scan direction {direction!r}; valid forms are '
                         f'{_VALID_FORMS}.')
    head, window, flip = match.groups()
    if head.startswith('w'):
        return 'w', int(window), flip is not None
    return head, 0, flip is not None


def direction_code(direction: str) -> int:
    """A direction as one integer (for operator schemas): ``window << 3 | kind << 1 | flip``
    with kind 0 (h), 1 (v), 2 (w); :func:`direction_name` is its inverse.

    Written with string methods only (no regular expression), so that ``torch.compile`` folds
    it to a constant.
    """
    flip = isinstance(direction, str) and direction.endswith('_flip')
    base = direction[:-len('_flip')] if flip else direction
    if base == 'h':
        return int(flip)
    if base == 'v':
        return 2 | int(flip)
    if (isinstance(base, str) and base.startswith('w') and base[1:].isdigit()
            and not base[1:].startswith('0')):
        return (int(base[1:]) << 3) | 4 | int(flip)
    parse_direction(direction)  # raises the error that lists the valid forms
    raise ValueError(f'Unknown scan direction {direction!r}.')


def direction_name(code: int) -> str:
    """The direction name of :func:`direction_code`'s integer."""
    code = int(code)
    kind, window, flip = (code >> 1) & 3, code >> 3, code & 1
    if kind == 3 or (kind == 2) != (window > 0):
        raise ValueError(f'{code} is not a direction code.')
    name = ('h', 'v', f'w{window}')[kind]
    return name + ('_flip' if flip else '')


def check_direction(direction: str) -> str:
    """Validate a direction name and return it unchanged."""
    parse_direction(direction)
    return direction


def scan_length(height: int, width: int, direction: str) -> int:
    """Length of the sequence a direction produces for an ``height x width`` grid."""
    kind, k, _ = parse_direction(direction)
    if kind == 'w':
        return -(-height // k) * k * (-(-width // k) * k)
    return height * width


@lru_cache(maxsize=1024)
def _tables(height: int, width: int, direction: str,
            official_v_reverse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Compute ``(gather, inverse)`` as CPU int64 tensors."""
    if height < 1 or width < 1:
        raise ValueError(f'Token grid must be non-empty, got {height}x{width}.')
    kind, k, flip = parse_direction(direction)
    num = height * width
    grid = torch.arange(num, dtype=torch.long).view(height, width)
    if kind == 'h':
        gather = grid.reshape(-1)
    elif kind == 'v':
        gather = grid.t().reshape(-1)
    else:
        hp, wp = -(-height // k) * k, -(-width // k) * k
        padded = torch.full((hp, wp), num, dtype=torch.long)
        padded[:height, :width] = grid
        # (Hg, K, Wg, K) -> (Hg, Wg, K, K): windows row-major, tokens row-major inside.
        gather = padded.view(hp // k, k, wp // k, k).permute(0, 2, 1, 3).reshape(-1)
    if flip:
        gather = gather.flip(0)
    length = gather.numel()

    if kind == 'v' and official_v_reverse:
        p = torch.arange(num, dtype=torch.long)
        inverse = (p % height) * width + p // height
        if flip:
            inverse = length - 1 - inverse
    else:
        inverse = torch.empty(num, dtype=torch.long)
        real = gather < num
        inverse[gather[real]] = torch.arange(length, dtype=torch.long)[real]
    return gather, inverse


@lru_cache(maxsize=4096)
def _on_device(height, width, direction, official_v_reverse, which, device):
    table = _tables(height, width, direction, official_v_reverse)[which]
    return table.to(device)


def gather_index(height: int, width: int, direction: str,
                 device: torch.device = torch.device('cpu')) -> torch.Tensor:
    """Scan table ``(L,)``: ``seq[t] = x[gather[t]]``, ``H*W`` meaning a zero padding token."""
    return _on_device(height, width, direction, False, 0, torch.device(device))


def inverse_index(height: int, width: int, direction: str, official_v_reverse: bool = False,
                  device: torch.device = torch.device('cpu')) -> torch.Tensor:
    """Reverse table ``(H*W,)``: ``out[p] = seq[inverse[p]]``."""
    return _on_device(height, width, direction, bool(official_v_reverse), 1,
                      torch.device(device))


@lru_cache(maxsize=1024)
def _stacked(height: int, width: int, directions: Tuple[str, ...], official_v_reverse: bool,
             cls_pos: Optional[int]):
    """The one builder of multi-direction tables (CPU int64), see :func:`stacked_tables`."""
    if not directions:
        raise ValueError('directions must name at least one scan direction.')
    num = height * width
    if cls_pos is not None and not 0 <= cls_pos <= num:
        raise ValueError(f'cls_pos must be in [0, {num}] for a {height}x{width} grid, got '
                         f'{cls_pos}.')
    gathers, inverses = [], []
    for d in directions:
        gather, inverse = _tables(height, width, d, official_v_reverse)
        if cls_pos is not None:
            # the class token (index num + 1) sits at step cls_pos of every sequence
            gather = torch.cat([gather[:cls_pos], gather.new_tensor([num + 1]), gather[cls_pos:]])
            inverse = inverse + (inverse >= cls_pos).long()
            inverse = torch.cat([inverse[:cls_pos], inverse.new_tensor([cls_pos]),
                                 inverse[cls_pos:]])
        gathers.append(gather)
        inverses.append(inverse)
    lengths = torch.tensor([g.numel() for g in gathers], dtype=torch.long)
    gather = torch.full((len(directions), int(lengths.max())), num, dtype=torch.long)
    for k, g in enumerate(gathers):
        gather[k, :g.numel()] = g
    return gather, torch.stack(inverses), lengths


def stacked_tables(height: int, width: int, directions: Sequence[str],
                   official_v_reverse: bool = False,
                   cls_pos: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor]:
    """Tables of several directions, end-padded to a common length (CPU int64, cached).

    Tokens are numbered ``0 .. H*W-1`` (row-major grid), ``H*W`` (a zero padding token) and, with
    a class token, ``H*W + 1``; the class token then sits at step ``cls_pos`` of every sequence
    and comes back at position ``cls_pos`` of the ``T = H*W + 1`` outputs.

    Returns:
        gather (K, L): token read at step t (``H*W`` past a direction's end);
        inverse (K, T): step of direction k whose output lands at position p;
        lengths (K,): each direction's sequence length (``L`` is the largest).
    """
    return _stacked(int(height), int(width), tuple(check_direction(d) for d in directions),
                    bool(official_v_reverse), None if cls_pos is None else int(cls_pos))


@lru_cache(maxsize=1024)
def _stacked_on_device(height, width, directions, official_v_reverse, cls_pos, device):
    gather, inverse, _ = stacked_tables(height, width, directions, official_v_reverse, cls_pos)
    offsets = torch.arange(len(directions), dtype=torch.long)[:, None] * gather.shape[1]
    return gather.to(device), (inverse + offsets).to(device)


def stacked_gather_index(height: int, width: int, directions: Sequence[str],
                         device: torch.device = torch.device('cpu'),
                         cls_pos: Optional[int] = None) -> torch.Tensor:
    """Gather tables of several directions, end-padded to a common length: ``(K, L)``."""
    return _stacked_on_device(height, width, tuple(directions), False, cls_pos,
                              torch.device(device))[0]


def stacked_inverse_index(height: int, width: int, directions: Sequence[str],
                          official_v_reverse: bool = False,
                          device: torch.device = torch.device('cpu'),
                          cls_pos: Optional[int] = None) -> torch.Tensor:
    """Reverse tables into the flattened ``(K * L)`` stacked sequences: ``(K, T)``."""
    return _stacked_on_device(height, width, tuple(directions), bool(official_v_reverse),
                              cls_pos, torch.device(device))[1]


ScanTables = namedtuple('ScanTables', ['gather', 'scatter', 'lengths', 'num_tokens',
                                       'separate_scatter'])
ScanTables.__doc__ = """The int32 tables the fused kernels walk (see :func:`kernel_tables`).

gather (K, L): token read at scan step t (``num_tokens`` = zero padding, also past the end);
scatter (K, L) or None: position written at step t (``num_tokens`` = dropped); None when it
equals ``gather`` (always, unless ``official_v_reverse`` changes the v/v_flip outputs of a
non-square grid); lengths (K,); num_tokens = H*W; separate_scatter = scatter is not None.
"""


@lru_cache(maxsize=256)
def _kernel_tables(height, width, directions, official_v_reverse, device):
    gather, inverse, lengths = stacked_tables(height, width, directions, official_v_reverse)
    num = height * width
    scatter = torch.full_like(gather, num)
    # out[p] = seq[inverse[p]]  =>  step inverse[p] writes position p
    scatter.scatter_(1, inverse, torch.arange(num, dtype=torch.long).expand_as(inverse))
    separate = not torch.equal(gather, scatter)
    return ScanTables(gather.to(device, torch.int32),
                      scatter.to(device, torch.int32) if separate else None,
                      lengths.to(device, torch.int32), num, separate)


def kernel_tables(height: int, width: int, directions: Sequence[str],
                  official_v_reverse: bool = False,
                  device: torch.device = torch.device('cpu')) -> ScanTables:
    """:class:`ScanTables` of a direction list on an ``H x W`` grid (cached per device).

    Raises:
        ValueError: for an unknown direction name, an empty list or an empty grid.
    """
    return _kernel_tables(int(height), int(width), tuple(directions), bool(official_v_reverse),
                          torch.device(device))


VimTables = namedtuple('VimTables', ['gather', 'scatter', 'steps', 'order', 'lengths',
                                     'num_tokens', 'separate_scatter', 'uniform'])
VimTables.__doc__ = """The int32 tables of the fused LocalVim kernels (see :func:`vim_kernel_tables`).

Positions are those of the layer's ``T`` tokens (``T = H*W``, +1 with the class token at
``cls_pos``), not grid ids: ``num_tokens = T`` means "none".

gather (K, L): position read at step t (``T``: window padding, a zero token, or past the end);
scatter (K, L) or None: position written at step t (``T``: dropped); None when it equals
``gather`` (always, unless ``official_v_reverse`` changes the v/v_flip outputs of a non-square
grid); steps (K, T): the step of direction k that reads position p (the inverse of ``gather``:
every direction reads every token once); order (K, L): ``t`` below the direction's length, ``L``
past it (scan order itself, for kernels whose inputs are already in scan order); lengths (K,);
num_tokens = T; separate_scatter = scatter is not None; uniform = all lengths equal L (host).
"""


@lru_cache(maxsize=256)
def _vim_kernel_tables(height, width, directions, official_v_reverse, cls_pos, device):
    gather, inverse, lengths = stacked_tables(height, width, directions, official_v_reverse,
                                              cls_pos)
    _, steps, _ = stacked_tables(height, width, directions, False, cls_pos)
    num = height * width
    tokens = num + (cls_pos is not None)
    # token ids (grid 0..num-1, padding num, class token num+1) -> positions in the T tokens
    position = torch.arange(num + 2, dtype=torch.long)
    if cls_pos is not None:
        position[:num] += (position[:num] >= cls_pos).long()
        position[num + 1] = cls_pos
    position[num] = tokens
    gather = position[gather]
    scatter = torch.full_like(gather, tokens)
    # out[p] = seq[inverse[p]]  =>  step inverse[p] writes position p
    scatter.scatter_(1, inverse, torch.arange(tokens, dtype=torch.long).expand_as(inverse))
    separate = not torch.equal(gather, scatter)
    length = gather.shape[1]
    order = torch.arange(length, dtype=torch.long).expand_as(gather).clone()
    order[order >= lengths[:, None]] = length
    dev = torch.device(device)
    return VimTables(gather.to(dev, torch.int32),
                     scatter.to(dev, torch.int32) if separate else None,
                     steps.to(dev, torch.int32), order.to(dev, torch.int32),
                     lengths.to(dev, torch.int32), tokens, separate,
                     bool((lengths == length).all()))


def vim_kernel_tables(height: int, width: int, directions: Sequence[str],
                      official_v_reverse: bool = False, cls_pos: Optional[int] = None,
                      device: torch.device = torch.device('cpu')) -> VimTables:
    """:class:`VimTables` of a LocalVim layer's direction list on an ``H x W`` grid (with the
    class token at ``cls_pos`` of the tokens and of every sequence; cached per device).

    Raises:
        ValueError: for an unknown direction name, an empty list, an empty grid or a
            ``cls_pos`` outside ``[0, H*W]``.
    """
    return _vim_kernel_tables(int(height), int(width), tuple(directions),
                              bool(official_v_reverse), None if cls_pos is None else int(cls_pos),
                              torch.device(device))


def _with_pad_token(x: torch.Tensor) -> torch.Tensor:
    """Append one zero token: (..., H*W) -> (..., H*W + 1)."""
    return torch.cat([x, x.new_zeros(x.shape[:-1] + (1, ))], dim=-1)


def scan(x: torch.Tensor, direction: str) -> torch.Tensor:
    """Read a grid in one direction.

    Args:
        x: (..., H, W).
        direction: direction name.

    Returns:
        (..., L) sequence, zeros at padding positions.
    """
    height, width = x.shape[-2:]
    index = gather_index(height, width, direction, x.device)
    return _with_pad_token(x.flatten(-2)).index_select(-1, index)


def reverse(seq: torch.Tensor, height: int, width: int, direction: str,
            official_v_reverse: bool = False) -> torch.Tensor:
    """Bring a scanned sequence back to row-major order.

    Args:
        seq: (..., L') with ``L' >= L`` (extra end padding is ignored).

    Returns:
        (..., H*W) in row-major order.
    """
    index = inverse_index(height, width, direction, official_v_reverse, seq.device)
    return seq.index_select(-1, index)


def multi_scan(x: torch.Tensor, directions: Sequence[str]) -> torch.Tensor:
    """Read a grid in several directions at once, end-padding to a common length.

    Args:
        x: (B, C, H, W).

    Returns:
        (B, K, C, L) with ``L`` the longest sequence of the directions.
    """
    batch, channels, height, width = x.shape
    index = stacked_gather_index(height, width, directions, x.device)
    seqs = _with_pad_token(x.flatten(2)).index_select(-1, index.flatten())
    return seqs.view(batch, channels, len(directions), index.shape[1]).transpose(1, 2)


def multi_reverse(seqs: torch.Tensor, height: int, width: int, directions: Sequence[str],
                  official_v_reverse: bool = False) -> torch.Tensor:
    """Inverse of :func:`multi_scan`.

    Args:
        seqs: (B, K, C, L) as returned by :func:`multi_scan` (or the scan outputs).

    Returns:
        (B, K, C, H*W) in row-major order.
    """
    batch, num_dirs, channels, length = seqs.shape
    index = stacked_inverse_index(height, width, directions, official_v_reverse, seqs.device)
    flat = seqs.transpose(1, 2).reshape(batch, channels, num_dirs * length)
    out = flat.index_select(-1, index.flatten())
    return out.view(batch, channels, num_dirs, height * width).transpose(1, 2)


def direction_lists(directions, num_layers: int) -> List[Tuple[str, ...]]:
    """Validate per-layer direction lists (a list of ``num_layers`` lists of names).

    Raises:
        ValueError: on a wrong number of lists, an empty list, or an unknown name.
    """
    if isinstance(directions, (str, bytes)) or not hasattr(directions, '__len__'):
        raise ValueError(f'directions must be a list of {num_layers} per-layer lists, got '
                         f'{directions!r}.')
    if len(directions) != num_layers:
        raise ValueError(f'directions must hold one list per layer: expected {num_layers} '
                         f'lists, got {len(directions)}.')
    out = []
    for i, dirs in enumerate(directions):
        if isinstance(dirs, str) or len(dirs) == 0:
            raise ValueError(f'directions[{i}] must be a non-empty list of direction names, '
                             f'got {dirs!r}.')
        out.append(tuple(check_direction(d) for d in dirs))
    return out
