"""Migration aliases: the official det/seg configs' backbone dicts, accepted unchanged.

The official configs were derived from Swin configs without ``_delete_=True``, so their backbone
dicts also carry Swin keys (``embed_dims``, ``num_heads``, ``window_size``, an ``init_cfg`` that
points at a Swin checkpoint, ...) that the official code silently swallows. The aliases accept
them, ignore them with a single warning that lists them, and never load such a Swin ``init_cfg``.
Keys that are neither official nor known Swin leftovers raise a ``TypeError``.

The official ``v``/``v_flip`` reverse (wrong for H != W) is switched on by default so migrated
configs reproduce the official numbers; pass ``official_v_reverse=False`` to fix it.
"""
import warnings
from typing import Dict, Iterable, Optional

from .base import pretrained_to_init_cfg
from .local_vmamba import LocalVMamba

__all__ = ['MM_LocalVSSM', 'split_legacy_kwargs', 'legacy_init_cfg', 'warn_v_reverse']

#: Keys inherited from mmdet/mmseg Swin base configs; the official backbones ignore them.
SWIN_LEFTOVER_KEYS = frozenset({
    'embed_dims', 'num_heads', 'window_size', 'mlp_ratio', 'qkv_bias', 'qk_scale', 'drop_rate',
    'attn_drop_rate', 'convert_weights', 'pretrain_img_size', 'strides', 'use_abs_pos_embed',
    'act_cfg', 'norm_cfg', 'in_channels'
})

_warned_v_reverse = set()


def split_legacy_kwargs(kwargs: Dict, used: Iterable[str], ignored: Iterable[str],
                        owner: str) -> Dict:
    """Separate the keys an alias uses from the ones it ignores (warned once, listed).

    Raises:
        TypeError: a key that is neither used nor a known leftover.
    """
    used, ignored = set(used), set(ignored)
    unknown = sorted(set(kwargs) - used - ignored)
    if unknown:
        raise TypeError(f'{owner} got unexpected keyword arguments {unknown}; accepted: '
                        f'{sorted(used)}; ignored for compatibility: {sorted(ignored)}.')
    dropped = sorted(k for k in kwargs if k in ignored)
    if dropped:
        warnings.warn(f'{owner}: ignoring keyword arguments inherited from Swin base configs that '
                      f'the official LocalMamba code also ignores: {dropped}.')
    return {k: v for k, v in kwargs.items() if k in used}


def legacy_init_cfg(pretrained: Optional[str], init_cfg: Optional[dict], owner: str,
                    arg_name: str = 'pretrained') -> Optional[dict]:
    """Turn the official ``pretrained``-style argument into an ``init_cfg``.

    An ``init_cfg`` inherited from a Swin config (its checkpoint names Swin) is never loaded.
    """
    if init_cfg is not None:
        ckpt = str(init_cfg.get('checkpoint', '')) if isinstance(init_cfg, dict) else ''
        if 'swin' in ckpt.lower() or pretrained:
            warnings.warn(f'{owner}: not loading init_cfg={init_cfg} (inherited from a Swin '
                          f'config; the official backbone ignores it).')
            init_cfg = None
    return pretrained_to_init_cfg(pretrained or None, init_cfg, owner, arg_name)


def warn_v_reverse(owner: str) -> None:
    """One-time warning that a migration alias reproduces the official v-reverse bug."""
    if owner not in _warned_v_reverse:
        _warned_v_reverse.add(owner)
        warnings.warn(
            f'{owner} reproduces the official LocalMamba v/v_flip reverse, which puts tokens in '
            f'the wrong places on non-square feature maps (H != W), so that migrated configs and '
            f'checkpoints give the official numbers. Pass official_v_reverse=False (or use the '
            f'native backbone) for the corrected scan.')


class MM_LocalVSSM(LocalVMamba):
    """``LocalVMamba`` taking the official ``MM_LocalVSSM`` backbone dict unchanged.

    Official keyword names: ``dims`` (int or list), ``depths``, ``ssm_d_state``, ``ssm_ratio``,
    ``ssm_dt_rank``, ``directions``, ``drop_path_rate``, ``patch_size``, ``patch_norm``,
    ``in_chans``, ``out_indices``, ``pretrained`` (deprecated: becomes ``init_cfg``),
    ``downsample_version``/``patchembed_version`` (only 'v1' exists in LocalMamba),
    ``use_checkpoint``. Also accepted: ``with_cp``, ``frozen_stages``, ``norm_eval``,
    ``official_v_reverse`` (default True here), ``scan_backend``, ``init_cfg``,
    ``triton_precompile``.
    """

    _OFFICIAL_KEYS = ('dims', 'depths', 'ssm_d_state', 'ssm_ratio', 'ssm_dt_rank', 'directions',
                      'drop_path_rate', 'patch_size', 'patch_norm', 'in_chans', 'out_indices',
                      'pretrained', 'downsample_version', 'patchembed_version', 'use_checkpoint',
                      'with_cp', 'frozen_stages', 'norm_eval', 'official_v_reverse',
                      'scan_backend', 'init_cfg', 'triton_precompile')
    #: official VSSM arguments without effect in LocalMamba's backbone.
    _OFFICIAL_IGNORED = ('d_state', 'num_classes', 'norm_layer', 'ssm_act_layer', 'ssm_conv',
                         'ssm_conv_bias', 'ssm_drop_rate', 'ssm_init', 'forward_type',
                         'mlp_act_layer', 'mlp_drop_rate', 'gmlp')

    def __init__(self, **kwargs):
        owner = type(self).__name__
        if 'directions' not in kwargs:
            raise TypeError(f'{owner} requires "directions" (one list per block, or None for the '
                            f'search supernet), as the official backbone does.')
        kw = split_legacy_kwargs(kwargs, self._OFFICIAL_KEYS,
                                 SWIN_LEFTOVER_KEYS | set(self._OFFICIAL_IGNORED), owner)
        for key in ('downsample_version', 'patchembed_version'):
            if kw.get(key, 'v1') != 'v1':
                raise ValueError(f'{owner}: {key}={kw[key]!r} is not supported; LocalMamba '
                                 f'uses only "v1".')
        arch = dict(
            dims=kw.get('dims', 96),
            depths=kw.get('depths', [2, 2, 9, 2]),
            directions=kw['directions'],
            d_state=kw.get('ssm_d_state', 16),
            ssm_ratio=kw.get('ssm_ratio', 2.0),
            dt_rank=kw.get('ssm_dt_rank', 'auto'))
        official_v_reverse = kw.get('official_v_reverse', True)
        if official_v_reverse:
            warn_v_reverse(owner)
        super().__init__(
            arch=arch,
            in_channels=kw.get('in_chans', 3),
            patch_size=kw.get('patch_size', 4),
            patch_norm=kw.get('patch_norm', True),
            drop_path_rate=kw.get('drop_path_rate', 0.2),
            out_indices=kw.get('out_indices', (0, 1, 2, 3)),
            frozen_stages=kw.get('frozen_stages', -1),
            norm_eval=kw.get('norm_eval', False),
            with_cp=kw.get('with_cp', False) or kw.get('use_checkpoint', False),
            official_v_reverse=official_v_reverse,
            scan_backend=kw.get('scan_backend', 'auto'),
            triton_precompile=kw.get('triton_precompile', True),
            init_cfg=legacy_init_cfg(kw.get('pretrained'), kw.get('init_cfg'), owner))
