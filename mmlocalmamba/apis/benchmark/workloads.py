"""The models of the classification and backbone rows, and their step functions.

All models are built with random weights (nothing is downloaded) and drop path 0.1. A step
function runs one forward (``train=False``: eval mode, no gradients) or one forward + loss +
backward (``train=True``: train mode, gradients cleared after each step; no optimizer step),
under the given autocast dtype on CUDA.
"""
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .measure import autocast

#: classification rows: display name -> timm name (ours after ``import mmlocalmamba``).
CLS_MODELS: Dict[str, str] = {
    'LocalVMamba-T': 'local_vssm_tiny',
    'LocalVMamba-S': 'local_vssm_small',
    'Swin-T': 'swin_tiny_patch4_window7_224',
    'Swin-S': 'swin_small_patch4_window7_224',
    'ConvNeXt-T': 'convnext_tiny',
    'LocalVim-T': 'local_vim_tiny',
    'LocalVim-S': 'local_vim_small',
    'DeiT-T': 'deit_tiny_patch16_224',
    'DeiT-S': 'deit_small_patch16_224',
}
#: timm models whose input size is fixed at construction (built with ``img_size``).
FIXED_SIZE = ('swin_', 'deit_', 'vit_')
#: backbone rows: display name -> how the model is built (see :func:`build_backbone`).
BACKBONES = ('LocalVMamba-T', 'Swin-T', 'LocalVim-T', 'ViT-Ti')
#: LocalVim-T as configs/mmdet/cascade-mask-rcnn_localvim-t_sfp_lsj-100e_coco.py builds it.
LOCAL_VIM_DET = dict(arch='tiny', img_size=(1024, 1024), drop_path_rate=0.1, out_indices=(19, ))
DROP_PATH = 0.1
#: a small LocalVMamba (the demo configs' size) for checks on the CPU (``--tiny``).
TINY_ARCH = dict(dims=32, depths=[1, 1, 2, 1], ssm_ratio=1.0, d_state=8,
                 directions=[['h', 'h_flip', 'w7', 'w7_flip'], ['v', 'v_flip', 'w2', 'w2_flip'],
                             ['h', 'v_flip', 'w2_flip', 'w7'], ['h_flip', 'v', 'w2', 'w7_flip'],
                             ['h', 'h_flip', 'v', 'v_flip']])


def _timm(name: str, size: Tuple[int, int]) -> nn.Module:
    import timm

    from ...registry import register_all
    register_all()  # local_vssm_* / local_vim_* in timm's registry
    kwargs = dict(pretrained=False, drop_path_rate=DROP_PATH)
    if name.startswith(FIXED_SIZE) and tuple(size) != (224, 224):
        kwargs['img_size'] = tuple(size)
    return timm.create_model(name, **kwargs)


def build_classifier(name: str, size: int = 224) -> nn.Module:
    """A classifier of :data:`CLS_MODELS` for ``size`` x ``size`` inputs."""
    if name not in CLS_MODELS:
        raise KeyError(f'Unknown classification model {name!r}; expected one of '
                       f'{", ".join(CLS_MODELS)}.')
    return _timm(CLS_MODELS[name], (size, size))


def build_backbone(name: str, size: Tuple[int, int]) -> nn.Module:
    """A backbone of :data:`BACKBONES` for inputs of ``size`` (H, W).

    LocalVMamba-T: the 4 stage outputs, as the Mask R-CNN / UperNet configs build it; Swin-T and
    ViT-Ti: timm models built at ``size`` (ViT-Ti with global attention), ``forward_features``;
    LocalVim-T: :data:`LOCAL_VIM_DET` (position tables resized to any input).
    """
    from ...models import LocalVim, LocalVMamba
    if name == 'LocalVMamba-T':
        return LocalVMamba(arch='tiny', out_indices=(0, 1, 2, 3), drop_path_rate=DROP_PATH)
    if name == 'LocalVim-T':
        return LocalVim(**LOCAL_VIM_DET)
    if name == 'Swin-T':
        return _timm('swin_tiny_patch4_window7_224', size)
    if name == 'ViT-Ti':
        return _timm('vit_tiny_patch16_224', size)
    raise KeyError(f'Unknown backbone {name!r}; expected one of {", ".join(BACKBONES)}.')


def features(model: nn.Module, x: torch.Tensor):
    """The feature maps of a backbone (timm: ``forward_features``) as a tuple."""
    out = model.forward_features(x) if hasattr(model, 'forward_features') else model(x)
    return out if isinstance(out, (tuple, list)) else (out, )


def num_params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def cls_step(model: nn.Module, batch: int, size: int, device: torch.device, dtype: str,
             train: bool) -> Callable[[], None]:
    """Inference (``train=False``) or forward + cross-entropy + backward on random images."""
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch, ), device=device)
    model.train(train)

    def infer():
        with torch.no_grad(), autocast(device, dtype):
            model(images)

    def fwd_bwd():
        with autocast(device, dtype):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return fwd_bwd if train else infer


def backbone_step(model: nn.Module, batch: int, size: Tuple[int, int], device: torch.device,
                  dtype: str, train: bool) -> Callable[[], None]:
    """Backbone features (``train=False``) or features + mean loss + backward."""
    images = torch.randn(batch, 3, *size, device=device)
    model.train(train)

    def fwd():
        with torch.no_grad(), autocast(device, dtype):
            features(model, images)

    def fwd_bwd():
        with autocast(device, dtype):
            loss = sum(f.float().mean() for f in features(model, images))
        loss.backward()
        model.zero_grad(set_to_none=True)

    return fwd_bwd if train else fwd
