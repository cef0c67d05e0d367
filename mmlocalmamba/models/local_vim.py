"""LocalVim: the plain (ViT-like) LocalMamba backbone and its ImageNet classifier.

Parameter names and the forward pass follow the official ``VisionMamba`` (with the
``MultiMamba`` mixer) and ``Backbone_LocalVisionMamba`` models, so the published checkpoints load
unchanged. Per layer (pre-norm, residual stream kept in float32)::

    hidden = rope(hidden); residual = rope(residual)         # rope presets only
    residual = hidden if first layer else residual + drop_path(hidden)
    hidden = mixer(Norm(residual))                           # Norm: RMSNorm or LayerNorm

The mixer in-projects to ``x, z`` (2 x Di), reads both in each of its K directions, runs a
causal depth-wise conv + SiLU, a selective scan and the gate ``* SiLU(z)`` per direction (each
direction has its own conv1d/x_proj/dt_proj/A_log/D), brings the outputs back to row-major
order, applies the shared channel attention to each, sums them (softmax-weighted and normalised
for the search supernet) and projects back to C.

Token grid: the image is zero-padded at the bottom/right to a multiple of the patch size, so the
grid is ``(ceil(H / p), ceil(W / p))``. The absolute position embedding (and the rope tables)
are built for ``img_size`` and resized bicubically (``align_corners=False``) to any other grid,
on every forward and when loading a checkpoint built for another size.
"""
import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MMLogger, print_log
from timm.layers import DropPath, trunc_normal_

from ..ops.pos_embed import apply_rope, grid_side, resize_grid_embed, resize_pos_embed, rope_tables
from ..ops.scan_orders import ALL_DIRECTIONS
from ..ops.vim_scan import local_vim_scan
from .base import (MATCH_PREV_GROUP, LocalMambaBackbone, ScanLayer, TimmClassifierMixin,
                   check_backend, check_bool, check_int, check_layer_directions, check_number,
                   check_out_indices, check_size_pair, check_ssm_args, resolve_arch, take_indices)
from .layers import BiAttn, MultiScan, resolve_directions, ssm_a_log_init, ssm_dt_bias_init
from .norms import RMSNorm  # noqa: F401  (nn.RMSNorm on torch < 2.4)

__all__ = ['LocalVim', 'LocalVimClassifier', 'LocalVimMixer', 'LocalVimBlock',
           'LOCAL_VIM_ARCHS']

#: Searched directions of LocalVim-T (also the first, overridden ``local_vim_small`` definition
#: of the official code, and the list its det/seg configs pass for both T and S).
_SEARCHED_DIRECTIONS = [
    ['h', 'v_flip', 'w7', 'w7_flip'], ['h_flip', 'w2_flip', 'w7', 'w7_flip'],
    ['h', 'h_flip', 'v', 'w7'], ['h', 'h_flip', 'v', 'v_flip'], ['h', 'h_flip', 'v', 'v_flip'],
    ['h', 'h_flip', 'v', 'v_flip'], ['h_flip', 'v', 'v_flip', 'w7'],
    ['h_flip', 'v', 'v_flip', 'w2_flip'], ['h', 'h_flip', 'v', 'v_flip'],
    ['h', 'h_flip', 'v', 'v_flip'], ['h', 'v', 'v_flip', 'w2'], ['h', 'v', 'v_flip', 'w2_flip'],
    ['h', 'h_flip', 'v_flip', 'w7'], ['h_flip', 'v', 'v_flip', 'w2'],
    ['h', 'h_flip', 'v', 'v_flip'], ['h', 'v', 'w2', 'w2_flip'], ['v', 'v_flip', 'w2', 'w7'],
    ['h', 'h_flip', 'v', 'w2'], ['h', 'h_flip', 'w2_flip', 'w7'], ['v', 'v_flip', 'w2', 'w2_flip']
]
#: What the official ``local_vim_small`` factory builds (its second definition wins).
_UNSEARCHED_DIRECTIONS = [['h', 'h_flip', 'w2', 'w2_flip']] * 20

_TINY = dict(embed_dim=192, depth=20, directions=_SEARCHED_DIRECTIONS)

#: Presets. All use the normalisation the released ImageNet checkpoints were trained with
#: (RMSNorm, weight only); the official det/seg configs build LayerNorm instead (see
#: :class:`~mmlocalmamba.models.compat_vim.MM_LocalVim`).
LOCAL_VIM_ARCHS: Dict[str, dict] = {
    'tiny': dict(_TINY),
    'small': dict(embed_dim=384, depth=20, directions=_UNSEARCHED_DIRECTIONS),
    'small_searched': dict(embed_dim=384, depth=20, directions=_SEARCHED_DIRECTIONS),
    'tiny_middle_cls': dict(_TINY, if_rope=False, if_rope_residual=False,
                            middle_cls_token=True),
    'tiny_search': dict(embed_dim=128, depth=20, directions=None),
}

_ARCH_DEFAULTS = dict(
    rms_norm=True,
    norm_eps=1e-5,
    fused_add_norm=True,
    if_rope=True,
    if_rope_residual=True,
    rope_pt_seq_len=14,
    middle_cls_token=False,
    abs_pos_embed=True,
    d_state=16,
    d_conv=4,
    expand=2,
    dt_rank='auto')
_ARCH_KEYS = {'embed_dim', 'depth', 'directions', 'candidates'} | set(_ARCH_DEFAULTS)
_DEFAULT_DIRECTIONS = ['h', 'h_flip', 'v', 'v_flip']


_ARCH_BOOLS = ('rms_norm', 'fused_add_norm', 'if_rope', 'if_rope_residual', 'middle_cls_token',
               'abs_pos_embed')


def resolve_vim_arch(arch: Union[str, dict], owner: str = 'LocalVim') -> dict:
    """Preset name or dict -> complete, checked arch dict (see :class:`LocalVim`)."""
    arch = resolve_arch(arch, LOCAL_VIM_ARCHS, _ARCH_KEYS, ('embed_dim', 'depth'), 'LocalVim')
    for key in ('embed_dim', 'depth'):
        arch[key] = check_int(arch[key], f'arch {key}', owner)
    if 'directions' not in arch:
        arch['directions'] = [_DEFAULT_DIRECTIONS] * arch['depth']
    for key, value in _ARCH_DEFAULTS.items():
        arch.setdefault(key, value)
    for key in _ARCH_BOOLS:
        arch[key] = check_bool(arch[key], f'arch {key}', owner)
    check_number(arch['norm_eps'], 'arch norm_eps', owner, low=0, low_open=True)
    for key in ('rope_pt_seq_len', 'd_state', 'd_conv'):
        check_int(arch[key], f'arch {key}', owner)
    check_number(arch['expand'], 'arch expand', owner, low=0, low_open=True)
    if arch['dt_rank'] != 'auto':
        check_int(arch['dt_rank'], "arch dt_rank (or 'auto')", owner)
    arch['candidates'] = tuple(arch.get('candidates') or ALL_DIRECTIONS)
    if arch['middle_cls_token'] and arch['if_rope']:
        raise ValueError('LocalVim cannot combine rotary embedding (if_rope=True) with the middle '
                         'class token (the official code does not support it either); use '
                         'if_rope=False with middle_cls_token=True.')
    if arch['if_rope'] and arch['embed_dim'] % 4:
        raise ValueError(f'Rotary embedding needs embed_dim divisible by 4, got '
                         f'{arch["embed_dim"]}.')
    return arch


class LocalVimMixer(ScanLayer):
    """Multi-direction Mamba mixer of a LocalVim layer (official ``MultiMamba``, bimamba v2).

    Args:
        d_model (int): channels C.
        directions (Sequence[str]): the K directions of this layer.
        search (bool): supernet layer with architecture weights. Default: False.
        d_state (int): SSM state size N. Default: 16.
        d_conv (int): causal conv kernel. Default: 4.
        expand (float): inner channels Di = int(expand * C). Default: 2.
        dt_rank (int | str): 'auto' = ceil(C / 16).
        official_v_reverse (bool): reproduce the official ``v`` reverse (wrong for H != W).
        scan_backend (str): selective-scan backend.

    Shapes: (B, T, C) -> (B, T, C), with ``T = H*W`` (+1 for a class token at ``cls_pos``).
    """

    def __init__(self,
                 d_model: int,
                 directions: Sequence[str],
                 search: bool = False,
                 d_state: int = 16,
                 d_conv: int = 4,
                 expand: float = 2,
                 dt_rank: Union[int, str] = 'auto',
                 dt_min: float = 0.001,
                 dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4,
                 official_v_reverse: bool = False,
                 scan_backend: str = 'auto'):
        super().__init__()
        owner = type(self).__name__
        d_inner = check_ssm_args(owner, d_model, d_state, expand, 'expand', dt_rank, dt_min,
                                 dt_max, dt_init_floor)
        d_conv = check_int(d_conv, 'd_conv', owner)
        rank = math.ceil(d_model / 16) if dt_rank == 'auto' else int(dt_rank)
        self.directions = check_layer_directions(directions, owner)
        search = check_bool(search, 'search', owner)
        self.d_model, self.d_inner, self.d_state, self.d_conv = d_model, d_inner, d_state, d_conv
        self.dt_rank = rank
        self.official_v_reverse = check_bool(official_v_reverse, 'official_v_reverse', owner)
        self.scan_backend = check_backend(scan_backend)
        num_dirs = len(self.directions)

        for i in range(num_dirs):
            A_log = nn.Parameter(ssm_a_log_init(d_inner, d_state))
            D = nn.Parameter(torch.ones(d_inner))
            A_log._no_weight_decay = True
            D._no_weight_decay = True
            self.register_parameter(f'A_log_{i}', A_log)
            self.register_parameter(f'D_{i}', D)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.multi_scan = MultiScan(self.directions, d_inner, search=search, with_attn=False)
        dt_std = rank**-0.5
        for i in range(num_dirs):
            conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
            x_proj = nn.Linear(d_inner, rank + 2 * d_state, bias=False)
            dt_proj = nn.Linear(rank, d_inner, bias=True)
            nn.init.uniform_(dt_proj.weight, -dt_std, dt_std)
            with torch.no_grad():
                dt_proj.bias.copy_(ssm_dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor))
            self.add_module(f'conv1d_{i}', conv)
            self.add_module(f'x_proj_{i}', x_proj)
            self.add_module(f'dt_proj_{i}', dt_proj)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.attn = BiAttn(d_inner)

    def _stacked(self, name: str, attr: Optional[str] = None) -> torch.Tensor:
        items = [getattr(self, f'{name}_{i}') for i in range(len(self.directions))]
        if attr is not None:
            items = [getattr(m, attr) for m in items]
        return torch.stack(items)

    def scan_outputs(self, x: torch.Tensor, hw: Tuple[int, int],
                     cls_pos: Optional[int] = None) -> torch.Tensor:
        """Gated per-direction scan outputs (B, K, T, Di), row-major tokens."""
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2Di, T)
        return local_vim_scan(
            xz, hw[0], hw[1], self.directions,
            conv_weight=self._stacked('conv1d', 'weight').squeeze(2),
            conv_bias=self._stacked('conv1d', 'bias'),
            x_proj_weight=self._stacked('x_proj', 'weight'),
            dt_proj_weight=self._stacked('dt_proj', 'weight'),
            dt_proj_bias=self._stacked('dt_proj', 'bias'),
            A_log=self._stacked('A_log'),
            D=self._stacked('D'),
            cls_pos=cls_pos,
            official_v_reverse=self.official_v_reverse,
            backend=self.scan_backend)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int],
                cls_pos: Optional[int] = None) -> torch.Tensor:
        ys = self.scan_outputs(x, hw, cls_pos)
        return self.out_proj(self.multi_scan.merge(ys, attn=self.attn))

    def extra_repr(self) -> str:
        return f'd_model={self.d_model}, d_inner={self.d_inner}, directions={list(self.directions)}'


class LocalVimBlock(nn.Module):
    """Add -> Norm -> Mixer (the Vim ``Block``), on (B, T, C) tokens.

    ``residual = hidden`` (first layer) or ``residual + drop_path(hidden)``; returns
    ``(mixer(norm(residual)), residual)``. The residual stream is kept in float32: with
    ``fused_add_norm`` (the official classification models) in ``promote(dtype, float32)``, without
    it (the official det/seg backbones) cast to float32 exactly as the official unfused block does
    (the two differ only for float64 models).
    """

    def __init__(self, dim: int, mixer: nn.Module, rms_norm: bool = True, norm_eps: float = 1e-5,
                 drop_path: float = 0., fused_add_norm: bool = True):
        super().__init__()
        check_number(drop_path, 'drop_path', type(self).__name__, low=0, high=1, high_open=True)
        self.mixer = mixer
        self.norm = nn.RMSNorm(dim, eps=norm_eps) if rms_norm else nn.LayerNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.fused_add_norm = fused_add_norm

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor],
                hw: Tuple[int, int], cls_pos: Optional[int] = None):
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.mixer(self.norm(residual.to(self.norm.weight.dtype)), hw, cls_pos)
        if self.fused_add_norm:
            residual = residual.to(torch.promote_types(residual.dtype, torch.float32))
        else:
            residual = residual.float()
        return hidden, residual


class VimPatchEmbed(nn.Module):
    """Zero-pad to a multiple of the patch (bottom/right), Conv2d(k = s = patch), flatten.

    Shapes: (B, C_in, H, W) -> ((B, ceil(H/p) * ceil(W/p), C), (ceil(H/p), ceil(W/p))).
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor):
        p = self.patch_size
        # ceil-division instead of ``-h % p``: under torch.compile with dynamic shapes a size
        # holding a modulo breaks Inductor 2.11 (no ``python_mod`` in its scalar-to-tensor pass)
        # once the position tables are resized to it
        height, width = x.shape[-2:]
        pad_h, pad_w = -(-height // p) * p - height, -(-width // p) * p - width
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[-2:])


class VimRope(nn.Module):
    """Rotary embedding tables (persistent buffers ``freqs_cos`` / ``freqs_sin``, (g*g, C))."""

    def __init__(self, dim: int, grid: int, pt_seq_len: int = 14):
        super().__init__()
        self.grid = grid
        cos, sin = rope_tables(dim, grid, pt_seq_len)
        self.register_buffer('freqs_cos', cos)
        self.register_buffer('freqs_sin', sin)

    def tables(self, hw: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for a token grid, each (H*W, C), bicubically resized if needed."""
        side = (self.grid, self.grid)
        return (resize_grid_embed(self.freqs_cos, side, hw),
                resize_grid_embed(self.freqs_sin, side, hw))


class LocalVim(LocalMambaBackbone):
    """LocalVim backbone: plain Vision Mamba with local multi-direction scans.

    Args:
        arch (str | dict): 'tiny' (LocalVim-T), 'small' (LocalVim-S, what the official
            ``local_vim_small`` builds: ``[h, h_flip, w2, w2_flip]`` in every layer),
            'small_searched' (S width with the searched T direction lists, the first, overridden
            official definition), 'tiny_middle_cls' (no rope, middle class token),
            'tiny_search' (direction-search supernet), or a dict with ``embed_dim``, ``depth``
            and optionally ``directions`` (one list per layer; None: supernet), ``rms_norm``
            (True: RMSNorm, False: LayerNorm), ``norm_eps`` (1e-5), ``fused_add_norm`` (True;
            False keeps the residual stream in exactly float32 like the official unfused block,
            which matters only for float64 models), ``if_rope`` (True),
            ``if_rope_residual`` (True), ``rope_pt_seq_len`` (14), ``middle_cls_token`` (False),
            ``abs_pos_embed`` (True), ``d_state`` (16), ``d_conv`` (4), ``expand`` (2),
            ``dt_rank`` ('auto'). Default: 'tiny'.
        img_size (int | tuple): image size the position embedding and rope tables are built
            for; other sizes are resized to on the fly. Default: 224.
        patch_size (int): Default: 16.
        in_channels (int): Default: 3.
        out_indices (int | Sequence[int]): layers whose mixer outputs are returned (negative
            counts from the end), each through its own LayerNorm ``outnorm_{j}``. Default: -1.
        drop_rate (float): dropout after the position embedding. Default: 0.
        drop_path_rate (float): stochastic depth; layer i uses ``[0] + linspace(0, r, depth)``
            at i (the official schedule). Default: 0.1.
        frozen_stages (int): -1 freezes nothing; 0 the patch/position embeddings (and class
            token); i >= 1 also layers 0..i-1 and the output norms of those layers. Default: -1.
        norm_eval (bool): keep batch-norm layers in eval mode (LocalVim has none). Default: False.
        with_cp (bool): gradient checkpointing per layer. Default: False.
        official_v_reverse (bool): reproduce the official ``v``/``v_flip`` reverse, which
            misplaces tokens when the token grid is not square. Default: False.
        scan_backend (str): 'auto', 'torch', 'triton' or 'mamba_ssm'. Default: 'auto'.
        triton_precompile (bool): compile the Triton kernels a first call needs in parallel
            processes before it runs (:mod:`mmlocalmamba.models.precompile`). Default: True.
        pretrained (str, optional): deprecated, use ``init_cfg``.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads
            official ImageNet checkpoints (position embedding and rope tables resized to this
            model's grid) and mmdet/mmseg checkpoints.

    Shapes: input (B, in_channels, H, W); output a tuple of (B, embed_dim, ceil(H/p), ceil(W/p))
    per out index (the class token, if any, is dropped from the maps).
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 official_v_reverse: bool = False,
                 scan_backend: str = 'auto',
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None,
                 triton_precompile: bool = True):
        owner = type(self).__name__
        arch = resolve_vim_arch(arch, owner)
        super().__init__(frozen_stages, arch['depth'], norm_eval, with_cp, pretrained, init_cfg,
                         triton_precompile)
        check_backend(scan_backend)
        patch_size = check_int(patch_size, 'patch_size', owner)
        in_channels = check_int(in_channels, 'in_channels', owner)
        drop_rate = check_number(drop_rate, 'drop_rate', owner, low=0, high=1, high_open=True)
        drop_path_rate = check_number(drop_path_rate, 'drop_path_rate', owner, low=0, high=1,
                                      high_open=True)
        official_v_reverse = check_bool(official_v_reverse, 'official_v_reverse', owner)
        self.arch = arch
        dim, depth = arch['embed_dim'], arch['depth']
        self.embed_dim = self.num_features = dim
        self.depth = depth
        self.patch_size = patch_size
        self.img_size = check_size_pair(img_size, 'img_size', owner)
        self.grid_size = tuple(-(-s // patch_size) for s in self.img_size)
        self.out_indices = self._check_out_indices(out_indices, depth)
        self.official_v_reverse = official_v_reverse
        self.middle_cls_token = arch['middle_cls_token']
        self.if_rope_residual = arch['if_rope'] and arch['if_rope_residual']

        directions, search = resolve_directions(arch['directions'], depth, arch['candidates'],
                                                owner)
        self.layer_directions = directions
        self.is_search = all(search)

        # Own parameters first (state-dict order of the official models).
        if self.middle_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        num_pos = self.grid_size[0] * self.grid_size[1] + int(self.middle_cls_token)
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, num_pos, dim)) if arch['abs_pos_embed'] else None)
        self.patch_embed = VimPatchEmbed(in_channels, dim, patch_size)
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.rope = (
            VimRope(dim, self.grid_size[0], arch['rope_pt_seq_len']) if arch['if_rope'] else None)
        self._build_head()

        dpr = [0.] + [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList([
            LocalVimBlock(
                dim,
                LocalVimMixer(
                    dim,
                    directions[i],
                    search=search[i],
                    d_state=arch['d_state'],
                    d_conv=arch['d_conv'],
                    expand=arch['expand'],
                    dt_rank=arch['dt_rank'],
                    official_v_reverse=official_v_reverse,
                    scan_backend=scan_backend),
                rms_norm=arch['rms_norm'],
                norm_eps=arch['norm_eps'],
                drop_path=dpr[i],
                fused_add_norm=arch['fused_add_norm']) for i in range(depth)
        ])
        self._build_tail(drop_path_rate)
        self._init_parameters()
        self._freeze_stages()

    # ----------------------------------------------------------------- construction helpers
    @staticmethod
    def _check_out_indices(out_indices, depth: int) -> List[int]:
        return check_out_indices(out_indices, depth, 'layers', allow_negative=True)

    def _build_head(self) -> None:
        """Modules registered before ``layers`` (classifier head)."""

    def _build_tail(self, drop_path_rate: float) -> None:
        """Modules registered after ``layers``: the output norms ``outnorm_{j}``."""
        for j in range(len(self.out_indices)):
            self.add_module(f'outnorm_{j}', nn.LayerNorm(self.embed_dim))

    def _init_parameters(self) -> None:
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=.02)
        if self.middle_cls_token:
            trunc_normal_(self.cls_token, std=.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and '.dt_proj_' not in name:
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
                if name.endswith('mixer.out_proj'):
                    # GPT-2 style: residual-branch outputs scaled down with depth.
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                    with torch.no_grad():
                        m.weight /= math.sqrt(self.depth)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                if getattr(m, 'bias', None) is not None:
                    nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------- mmengine plumbing
    def no_weight_decay(self) -> set:
        """Names of parameters that should not be weight-decayed (embeddings, SSM A_log/D)."""
        return super().no_weight_decay() | {'pos_embed', 'cls_token'}

    def _frozen_parts(self):
        if self.frozen_stages < 0:
            return [], []
        params = [p for p in (self.pos_embed, getattr(self, 'cls_token', None)) if p is not None]
        modules = [self.patch_embed]
        for i in range(self.frozen_stages):
            modules.append(self.layers[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'outnorm_{self.out_indices.index(i)}'))
        return modules, params

    # ----------------------------------------------------------------- checkpoint loading
    def convert_pretrained_state(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Adapt a LocalVim checkpoint to this model (called by ``load_pretrained``).

        * refuses LocalVMamba checkpoints (the official LocalVim-S seg config points at one);
        * resizes ``pos_embed`` (bicubic, square source grid, keeping a middle class-token
          entry) and the rope tables ``rope.freqs_cos/sin`` to this model's grid, as the official
          loader does (the resized checkpoint tables replace the ones built here);
        * warns loudly when the checkpoint's block norms do not fit this model's norm type.
        """
        state = dict(state)
        if any(k.startswith(('layers.0.blocks.', 'patch_embed.0.')) for k in state):
            raise ValueError(
                'This is a LocalVMamba (VSSM) checkpoint, not a LocalVim one: none of its tensors '
                'fits LocalVim. (The official LocalVim-S UperNet config points at '
                'local_vssm_small.ckpt; no LocalVim-S checkpoint was published.)')
        logger = MMLogger.get_current_instance()
        self._check_norm_type(state, logger)
        if 'pos_embed' in state and self.pos_embed is not None:
            pos = state['pos_embed']
            if pos.shape != self.pos_embed.shape:
                state['pos_embed'] = self._convert_pos_embed(pos, logger)
        if self.rope is not None:
            for key in ('rope.freqs_cos', 'rope.freqs_sin'):
                table = state.get(key)
                ours = getattr(self.rope, key.split('.')[1])
                if table is not None and table.shape != ours.shape:
                    side = grid_side(table.shape[0], key)
                    state[key] = resize_grid_embed(table.float(), (side, side),
                                                   (self.rope.grid, self.rope.grid)).to(
                                                       table.dtype)
                    print_log(f'Resized {key} from {side}x{side} to '
                              f'{self.rope.grid}x{self.rope.grid} (bicubic).', logger=logger)
        return state

    def _convert_pos_embed(self, pos: torch.Tensor, logger) -> torch.Tensor:
        num = pos.shape[1]
        has_cls = num > 1 and math.isqrt(num - 1)**2 == num - 1 and math.isqrt(num)**2 != num
        src_cls = (num - 1) // 2 if has_cls else None
        side = grid_side(num - int(has_cls), 'checkpoint pos_embed')
        dst_hw = self.grid_size
        dst_cls = dst_hw[0] * dst_hw[1] // 2 if self.middle_cls_token else None
        if has_cls and not self.middle_cls_token:
            pos = torch.cat([pos[:, :src_cls], pos[:, src_cls + 1:]], dim=1)
            src_cls = None
            print_log('Dropped the class-token entry of the checkpoint pos_embed (this model has '
                      'no class token).', logger=logger, level=30)
        elif self.middle_cls_token and not has_cls:
            raise ValueError(f'The checkpoint pos_embed {tuple(pos.shape)} has no class-token '
                             f'entry but this model uses a middle class token.')
        out = resize_pos_embed(pos.float(), (side, side), dst_hw, src_cls, dst_cls).to(pos.dtype)
        print_log(f'Resized pos_embed from {side}x{side} to {dst_hw[0]}x{dst_hw[1]} (bicubic).',
                  logger=logger)
        return out

    def _check_norm_type(self, state: Dict[str, torch.Tensor], logger) -> None:
        ckpt_has = 'layers.0.norm.weight' in state
        if not ckpt_has:
            return
        ckpt_rms = 'layers.0.norm.bias' not in state
        model_rms = isinstance(self.layers[0].norm, nn.RMSNorm)
        if ckpt_rms == model_rms:
            return
        ckpt_kind, model_kind = ('RMSNorm', 'LayerNorm') if ckpt_rms else ('LayerNorm', 'RMSNorm')
        msg = (f'NORM TYPE MISMATCH: the checkpoint\'s block norms are {ckpt_kind} '
               f'(layers.*.norm {"without" if ckpt_rms else "with"} bias) but this '
               f'{type(self).__name__} uses {model_kind}. The weights load, but the '
               f'normalisation differs from training')
        if ckpt_rms:
            msg += (' (LayerNorm biases stay at 0 and the tokens get mean-centred). The released '
                    'LocalVim ImageNet checkpoints use RMSNorm: use rms_norm=True (the default of '
                    'the LocalVim presets).')
        else:
            msg += ' (the checkpoint\'s norm biases are dropped). Use rms_norm=False.'
        warnings.warn(msg)
        print_log(msg, logger=logger, level=30)

    # ----------------------------------------------------------------- compile
    def compile(self, *args, **kwargs) -> None:
        """``nn.Module.compile`` (``torch.compile`` of this module in place, same arguments).

        With a middle class token and Inductor, the options of
        :func:`~mmlocalmamba.models.compile_options.class_token_inductor_options` are added
        (on torch 2.11 Inductor otherwise fails once the batch size becomes dynamic); options
        given here win, a ``mode`` is turned into its options. ``torch.compile(model)`` called
        directly needs them passed by hand: ``options=class_token_inductor_options()``.
        """
        if self.middle_cls_token and kwargs.get('backend', 'inductor') == 'inductor':
            from .compile_options import class_token_inductor_options
            options = dict(kwargs.get('options') or {})
            added = {k: v for k, v in class_token_inductor_options().items()
                     if k not in options}
            if added:
                mode = kwargs.pop('mode', None)
                if mode is not None:
                    from torch._inductor import list_mode_options
                    options = {**list_mode_options(mode, kwargs.get('dynamic')), **options}
                kwargs['options'] = {**options, **added}
                print_log(f'{type(self).__name__}.compile: added the Inductor options {added} '
                          f'(torch {torch.__version__} fails on the class-token sequence with '
                          f'a dynamic batch; mmlocalmamba.models.compile_options).',
                          logger='current')
        super().compile(*args, **kwargs)

    # ----------------------------------------------------------------- forward
    def _pos_embed_for(self, hw: Tuple[int, int]) -> torch.Tensor:
        if hw == self.grid_size:
            return self.pos_embed
        src_cls = dst_cls = None
        if self.middle_cls_token:
            src_cls = self.grid_size[0] * self.grid_size[1] // 2
            dst_cls = hw[0] * hw[1] // 2
        return resize_pos_embed(self.pos_embed, self.grid_size, hw, src_cls, dst_cls)

    def _embed(self, x: torch.Tensor):
        """Patch embedding, class token, position embedding.

        Returns:
            tokens (B, T, C), grid (H, W), class-token index or None.
        """
        x, hw = self.patch_embed(x)
        cls_pos = None
        if self.middle_cls_token:
            cls_pos = hw[0] * hw[1] // 2
            cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([x[:, :cls_pos], cls, x[:, cls_pos:]], dim=1)
        if self.pos_embed is not None:
            # no cast: under autocast the float32 embedding promotes the tokens (as officially)
            x = x + self._pos_embed_for(hw)
        return self.pos_drop(x), hw, cls_pos

    def _run_layer(self, layer, hidden, residual, hw, cls_pos):
        return self._checkpointed(layer, hidden, residual, hw, cls_pos)

    def forward_tokens(self, x: torch.Tensor, out_indices: Sequence[int] = (),
                       last: Optional[int] = None):
        """Run the embedding and the layers (all, or up to layer ``last``).

        Returns:
            (mixer outputs (B, T, C) of ``out_indices``, last mixer output, residual stream,
            grid (H, W), class-token index or None)
        """
        hidden, hw, cls_pos = self._embed(x)
        rope = self.rope.tables(hw) if self.rope is not None else None
        residual = None
        feats = []
        wanted = set(out_indices)
        layers = self.layers if last is None else self.layers[:last + 1]
        for i, layer in enumerate(layers):
            if rope is not None:
                hidden = apply_rope(hidden, *rope)
                if residual is not None and self.if_rope_residual:
                    residual = apply_rope(residual, *rope)
            hidden, residual = self._run_layer(layer, hidden, residual, hw, cls_pos)
            if i in wanted:
                feats.append(hidden)
        return feats, hidden, residual, hw, cls_pos

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, C_in, H, W) -> tuple of (B, C, ceil(H/p), ceil(W/p)), one per out index."""
        feats, _, _, hw, cls_pos = self.forward_tokens(x, self.out_indices)
        return tuple(
            _tokens_to_map(getattr(self, f'outnorm_{j}')(_without_token(feat, cls_pos)), hw)
            for j, feat in enumerate(feats))


def _without_token(tokens: torch.Tensor, pos: Optional[int]) -> torch.Tensor:
    """(B, T, C) -> (B, T - 1, C) without the token at ``pos`` (unchanged for None)."""
    if pos is None:
        return tokens
    return torch.cat([tokens[:, :pos], tokens[:, pos + 1:]], dim=1)


def _tokens_to_map(tokens: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """Row-major (B, H*W, C) tokens -> (B, C, H, W)."""
    batch, _, channels = tokens.shape
    return tokens.view(batch, hw[0], hw[1], channels).permute(0, 3, 1, 2).contiguous()


class LocalVimClassifier(TimmClassifierMixin, LocalVim):
    """LocalVim image classifier with the official ``VisionMamba`` state-dict layout, timm-style.

    End: ``norm_f(residual + drop_path(last mixer output))``, then the middle class token or the
    mean over tokens, then ``head``. The timm interface follows timm's plain ViTs (token
    outputs): :meth:`forward_features` gives the normalised tokens (B, T, C), :meth:`forward_head`
    pools and classifies; also :meth:`reset_classifier`, :meth:`forward_intermediates` (for
    ``features_only=True``: per-layer mixer outputs as maps), :meth:`group_matcher`,
    :meth:`set_grad_checkpointing`, :meth:`no_weight_decay`.

    Args:
        arch (str | dict): see :class:`LocalVim`. Default: 'tiny'.
        num_classes (int): classes; 0 removes the head (pooled features out). Default: 1000.
        in_chans (int): image channels (timm's name of ``in_channels``). Default: 3.
        global_pool (str, optional): 'token' (the middle class token; presets with one),
            'avg' (mean over the patch tokens) or '' (no pooling: ``forward`` gives the
            (B, T, C) tokens). Default: 'token' with a class token, else 'avg' (as officially).
        **kwargs: the other arguments of :class:`LocalVim` (without ``out_indices``).

    Shapes: (B, in_chans, H, W) -> (B, num_classes); tokens T = ceil(H/p) * ceil(W/p) (+1 for a
    class token at T // 2).
    """

    pool_types = ('', 'avg', 'token')

    def __init__(self, arch='tiny', num_classes: int = 1000, in_chans: Optional[int] = None,
                 global_pool: Optional[str] = None, **kwargs):
        if 'out_indices' in kwargs:
            raise TypeError('LocalVimClassifier has no out_indices; use forward_features(x, '
                            'out_indices) or forward_intermediates(x, indices) for layer '
                            'outputs.')
        self.num_classes = check_int(num_classes, 'num_classes', type(self).__name__, low=0)
        in_channels = self._in_channels(kwargs, in_chans)
        super().__init__(arch=arch, in_channels=in_channels, out_indices=(), **kwargs)
        self.in_chans = in_channels
        if global_pool is None:
            global_pool = 'token' if self.middle_cls_token else 'avg'
        self.global_pool = self._check_pool(global_pool)
        self.head_hidden_size = self.embed_dim
        self.feature_info = [
            dict(num_chs=self.embed_dim, reduction=self.patch_size, module=f'layers.{i}')
            for i in range(self.depth)
        ]

    def _build_head(self) -> None:
        self.head = self._new_head(self.num_classes)

    def _new_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _build_tail(self, drop_path_rate: float) -> None:
        arch = self.arch
        self.final_drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = (nn.RMSNorm(self.embed_dim, eps=arch['norm_eps']) if arch['rms_norm'] else
                       nn.LayerNorm(self.embed_dim, eps=arch['norm_eps']))

    def _check_pool(self, global_pool: str) -> str:
        if global_pool == 'token' and not self.middle_cls_token:
            raise ValueError("global_pool='token' needs a class token (e.g. arch "
                             "'tiny_middle_cls'); use 'avg' or ''.")
        return super()._check_pool(global_pool)

    # ----------------------------------------------------------------- timm interface
    def get_classifier(self) -> nn.Module:
        """The final Linear (``head``; Identity without classes)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New head for ``num_classes`` (0: none); ``global_pool`` '', 'avg' or 'token'."""
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool)
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise lr decay: the embeddings, then one group per
        layer (the final norm joins the last one); ``coarse`` gives the same groups."""
        return dict(stem=r'^cls_token|^pos_embed|^patch_embed',
                    blocks=[(r'^layers\.(\d+)', None), (r'^norm_f', MATCH_PREV_GROUP)])

    def forward_features(self, x: torch.Tensor,
                         out_indices: Optional[Sequence[int]] = None):
        """Final normalised tokens, or the official per-layer outputs.

        Args:
            x: (B, C_in, H, W).
            out_indices: None (timm): return ``norm_f(residual + last mixer output)``,
                (B, T, C). A list of layers (the official ``forward_features(x, out_indices)``):
                return their mixer outputs, a list of (B, T, C), tokens in row-major order with
                the class token (if any) at T // 2.
        """
        if out_indices is not None:
            indices = self._check_out_indices(out_indices, self.depth)
            return self.forward_tokens(x, indices)[0]
        _, hidden, residual, _, _ = self.forward_tokens(x)
        return self._final_tokens(hidden, residual)

    def _final_tokens(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``norm_f(residual + drop_path(hidden))``; as in the blocks, the float32 residual stream
        enters the norm in the norm's dtype."""
        tokens = residual + self.final_drop_path(hidden)
        weight = getattr(self.norm_f, 'weight', None)  # None once pruned to an Identity
        return self.norm_f(tokens if weight is None else tokens.to(weight.dtype))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, T, C) tokens -> logits (B, num_classes), or the pooled (B, C) with
        ``pre_logits``. Without pooling (``global_pool=''``) the tokens stay (B, T, C)."""
        cls_pos = (x.shape[1] - 1) // 2 if self.middle_cls_token else None
        if self.global_pool == 'token':
            x = x[:, cls_pos]
        elif self.global_pool == 'avg':
            x = _without_token(x, cls_pos).mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor,
                              indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """Per-layer mixer outputs (the features of the official det/seg backbone), timm's
        ``forward_intermediates``.

        Args:
            x: (B, C_in, H, W).
            indices: layers to return; an int n takes the last n, None all.
            norm: not supported (``norm_f`` belongs to the residual stream, not to the mixer
                outputs): must be False.
            stop_early: skip the layers after the last one asked for.
            output_fmt: 'NCHW' (maps (B, C, ceil(H/p), ceil(W/p)), class token dropped) or
                'NLC' (tokens (B, T, C), class token kept).
            intermediates_only: return only the list.

        Returns:
            the list, or ``(final tokens as forward_features gives them, list)``.
        """
        if norm:
            raise ValueError('LocalVim intermediates are mixer outputs; norm=True is not '
                             'supported.')
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        take, last = take_indices(len(self.layers), indices)
        feats, hidden, residual, hw, cls_pos = self.forward_tokens(
            x, take, last if stop_early else None)
        if output_fmt == 'NCHW':
            feats = [_tokens_to_map(_without_token(f, cls_pos), hw) for f in feats]
        if intermediates_only:
            return feats
        return self._final_tokens(hidden, residual), feats

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1,
                                  prune_norm: bool = False, prune_head: bool = True) -> List[int]:
        """Drop the layers after the last of ``indices`` (and the head / final norm)."""
        take, last = take_indices(len(self.layers), indices)
        self.layers = self.layers[:last + 1]
        self.depth = len(self.layers)
        self.frozen_stages = min(self.frozen_stages, self.depth)
        if prune_norm:
            self.norm_f = nn.Identity()
            self.final_drop_path = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
