"""Layer-wise learning-rate decay for plain backbones (ViTDet / BEiT style), mmengine only.

With ``N = num_layers`` backbone layers, parameter groups get ``lr_mult = rate ** (N + 1 - id)``:

* id 0: the backbone's embeddings (``patch_embed.*``, ``pos_embed``, ``cls_token``);
* id i + 1: everything under the backbone's ``layers.i.``;
* id N + 1 (``lr_mult = 1``): the rest of the backbone (output norms) and every non-backbone
  module (neck, heads).

Weight decay is switched off for biases and other 1-D parameters (norm weights), for the names
in ``no_decay_names`` (default ``pos_embed``, ``cls_token``) and for parameters that carry
``_no_weight_decay = True`` (the SSM parameters ``A_log_*`` and ``D_*`` of LocalVim).

Config::

    optim_wrapper = dict(
        type='OptimWrapper',
        constructor='LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(num_layers=20, layer_decay_rate=0.7))
"""
import re
from typing import Dict, List, Optional

import torch.nn as nn
from mmengine.logging import MMLogger, print_log

from .optim_constructor import PlainGroupsOptimWrapperConstructor

__all__ = ['LayerDecayOptimWrapperConstructor', 'layer_id']

_LAYER_RE = re.compile(r'^layers\.(\d+)\.')
_EMBED_NAMES = ('pos_embed', 'cls_token')


def layer_id(name: str, num_layers: int, backbone_prefix: str = 'backbone.') -> int:
    """Depth index of a parameter name (see the module docstring)."""
    if not name.startswith(backbone_prefix):
        return num_layers + 1
    rest = name[len(backbone_prefix):]
    if rest in _EMBED_NAMES or rest.startswith('patch_embed.'):
        return 0
    match = _LAYER_RE.match(rest)
    if match:
        return min(int(match.group(1)) + 1, num_layers + 1)
    return num_layers + 1


class LayerDecayOptimWrapperConstructor(PlainGroupsOptimWrapperConstructor):
    """Optimizer-wrapper constructor with layer-wise lr decay for plain backbones.

    ``paramwise_cfg`` keys: ``num_layers`` (required: the backbone depth), ``layer_decay_rate``
    (required, in (0, 1]), ``backbone_prefix`` ('backbone.'), ``no_decay_names``
    (('pos_embed', 'cls_token')). See the module docstring for the rules. The optimizer's
    parameter groups are plain dicts (:class:`PlainGroupsOptimWrapperConstructor`).
    """

    _KEYS = {'num_layers', 'layer_decay_rate', 'backbone_prefix', 'no_decay_names'}

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = set(paramwise_cfg) - self._KEYS
        missing = {'num_layers', 'layer_decay_rate'} - set(paramwise_cfg)
        if unknown or missing:
            raise ValueError(f'LayerDecayOptimWrapperConstructor: paramwise_cfg needs '
                             f'num_layers and layer_decay_rate and accepts {sorted(self._KEYS)}; '
                             f'got unknown {sorted(unknown)}, missing {sorted(missing)}.')
        rate = float(paramwise_cfg['layer_decay_rate'])
        if not 0 < rate <= 1:
            raise ValueError(f'layer_decay_rate must be in (0, 1], got {rate}.')
        if int(paramwise_cfg['num_layers']) < 1:
            raise ValueError(f'num_layers must be >= 1, got {paramwise_cfg["num_layers"]}.')
        self.num_layers = int(paramwise_cfg['num_layers'])
        self.decay_rate = rate
        self.backbone_prefix = paramwise_cfg.get('backbone_prefix', 'backbone.')
        self.no_decay_names = tuple(paramwise_cfg.get('no_decay_names', _EMBED_NAMES))
        # The parent validates paramwise_cfg for its own keys: give it none, then set ours
        # (a non-empty paramwise_cfg makes __call__ use add_params).
        super().__init__(optim_wrapper_cfg, None)
        self.paramwise_cfg = paramwise_cfg

    def _no_decay(self, name: str, param: nn.Parameter) -> bool:
        short = name.rsplit('.', 1)[-1]
        return (param.ndim <= 1 or name.endswith('.bias') or short in self.no_decay_names
                or getattr(param, '_no_weight_decay', False))

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module=None) -> None:
        groups: Dict[tuple, dict] = {}
        base_wd = self.base_wd or 0.
        for name, param in module.named_parameters():
            name = prefix + name
            lid = layer_id(name, self.num_layers, self.backbone_prefix)
            no_decay = self._no_decay(name, param)
            key = (lid, no_decay)
            if key not in groups:
                scale = self.decay_rate**(self.num_layers + 1 - lid)
                groups[key] = dict(
                    params=[],
                    lr=self.base_lr * scale,
                    weight_decay=0. if no_decay else base_wd,
                    lr_scale=scale,
                    param_names=[])
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)
        for key in sorted(groups):
            group = groups[key]
            names = group.pop('param_names')
            params.append(group)
            print_log(f'layer {key[0]:>3d} lr x{group["lr_scale"]:.4f} '
                      f'weight_decay {group["weight_decay"]}: {len(names)} tensors',
                      logger=MMLogger.get_current_instance(), level=10)
