"""Log the architecture weights of a direction-search supernet while it trains.

:class:`ArchWeightsLoggerHook` works with any model that contains supernet layers
(``MultiScan(search=True)``, parameters ``...multi_scan.weights``): LocalVMamba or LocalVim
backbones inside mmdet/mmseg models, or classifiers.

* Every iteration it puts two scalars into the message hub, which the ``LoggerHook`` prints with
  the loss and writes to the visualizer backends: ``arch_entropy`` (mean over layers of the
  softmax entropy divided by log K; 1 = undecided, 0 = one direction) and ``arch_max_prob`` (mean
  over layers of the largest probability).
* Every ``interval`` iterations it sends all per-layer probabilities to the visualizer
  (``arch_prob/<layer>/<direction>``, e.g. TensorBoard or ``vis_data/scalars.json``) and keeps
  them in the message hub info ``arch_probs``.
* At the end of every epoch (and every ``table_interval`` iterations, if set) and after training
  it logs a table: one row per layer with the probabilities and the current top-k.
* Checkpoints get a ``search_space`` entry (candidate directions per layer) that the exporter
  (``tools/search_directions.py``) reads, so custom candidate lists need no extra argument.
* Before training it warns if the architecture weights get weight decay (they should not:
  ``paramwise_cfg=dict(custom_keys={'multi_scan.weights': dict(lr_mult=..., decay_mult=0.)})``).
"""
from typing import Dict, Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..search.arch import (arch_parameters, arch_probabilities, format_arch_table, layer_label,
                           normalized_entropy, search_layers, search_space)

__all__ = ['ArchWeightsLoggerHook']


class ArchWeightsLoggerHook(Hook):
    """Log the softmax probabilities of the architecture weights (and their entropy).

    Args:
        interval (int): iterations between per-layer probability logs to the visualizer.
            Default: 50.
        table_interval (int, optional): iterations between text tables in the log, in addition
            to one per epoch and one after training. Default: None.
        topk (int): directions per layer shown as the current choice. Default: 4.
        log_per_layer (bool): send per-layer probabilities to the visualizer. Default: True.
    """

    priority = 'NORMAL'  # before LoggerHook (BELOW_NORMAL) reads the message hub

    def __init__(self, interval: int = 50, table_interval: Optional[int] = None, topk: int = 4,
                 log_per_layer: bool = True):
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval}.')
        if table_interval is not None and table_interval < 1:
            raise ValueError(f'table_interval must be >= 1 or None, got {table_interval}.')
        self.interval = interval
        self.table_interval = table_interval
        self.topk = topk
        self.log_per_layer = log_per_layer
        self._active = True
        self._table_iter = -1  # iteration of the last table (no duplicate at the end)

    # ------------------------------------------------------------------------------------
    def _model(self, runner):
        model = runner.model
        return getattr(model, 'module', model)

    def _probs(self, runner) -> Dict[str, list]:
        return {name: p.tolist() for name, p in arch_probabilities(self._model(runner)).items()}

    def _log_table(self, runner, when: str) -> None:
        self._table_iter = runner.iter
        model = self._model(runner)
        probs = self._probs(runner)
        cands = {n: list(m.directions) for n, m in search_layers(model).items()}
        print_log(f'Architecture weights, softmax per layer ({when}):\n' +
                  format_arch_table(probs, cands, self.topk), logger='current')

    # ------------------------------------------------------------------------------------
    def before_train(self, runner) -> None:
        model = self._model(runner)
        layers = search_layers(model)
        if not layers:
            self._active = False
            print_log('ArchWeightsLoggerHook: the model has no direction-search layers '
                      '(build the backbone with directions=None); nothing to log.',
                      logger='current', level=30)
            return
        self._active = True
        print_log(f'Direction search: {len(layers)} supernet layers with '
                  f'{len(next(iter(layers.values())).directions)} candidates each.',
                  logger='current')
        self._check_optimizer(runner, model)

    def _check_optimizer(self, runner, model) -> None:
        optim_wrapper = getattr(runner, 'optim_wrapper', None)
        optimizer = getattr(optim_wrapper, 'optimizer', None)
        if optimizer is None:
            return
        arch_ids = {id(p) for p in arch_parameters(model)}
        for group in optimizer.param_groups:
            if any(id(p) in arch_ids for p in group['params']):
                if group.get('weight_decay', 0) != 0:
                    print_log(
                        'The architecture weights (multi_scan.weights) get weight decay '
                        f'{group["weight_decay"]}; add optim_wrapper.paramwise_cfg.custom_keys='
                        "{'multi_scan.weights': dict(lr_mult=..., decay_mult=0.)}.",
                        logger='current', level=30)
                    return

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self._active:
            return
        probs = arch_probabilities(self._model(runner))
        entropy = [normalized_entropy(p) for p in probs.values()]
        max_prob = [float(p.max()) for p in probs.values()]
        hub = runner.message_hub
        hub.update_scalar('train/arch_entropy', sum(entropy) / len(entropy))
        hub.update_scalar('train/arch_max_prob', sum(max_prob) / len(max_prob))
        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            as_lists = {name: p.tolist() for name, p in probs.items()}
            hub.update_info('arch_probs', as_lists)
            if self.log_per_layer:
                cands = {n: m.directions for n, m in search_layers(self._model(runner)).items()}
                scalars = {
                    f'arch_prob/{layer_label(name)}/{d}': v
                    for name, values in as_lists.items() for d, v in zip(cands[name], values)
                }
                runner.visualizer.add_scalars(scalars, step=runner.iter + 1)
        if self.table_interval and self.every_n_train_iters(runner, self.table_interval):
            self._log_table(runner, f'iter {runner.iter + 1}')

    def after_train_epoch(self, runner) -> None:
        if self._active:
            self._log_table(runner, f'epoch {runner.epoch + 1}')

    def after_train(self, runner) -> None:
        if self._active:
            if self._table_iter != runner.iter:
                self._log_table(runner, 'end of training')
            print_log('Export the found directions with: python tools/search_directions.py '
                      '<checkpoint> --out-dir <dir>', logger='current')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        space = search_space(self._model(runner))
        if space['layers']:
            checkpoint['search_space'] = space
