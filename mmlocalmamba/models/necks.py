"""Necks for plain (single-scale) backbones, written with torch and mmengine only.

:class:`SimpleFeaturePyramid` is the ViTDet "simple feature pyramid": one stride-16 map is turned
into stride 4, 8, 16, 32 maps by transposed convolutions / max pooling, each followed by a 1x1 and
a 3x3 convolution with channel LayerNorm, plus extra levels by stride-2 subsampling (for the
stride-64 RPN level). :class:`LayerNorm2d` (registered as ``LN2d``) also serves mmcv's
``build_norm_layer`` so detection heads can use ``norm_cfg=dict(type='LN2d')``.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

__all__ = ['LayerNorm2d', 'SimpleFeaturePyramid']


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of NCHW maps. Shapes: (B, C, H, W) -> (B, C, H, W)."""

    _abbr_ = 'ln'  # name prefix used by mmcv's build_norm_layer

    def __init__(self, num_channels: int, eps: float = 1e-6, **kwargs):
        super().__init__(num_channels, eps=eps, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


def _norm(norm_cfg: Optional[dict], channels: int) -> nn.Module:
    if norm_cfg is None:
        return nn.Identity()
    cfg = dict(norm_cfg)
    kind = cfg.pop('type', None)
    requires_grad = cfg.pop('requires_grad', True)
    if kind != 'LN2d':
        raise ValueError(f'SimpleFeaturePyramid supports norm_cfg=dict(type="LN2d") or None, got '
                         f'{norm_cfg}.')
    layer = LayerNorm2d(channels, **cfg)
    for p in layer.parameters():
        p.requires_grad = requires_grad
    return layer


class _ConvNorm(nn.Sequential):
    """Conv2d (no bias when normalised) -> norm."""

    def __init__(self, in_channels, out_channels, kernel_size, norm_cfg):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              bias=norm_cfg is None)
        self.norm = _norm(norm_cfg, out_channels)


class SimpleFeaturePyramid(BaseModule):
    """ViTDet simple feature pyramid: single-scale map -> multi-scale maps.

    Args:
        in_channels (int): channels of the backbone map.
        out_channels (int): channels of every output level. Default: 256.
        scale_factors (Sequence[float]): resolution factors of the levels relative to the input,
            each one of 4, 2, 1, 0.5. Default: (4.0, 2.0, 1.0, 0.5) (strides 4..32 from a
            stride-16 map).
        num_outs (int): number of outputs; levels beyond ``len(scale_factors)`` are made by
            subsampling the last one with stride 2 (max pool, kernel 1). Default: 5.
        norm_cfg (dict, optional): ``dict(type='LN2d')`` or None. Default: LN2d.
        in_index (int): which backbone output to use when given a tuple. Default: -1.
        init_cfg (dict, optional): mmengine init config.

    Shapes: a (B, C, H, W) tensor, or a tuple/list of them (``in_index`` picks one) ->
    tuple of ``num_outs`` maps (B, out_channels, H * s, W * s).
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int = 256,
                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 num_outs: int = 5,
                 norm_cfg: Optional[dict] = dict(type='LN2d'),
                 in_index: int = -1,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        scale_factors = [float(s) for s in scale_factors]
        bad = [s for s in scale_factors if s not in (4.0, 2.0, 1.0, 0.5)]
        if bad or not scale_factors:
            raise ValueError(f'scale_factors must be a non-empty list of 4, 2, 1 or 0.5, got '
                             f'{scale_factors}.')
        if num_outs < len(scale_factors):
            raise ValueError(f'num_outs ({num_outs}) must be >= len(scale_factors) '
                             f'({len(scale_factors)}).')
        _norm(norm_cfg, 1)  # validate early
        self.in_channels, self.out_channels = in_channels, out_channels
        self.scale_factors, self.num_outs, self.in_index = scale_factors, num_outs, in_index
        self.stages = nn.ModuleList()
        for scale in scale_factors:
            layers, dim = [], in_channels
            if scale == 4.0:
                layers += [
                    nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
                    _norm(norm_cfg, dim // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)
                ]
                dim //= 4
            elif scale == 2.0:
                layers.append(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2))
                dim //= 2
            elif scale == 0.5:
                layers.append(nn.MaxPool2d(2, stride=2))
            layers += [
                _ConvNorm(dim, out_channels, 1, norm_cfg),
                _ConvNorm(out_channels, out_channels, 3, norm_cfg)
            ]
            self.stages.append(nn.Sequential(*layers))
        self._init_convs()

    def _init_convs(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(m.weight, a=1)  # Caffe2 Xavier fill
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Tuple[torch.Tensor]:
        x = inputs if isinstance(inputs, torch.Tensor) else inputs[self.in_index]
        outs = [stage(x) for stage in self.stages]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
