"""Building blocks shared by the LocalMamba backbones."""
import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.merge import scattn_merge
from ..ops.scan_orders import ALL_DIRECTIONS, direction_lists
from .base import check_layer_directions

__all__ = ['BiAttn', 'MultiScan', 'resolve_directions', 'ssm_a_log_init', 'ssm_dt_bias_init']


def ssm_a_log_init(rows: int, d_state: int) -> torch.Tensor:
    """S4D-real initialisation of ``A_log``: row r is ``log(1 .. d_state)``, (rows, N)."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(rows, 1))


def ssm_dt_bias_init(shape, dt_min: float = 0.001, dt_max: float = 0.1,
                     floor: float = 1e-4) -> torch.Tensor:
    """Bias of the delta projection: ``softplus^-1(dt)`` with dt log-uniform in [min, max]."""
    dt = torch.exp(
        torch.rand(shape) * (math.log(dt_max) - math.log(dt_min)) +
        math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class BiAttn(nn.Module):
    """SCAttn of the paper (channel branch only, as in the released models).

    ``out = x * sigmoid(W2 GELU(W1 mean_tokens(LayerNorm(x))))``: the gate is computed from the
    normalised tokens and applied to the un-normalised ones.

    Args:
        in_channels (int): channels C.
        act_ratio (float): width of the bottleneck is ``int(C * act_ratio)``. Default: 0.125.

    Shapes: (B, L, C) -> (B, L, C).
    """

    def __init__(self, in_channels: int, act_ratio: float = 0.125):
        super().__init__()
        reduce_channels = int(in_channels * act_ratio)
        self.norm = nn.LayerNorm(in_channels)
        self.global_reduce = nn.Linear(in_channels, reduce_channels)
        self.act_fn = nn.GELU()
        self.channel_select = nn.Linear(reduce_channels, in_channels)
        self.gate_fn = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(x).mean(dim=1, keepdim=True)
        gate = self.gate_fn(self.channel_select(self.act_fn(self.global_reduce(pooled))))
        return x * gate


class MultiScan(nn.Module):
    """Merge of the per-direction scan outputs of one layer.

    Normal layers: ``out = sum_k attn(y_k)``. Search (supernet) layers hold learnable
    architecture weights ``weights`` (K, 1, 1, 1) and compute
    ``out = sum_k softmax(weights)_k * LayerNorm_k(attn(y_k))`` with non-affine LayerNorms.

    Args:
        directions (Sequence[str]): the layer's directions (K of them).
        channels (int): channels of the scan outputs.
        search (bool): supernet layer with architecture weights. Default: False.
        with_attn (bool): own the shared :class:`BiAttn` (LocalVMamba). LocalVim keeps its
            ``attn`` on the mixer and passes it to :meth:`merge`. Default: True.
    """

    def __init__(self, directions: Sequence[str], channels: int, search: bool = False,
                 with_attn: bool = True):
        super().__init__()
        self.directions = tuple(directions)
        self.search = search
        if search:
            self.weights = nn.Parameter(1e-3 * torch.randn(len(self.directions), 1, 1, 1))
        if with_attn:
            self.attn = BiAttn(channels)

    def merge(self, ys, attn: Optional[nn.Module] = None) -> torch.Tensor:
        """Merge K outputs.

        Args:
            ys: (B, K, L, C) tensor or a sequence of K (B, L, C) tensors, row-major tokens.
            attn: the BiAttn to use (defaults to ``self.attn``).

        Returns:
            (B, L, C).
        """
        attn = self.attn if attn is None else attn
        if isinstance(ys, torch.Tensor):
            # the scans compute in promote(dtype, float32); a model cast to bf16/fp16 runs its
            # modules in its own dtype (outside autocast), so the outputs come back to it here
            dtype = attn.norm.weight.dtype
            if ys.dtype != dtype and ys.is_floating_point() and not torch.is_autocast_enabled(
                    ys.device.type):
                ys = ys.to(dtype)
            if self.search:
                ys = ys.unbind(1)
        if not self.search:
            if isinstance(ys, torch.Tensor):
                # one SCAttn call on (B*K, L, C) instead of K (the gate's mean is per (b, k)):
                # a fifth of the kernel launches
                gated = attn(ys.flatten(0, 1)).unflatten(0, ys.shape[:2]).unbind(1)
            else:
                gated = [attn(y) for y in ys]
            out = gated[0]
            for g in gated[1:]:
                out = out + g
            return out
        probs = torch.softmax(self.weights, dim=0)
        out = 0
        for k, y in enumerate(ys):
            y = attn(y)
            out = out + probs[k] * F.layer_norm(y, y.shape[-1:], eps=1e-5)
        return out

    def merge_norm(self, ys: torch.Tensor, norm: nn.LayerNorm, backend: str = 'torch',
                   z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``norm(self.merge(ys))`` (times ``SiLU(z)`` when ``z`` is given), through the fused
        kernels where ``backend`` allows.

        On CUDA, plain (non-search) layers with their own SCAttn go through
        :func:`~mmlocalmamba.ops.merge.scattn_merge`: with the Triton backend the fused
        kernels (the same values in fp32, the gate MLP included, which autocast would otherwise
        run in bf16; the (B, K, L, C) outputs are read twice in the forward instead of about ten
        times; the output gate and the cast to z's dtype in the same pass). CPU tensors and
        search layers run the modules' PyTorch merge.

        Args:
            ys: (B, K, L, C) scan outputs.
            norm: the LayerNorm over C applied to the merged outputs.
            backend: the layer's scan backend (``'auto'``/``'triton'`` allow the fused path).
            z: optional (B, L, C) output gate before its activation (SiLU is applied here).

        Returns:
            (B, L, C): the normalised merge (in z's dtype times ``SiLU(z)`` with ``z``).
        """
        if (ys.is_cuda and not self.search and hasattr(self, 'attn')
                and backend in ('auto', 'triton')):
            attn = self.attn
            return scattn_merge(ys, attn.norm.weight, attn.norm.bias, attn.norm.eps,
                                attn.global_reduce.weight, attn.global_reduce.bias,
                                attn.channel_select.weight, attn.channel_select.bias,
                                norm.weight, norm.bias, norm.eps, z=z, backend=backend)
        out = norm(self.merge(ys))
        if z is None:
            return out
        return out.to(z.dtype) * F.silu(z)

    def arch_probs(self) -> torch.Tensor:
        """Softmax of the architecture weights, (K,) (search layers only)."""
        return torch.softmax(self.weights.detach().flatten(), dim=0)

    def extra_repr(self) -> str:
        return f'directions={list(self.directions)}, search={self.search}'


def resolve_directions(directions, num_layers: int, candidates: Sequence[str] = ALL_DIRECTIONS,
                       owner: str = 'LocalMamba'):
    """Per-layer direction tuples and whether each layer is a search layer.

    ``directions=None`` makes every layer a supernet layer over ``candidates`` (default: the 8
    directions of the paper, :data:`ALL_DIRECTIONS`); ``candidates`` is ignored otherwise.
    Names are matched exactly and window sizes bounded (see
    :func:`~mmlocalmamba.models.base.check_layer_directions`).

    Returns:
        (list of tuples of names, list of bools)
    """
    if directions is None:
        if isinstance(candidates, str):
            raise ValueError(f'candidates must be a list of direction names, got {candidates!r}.')
        cands = check_layer_directions(list(candidates), owner, 'candidates')
        if len(set(cands)) != len(cands):
            raise ValueError(f'candidates must not repeat a direction, got {list(cands)}.')
        return [cands] * num_layers, [True] * num_layers
    try:
        layers = direction_lists(directions, num_layers)
    except ValueError as err:
        raise ValueError(f'{owner}: {err}') from None
    for i, names in enumerate(layers):
        check_layer_directions(names, owner, f'directions[{i}]')
    return layers, [False] * num_layers
