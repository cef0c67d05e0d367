"""Direction search on an image-classification dataset (the paper's setting), plain PyTorch.

:func:`search_classification` trains a supernet classifier (e.g. timm's
``local_vssm_tiny_search``) on an ImageFolder dataset (``root/<class>/<image>``, as ImageNet's
``train/``), jointly updating the network weights and the architecture weights
(``multi_scan.weights``: own learning rate multiplier, no weight decay), then exports the
top-k directions per layer (JSON, config snippet, heatmap PNG) into the work directory.

Logging goes through an mmengine logger (``<work_dir>/search.log``); the per-layer probabilities
are also kept in ``<work_dir>/arch_history.json`` (one entry per log interval).
torchvision is imported only here (for ``ImageFolder`` and the transforms).
"""
import json
import math
import os
import os.path as osp
import random
import time
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn
from mmengine.logging import MMLogger

from .arch import (arch_candidates, arch_probabilities, format_arch_table, normalized_entropy,
                   search_layers, search_space, split_parameters)
from .export import export_all

__all__ = ['build_transforms', 'build_loader', 'build_search_model', 'search_classification']

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


def build_loader(root: str, img_size: int, batch_size: int, train: bool, num_workers: int = 4,
                 seed: int = 0):
    """A DataLoader over ``torchvision.datasets.ImageFolder(root)``.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    if not osp.isdir(root):
        raise FileNotFoundError(f'ImageFolder root not found: {root!r} (expected '
                                f'root/<class name>/<image files>).')
    transform = build_transforms(img_size, train)
    dataset = _torchvision().datasets.ImageFolder(root, transform=transform)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=train,
        drop_last=train and len(dataset) >= batch_size, num_workers=num_workers,
        generator=generator, pin_memory=torch.cuda.is_available())


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


def _make_optimizer(model: nn.Module, lr: float, weight_decay: float, arch_lr_mult: float):
    net, arch = split_parameters(model)
    decay = [p for p in net if p.ndim > 1 and not getattr(p, '_no_weight_decay', False)]
    no_decay = [p for p in net if not (p.ndim > 1 and not getattr(p, '_no_weight_decay', False))]
    groups = [dict(params=decay, weight_decay=weight_decay, lr=lr),
              dict(params=no_decay, weight_decay=0.0, lr=lr),
              dict(params=arch, weight_decay=0.0, lr=lr * arch_lr_mult, arch=True)]
    return torch.optim.AdamW([g for g in groups if g['params']], lr=lr, betas=(0.9, 0.999))


def _lr_lambda(total: int, warmup: int):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return fn


@torch.no_grad()
def _evaluate(model: nn.Module, loader, device) -> float:
    model.eval()
    correct = total = 0
    for images, targets in loader:
        logits = model(images.to(device))
        correct += int((logits.argmax(1).cpu() == targets).sum())
        total += targets.numel()
    model.train()
    return correct / max(1, total)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def search_classification(train_root: str,
                          model: Union[str, nn.Module] = 'local_vssm_tiny_search',
                          work_dir: str = 'work_dirs/search_cls',
                          val_root: Optional[str] = None,
                          epochs: int = 100,
                          max_iters: Optional[int] = None,
                          batch_size: int = 128,
                          img_size: int = 224,
                          lr: float = 1e-3,
                          weight_decay: float = 0.05,
                          arch_lr_mult: float = 1.0,
                          warmup_iters: int = 0,
                          label_smoothing: float = 0.1,
                          clip_grad: Optional[float] = 5.0,
                          num_workers: int = 4,
                          device: str = 'auto',
                          seed: int = 0,
                          log_interval: int = 20,
                          topk: int = 4,
                          model_kwargs: Optional[dict] = None) -> Dict[str, Any]:
    """Train a supernet classifier on ImageFolder data, then export the directions.

    Args:
        train_root: ImageFolder directory (``<class>/<image>``).
        model: timm model name of a supernet, or a supernet ``nn.Module`` with a ``num_classes``
            matching the data.
        work_dir: logs, checkpoint (``supernet.pth``) and the export (``directions.{json,py,png}``).
        val_root: optional ImageFolder with the same classes, evaluated after every epoch.
        epochs: passes over the training data. max_iters: stop earlier (total iterations).
        batch_size, img_size: as named. lr, weight_decay: AdamW (cosine schedule, linear warm-up
            over ``warmup_iters``). arch_lr_mult: learning rate multiplier of the architecture
            weights (never decayed).
        label_smoothing: of the cross entropy. clip_grad: max gradient norm (None: off).
        device: 'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...
        log_interval: iterations between log lines (and entries of ``arch_history.json``).
        topk: directions kept per layer by the export.
        model_kwargs: extra arguments of the timm factory (``drop_path_rate``, ``arch``, ...).

    Returns:
        dict with ``checkpoint`` (path), ``result`` (a :class:`DirectionSearchResult`),
        ``paths`` (json/snippet/png), ``history`` (list of dicts), ``val_acc`` (last, or None).
    """
    os.makedirs(work_dir, exist_ok=True)
    timestamp = time.strftime('%Y%m%d_%H%M%S')
    logger = MMLogger.get_instance(f'mmlocalmamba_search_{timestamp}_{id(work_dir)}',
                                   log_file=osp.join(work_dir, f'search_{timestamp}.log'))
    _seed_everything(seed)
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)

    train_loader = build_loader(train_root, img_size, batch_size, True, num_workers, seed)
    classes = train_loader.dataset.classes
    val_loader = (build_loader(val_root, img_size, batch_size, False, num_workers, seed)
                  if val_root else None)
    if val_loader is not None and val_loader.dataset.classes != classes:
        raise ValueError(f'The validation classes {val_loader.dataset.classes} differ from the '
                         f'training classes {classes}.')
    model_name = model if isinstance(model, str) else type(model).__name__
    model = build_search_model(model, len(classes), model_kwargs).to(device)
    model.train()
    total = epochs * len(train_loader)
    if max_iters is not None:
        total = min(total, max_iters)
    if total < 1:
        raise ValueError(f'Nothing to train: {epochs} epochs of {len(train_loader)} iterations, '
                         f'max_iters={max_iters}.')
    optimizer = _make_optimizer(model, lr, weight_decay, arch_lr_mult)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, warmup_iters))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    cands = arch_candidates(model)
    logger.info(f'Direction search: {type(model).__name__} with {len(cands)} supernet layers, '
                f'{len(classes)} classes, {len(train_loader.dataset)} training images, '
                f'{total} iterations on {device}.')

    history, step, val_acc = [], 0, None
    ckpt_path = osp.join(work_dir, 'supernet.pth')

    def record(loss_value: float) -> None:
        probs = arch_probabilities(model)
        entropy = sum(normalized_entropy(p) for p in probs.values()) / len(probs)
        history.append(dict(iter=step, loss=loss_value, arch_entropy=entropy,
                            probs={k: v.tolist() for k, v in probs.items()}))
        logger.info(f'iter {step}/{total}  loss {loss_value:.4f}  '
                    f'lr {optimizer.param_groups[0]["lr"]:.3e}  arch_entropy {entropy:.4f}')

    epoch = 0
    while step < total:
        for images, targets in train_loader:
            images, targets = images.to(device), targets.to(device)
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % log_interval == 0 or step == total:
                record(loss.item())
            if step >= total:
                break
        epoch += 1
        if val_loader is not None:
            val_acc = _evaluate(model, val_loader, device)
            logger.info(f'epoch {epoch}: val top-1 {val_acc:.4f}')
        probs = arch_probabilities(model)
        logger.info(f'Architecture weights after epoch {epoch} (iter {step}):\n' +
                    format_arch_table(probs, cands, topk))
        torch.save(dict(state_dict=model.state_dict(), search_space=search_space(model),
                        meta=dict(epoch=epoch, iter=step, classes=list(classes),
                                  model=model_name)),
                   ckpt_path)

    with open(osp.join(work_dir, 'arch_history.json'), 'w') as f:
        json.dump(history, f)
    result, paths = export_all(ckpt_path, work_dir, topk=topk)
    logger.info(f'Searched directions written to {paths["snippet"]}, {paths["json"]} and '
                f'{paths["png"]}.')
    return dict(checkpoint=ckpt_path, result=result, paths=paths, history=history,
                val_acc=val_acc)
