"""Building blocks of the direction search on image-classification data (the paper's setting).

The search itself runs on mmengine's ``Runner`` (AMP, DDP, resume, checkpoints):
:func:`mmlocalmamba.apis.search_cls.search_classification` and ``tools/search_cls.py`` put these
pieces together. Here:

* :class:`ImageFolderSet`: ``torchvision.datasets.ImageFolder`` with ImageNet transforms and the
  class names as ``metainfo`` (mmengine stores them in the checkpoints);
* :func:`build_search_model`: the supernet classifier, a timm name (``local_vssm_tiny_search``,
  ...) or a module;
* :class:`SearchClassifier`: that classifier as an mmengine model (cross entropy in ``'loss'``
  mode, per-image predictions in ``'predict'`` mode). The classifier is its ``backbone``, so the
  checkpoints read like a detector's for the exporter (``backbone.`` prefix);
* :class:`TopOneAccuracy`: the validation metric;
* :class:`ArchHistoryHook`: keeps the loss and the per-layer probabilities every few iterations
  (``arch_history.json`` in the work dir) and the last validation accuracy.

torchvision is imported only here (for ``ImageFolder`` and the transforms).
"""
import json
import math
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel

from .arch import arch_probabilities, normalized_entropy, search_layers

__all__ = [
    'build_transforms', 'ImageFolderSet', 'build_search_model', 'SearchClassifier',
    'TopOneAccuracy', 'ArchHistoryHook'
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _torchvision():
    try:
        import torchvision
    except ImportError as err:
        raise ImportError('The classification search needs torchvision (ImageFolder): '
                          'pip install torchvision') from err
    return torchvision


def build_transforms(img_size: int, train: bool):
    """ImageNet-style transforms: random-resized crop + flip (train), resize + centre crop."""
    T = _torchvision().transforms
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        bicubic = T.InterpolationMode.BICUBIC
        return T.Compose([T.RandomResizedCrop(img_size, interpolation=bicubic),
                          T.RandomHorizontalFlip()] + norm)
    return T.Compose([T.Resize(int(math.ceil(img_size / 0.875)),
                               interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(img_size)] + norm)


class ImageFolderSet(torch.utils.data.Dataset):
    """An ImageFolder (``root/<class>/<image>``) with ImageNet-style transforms.

    Items are ``(image tensor (3, S, S), class index)``; ``metainfo['classes']`` names the
    classes (mmengine puts it into the checkpoints as ``meta['dataset_meta']``).

    Args:
        root (str): the folder.
        img_size (int): side of the square crops.
        train (bool): random-resized crop + flip (True) or resize + centre crop (False).

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """

    def __init__(self, root: str, img_size: int, train: bool):
        if not osp.isdir(root):
            raise FileNotFoundError(f'ImageFolder root not found: {root!r} (expected '
                                    f'root/<class name>/<image files>).')
        self.folder = _torchvision().datasets.ImageFolder(
            root, transform=build_transforms(img_size, train))
        self.classes: List[str] = list(self.folder.classes)
        self.metainfo = dict(classes=tuple(self.classes))

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        return self.folder[index]


def build_search_model(model: Union[str, nn.Module], num_classes: int,
                       model_kwargs: Optional[dict] = None) -> nn.Module:
    """The supernet classifier: a timm model name (``local_vssm_tiny_search``, ...) or a module.

    Raises:
        ValueError: the model has no direction-search layers.
    """
    if isinstance(model, str):
        import timm

        from ..models.timm_models import TIMM_MODELS
        kwargs = dict(pretrained=False, num_classes=num_classes, **(model_kwargs or {}))
        if model in TIMM_MODELS:
            model = TIMM_MODELS[model](**kwargs)
        elif timm.is_model(model):
            model = timm.create_model(model, **kwargs)
        else:
            raise ValueError(f'Unknown timm model {model!r}; LocalMamba models: '
                             f'{sorted(TIMM_MODELS)}.')
    elif model_kwargs:
        raise ValueError('model_kwargs only apply when the model is given by name.')
    if not search_layers(model):
        raise ValueError(f'{type(model).__name__} has no direction-search layers; use a supernet '
                         f'(e.g. local_vssm_tiny_search, or arch=dict(..., directions=None)).')
    return model


class SearchClassifier(BaseModel):
    """A classifier (e.g. a timm supernet) as an mmengine model.

    ``forward(inputs, labels, mode)`` takes the batches of :class:`ImageFolderSet` (images
    ``(B, 3, S, S)``, labels ``(B,)``) and returns ``dict(loss=...)`` (mode ``'loss'``: cross
    entropy with label smoothing), one ``dict(pred=int, gt=int)`` per image (``'predict'``) or the
    logits (``'tensor'``).

    Args:
        classifier (nn.Module): the network; stored as ``self.backbone``.
        label_smoothing (float): of the cross entropy. Default: 0.1.
    """

    def __init__(self, classifier: nn.Module, label_smoothing: float = 0.1):
        super().__init__()
        self.backbone = classifier
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, inputs: torch.Tensor, labels: Optional[torch.Tensor] = None,
                mode: str = 'tensor'):
        logits = self.backbone(inputs)
        if mode == 'tensor':
            return logits
        if labels is None:
            raise ValueError(f'mode={mode!r} needs the labels.')
        if mode == 'loss':
            return dict(loss=self.criterion(logits, labels))
        if mode == 'predict':
            return [dict(pred=int(p), gt=int(t)) for p, t in zip(logits.argmax(1), labels)]
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}.")


class TopOneAccuracy(BaseMetric):
    """Top-1 accuracy (``accuracy/top1``, in [0, 1]) of :class:`SearchClassifier` predictions."""

    default_prefix = 'accuracy'

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        self.results.extend(int(s['pred'] == s['gt']) for s in data_samples)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        return dict(top1=sum(results) / max(1, len(results)))


class ArchHistoryHook(Hook):
    """Keep what the search did: loss and architecture weights every ``interval`` iterations.

    ``history`` holds ``dict(iter, loss, arch_entropy, probs={layer: [K floats]})`` (iterations
    counted from 1, across resumes); the main process writes it to ``arch_history.json`` in the
    work dir after training. ``val_acc`` is the last validation top-1 (None before any).

    Args:
        interval (int): iterations between entries (the last iteration always gets one).
    """

    priority = 'LOW'

    def __init__(self, interval: int = 20):
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval}.')
        self.interval = interval
        self.history: List[dict] = []
        self.val_acc: Optional[float] = None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        step = runner.iter + 1
        if step % self.interval and step != runner.max_iters:
            return
        model = getattr(runner.model, 'module', runner.model)
        probs = arch_probabilities(model)
        entropy = sum(normalized_entropy(p) for p in probs.values()) / max(1, len(probs))
        loss = outputs.get('loss', float('nan')) if outputs else float('nan')
        loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        self.history.append(dict(iter=step, loss=loss, arch_entropy=entropy,
                                 probs={k: v.tolist() for k, v in probs.items()}))

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        if metrics and 'accuracy/top1' in metrics:
            self.val_acc = float(metrics['accuracy/top1'])

    def after_train(self, runner) -> None:
        if is_main_process():
            with open(osp.join(runner.work_dir, 'arch_history.json'), 'w') as f:
                json.dump(self.history, f)
