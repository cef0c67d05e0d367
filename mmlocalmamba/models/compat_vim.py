"""``MM_LocalVim``: the official LocalVim det/seg backbone dicts, accepted unchanged.

The official ``Backbone_LocalVisionMamba`` takes the ``VisionMamba`` keyword arguments plus
``out_indices`` and ``pretrained_ckpt``. Differences from the native :class:`LocalVim` defaults:

* the official configs build **LayerNorm** blocks (``rms_norm=False``) although the released
  ImageNet checkpoints were trained with RMSNorm; the alias builds what the config says and the
  loader warns loudly about the mismatch;
* ``official_v_reverse`` is on by default (with a one-time warning), so migrated models give the
  official numbers on non-square inputs;
* ``pretrained_ckpt`` becomes an ``init_cfg`` (deprecation warning). The official LocalVim-S seg
  config points it at a LocalVMamba checkpoint (``local_vssm_small.ckpt``) from which nothing
  loads; the alias refuses to load that file (warning) and trains from scratch, as the official
  code effectively does.
"""
import warnings
from os.path import basename
from urllib.parse import urlparse

from .compat import SWIN_LEFTOVER_KEYS, legacy_init_cfg, split_legacy_kwargs, warn_v_reverse
from .local_vim import LocalVim

__all__ = ['MM_LocalVim']

#: Keys of the mmdet/mmseg ViT base configs (the official configs delete them, but derived
#: user configs may still carry them); ignored like the Swin leftovers.
VIT_LEFTOVER_KEYS = frozenset({
    'embed_dims', 'num_layers', 'num_heads', 'mlp_ratio', 'qkv_bias', 'drop_rate',
    'attn_drop_rate', 'with_cls_token', 'output_cls_token', 'final_norm', 'interpolate_mode',
    'window_block_indexes', 'use_rel_pos', 'norm_cfg', 'act_cfg', 'num_fcs', 'norm_eval',
    'window_size', 'use_act_checkpoint'
})


class MM_LocalVim(LocalVim):
    """``LocalVim`` taking the official ``MM_LocalVim`` (``Backbone_LocalVisionMamba``) dict.

    Official keyword names (defaults as in the official ``VisionMamba``): ``img_size`` (224),
    ``patch_size`` (16), ``stride`` (= patch size only), ``embed_dim`` (192), ``depth`` (24),
    ``channels`` (3), ``directions`` (required: one list per layer, or None for the supernet),
    ``rms_norm`` (False), ``norm_epsilon`` (1e-5), ``fused_add_norm`` (False),
    ``residual_in_fp32``, ``if_abs_pos_embed`` (False), ``if_rope`` (False),
    ``if_rope_residual`` (False), ``pt_hw_seq_len`` (14), ``ft_seq_len`` (None),
    ``if_cls_token`` + ``use_middle_cls_token`` (middle class token only), ``drop_rate``,
    ``drop_path_rate`` (0.1), ``ssm_cfg`` (``d_state``, ``d_conv``, ``expand``, ``dt_rank``),
    ``out_indices`` ([4, 9, 14, 19]), ``pretrained_ckpt`` (deprecated, becomes ``init_cfg``).
    Accepted without effect: ``num_classes``, ``final_pool_type``, ``bimamba_type``,
    ``initializer_cfg``, ``mamba_cls``, ``device``, ``dtype``, ``if_bidirectional`` /
    ``if_bimamba`` / ``use_double_cls_token`` / ``if_devide_out`` / ``init_layer_scale`` /
    ``flip_img_sequences_ratio`` at their defaults. Also: ``with_cp``, ``frozen_stages``,
    ``norm_eval``, ``official_v_reverse`` (default True here), ``scan_backend``, ``init_cfg``,
    ``triton_precompile``.
    """

    _OFFICIAL_KEYS = ('img_size', 'patch_size', 'stride', 'embed_dim', 'depth', 'channels',
                      'directions', 'rms_norm', 'norm_epsilon', 'fused_add_norm',
                      'residual_in_fp32', 'if_abs_pos_embed', 'if_rope', 'if_rope_residual',
                      'pt_hw_seq_len', 'ft_seq_len', 'if_cls_token', 'use_middle_cls_token',
                      'drop_rate', 'drop_path_rate', 'ssm_cfg', 'out_indices', 'pretrained_ckpt',
                      'pretrained', 'num_classes', 'final_pool_type', 'bimamba_type',
                      'initializer_cfg', 'mamba_cls', 'device', 'dtype', 'if_bidirectional',
                      'if_bimamba', 'use_double_cls_token', 'if_devide_out', 'init_layer_scale',
                      'flip_img_sequences_ratio', 'with_cp', 'use_checkpoint', 'frozen_stages',
                      'norm_eval', 'official_v_reverse', 'scan_backend', 'init_cfg',
                      'triton_precompile')
    #: official options whose non-default values this implementation does not provide.
    _UNSUPPORTED = dict(if_bidirectional=False, if_bimamba=False, use_double_cls_token=False,
                        if_devide_out=False, init_layer_scale=None, flip_img_sequences_ratio=-1.)
    _SSM_KEYS = ('d_state', 'd_conv', 'expand', 'dt_rank')

    def __init__(self, **kwargs):
        owner = type(self).__name__
        if 'directions' not in kwargs:
            raise TypeError(f'{owner} requires "directions" (one list per layer, or None for the '
                            f'search supernet), as the official configs give.')
        # norm_eval is both a ViT leftover and our own option: keep it.
        ignored = (SWIN_LEFTOVER_KEYS | VIT_LEFTOVER_KEYS) - set(self._OFFICIAL_KEYS)
        kw = split_legacy_kwargs(kwargs, self._OFFICIAL_KEYS, ignored, owner)
        self._check_supported(kw, owner)
        patch_size = kw.get('patch_size', 16)
        arch = dict(
            embed_dim=kw.get('embed_dim', 192),
            depth=kw.get('depth', 24),
            directions=kw['directions'],
            rms_norm=kw.get('rms_norm', False),
            norm_eps=kw.get('norm_epsilon', 1e-5),
            fused_add_norm=kw.get('fused_add_norm', False),
            if_rope=kw.get('if_rope', False),
            if_rope_residual=kw.get('if_rope_residual', False),
            rope_pt_seq_len=kw.get('pt_hw_seq_len', 14),
            middle_cls_token=bool(kw.get('if_cls_token', False)),
            abs_pos_embed=kw.get('if_abs_pos_embed', False))
        ssm_cfg = kw.get('ssm_cfg') or {}
        unknown_ssm = set(ssm_cfg) - set(self._SSM_KEYS)
        if unknown_ssm:
            raise TypeError(f'{owner}: unsupported ssm_cfg keys {sorted(unknown_ssm)}; supported: '
                            f'{list(self._SSM_KEYS)}.')
        arch.update(ssm_cfg)
        img_size = kw.get('img_size', 224)
        ft_seq_len = kw.get('ft_seq_len')
        first = img_size if isinstance(img_size, int) else img_size[0]
        if ft_seq_len is not None and ft_seq_len != -(-first // patch_size):
            raise ValueError(f'{owner}: ft_seq_len={ft_seq_len} differs from the token grid of '
                             f'img_size {img_size}; only ft_seq_len=None (or equal) is supported.')
        official_v_reverse = kw.get('official_v_reverse', True)
        if official_v_reverse:
            warn_v_reverse(owner)
        pretrained = kw.get('pretrained_ckpt') or kw.get('pretrained')
        if pretrained and basename(urlparse(str(pretrained)).path).startswith('local_vssm'):
            warnings.warn(
                f'{owner}: pretrained_ckpt={pretrained!r} is a LocalVMamba checkpoint (the '
                f'official LocalVim-S UperNet config points at it by mistake); none of its tensors '
                f'fits LocalVim, so it is not loaded. No LocalVim-S checkpoint was published.')
            pretrained = None
        super().__init__(
            arch=arch,
            img_size=img_size,
            patch_size=patch_size,
            in_channels=kw.get('channels', 3),
            out_indices=kw.get('out_indices', (4, 9, 14, 19)),
            drop_rate=kw.get('drop_rate', 0.),
            drop_path_rate=kw.get('drop_path_rate', 0.1),
            frozen_stages=kw.get('frozen_stages', -1),
            norm_eval=kw.get('norm_eval', False),
            with_cp=kw.get('with_cp', False) or kw.get('use_checkpoint', False),
            official_v_reverse=official_v_reverse,
            scan_backend=kw.get('scan_backend', 'auto'),
            triton_precompile=kw.get('triton_precompile', True),
            init_cfg=legacy_init_cfg(pretrained, kw.get('init_cfg'), owner, 'pretrained_ckpt'))

    @classmethod
    def _check_supported(cls, kw: dict, owner: str) -> None:
        for key, default in cls._UNSUPPORTED.items():
            if key in kw and kw[key] != default:
                raise NotImplementedError(f'{owner}: {key}={kw[key]!r} is not supported (only '
                                          f'{default!r}, which LocalMamba uses).')
        if kw.get('if_cls_token') and not kw.get('use_middle_cls_token'):
            raise NotImplementedError(f'{owner}: only the middle class token is supported '
                                      f'(if_cls_token=True needs use_middle_cls_token=True).')
        if kw.get('use_middle_cls_token') and not kw.get('if_cls_token'):
            raise ValueError(f'{owner}: use_middle_cls_token=True needs if_cls_token=True.')
        stride = kw.get('stride')
        if stride is not None and stride != kw.get('patch_size', 16):
            raise NotImplementedError(f'{owner}: stride={stride} must equal patch_size '
                                      f'({kw.get("patch_size", 16)}); overlapping patches are not '
                                      f'supported.')
        if kw.get('final_pool_type', 'mean') not in ('mean', 'none', 'max', 'all'):
            raise ValueError(f'{owner}: unknown final_pool_type {kw["final_pool_type"]!r}.')
        if kw.get('bimamba_type', 'v2') not in ('v2', 'none'):
            raise NotImplementedError(f'{owner}: bimamba_type={kw["bimamba_type"]!r}; LocalVim '
                                      f'uses "v2" (the multi-direction mixer).')
