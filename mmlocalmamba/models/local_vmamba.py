"""LocalVMamba: the hierarchical LocalMamba backbone (VSSM with windowed multi-direction scans).

Parameter names and the forward pass follow the official ``Backbone_LocalVSSM`` / ``VSSM`` models,
so the published checkpoints load unchanged (see ``../shared/reference/README.md`` of the project
for the exact semantics reproduced here).
"""
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_

from ..ops.local_scan import local_selective_scan
from ..ops.scan_orders import ALL_DIRECTIONS
from .base import (MATCH_PREV_GROUP, LocalMambaBackbone, ScanLayer, TimmClassifierMixin,
                   check_backend, check_bool, check_int, check_int_list, check_layer_directions,
                   check_number, check_out_indices, check_ssm_args, resolve_arch, take_indices)
from .layers import MultiScan, resolve_directions, ssm_a_log_init, ssm_dt_bias_init

__all__ = ['LocalVMamba', 'LocalVMambaClassifier', 'SS2D', 'VSSBlock', 'PatchMerging2D',
           'LOCAL_VMAMBA_ARCHS']

# Searched per-layer directions of the released models (flat over all blocks of all stages).
_TINY_DIRECTIONS = [
    ['h', 'h_flip', 'w7', 'w7_flip'], ['h_flip', 'v_flip', 'w2', 'w2_flip'],
    ['h_flip', 'v_flip', 'w2_flip', 'w7'], ['h_flip', 'v', 'v_flip', 'w2'],
    ['h', 'h_flip', 'v_flip', 'w2_flip'], ['h_flip', 'v_flip', 'w2', 'w2_flip'],
    ['h', 'w2_flip', 'w7', 'w7_flip'], ['h', 'h_flip', 'v', 'v_flip'],
    ['h', 'v_flip', 'w7', 'w7_flip'], ['h_flip', 'v', 'w2', 'w7_flip'],
    ['v', 'v_flip', 'w2', 'w7_flip'], ['h', 'h_flip', 'v_flip', 'w2_flip'],
    ['v_flip', 'w2_flip', 'w7', 'w7_flip'], ['h_flip', 'v_flip', 'w2_flip', 'w7_flip'],
    ['h_flip', 'v', 'w7', 'w7_flip']
]
_SMALL_DIRECTIONS = [
    ['h', 'v', 'v_flip', 'w7_flip'], ['h', 'h_flip', 'v', 'w7'], ['h_flip', 'v', 'v_flip', 'w7'],
    ['h_flip', 'v', 'w2_flip', 'w7'], ['h_flip', 'v', 'w2_flip', 'w7'],
    ['h_flip', 'v_flip', 'w2', 'w7_flip'], ['h_flip', 'v', 'v_flip', 'w7'],
    ['h', 'v', 'v_flip', 'w7'], ['h', 'v', 'v_flip', 'w7'], ['h', 'v', 'v_flip', 'w7_flip'],
    ['h', 'h_flip', 'v', 'v_flip'], ['h', 'v', 'v_flip', 'w2'], ['v', 'v_flip', 'w2_flip', 'w7'],
    ['h', 'h_flip', 'v', 'w2'], ['h_flip', 'v', 'v_flip', 'w7_flip'], ['h', 'h_flip', 'v', 'v_flip'],
    ['h', 'v', 'v_flip', 'w7_flip'], ['h', 'v', 'v_flip', 'w7_flip'], ['h', 'h_flip', 'v_flip', 'w7'],
    ['h_flip', 'v_flip', 'w2_flip', 'w7'], ['h_flip', 'v', 'v_flip', 'w7_flip'],
    ['v', 'v_flip', 'w7', 'w7_flip'], ['h', 'v', 'v_flip', 'w7_flip'], ['h_flip', 'v', 'v_flip', 'w2'],
    ['h', 'v', 'v_flip', 'w2_flip'], ['h', 'h_flip', 'v', 'w7'], ['h', 'h_flip', 'w7', 'w7_flip'],
    ['h', 'v_flip', 'w2', 'w2_flip'], ['h', 'v_flip', 'w2', 'w7'], ['h', 'v', 'v_flip', 'w7_flip'],
    ['h_flip', 'v', 'w2_flip', 'w7'], ['h_flip', 'v_flip', 'w7', 'w7_flip'],
    ['h', 'v', 'w7', 'w7_flip']
]

#: Presets. ``directions=None`` would build a search supernet; a missing ``directions`` key in a
#: custom arch means "the default unsearched list" (``h, h_flip, v, v_flip`` everywhere).
LOCAL_VMAMBA_ARCHS: Dict[str, dict] = {
    'tiny': dict(dims=[96, 192, 384, 768], depths=[2, 2, 9, 2], directions=_TINY_DIRECTIONS),
    'small': dict(dims=[96, 192, 384, 768], depths=[2, 2, 27, 2], directions=_SMALL_DIRECTIONS),
    'tiny_search': dict(dims=[32, 64, 128, 256], depths=[2, 2, 9, 2], directions=None),
}

_DEFAULT_DIRECTIONS = ['h', 'h_flip', 'v', 'v_flip']
_ARCH_KEYS = {'dims', 'depths', 'directions', 'candidates', 'd_state', 'ssm_ratio', 'dt_rank'}


def _resolve_arch(arch: Union[str, dict], owner: str = 'LocalVMamba') -> dict:
    arch = resolve_arch(arch, LOCAL_VMAMBA_ARCHS, _ARCH_KEYS, ('dims', 'depths'), 'LocalVMamba')
    depths = check_int_list(arch['depths'], 'arch depths', owner)
    dims = arch['dims']
    if not isinstance(dims, (list, tuple)):
        dims = [check_int(dims, 'arch dims', owner) * 2**i for i in range(len(depths))]
    dims = check_int_list(dims, 'arch dims', owner)
    if len(dims) != len(depths):
        raise ValueError(f'dims {list(dims)} and depths {list(depths)} must have the same '
                         f'length.')
    arch['dims'], arch['depths'] = dims, depths
    if 'directions' not in arch:
        arch['directions'] = [_DEFAULT_DIRECTIONS] * sum(arch['depths'])
    arch['candidates'] = tuple(arch.get('candidates') or ALL_DIRECTIONS)
    arch.setdefault('d_state', 16)
    arch.setdefault('ssm_ratio', 2.0)
    arch.setdefault('dt_rank', 'auto')
    check_int(arch['d_state'], 'arch d_state', owner)
    check_number(arch['ssm_ratio'], 'arch ssm_ratio', owner, low=0, low_open=True)
    if arch['dt_rank'] != 'auto':
        check_int(arch['dt_rank'], "arch dt_rank (or 'auto')", owner)
    return arch


class SS2D(ScanLayer):
    """2-D selective scan over K local directions (the token mixer of a VSS block).

    Args:
        d_model (int): channels C.
        directions (Sequence[str]): the K directions of this layer.
        search (bool): supernet layer (softmax-weighted, normalised merge). Default: False.
        d_state (int): SSM state size N. Default: 16.
        ssm_ratio (float): inner channels Di = int(ssm_ratio * C). Default: 2.0.
        dt_rank (int | str): rank R of the delta projection; 'auto' = ceil(C / 16).
        official_v_reverse (bool): reproduce the official ``v`` reverse (wrong for H != W).
        scan_backend (str): selective-scan backend, see :mod:`mmlocalmamba.ops.selective_scan`.

    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self,
                 d_model: int,
                 directions: Sequence[str],
                 search: bool = False,
                 d_state: int = 16,
                 ssm_ratio: float = 2.0,
                 dt_rank: Union[int, str] = 'auto',
                 dt_min: float = 0.001,
                 dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4,
                 official_v_reverse: bool = False,
                 scan_backend: str = 'auto'):
        super().__init__()
        owner = type(self).__name__
        d_inner = check_ssm_args(owner, d_model, d_state, ssm_ratio, 'ssm_ratio', dt_rank, dt_min,
                                 dt_max, dt_init_floor)
        rank = math.ceil(d_model / 16) if dt_rank == 'auto' else int(dt_rank)
        self.directions = check_layer_directions(directions, owner)
        num_dirs = len(self.directions)
        search = check_bool(search, 'search', owner)
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, rank
        self.official_v_reverse = check_bool(official_v_reverse, 'official_v_reverse', owner)
        self.scan_backend = check_backend(scan_backend)

        # Per-direction SSM parameters, stacked over K (official names and layout).
        x_proj = torch.empty(num_dirs, rank + 2 * d_state, d_inner)
        bound = 1 / math.sqrt(d_inner)  # nn.Linear's default init
        self.x_proj_weight = nn.Parameter(x_proj.uniform_(-bound, bound))
        dt_std = rank**-0.5
        self.dt_projs_weight = nn.Parameter(
            torch.empty(num_dirs, d_inner, rank).uniform_(-dt_std, dt_std))
        self.dt_projs_bias = nn.Parameter(
            ssm_dt_bias_init((num_dirs, d_inner), dt_min, dt_max, dt_init_floor))
        self.A_logs = nn.Parameter(ssm_a_log_init(num_dirs * d_inner, d_state))
        self.Ds = nn.Parameter(torch.ones(num_dirs * d_inner))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True

        self.out_norm = nn.LayerNorm(d_inner)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=True)
        self.act = nn.SiLU()
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.multi_scan = MultiScan(self.directions, d_inner, search=search)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = x.permute(0, 3, 1, 2)
        # On CUDA the depth-wise conv runs channels-last (cuDNN), and its output is the token-
        # major layout that the Triton scan reads without a copy.
        fmt = torch.channels_last if x.is_cuda else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        x = self.act(self.conv2d(x))
        ys = local_selective_scan(x, self.x_proj_weight, self.dt_projs_weight,
                                  self.dt_projs_bias, self.A_logs, self.Ds, self.directions,
                                  self.official_v_reverse, self.scan_backend,
                                  self.scan_config)  # (B, K, HW, Di)
        # out_norm(merge) * SiLU(z), in z's dtype (fused on CUDA)
        y = self.multi_scan.merge_norm(ys, self.out_norm, self.scan_backend,
                                       z.reshape(batch, height * width, self.d_inner))
        return self.out_proj(y.view(batch, height, width, self.d_inner))


class VSSBlock(nn.Module):
    """``x + drop_path(SS2D(LayerNorm(x)))`` on (B, H, W, C) tokens (no MLP)."""

    def __init__(self, dim: int, drop_path: float = 0., **ss2d_kwargs):
        super().__init__()
        check_number(drop_path, 'drop_path', type(self).__name__, low=0, high=1, high_open=True)
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.op(self.norm(x)))


class PatchMerging2D(nn.Module):
    """2x2 patch merging on (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C).

    Odd sizes are zero-padded at the bottom/right; the four sub-grids are concatenated in the
    order (even h, even w), (odd h, even w), (even h, odd w), (odd h, odd w).
    """

    def __init__(self, dim: int, out_dim: Optional[int] = None):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        return self.reduction(self.norm(x))


class _Permute(nn.Module):

    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class LocalVMamba(LocalMambaBackbone):
    """LocalVMamba backbone (hierarchical, 4 stages).

    Args:
        arch (str | dict): 'tiny', 'small', 'tiny_search' or a dict with ``dims`` (list, or an int
            doubled per stage), ``depths``, and optionally ``directions`` (one list of names per
            block, flat over stages; None builds a direction-search supernet), ``candidates``
            (the supernet's candidate directions, default the paper's 8), ``d_state`` (16),
            ``ssm_ratio`` (2.0), ``dt_rank`` ('auto'). Default: 'tiny'.
        in_channels (int): image channels. Default: 3.
        patch_size (int): patch embedding stride. Default: 4.
        patch_norm (bool): LayerNorm after the patch embedding. Default: True.
        drop_path_rate (float): stochastic depth, linear over blocks. Default: 0.2.
        out_indices (Sequence[int]): stages whose outputs are returned, each through its own
            LayerNorm ``outnorm{i}``. Default: (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing; 0 the patch embedding; i >= 1 also stages
            0..i-1 with their output norms. Default: -1.
        norm_eval (bool): keep batch-norm layers in eval mode during training. LocalVMamba has
            none; honoured for layers added by subclasses. Default: False.
        with_cp (bool): gradient checkpointing per block. Default: False.
        official_v_reverse (bool): reproduce the official code's ``v``/``v_flip`` reverse, which
            misplaces tokens when H != W. Default: False (correct inverse).
        scan_backend (str): 'auto', 'torch', 'triton' or 'mamba_ssm'. Default: 'auto'.
        triton_precompile (bool): compile the Triton kernels a first call needs in parallel
            processes before it runs (:mod:`mmlocalmamba.models.precompile`). Default: True.
        pretrained (str, optional): deprecated, use ``init_cfg``.
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=PATH_OR_URL)``;
            official classification checkpoints and mmdet/mmseg checkpoints (with
            ``prefix='backbone.'``) load through it.

    Shapes: input (B, in_channels, H, W); output a tuple of (B, dims[i], H_i, W_i) with
    ``H_0 = floor(H / patch_size)`` and ``H_{i+1} = ceil(H_i / 2)``.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 patch_size: int = 4,
                 patch_norm: bool = True,
                 drop_path_rate: float = 0.2,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 official_v_reverse: bool = False,
                 scan_backend: str = 'auto',
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None,
                 triton_precompile: bool = True):
        owner = type(self).__name__
        arch = _resolve_arch(arch, owner)
        super().__init__(frozen_stages, len(arch['depths']), norm_eval, with_cp, pretrained,
                         init_cfg, triton_precompile)
        check_backend(scan_backend)
        in_channels = check_int(in_channels, 'in_channels', owner)
        patch_size = check_int(patch_size, 'patch_size', owner)
        patch_norm = check_bool(patch_norm, 'patch_norm', owner)
        drop_path_rate = check_number(drop_path_rate, 'drop_path_rate', owner, low=0, high=1,
                                      high_open=True)
        official_v_reverse = check_bool(official_v_reverse, 'official_v_reverse', owner)
        self.arch = arch
        dims, depths = arch['dims'], arch['depths']
        num_stages = len(depths)
        self.dims, self.depths, self.num_stages = dims, depths, num_stages
        self.patch_size = patch_size
        self.num_features = dims[-1]
        self.out_indices = check_out_indices(out_indices, num_stages, 'stages')
        self.official_v_reverse = official_v_reverse

        directions, search = resolve_directions(arch['directions'], sum(depths),
                                                arch['candidates'], owner)
        self.layer_directions = directions
        self.is_search = all(search)

        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_channels, dims[0], kernel_size=patch_size, stride=patch_size),
            _Permute(0, 2, 3, 1),
            nn.LayerNorm(dims[0]) if patch_norm else nn.Identity())

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            first = sum(depths[:i])
            blocks = nn.Sequential(*[
                VSSBlock(
                    dims[i],
                    drop_path=dpr[first + j],
                    directions=directions[first + j],
                    search=search[first + j],
                    d_state=arch['d_state'],
                    ssm_ratio=arch['ssm_ratio'],
                    dt_rank=arch['dt_rank'],
                    official_v_reverse=official_v_reverse,
                    scan_backend=scan_backend) for j in range(depths[i])
            ])
            downsample = (
                PatchMerging2D(dims[i], dims[i + 1]) if i < num_stages - 1 else nn.Identity())
            self.layers.append(nn.Sequential(OrderedDict(blocks=blocks, downsample=downsample)))

        for i in self.out_indices:
            self.add_module(f'outnorm{i}', nn.LayerNorm(dims[i]))

        self.apply(self._init_linear_and_norm)
        self._freeze_stages()

    @staticmethod
    def _init_linear_and_norm(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _frozen_parts(self):
        modules = [self.patch_embed] if self.frozen_stages >= 0 else []
        for i in range(self.frozen_stages):
            modules.append(self.layers[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'outnorm{i}'))
        return modules, []

    def _run_blocks(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            x = self._checkpointed(block, x)
        return x

    def forward_stages(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Run all stages.

        Returns:
            (outputs at ``out_indices`` as NCHW maps, last stage output (B, H, W, C)).
        """
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = self._run_blocks(layer.blocks, x)
            if i in self.out_indices:
                outs.append(getattr(self, f'outnorm{i}')(x).permute(0, 3, 1, 2).contiguous())
            x = layer.downsample(x)
        return outs, x

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, C_in, H, W) -> tuple of (B, dims[i], H_i, W_i) for i in out_indices."""
        return tuple(self.forward_stages(x)[0])


class LocalVMambaClassifier(TimmClassifierMixin, LocalVMamba):
    """LocalVMamba image classifier with the official ``VSSM`` state-dict layout, timm-style.

    ``classifier``: LayerNorm -> global average pool -> Linear (``classifier.norm``,
    ``classifier.head``; ``permute``/``avgpool``/``flatten`` hold no weights). The timm interface:
    :meth:`forward_features` (unpooled NHWC map), :meth:`forward_head`, :meth:`reset_classifier`,
    :meth:`forward_intermediates` (for ``features_only=True``), :meth:`group_matcher`,
    :meth:`set_grad_checkpointing`, :meth:`no_weight_decay`.

    Args:
        arch (str | dict): see :class:`LocalVMamba`. Default: 'tiny'.
        num_classes (int): classes; 0 removes the head (pooled features out). Default: 1000.
        in_chans (int): image channels (timm's name of ``in_channels``). Default: 3.
        global_pool (str): 'avg' or '' (no pooling: ``forward`` gives NHWC maps). Default: 'avg'.
        **kwargs: the other arguments of :class:`LocalVMamba` (without ``out_indices``).

    Shapes: (B, in_chans, H, W) -> (B, num_classes); :meth:`forward_features` gives
    (B, H_3, W_3, C) with ``C = num_features = dims[-1]`` and ``H_3 ~ H / 32``.
    """

    output_fmt = 'NHWC'

    def __init__(self, arch='tiny', num_classes: int = 1000, in_chans: Optional[int] = None,
                 global_pool: str = 'avg', **kwargs):
        if 'out_indices' in kwargs:
            raise TypeError('LocalVMambaClassifier has no out_indices; use '
                            "forward_intermediates(x, indices) or timm's features_only=True.")
        num_classes = check_int(num_classes, 'num_classes', type(self).__name__, low=0)
        in_channels = self._in_channels(kwargs, in_chans)
        super().__init__(arch=arch, in_channels=in_channels, out_indices=(), **kwargs)
        self.in_chans = in_channels
        self.num_classes = num_classes
        self.global_pool = self._check_pool(global_pool)
        self.head_hidden_size = self.num_features
        self.feature_info = [
            dict(num_chs=dim, reduction=self.patch_size * 2**i, module=f'layers.{i}')
            for i, dim in enumerate(self.dims)
        ]
        self.classifier = nn.Sequential(
            OrderedDict(
                norm=nn.LayerNorm(self.num_features),
                permute=_Permute(0, 3, 1, 2),
                avgpool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                head=self._new_head(num_classes)))
        self.classifier.apply(self._init_linear_and_norm)

    def _new_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # ----------------------------------------------------------------- timm interface
    def get_classifier(self) -> nn.Module:
        """The final Linear (``classifier.head``; Identity without classes)."""
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New (re-initialised) head for ``num_classes`` (0: none); ``global_pool`` '' or 'avg'."""
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool)
        self.num_classes = num_classes
        self.classifier.head = self._new_head(num_classes)
        self.classifier.head.apply(self._init_linear_and_norm)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise lr decay: stem, then one group per block
        (``coarse``: per stage); a stage's downsample and the head norm join the group before."""
        return dict(
            stem=r'^patch_embed',
            blocks=r'^layers\.(\d+)' if coarse else [
                (r'^layers\.(\d+)\.blocks\.(\d+)', None),
                (r'^layers\.(\d+)\.downsample', MATCH_PREV_GROUP),
                (r'^classifier\.norm', MATCH_PREV_GROUP),
            ])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> last stage output (B, H_3, W_3, dims[-1]), NHWC, unpooled."""
        return self.forward_stages(x)[1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, H_3, W_3, C) -> logits (B, num_classes), or the pooled (B, C) with
        ``pre_logits``. Without pooling (``global_pool=''``) the maps stay NHWC."""
        head = self.classifier
        x = head.norm(x)
        if self.global_pool == 'avg':
            x = head.flatten(head.avgpool(head.permute(x)))
        return x if pre_logits else head.head(x)

    def forward_intermediates(self, x: torch.Tensor,
                              indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """Stage outputs (before each stage's downsample), timm's ``forward_intermediates``.

        Args:
            x: (B, C_in, H, W).
            indices: stages to return; an int n takes the last n, None all.
            norm: apply ``classifier.norm`` to the output of the last stage.
            stop_early: skip the stages after the last one asked for.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: return only the list.

        Returns:
            list of (B, dims[i], H_i, W_i) maps (NHWC: (B, H_i, W_i, dims[i])); without
            ``intermediates_only`` also the final features first: ``(features, list)``.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}.")
        take, last = take_indices(len(self.layers), indices)
        layers = self.layers[:last + 1] if stop_early else self.layers
        x = self.patch_embed(x)
        feats = []
        for i, layer in enumerate(layers):
            x = self._run_blocks(layer.blocks, x)
            if i in take:
                feat = self.classifier.norm(x) if norm and i == len(self.dims) - 1 else x
                feats.append(feat.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW'
                             else feat)
            x = layer.downsample(x)
        return feats if intermediates_only else (x, feats)

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1,
                                  prune_norm: bool = False, prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the head / final norm)."""
        take, last = take_indices(len(self.layers), indices)
        self.layers = self.layers[:last + 1]
        self.layers[last].downsample = nn.Identity()
        self.num_stages = len(self.layers)
        self.frozen_stages = min(self.frozen_stages, self.num_stages)
        if prune_norm:
            self.classifier.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

