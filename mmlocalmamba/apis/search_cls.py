"""Direction search on ImageFolder classification data, on mmengine's ``Runner``.

The paper searches the scan directions on ImageNet: a supernet classifier (every layer runs all
candidate directions, mixed by the softmax of its architecture weights) is trained, network and
architecture weights together, and the top-k directions per layer are exported. Here the
training is an mmengine run, so it has what every OpenMMLab training has: mixed precision
(``amp=True``, GPU), distributed data parallel (``launcher='pytorch'`` under ``torchrun``; CPU
runs use gloo), checkpoints every epoch with ``resume`` (the latest of the work dir, or a given
file), logging and visualizer scalars. The architecture weights get their own learning rate
multiplier and no weight decay (``paramwise_cfg``), :class:`~mmlocalmamba.engine.
ArchWeightsLoggerHook` logs their entropy and tables and stores the candidate lists in the
checkpoints, and after training the found directions are written to the work dir
(``directions.json``, ``directions.py`` snippet, ``directions.png`` heatmap).

The run is described by a plain mmengine config (dumped into the work dir); the model, the
datasets and the metric are built from it here, so no registry entry is needed for them.
"""
import argparse
import json
import os.path as osp
import time
import uuid
from typing import Any, Dict, Optional, Sequence, Union

import torch.nn as nn
from mmengine.config import Config, DictAction
from mmengine.dist import is_main_process
from mmengine.logging import print_log

from ..search.export import export_all
from ..search.trainer import (ArchHistoryHook, ImageFolderSet, SearchClassifier, TopOneAccuracy,
                              build_search_model)
from ..utils.cli import (non_negative_float, non_negative_int, positive_float,
                         positive_int)
from .runner import _close_process_group, prepare_train_config, with_safe_loading

__all__ = ['search_cls_config', 'search_classification', 'search_cls_parser', 'search_cls_main']

#: parameters without weight decay besides norms and biases: the SSM parameters of both families,
#: LocalVim's position embedding and class token
NO_DECAY_KEYS = ('.A_logs', '.Ds', '.A_log_', '.D_', 'pos_embed', 'cls_token')


def search_cls_config(train_root: str,
                      model: str = 'local_vssm_tiny_search',
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
                      seed: int = 0,
                      log_interval: int = 20,
                      topk: int = 4,
                      model_kwargs: Optional[dict] = None) -> Config:
    """The mmengine config of a classification search (plain data; see the module doc).

    Training runs ``epochs`` epochs (``EpochBasedTrainLoop``, validation after each when
    ``val_root`` is given) or, with ``max_iters``, that many iterations (``IterBasedTrainLoop``,
    validation at the end). AdamW with a cosine schedule to 0 (per iteration) after an optional
    linear warm-up of ``warmup_iters``; no weight decay for norms, biases, the SSM parameters and
    the architecture weights, which get ``lr * arch_lr_mult``.
    """
    if epochs < 1 and max_iters is None:
        raise ValueError(f'Nothing to train: epochs={epochs}, max_iters=None.')
    if max_iters is not None and max_iters < 1:
        raise ValueError(f'max_iters must be >= 1 or None, got {max_iters}.')
    by_epoch = max_iters is None
    custom_keys = {key: dict(decay_mult=0.) for key in NO_DECAY_KEYS}
    custom_keys['multi_scan.weights'] = dict(lr_mult=arch_lr_mult, decay_mult=0.)
    schedulers = []
    if warmup_iters > 0:
        schedulers.append(dict(type='LinearLR', start_factor=1.0 / warmup_iters, by_epoch=False,
                               begin=0, end=warmup_iters))
    if by_epoch:
        schedulers.append(dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=0,
                               end=epochs, convert_to_iter_based=True))
        train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=epochs, val_interval=1)
        checkpoint = dict(type='CheckpointHook', by_epoch=True, interval=1, max_keep_ckpts=3)
    else:
        schedulers.append(dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=False, begin=0,
                               end=max_iters))
        train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
        checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                          max_keep_ckpts=3)
    loader = dict(batch_size=batch_size, num_workers=num_workers,
                  persistent_workers=num_workers > 0, collate_fn=dict(type='default_collate'))
    return Config(dict(
        model=dict(name=model, kwargs=model_kwargs or {}, label_smoothing=label_smoothing),
        data=dict(train_root=train_root, val_root=val_root, img_size=img_size),
        train_dataloader=dict(loader, sampler=dict(type='DefaultSampler', shuffle=True),
                              drop_last=True),
        val_dataloader=dict(loader, sampler=dict(type='DefaultSampler', shuffle=False)),
        optim_wrapper=dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay),
            paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., custom_keys=custom_keys),
            clip_grad=dict(max_norm=clip_grad) if clip_grad else None),
        param_scheduler=schedulers,
        train_cfg=train_cfg,
        default_hooks=dict(
            timer=dict(type='IterTimerHook'),
            logger=dict(type='LoggerHook', interval=log_interval),
            param_scheduler=dict(type='ParamSchedulerHook'),
            checkpoint=checkpoint,
            sampler_seed=dict(type='DistSamplerSeedHook')),
        custom_hooks=[
            dict(type='ArchWeightsLoggerHook', interval=log_interval, topk=topk),
            dict(type='RNGStateHook')
        ],
        log_processor=dict(by_epoch=by_epoch),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl')),
        randomness=dict(seed=seed),
        topk=topk,
        log_interval=log_interval,
    ))


def _build_runner(cfg: Config, classifier: Optional[nn.Module] = None):
    """The Runner of a :func:`search_cls_config` config (after ``prepare_train_config``)."""
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    train_set = ImageFolderSet(cfg.data.train_root, cfg.data.img_size, train=True)
    val_set = None
    if cfg.data.val_root:
        val_set = ImageFolderSet(cfg.data.val_root, cfg.data.img_size, train=False)
        if val_set.classes != train_set.classes:
            raise ValueError(f'The validation classes {val_set.classes} differ from the '
                             f'training classes {train_set.classes}.')
    network = build_search_model(classifier if classifier is not None else cfg.model.name,
                                 len(train_set.classes),
                                 None if classifier is not None else dict(cfg.model.kwargs))
    history = ArchHistoryHook(interval=cfg.log_interval)
    runner = Runner(
        model=SearchClassifier(network, label_smoothing=cfg.model.label_smoothing),
        work_dir=cfg.work_dir,
        experiment_name=f'search_cls_{time.strftime("%Y%m%d_%H%M%S")}_{uuid.uuid4().hex[:6]}',
        train_dataloader=dict(cfg.train_dataloader, dataset=train_set),
        val_dataloader=dict(cfg.val_dataloader, dataset=val_set) if val_set else None,
        val_evaluator=Evaluator([TopOneAccuracy()]) if val_set else None,
        val_cfg=dict() if val_set else None,
        train_cfg=cfg.train_cfg,
        optim_wrapper=cfg.optim_wrapper,
        param_scheduler=cfg.param_scheduler,
        default_hooks=cfg.default_hooks,
        custom_hooks=list(cfg.custom_hooks) + [history],
        load_from=cfg.get('load_from'),
        resume=cfg.get('resume', False),
        launcher=cfg.launcher,
        env_cfg=cfg.env_cfg,
        log_processor=cfg.log_processor,
        randomness=cfg.randomness,
        default_scope='mmengine',
        cfg=cfg)
    return with_safe_loading(runner), history


def search_classification(train_root: str,
                          model: Union[str, nn.Module] = 'local_vssm_tiny_search',
                          work_dir: str = 'work_dirs/search_cls',
                          resume: Optional[str] = None,
                          amp: bool = False,
                          launcher: str = 'none',
                          cfg_options: Optional[Dict[str, Any]] = None,
                          **kwargs) -> Dict[str, Any]:
    """Train a supernet classifier on ImageFolder data with mmengine, then export the directions.

    Args:
        train_root: ImageFolder directory (``<class>/<image>``).
        model: timm name of a supernet (``model_kwargs`` go to its factory), or a supernet
            module whose head already has one output per class.
        work_dir: logs, checkpoints, ``arch_history.json`` and the export.
        resume: None; ``'auto'`` (the latest checkpoint of ``work_dir``) or a checkpoint path.
        amp: mixed precision (``AmpOptimWrapper``; needs a GPU).
        launcher: ``'none'``, or ``'pytorch'`` (one process per GPU under torchrun; gloo on CPU),
            ``'slurm'``, ``'mpi'``.
        cfg_options: overrides of the config (``--cfg-options`` style dotted keys).
        **kwargs: the settings of :func:`search_cls_config` (``val_root``, ``epochs``,
            ``max_iters``, ``batch_size``, ``img_size``, ``lr``, ``weight_decay``,
            ``arch_lr_mult``, ``warmup_iters``, ``label_smoothing``, ``clip_grad``,
            ``num_workers``, ``seed``, ``log_interval``, ``topk``, ``model_kwargs``).

    Returns:
        dict with ``checkpoint`` (the last one), ``result`` (a ``DirectionSearchResult``),
        ``paths`` (json/snippet/png; checkpoint, result and paths are None in the processes
        other than the main one of a distributed run), ``history`` (entries of this run, see
        :class:`~mmlocalmamba.search.trainer.ArchHistoryHook`), ``val_acc`` (last, or None) and
        ``runner`` (its ``model`` unwrapped from DDP: the process group is closed).

    Raises:
        ValueError: the model has no direction-search layers, ``model_kwargs`` with a module, or
            train and validation classes differ.
    """
    classifier = model if isinstance(model, nn.Module) else None
    if classifier is not None and kwargs.get('model_kwargs'):
        raise ValueError('model_kwargs only apply when the model is given by name.')
    cfg = search_cls_config(train_root, model=model if classifier is None else
                            type(model).__name__, **kwargs)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    prepare_train_config(cfg, work_dir=work_dir, resume=resume, amp=amp, launcher=launcher)
    runner, history = _build_runner(cfg, classifier)
    try:
        runner.train()
        main = is_main_process()
    finally:
        _close_process_group(runner)  # the returned runner keeps its model, not the DDP wrapper
    checkpoint = result = paths = None
    if main:  # one process writes the export
        with open(osp.join(runner.work_dir, 'last_checkpoint')) as f:
            checkpoint = f.read().strip()
        result, paths = export_all(checkpoint, runner.work_dir, topk=cfg.topk)
    return dict(checkpoint=checkpoint, result=result, paths=paths, history=history.history,
                val_acc=history.val_acc, runner=runner)


def search_cls_parser() -> argparse.ArgumentParser:
    """Arguments of ``tools/search_cls.py`` (``mmlocalmamba-search-cls``)."""
    p = argparse.ArgumentParser(
        description='Search LocalMamba scan directions on an ImageFolder classification set '
        '(mmengine Runner: --amp, --launcher pytorch, --resume).')
    p.add_argument('train_root', help='ImageFolder directory: <class>/<image>')
    p.add_argument('--val-root', default=None, help='ImageFolder with the same classes')
    p.add_argument('--model', default='local_vssm_tiny_search',
                   help='timm name of a supernet (registered by mmlocalmamba)')
    p.add_argument('--model-kwargs', type=json.loads, default=None,
                   help='JSON object of extra model arguments, e.g. \'{"drop_path_rate": 0.1}\'')
    p.add_argument('--work-dir', default='work_dirs/search_cls')
    p.add_argument('--epochs', type=positive_int, default=100)
    p.add_argument('--max-iters', type=positive_int, default=None,
                   help='train this many iterations instead of epochs')
    p.add_argument('--batch-size', type=positive_int, default=128, help='per process')
    p.add_argument('--img-size', type=positive_int, default=224)
    p.add_argument('--lr', type=positive_float, default=1e-3)
    p.add_argument('--weight-decay', type=non_negative_float, default=0.05)
    p.add_argument('--arch-lr-mult', type=non_negative_float, default=1.0,
                   help='learning-rate multiplier of the architecture weights (no weight decay)')
    p.add_argument('--warmup-iters', type=non_negative_int, default=0)
    p.add_argument('--num-workers', type=non_negative_int, default=4)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--log-interval', type=positive_int, default=20)
    p.add_argument('--topk', type=positive_int, default=4)
    p.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CHECKPOINT',
                   help='resume: without a value from the latest checkpoint of the work dir')
    p.add_argument('--amp', action='store_true', help='mixed-precision training (GPU)')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help='override config entries, e.g. optim_wrapper.optimizer.betas=[0.9,0.95]')
    p.add_argument('--local_rank', '--local-rank', type=int, default=None,
                   help=argparse.SUPPRESS)
    return p


def search_cls_main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Entry point of ``tools/search_cls.py``: search, export, print the snippet and the paths."""
    import os
    args = search_cls_parser().parse_args(argv)
    if args.local_rank is not None and 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    out = search_classification(
        args.train_root, model=args.model, work_dir=args.work_dir, resume=args.resume,
        amp=args.amp, launcher=args.launcher, cfg_options=args.cfg_options,
        val_root=args.val_root, epochs=args.epochs, max_iters=args.max_iters,
        batch_size=args.batch_size, img_size=args.img_size, lr=args.lr,
        weight_decay=args.weight_decay, arch_lr_mult=args.arch_lr_mult,
        warmup_iters=args.warmup_iters, num_workers=args.num_workers, seed=args.seed,
        log_interval=args.log_interval, topk=args.topk, model_kwargs=args.model_kwargs)
    if out['paths'] is not None:
        with open(out['paths']['snippet']) as f:
            print_log(f.read(), logger='current')
        for kind, path in out['paths'].items():
            print_log(f'{kind:>8}: {path}', logger='current')
    return out
