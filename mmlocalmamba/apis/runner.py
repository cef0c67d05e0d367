"""Build mmengine runners for mmdet or mmseg configs from command-line style options.

``tools/train.py`` and ``tools/test.py`` are thin wrappers around :func:`train_main` and
:func:`test_main`; tests call the same functions in-process. One code path serves both
downstream libraries: the config's ``default_scope`` ('mmdet' or 'mmseg') selects which
library's modules are registered.

Start-up also

* imports :mod:`mmlocalmamba` (the backbones) and :mod:`mmlocalmamba.engine` (hooks), so configs
  need no ``custom_imports`` when these tools are used;
* makes ``--launcher pytorch`` work on machines without a GPU (gloo backend, CPU DDP);
* makes the config's ``compile`` (True or ``torch.compile`` arguments) compile the model's
  backbone in place instead of mmengine's whole ``train_step`` (:func:`compile_backbone`).

While a runner of :func:`build_runner` trains or tests, mmengine's checkpoint loading
(``--resume``, ``load_from``, the test checkpoint) goes through mmlocalmamba's checked
``weights_only=True`` loader (:func:`~mmlocalmamba.utils.checkpoint.safe_mmengine_loading`), so
mmengine checkpoints load under torch >= 2.6 without turning ``weights_only`` off, bad files get
clear errors, and ``MMLOCALMAMBA_TRUST_CHECKPOINTS=1`` is honoured as everywhere else.
``tools/test.py`` refuses a checkpoint that holds no weights for parts of the model other than
the backbone (an ImageNet or backbone-only checkpoint would evaluate a random detector) unless
``--allow-partial-checkpoint`` is given.

mmdet and mmseg are imported lazily, only for the scope a config asks for.
"""
import argparse
import copy
import functools
import importlib
import os
import os.path as osp
from typing import Any, Dict, Optional, Sequence

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log

from ..utils.checkpoint import load_checkpoint_file, safe_mmengine_loading


__all__ = [
    'SUPPORTED_SCOPES', 'config_scope', 'setup_scope', 'load_config', 'prepare_train_config',
    'prepare_test_config', 'build_runner', 'train_parser', 'test_parser', 'train_main',
    'test_main', 'PartialCheckpointError', 'check_checkpoint_covers_model', 'compile_backbone'
]

#: default_scope -> module whose ``register_all_modules`` registers the library.
SUPPORTED_SCOPES = {'mmdet': 'mmdet.utils', 'mmseg': 'mmseg.utils'}
LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


# --------------------------------------------------------------------------------------------
# Scope and config
# --------------------------------------------------------------------------------------------
def config_scope(cfg: Config) -> str:
    """The downstream library of a config, from its ``default_scope``.

    Raises:
        ValueError: the config has no ``default_scope`` or one this tool does not handle.
    """
    scope = cfg.get('default_scope')
    if scope not in SUPPORTED_SCOPES:
        raise ValueError(
            f'The config must set default_scope to one of {sorted(SUPPORTED_SCOPES)} (it comes '
            f'with the usual mmdet/mmseg base configs); got {scope!r}.')
    return scope


class PartialCheckpointError(ValueError):
    """A test checkpoint holds no weights for parts of the model (e.g. backbone-only)."""


def setup_scope(scope: str) -> None:
    """Register the modules of ``scope`` and of mmlocalmamba.

    Idempotent. Sets ``scope`` as mmengine's default scope.
    """
    if scope not in SUPPORTED_SCOPES:
        raise ValueError(
            f'Unsupported scope {scope!r}; expected one of {sorted(SUPPORTED_SCOPES)}.')
    importlib.import_module('mmlocalmamba')
    importlib.import_module('mmlocalmamba.engine')
    utils = importlib.import_module(SUPPORTED_SCOPES[scope])
    utils.register_all_modules(init_default_scope=True)


def load_config(config: str, cfg_options: Optional[Dict[str, Any]] = None) -> Config:
    """Read a config file, apply ``--cfg-options`` style overrides and register its scope."""
    if not osp.isfile(config):
        raise FileNotFoundError(f'Config file not found: {config!r}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    setup_scope(config_scope(cfg))
    return cfg


def _default_work_dir(cfg: Config) -> str:
    return osp.join('./work_dirs', osp.splitext(osp.basename(cfg.filename))[0])


def _replace_sync_bn(node: Any) -> int:
    """Replace ``type='SyncBN'`` by ``'BN'`` in a (nested) config in place; returns the count."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_sync_bn(value)
    return count


def _setup_launcher(cfg: Config, launcher: str) -> None:
    """Record the launcher; prepare CPU-only distributed runs (``--launcher pytorch``).

    mmengine's ``init_dist`` binds a CUDA device, which fails without a GPU. On such machines the
    gloo process group is initialised here (mmengine then skips its own initialisation), DDP is
    built without ``device_ids`` and SyncBN layers become BN (torch's SyncBatchNorm is GPU-only).
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'--launcher must be one of {LAUNCHERS}, got {launcher!r}.')
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise RuntimeError(f'--launcher {launcher} needs GPUs; on a CPU-only machine use '
                           f'--launcher pytorch (torchrun, gloo backend).')
    import torch.distributed as dist
    if not dist.is_initialized():
        timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout')
        kwargs = {}
        if timeout is not None:
            import datetime
            kwargs['timeout'] = datetime.timedelta(seconds=timeout)
        dist.init_process_group(backend='gloo', **kwargs)
    cfg.setdefault('env_cfg', ConfigDict())
    cfg.env_cfg.setdefault('dist_cfg', ConfigDict())
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(type='MMDistributedDataParallel')
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    if _replace_sync_bn(cfg.model):
        print_log('CPU distributed run: SyncBN layers were replaced by BN.', logger='current')


def _set_resume(cfg: Config, resume: Optional[str]) -> None:
    """``None``: no resume; ``'auto'``: latest checkpoint of the work dir; else a path."""
    if resume is None:
        return
    cfg.resume = True
    if resume == 'auto':
        cfg.load_from = None
    else:
        if not osp.isfile(resume):
            raise FileNotFoundError(f'--resume checkpoint not found: {resume!r}')
        cfg.load_from = resume


def _enable_amp(cfg: Config) -> None:
    from mmengine.device import is_cuda_available, is_mlu_available, is_npu_available
    if not (is_cuda_available() or is_npu_available() or is_mlu_available()):
        raise RuntimeError('--amp needs a CUDA (or NPU/MLU) device; this machine has none. '
                           'Train without --amp on CPU.')
    optim = cfg.optim_wrapper
    if optim.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
        print_log('The config already trains with AmpOptimWrapper.', logger='current')
        return
    if optim.get('type', 'OptimWrapper') != 'OptimWrapper':
        raise ValueError(f'--amp replaces OptimWrapper; this config uses {optim.type!r}.')
    optim.type = 'AmpOptimWrapper'
    optim.setdefault('loss_scale', 'dynamic')


def prepare_train_config(cfg: Config,
                         work_dir: Optional[str] = None,
                         resume: Optional[str] = None,
                         amp: bool = False,
                         launcher: str = 'none') -> Config:
    """Apply the training options of ``tools/train.py`` to ``cfg`` (in place) and return it.

    Args:
        work_dir: overrides the config's ``work_dir``; default ``./work_dirs/<config name>``.
        resume: None, 'auto' (latest checkpoint in the work dir) or a checkpoint path.
        amp: mixed precision through ``AmpOptimWrapper`` (needs a GPU).
        launcher: 'none', 'pytorch', 'slurm' or 'mpi'.
    """
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = _default_work_dir(cfg)
    _set_resume(cfg, resume)
    if amp:
        _enable_amp(cfg)
    _setup_launcher(cfg, launcher)
    return cfg


def _enable_tta(cfg: Config) -> None:
    missing = [k for k in ('tta_model', 'tta_pipeline') if cfg.get(k) is None]
    if missing:
        raise ValueError(f'--tta needs {" and ".join(missing)} in the config.')
    cfg.test_dataloader.dataset.pipeline = copy.deepcopy(cfg.tta_pipeline)
    tta_model = copy.deepcopy(cfg.tta_model)
    tta_model.module = cfg.model
    cfg.model = tta_model


def _enable_show_dir(cfg: Config, scope: str, show_dir: str) -> None:
    hooks = cfg.setdefault('default_hooks', ConfigDict())
    vis = hooks.get('visualization')
    if vis is None:
        raise ValueError('--show-dir needs default_hooks.visualization in the config.')
    vis.draw = True
    vis.interval = 1
    if scope == 'mmdet':
        # DetVisualizationHook writes the painted images to test_out_dir (absolute path kept).
        vis.test_out_dir = osp.abspath(show_dir)
    else:
        # SegVisualizationHook hands the images to the visualizer's backends.
        cfg.visualizer.save_dir = osp.abspath(show_dir)


def _enable_dump(cfg: Config, scope: str, out: str) -> None:
    if scope == 'mmseg' and not out.endswith(('.pkl', '.pickle')):
        # IoUMetric writes the predicted label maps (PNG) into output_dir and still evaluates.
        for metric in (cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else
                       [cfg.test_evaluator]):
            metric.output_dir = osp.abspath(out)
            metric.keep_results = True
        return
    if not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl/.pickle file for detection configs, got {out!r}.')
    dump = dict(type='DumpDetResults' if scope == 'mmdet' else 'DumpResults',
                out_file_path=osp.abspath(out))
    if isinstance(cfg.test_evaluator, (list, tuple)):
        cfg.test_evaluator = list(cfg.test_evaluator) + [dump]
    else:
        cfg.test_evaluator = [cfg.test_evaluator, dump]


def prepare_test_config(cfg: Config,
                        checkpoint: str,
                        work_dir: Optional[str] = None,
                        tta: bool = False,
                        show_dir: Optional[str] = None,
                        out: Optional[str] = None,
                        launcher: str = 'none') -> Config:
    """Apply the options of ``tools/test.py`` to ``cfg`` (in place) and return it.

    Args:
        checkpoint: the weights to evaluate (local path or URL).
        tta: test-time augmentation with the config's ``tta_model`` and ``tta_pipeline``.
        show_dir: directory for painted predictions.
        out: a ``.pkl`` file for the raw predictions; for mmseg configs also a directory that
            receives the predicted label maps as PNG files.
    """
    scope = config_scope(cfg)
    if not (osp.isfile(checkpoint) or checkpoint.startswith(('http://', 'https://'))):
        raise FileNotFoundError(f'Checkpoint not found: {checkpoint!r}')
    cfg.load_from = checkpoint
    cfg.resume = False
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = _default_work_dir(cfg)
    if tta:
        _enable_tta(cfg)
    if show_dir:
        _enable_show_dir(cfg, scope, show_dir)
    if out:
        _enable_dump(cfg, scope, out)
    _setup_launcher(cfg, launcher)
    return cfg


def _unique_visualizer_name(cfg: Config) -> None:
    """Give the visualizer a fresh name when one of that name exists in this process.

    mmengine returns an existing visualizer of the same name instead of building a new one, so
    a second runner in the same process (tests, notebooks) would write its scalars and images
    into the first runner's directory.
    """
    from mmengine.visualization import Visualizer
    vis = cfg.get('visualizer')
    if isinstance(vis, dict) and Visualizer.check_instance_created(vis.get('name', '')):
        base, index = vis['name'], 1
        while Visualizer.check_instance_created(f'{base}_{index}'):
            index += 1
        vis['name'] = f'{base}_{index}'


def _with_safe_loading(method):
    """``method`` run inside :func:`~mmlocalmamba.utils.checkpoint.safe_mmengine_loading`."""

    @functools.wraps(method)
    def run(*args, **kwargs):
        with safe_mmengine_loading():
            return method(*args, **kwargs)

    return run


def build_runner(cfg: Config):
    """A runner from the config (``runner_type`` when the config names one).

    Its ``load_checkpoint`` (``resume``, ``load_from``), ``train``, ``val`` and ``test`` (weights of
    ``init_cfg`` too) load checkpoints through mmlocalmamba's checked loader, see the module
    docstring.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    _unique_visualizer_name(cfg)
    _check_compile_option(cfg.get('compile'))
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner._maybe_compile = functools.partial(compile_backbone, runner)
    return with_safe_loading(runner)


def _check_compile_option(option: Any) -> None:
    if option is not None and not isinstance(option, (bool, dict)):
        raise TypeError(f'compile must be True, False, None or a dict of torch.compile '
                        f'arguments, got {option!r}.')


def compile_backbone(runner, target: str = 'train_step') -> bool:
    """What the config's ``compile`` (True, or a dict of ``torch.compile`` arguments) does in
    runners of :func:`build_runner`: the model's backbone is compiled in place
    (``nn.Module.compile``: its state-dict keys and checkpoints stay as they are), when mmengine
    would compile ``train_step``.

    mmengine itself compiles the whole ``train_step``: the heads' data-dependent shapes and the
    optimizer step with it, and under ``--amp`` Dynamo (torch 2.11) stops inside mmengine's
    autocast context (``digit_version`` of the torch version); the backbone is where the work
    is, and the scan operators are opaque to the compiler. Returns True when it compiled.

    Raises:
        ValueError: ``compile`` is set and the model has no ``backbone``.
    """
    option = runner.cfg.get('compile')
    _check_compile_option(option)
    if target != 'train_step' or option is None or option is False:
        return False
    model = _unwrap(runner.model)
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, torch.nn.Module):
        raise ValueError(f'compile={option!r}: {type(model).__name__} has no backbone module '
                         f'to compile; remove "compile" from the config.')
    kwargs = {} if option is True else dict(option)
    backbone.compile(**kwargs)
    print_log(f'compile: {type(backbone).__name__} (model.backbone) compiled in place with '
              f'torch.compile({", ".join(f"{k}={v!r}" for k, v in kwargs.items())}); the first '
              f'iterations include the compilation.', logger='current')
    return True


def with_safe_loading(runner):
    """``runner`` whose ``load_checkpoint`` (``resume``, ``load_from``), ``train``, ``val`` and
    ``test`` load checkpoints through mmlocalmamba's checked loader (returned, changed in
    place)."""
    for name in ('load_checkpoint', 'train', 'val', 'test'):
        setattr(runner, name, _with_safe_loading(getattr(runner, name)))
    return runner


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='directory for logs and checkpoints '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, default=None,
        help='override config entries, e.g. model.backbone.drop_path_rate=0.1 '
        'train_dataloader.batch_size=4 (key=value pairs; [a,b] gives a list)')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher for distributed runs')
    # torch.distributed.launch passes --local-rank (older: --local_rank); torchrun sets the
    # LOCAL_RANK environment variable instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=None,
                        help=argparse.SUPPRESS)


def train_parser() -> argparse.ArgumentParser:
    """Arguments of ``tools/train.py``."""
    parser = argparse.ArgumentParser(
        description='Train an mmdet or mmseg model (LocalMamba backbones available).')
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument(
        '--resume', nargs='?', const='auto', default=None, metavar='CHECKPOINT',
        help='resume training: without a value from the latest checkpoint of the work dir, '
        'or from the given checkpoint')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training (GPU)')
    _add_common_arguments(parser)
    return parser


def test_parser() -> argparse.ArgumentParser:
    """Arguments of ``tools/test.py``."""
    parser = argparse.ArgumentParser(
        description='Evaluate an mmdet or mmseg model (LocalMamba backbones available).')
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation from the config's tta_model/tta_pipeline")
    parser.add_argument('--show-dir', help='write images with painted predictions here')
    parser.add_argument('--out', help='dump predictions to a .pkl file (mmseg: or PNG label '
                        'maps into a directory)')
    parser.add_argument('--metrics-out', metavar='FILE.json',
                        help='also write the metrics to this JSON file')
    parser.add_argument(
        '--allow-partial-checkpoint', action='store_true',
        help='evaluate even when the checkpoint has no weights for some parts of the model '
        '(e.g. a backbone-only or ImageNet checkpoint: those parts stay randomly initialised)')
    _add_common_arguments(parser)
    return parser


def _apply_local_rank(args: argparse.Namespace) -> None:
    if args.local_rank is not None and 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)


def train_main(argv: Optional[Sequence[str]] = None):
    """Entry point of ``tools/train.py``; returns the trained model (unwrapped from DDP)."""
    args = train_parser().parse_args(argv)
    _apply_local_rank(args)
    cfg = load_config(args.config, args.cfg_options)
    prepare_train_config(cfg, work_dir=args.work_dir, resume=args.resume, amp=args.amp,
                         launcher=args.launcher)
    runner = build_runner(cfg)
    try:
        model = _unwrap(runner.train())
    finally:
        # the runner and its DDP wrapper hold the process group: let go of them first
        del runner
        _close_process_group()
    return model


def _unwrap(model):
    from mmengine.model import is_model_wrapper
    while is_model_wrapper(model):
        model = model.module
    return model


def test_main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Entry point of ``tools/test.py``; returns the metrics."""
    args = test_parser().parse_args(argv)
    _apply_local_rank(args)
    cfg = load_config(args.config, args.cfg_options)
    prepare_test_config(cfg, args.checkpoint, work_dir=args.work_dir, tta=args.tta,
                        show_dir=args.show_dir, out=args.out, launcher=args.launcher)
    runner = build_runner(cfg)
    try:
        if not args.allow_partial_checkpoint:
            check_checkpoint_covers_model(runner.model, load_checkpoint_file(args.checkpoint),
                                          args.checkpoint)
        metrics = runner.test()
        if args.metrics_out:
            _write_metrics(metrics, args.metrics_out)
    finally:
        del runner
        _close_process_group()
    return metrics


def check_checkpoint_covers_model(model, checkpoint: Any, name: str) -> None:
    """Refuse a test checkpoint that leaves parts of the model without weights.

    Every top-level part of the model with parameters (``backbone``, ``neck``, ``rpn_head``,
    ``decode_head``, ...) must get at least one tensor from the checkpoint (keys as mmengine
    loads them: the ``state_dict`` entry, ``module.`` stripped).

    Raises:
        PartialCheckpointError: naming the parts without weights and what the checkpoint holds.
    """
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    keys = {k[len('module.'):] if k.startswith('module.') else k
            for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    model_keys = set(model.state_dict())
    parts = {}
    for key in model_keys:
        parts.setdefault(key.split('.', 1)[0], []).append(key)
    empty = sorted(part for part, names in parts.items()
                   if not any(n in keys for n in names) and any(
                       p.numel() for p in getattr(model, part).parameters()))
    if not empty:
        return
    fits = len(keys & model_keys)
    if fits:
        found = f'it holds weights for {fits} of the model\'s {len(model_keys)} tensors'
    else:
        found = (f'none of its {len(keys)} tensors fits the model (first keys: '
                 f'{sorted(keys)[:3]}); an ImageNet classification or backbone-only checkpoint '
                 f'belongs in the backbone\'s init_cfg, not here')
    raise PartialCheckpointError(
        f'Checkpoint {name!r} has no weights for {", ".join(empty)} of the '
        f'{type(model).__name__}: {found}. Evaluating it would measure randomly initialised '
        f'{" and ".join(empty)}. Give a checkpoint of the whole model (e.g. the epoch_*.pth that '
        f'tools/train.py writes), or pass --allow-partial-checkpoint to evaluate anyway.')


def _close_process_group(runner=None) -> None:
    """Shut the process group down, and its threads with it, before the interpreter exits.

    mmengine leaves the group open. ``destroy_process_group`` only unregisters it: a gloo group
    lives on (with its worker threads) while anything still refers to it, such as a DDP wrapper,
    and one destroyed later, during interpreter finalisation, can abort a successful run
    (``terminate called without an active exception``). So the callers drop their runner first,
    or pass the one they keep (its model is unwrapped here), and the group is collected here,
    while the interpreter is whole.
    """
    import gc

    import torch.distributed as dist
    if runner is not None:
        runner.model = _unwrap(runner.model)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()  # the runner's reference cycles (hooks <-> runner) hold the DDP wrapper


def _write_metrics(metrics: Dict[str, Any], path: str) -> None:
    """Write the metrics as JSON (rank 0 only)."""
    import json

    from mmengine.dist import is_main_process
    if not is_main_process():
        return
    def plain(value):  # numpy/torch scalars -> Python numbers
        return value.item() if hasattr(value, 'item') else value

    text = json.dumps({k: plain(v) for k, v in metrics.items()}, indent=2)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text + '\n')

