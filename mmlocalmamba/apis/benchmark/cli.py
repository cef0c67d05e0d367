"""The benchmark run: sections, their rows, and the JSON / markdown written after each.

``python tools/benchmark.py --what all`` (see :func:`parser` for the options). Sections:

=========== ================================================================================
``cls``      classification at 224², batch 128: inference / training (fwd + bwd) img/s and the
             training peak, LocalVMamba-T/-S, timm Swin-T/-S, ConvNeXt-T (rows ``models``)
``backbone`` backbone features fwd and fwd + bwd ms and peak, batch 2 at 800×1344 (``work``
             'det') and batch 8 at 512² ('seg'): LocalVMamba-T vs timm Swin-T (``backbone``)
``det``      one Mask R-CNN training step (``model.train_step``: preprocessor, losses, backward,
             AdamW step, AMP) from our config and mmdet's Swin-T config, batch 2 at 1333×800
             (padded to 800×1344) (``det_step``)
``seg``      the same for UperNet, ours vs mmseg's Swin-T config, batch 8 at 512² (``seg_step``)
``vim``      LocalVim-T/-S vs DeiT-T/-S classification (``vim_cls``); LocalVim-T backbone as the
             Cascade LSJ config builds it vs ViT-Ti (global attention), batch 2 at 1024²
             (``vim_backbone``)
``det_vim``  one Cascade Mask R-CNN LocalVim-T training step, batch 2 at 1024² (``det_vim_step``)
``scan``     the fused scan kernel alone at the LocalVMamba-T stage shapes (``scan``,
             ``copy_tbps``; CUDA only)
``compile``  eager vs ``torch.compile`` (classification inference and training, Mask R-CNN step
             with the backbone compiled) at two sizes, and the first fwd + bwd at three
             detection shapes on a fresh Triton cache (``compile``); ``--compile-parts
             vim_infer,vim_train``: LocalVim-T classification through its ``compile()``,
             ``deit_infer,deit_train`` DeiT-T the same way, ``vim_backbone,vit_backbone``
             the LocalVim-T / ViT-Ti backbones' fwd+bwd at batch 2, 1024² (peers compiled
             as the LocalVim rows are, for same-run ratios)
=========== ================================================================================

``all`` runs them in this order; ``models`` is ``cls,backbone``. After each section the JSON
(with ``ratios_to_swin`` / ``ratios_to_deit`` recomputed from all rows present, the
environment, the settings and each section's status and seconds) and, with ``--md``, the
markdown tables are rewritten, so a run cut short keeps what it measured. A failing row or
section is recorded with its error and the run goes on.
"""
import argparse
import dataclasses
import gc
import json
import os
import os.path as osp
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log

from .report import STEP_KEYS, combine_results, compute_ratios, fmt, format_markdown, plot
from .measure import copy_bandwidth, environment, peak_gib, time_calls, time_steps
from .workloads import (CLS_MODELS, TINY_ARCH, backbone_step, build_backbone, build_classifier,
                        cls_step, num_params_m)

SKIPPED = 'skipped (time budget)'
SECTIONS = ('cls', 'backbone', 'det', 'seg', 'vim', 'det_vim', 'scan', 'compile')
ALIASES = {'all': SECTIONS, 'models': ('cls', 'backbone'), 'none': ()}
SWIN_CLS = ('LocalVMamba-T', 'LocalVMamba-S', 'Swin-T', 'Swin-S', 'ConvNeXt-T')
VIM_CLS = ('LocalVim-T', 'LocalVim-S', 'DeiT-T', 'DeiT-S')
# the fresh-cache process first: a crash of a compiled model can leave this process' CUDA
# context unusable for what follows
COMPILE_PARTS = ('triton', 'cls_infer', 'cls_train', 'det', 'vim_infer', 'vim_train',
                 'deit_infer', 'deit_train', 'vim_backbone', 'vit_backbone')
#: what ``--compile-parts`` runs by default (``vim_*``: LocalVim-T, e.g. with
#: ``--compile-mode reduce-overhead`` for CUDA graphs; ``deit_*`` and ``vit_backbone``: its
#: peers compiled the same way, for same-run ratios of compiled models)
DEFAULT_COMPILE_PARTS = ('triton', 'cls_infer', 'cls_train', 'det')
#: keys of the parts in the result's ``compile`` dictionary (the others: the part's name)
COMPILE_KEYS = {'triton': 'triton_first_call'}
PROFILES = ('cls', 'cls_infer', 'backbone', 'det', 'seg', 'vim', 'vim_infer', 'vim_backbone',
            'det_vim')
@dataclasses.dataclass(frozen=True)
class Sizes:
    """Batch sizes and input sizes (H, W) of every row."""
    cls_batch: int = 128
    cls_size: int = 224
    cls_size2: int = 256  # second size of the compile rows
    backbone: Tuple = (('det', 2, (800, 1344)), ('seg', 8, (512, 512)))
    det_batch: int = 2
    det_size: Tuple[int, int] = (800, 1333)  # padded to 800x1344 by the preprocessor
    det_size2: Tuple[int, int] = (800, 1216)  # second size of the compile rows
    seg_batch: int = 8
    seg_size: Tuple[int, int] = (512, 512)
    vim_backbone: Tuple = (('det', 2, (1024, 1024)), )
    det_vim_batch: int = 2
    det_vim_size: Tuple[int, int] = (1024, 1024)
    triton_batch: int = 2
    triton_shapes: Tuple = ((800, 1344), (800, 1216), (736, 1344))


#: ``--tiny``: sizes a CPU runs in seconds (the code paths of the full run, not its numbers).
TINY = Sizes(cls_batch=2, cls_size=64, cls_size2=96, backbone=(('det', 2, (64, 96)),
                                                               ('seg', 2, (64, 64))),
             det_size=(64, 96), det_size2=(64, 80), seg_batch=2, seg_size=(64, 64),
             vim_backbone=(('det', 1, (64, 64)), ), det_vim_size=(64, 64), triton_batch=1,
             triton_shapes=((64, 96), (64, 80), (48, 96)))


def _csv(text: str) -> List[str]:
    return [item.strip() for item in text.split(',') if item.strip()]


def sections_of(text: str) -> List[str]:
    """The sections of a ``--what`` value, in run order (aliases expanded)."""
    wanted = set()
    for item in _csv(text):
        if item in ALIASES:
            wanted.update(ALIASES[item])
        elif item in SECTIONS:
            wanted.add(item)
        else:
            raise ValueError(f'--what {item!r}: expected sections from {", ".join(SECTIONS)} or '
                             f'{", ".join(ALIASES)}')
    return [s for s in SECTIONS if s in wanted]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='tools/benchmark.py',
        description='GPU benchmarks of LocalVMamba / LocalVim next to Swin, ConvNeXt, DeiT and '
        'ViT: classification, backbones, mmdet/mmseg training steps, the scan kernel, '
        'torch.compile; JSON + markdown.')
    p.add_argument('--what', default='all',
                   help=f'comma-separated sections: {", ".join(SECTIONS)}; or all, models '
                   f'(= cls,backbone), none (only --profile)')
    p.add_argument('--models', default=','.join(SWIN_CLS),
                   help='classification rows of the cls section (default: %(default)s; also '
                   f'known: {", ".join(m for m in CLS_MODELS if m not in SWIN_CLS)})')
    p.add_argument('--device', default='cuda', help='cuda (default), cuda:N or cpu')
    p.add_argument('--tiny', action='store_true',
                   help='tiny inputs and batches, no warm-up, one timed call: checks the code '
                   'paths (e.g. on the CPU), measures nothing useful')
    p.add_argument('--batch', type=int, help='classification batch (default 128)')
    p.add_argument('--iters', type=int, default=10,
                   help='timed calls per classification / backbone / scan row (median)')
    p.add_argument('--warmup', type=int, default=3, help='warm-up calls before them')
    p.add_argument('--step-iters', type=int, default=5, help='timed det/seg training steps')
    p.add_argument('--step-warmup', type=int, default=2, help='warm-up training steps')
    p.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16', 'fp32'],
                   help='autocast dtype of the classification, backbone and compile rows')
    p.add_argument('--amp', default='fp16', choices=['fp16', 'bf16', 'none'],
                   help='AmpOptimWrapper dtype of the train steps (fp16 = tools/train.py --amp)')
    p.add_argument('--config', action='append', default=[], metavar='SECTION:MODEL=CONFIG',
                   help='use another config for a train-step row, e.g. '
                   'det:LocalVMamba-T=configs/mmdet/maskrcnn_localvmamba_s.py (repeatable; a new '
                   'MODEL adds a row)')
    p.add_argument('--compile-parts', default=','.join(DEFAULT_COMPILE_PARTS),
                   help=f'parts of the compile section (default %(default)s; all: '
                   f'{",".join(COMPILE_PARTS)})')
    p.add_argument('--compile-backend', default='inductor', help='torch.compile backend')
    p.add_argument('--compile-mode', default=None, help='torch.compile mode (default: default)')
    p.add_argument('--profile', default='', metavar='WORKLOAD[:MODEL],...',
                   help=f'after the sections, profile one step of each workload '
                   f'({", ".join(PROFILES)}; default model LocalVMamba-T / LocalVim-T / the '
                   f'first config), e.g. cls,det,det:Swin-T')
    p.add_argument('--profile-rows', type=int, default=25, help='top kernels kept per profile')
    p.add_argument('--profile-host', action='store_true',
                   help='the profiles also keep the host side: operators by own CPU time and '
                   'a cProfile table of one step')
    p.add_argument('--budget-s', type=float, default=None,
                   help='skip the sections that would start after this many seconds')
    p.add_argument('--json', default='work_dirs/benchmark.json', help='output JSON file')
    p.add_argument('--md', default=None, help='also write the markdown tables to this file')
    p.add_argument('--merge', action='store_true',
                   help='keep the sections of an existing --json file that this run does not '
                   'measure (the lead can run the sections in several calls)')
    p.add_argument('--combine', nargs='+', metavar='JSON',
                   help='only combine the JSON files of several runs (later ones win) into '
                   '--json / --md, ratios recomputed (no GPU)')
    p.add_argument('--plot', metavar='JSON', help='only plot an existing JSON file (no GPU)')
    p.add_argument('--png', default='docs/benchmarks.png')
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    try:
        args.sections = sections_of(args.what)
        unknown = [m for m in _csv(args.models) if m not in CLS_MODELS]
        if unknown:
            raise ValueError(f'--models: unknown {unknown}; known: {", ".join(CLS_MODELS)}')
        parts = _csv(args.compile_parts)
        if any(part not in COMPILE_PARTS for part in parts):
            raise ValueError(f'--compile-parts {args.compile_parts!r}: expected parts from '
                             f'{", ".join(COMPILE_PARTS)}')
        for spec in _csv(args.profile):
            if spec.partition(':')[0] not in PROFILES:
                raise ValueError(f'--profile {spec!r}: expected one of {", ".join(PROFILES)} '
                                 f'(optionally :MODEL)')
        args.configs = step_configs(args.config)
    except ValueError as err:
        p.error(str(err))
    if args.tiny:
        args.iters, args.warmup, args.step_iters, args.step_warmup = 1, 0, 1, 0
    return args


def step_configs(overrides: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """:data:`~.steps.STEP_CONFIGS` with ``SECTION:MODEL=CONFIG`` overrides applied."""
    from .steps import STEP_CONFIGS
    configs = {section: dict(rows) for section, rows in STEP_CONFIGS.items()}
    for item in overrides:
        key, sep, config = item.partition('=')
        section, colon, model = key.partition(':')
        if not (sep and colon and model and config) or section not in configs:
            raise ValueError(f'--config {item!r}: expected SECTION:MODEL=CONFIG with SECTION in '
                             f'{", ".join(configs)}')
        configs[section][model] = config
    return configs


# ----------------------------------------------------------------------------- the run
class Run:
    """A benchmark run: options, device, sizes, the result and where it is written."""

    def __init__(self, args: argparse.Namespace, log: Callable[[str], None] = print):
        self.args, self.log = args, log
        self.device = torch.device(args.device)
        self.sizes = TINY if args.tiny else Sizes()
        if args.batch:
            self.sizes = dataclasses.replace(self.sizes, cls_batch=args.batch)
        settings = {k: v for k, v in vars(args).items() if k not in ('configs', )}
        settings.update(sizes=dataclasses.asdict(self.sizes), step_configs=args.configs)
        self.result: Dict[str, object] = dict(environment=environment(self.device),
                                              settings=settings, sections={})
        if args.merge and osp.isfile(args.json):
            with open(args.json) as f:
                self.result = combine_results([json.load(f), self.result])
        self.start = time.perf_counter()

    # -- output
    def save(self) -> None:
        self.result.update(compute_ratios(self.result))
        write_result(self.result, self.args.json, self.args.md)

    def run_sections(self) -> None:
        for name in self.args.sections:
            if self.over_budget():
                info = dict(status=SKIPPED, seconds=0.0)
            else:
                info = self.run_section(name)
            self.result['sections'][name] = info
            self.log(f'   {name}: {info["status"]} in {info["seconds"]:.0f} s')
            _free()
            self.save()
        for spec in _csv(self.args.profile):
            self.log(f'== profile {spec}')
            if self.over_budget():
                title, prof = spec, dict(error=SKIPPED)
            else:
                title, prof = self.profile(spec)
            self.result.setdefault('profile', {})[title] = prof
            _free()
            self.save()

    def over_budget(self) -> bool:
        """Whether ``--budget-s`` has passed (nothing new starts then)."""
        budget = self.args.budget_s
        return budget is not None and time.perf_counter() - self.start > budget

    def run_section(self, name: str) -> Dict[str, object]:
        """Run ``section_<name>``; returns its status, seconds and error (if any)."""
        self.log(f'== {name}')
        start = time.perf_counter()
        try:
            info = dict(status=getattr(self, f'section_{name}')() or 'ok')
        except Exception:  # noqa: BLE001  (recorded; the other sections still run)
            info = dict(status='error', error=traceback.format_exc(limit=-8))
            self.log(info['error'])
        info['seconds'] = time.perf_counter() - start
        return info

    # -- rows
    def rows(self, names: Sequence[str], bench: Callable[[str], dict]) -> List[dict]:
        """``bench(name)`` for each name; a failure becomes an error row."""
        out = []
        for name in names:
            try:
                out.append(bench(name))
            except Exception:  # noqa: BLE001
                out.append(dict(model=name, error=traceback.format_exc(limit=-8)))
                self.log(f'  {name}: {out[-1]["error"]}')
            _free()
        return out

    def bench_cls(self, name: str) -> dict:
        sz, dev, args = self.sizes, self.device, self.args
        model = build_classifier(name, sz.cls_size).to(dev)
        infer = cls_step(model, sz.cls_batch, sz.cls_size, dev, args.dtype, train=False)
        t_infer = time_calls(infer, dev, args.iters, args.warmup)
        train = cls_step(model, sz.cls_batch, sz.cls_size, dev, args.dtype, train=True)
        t_train = time_calls(train, dev, args.iters, args.warmup)
        row = dict(model=name, timm_name=CLS_MODELS[name], params_m=num_params_m(model),
                   batch=sz.cls_batch, size=sz.cls_size, infer_ms=t_infer['ms'],
                   infer_img_s=sz.cls_batch / t_infer['ms'] * 1e3, train_ms=t_train['ms'],
                   train_img_s=sz.cls_batch / t_train['ms'] * 1e3,
                   train_peak_gib=peak_gib(train, dev), infer_first_ms=t_infer['first_ms'],
                   train_first_ms=t_train['first_ms'])
        self.log(f"  {name}: infer {row['infer_img_s']:.0f} img/s, train "
                 f"{row['train_img_s']:.0f} img/s, train peak "
                 f"{fmt(row['train_peak_gib'], '.1f')} GiB")
        return row

    def bench_backbone(self, name: str, work: str, batch: int, size: Tuple[int, int]) -> dict:
        dev, args = self.device, self.args
        model = build_backbone(name, size).to(dev)
        fwd = time_calls(backbone_step(model, batch, size, dev, args.dtype, train=False), dev,
                         args.iters, args.warmup)
        step = backbone_step(model, batch, size, dev, args.dtype, train=True)
        fwd_bwd = time_calls(step, dev, args.iters, args.warmup)
        row = dict(model=name, work=work, batch=batch, height=size[0], width=size[1],
                   params_m=num_params_m(model), fwd_ms=fwd['ms'], fwd_bwd_ms=fwd_bwd['ms'],
                   peak_gib=peak_gib(step, dev), fwd_first_ms=fwd['first_ms'],
                   fwd_bwd_first_ms=fwd_bwd['first_ms'])
        self.log(f"  {name} b{batch} {size[0]}x{size[1]}: fwd {row['fwd_ms']:.1f} ms, fwd+bwd "
                 f"{row['fwd_bwd_ms']:.1f} ms, peak {fmt(row['peak_gib'], '.2f')} GiB")
        return row

    def backbone_rows(self, names: Sequence[str], sizes) -> List[dict]:
        out = []
        for work, batch, size in sizes:
            out += self.rows(names, lambda n: self.bench_backbone(n, work, batch, size))
        return out

    def train_step(self, section: str, name: str, size=None):
        from .steps import TrainStep
        sz = self.sizes
        batch, default = {'det': (sz.det_batch, sz.det_size), 'seg': (sz.seg_batch, sz.seg_size),
                          'det_vim': (sz.det_vim_batch, sz.det_vim_size)}[section]
        return TrainStep(self.args.configs[section][name], self.device, self.args.amp,
                         size or default, batch)

    def bench_step(self, section: str, name: str) -> dict:
        from .steps import step_row
        step = self.train_step(section, name)
        last = {}

        def run():
            last['log_vars'] = step()

        with step.cudnn_setting():
            timing = time_steps(run, self.device, self.args.step_iters, self.args.step_warmup)
        row = step_row(name, step, timing, last.get('log_vars'))
        self.log(f"  {name} ({row['config']}): {row['s_iter']:.3f} s/iter, first "
                 f"{row['first_s']:.1f} s, peak {fmt(row['peak_mb'], '.0f')} MB, "
                 f"loss {row.get('loss', float('nan')):.3f}")
        return row

    # -- sections
    def section_cls(self):
        self.result['models'] = self.rows(_csv(self.args.models), self.bench_cls)

    def section_backbone(self):
        self.result['backbone'] = self.backbone_rows(('LocalVMamba-T', 'Swin-T'),
                                                     self.sizes.backbone)

    def _steps(self, section: str):
        key = STEP_KEYS[section]
        self.result[key] = self.rows(list(self.args.configs[section]),
                                     lambda n: self.bench_step(section, n))

    def section_det(self):
        self._steps('det')

    def section_seg(self):
        self._steps('seg')

    def section_det_vim(self):
        self._steps('det_vim')

    def section_vim(self):
        self.result['vim_cls'] = self.rows(VIM_CLS, self.bench_cls)
        self.save()
        self.result['vim_backbone'] = self.backbone_rows(('LocalVim-T', 'ViT-Ti'),
                                                         self.sizes.vim_backbone)

    def section_scan(self):
        if self.device.type != 'cuda':
            return 'skipped (needs CUDA)'
        from .scan import bench_scan
        self.result['copy_tbps'] = copy_bandwidth(self.device)
        self.result['scan'] = bench_scan(self.sizes.cls_batch, self.args.iters, self.args.warmup,
                                         self.result['copy_tbps'], self.device, self.log)

    def section_compile(self):
        comp = self.result.setdefault('compile', {})
        for part in _csv(self.args.compile_parts):
            self.log(f'  compile: {part}')
            key = COMPILE_KEYS.get(part, part)
            start = time.perf_counter()
            if self.over_budget():
                comp[key] = dict(work=part, error=SKIPPED)
                continue
            try:
                comp[key] = getattr(self, f'compile_{part}')()
            except Exception:  # noqa: BLE001
                comp[key] = dict(work=part, error=traceback.format_exc(limit=-8))
                self.log(comp[key]['error'])
            comp[key]['seconds'] = time.perf_counter() - start
            _free()
            self.save()

    def _compile(self, module: torch.nn.Module) -> torch.nn.Module:
        return torch.compile(module, backend=self.args.compile_backend,
                             mode=self.args.compile_mode)

    def _compile_in_place(self, model: torch.nn.Module) -> Tuple[Callable[[], None], str]:
        """``compile_fn`` for :func:`~.compiling.compile_pair`: ``model.compile`` with this
        run's backend and mode, in place (a model's ``compile()`` adds the options it needs);
        and the mode argument as the report writes it."""
        args = self.args

        def compile_fn():
            model.compile(backend=args.compile_backend, mode=args.compile_mode)

        return compile_fn, f'mode={args.compile_mode!r}' if args.compile_mode else ''

    def _compile_cls(self, train: bool, name: str = 'LocalVMamba-T') -> dict:
        from .compiling import compile_pair
        sz, dev, args = self.sizes, self.device, self.args
        model = build_classifier(name, sz.cls_size).to(dev)

        def make_step(size):
            return cls_step(model, sz.cls_batch, size[0], dev, args.dtype, train)

        compile_fn, mode = self._compile_in_place(model)
        out = compile_pair(make_step, compile_fn, [(sz.cls_size, sz.cls_size),
                                                   (sz.cls_size2, sz.cls_size2)],
                           dev, args.iters, args.warmup)
        what = 'training fwd+bwd' if train else 'inference'
        out.update(work=f'{name} classification {what} b{sz.cls_batch} (ms)',
                   compiled=f'classifier.compile({mode})', batch=sz.cls_batch)
        return out

    def compile_cls_infer(self):
        return self._compile_cls(train=False)

    def compile_cls_train(self):
        return self._compile_cls(train=True)

    def compile_vim_infer(self):
        return self._compile_cls(train=False, name='LocalVim-T')

    def compile_vim_train(self):
        return self._compile_cls(train=True, name='LocalVim-T')

    def compile_deit_infer(self):
        return self._compile_cls(train=False, name='DeiT-T')

    def compile_deit_train(self):
        return self._compile_cls(train=True, name='DeiT-T')

    def _compile_backbone(self, name: str) -> dict:
        """A backbone's forward + backward at the LocalVim detection size (``vim_backbone``:
        batch 2, 1024², one size: LSJ crops to it), eager and compiled in place."""
        from .compiling import compile_pair
        dev, args = self.device, self.args
        (_, batch, size), = self.sizes.vim_backbone
        model = build_backbone(name, size).to(dev)

        def make_step(shape):
            return backbone_step(model, batch, shape, dev, args.dtype, train=True)

        compile_fn, mode = self._compile_in_place(model)
        out = compile_pair(make_step, compile_fn, [size], dev, args.iters, args.warmup)
        out.update(work=f'{name} backbone fwd+bwd b{batch} (ms)',
                   compiled=f'backbone.compile({mode})', batch=batch)
        return out

    def compile_vim_backbone(self):
        return self._compile_backbone('LocalVim-T')

    def compile_vit_backbone(self):
        return self._compile_backbone('ViT-Ti')

    def compile_det(self):
        from .compiling import compile_pair
        from .steps import det_batch
        sz, dev, args = self.sizes, self.device, self.args
        step = self.train_step('det', 'LocalVMamba-T')
        batches = {tuple(sz.det_size): step.data,
                   tuple(sz.det_size2): det_batch(sz.det_batch, sz.det_size2, step.num_classes)}

        def make_step(size):
            step.data = batches[tuple(size)]
            return step

        def compile_fn():
            step.model.backbone = self._compile(step.model.backbone)

        def timer(fn, device, iters, warmup):
            return time_steps(fn, device, iters, warmup)['s_iter'] * 1e3

        with step.cudnn_setting():
            out = compile_pair(make_step, compile_fn, [sz.det_size, sz.det_size2], dev,
                               args.step_iters, args.step_warmup, timer)
        out.update(work=f'Mask R-CNN LocalVMamba-T train step b{sz.det_batch} (ms)',
                   compiled='model.backbone = torch.compile(model.backbone)',
                   config=step.config, amp=step.amp)
        return out

    def compile_triton(self):
        from .compiling import triton_first_call
        sz = self.sizes
        runs = [triton_first_call(sz.triton_shapes, sz.triton_batch, str(self.device),
                                  self.args.dtype, TINY_ARCH if self.args.tiny else 'tiny',
                                  log=self.log, precompile=precompile)
                for precompile in (False, True)]
        runs[1]['without_precompile'] = runs[0]
        return runs[1]

    # -- profiles
    def profile(self, spec: str) -> Tuple[str, dict]:
        from .profiling import format_profile, profile_step
        workload, _, model = spec.partition(':')
        try:
            model, step = self.profile_workload(workload, model or None)
            title = f'{workload}:{model}'
            prof = profile_step(step, self.device, warmup=max(self.args.warmup, 1),
                                rows=self.args.profile_rows, host=self.args.profile_host)
            self.log(format_profile(title, prof, rows=self.args.profile_rows))
        except Exception:  # noqa: BLE001
            title, prof = f'{workload}:{model or "default"}', dict(
                error=traceback.format_exc(limit=-8))
            self.log(prof['error'])
        return title, prof

    def profile_workload(self, workload: str, model: Optional[str]):
        sz, dev, dtype = self.sizes, self.device, self.args.dtype
        if workload in ('cls', 'cls_infer', 'vim', 'vim_infer'):
            model = model or ('LocalVim-T' if workload.startswith('vim') else 'LocalVMamba-T')
            net = build_classifier(model, sz.cls_size).to(dev)
            return model, cls_step(net, sz.cls_batch, sz.cls_size, dev, dtype,
                                   train=not workload.endswith('_infer'))
        if workload in ('backbone', 'vim_backbone'):
            vim = workload == 'vim_backbone'
            model = model or ('LocalVim-T' if vim else 'LocalVMamba-T')
            _, batch, size = (sz.vim_backbone if vim else sz.backbone)[0]
            return model, backbone_step(build_backbone(model, size).to(dev), batch, size, dev,
                                        dtype, train=True)
        model = model or next(iter(self.args.configs[workload]))
        step = self.train_step(workload, model)
        return model, step.with_cudnn_setting()


def _plain(value):
    """JSON fallback: tensors and numpy scalars as numbers, anything else as text."""
    if hasattr(value, 'item'):
        return value.item()
    return str(value)


def write_result(result: dict, path: str, md: Optional[str] = None) -> None:
    """The JSON file (and the markdown tables when ``md`` is given)."""
    _write(path, json.dumps(result, indent=1, default=_plain) + '\n')
    if md:
        _write(md, format_markdown(result))


def _write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Entry point of ``tools/benchmark.py``; returns the result."""
    args = parse_args(argv)
    if args.plot:
        with open(args.plot) as f:
            plot(json.load(f), args.png)
        return {}
    if args.combine:
        results = []
        for path in args.combine:
            with open(path) as f:
                results.append(json.load(f))
        result = combine_results(results)
        write_result(result, args.json, args.md)
        print_log(format_markdown(result), logger='current')
        return result
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('tools/benchmark.py: no CUDA device here (use --device cpu to check '
                         'the code paths).')
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    run = Run(args, log=lambda msg: print_log(msg, logger='current'))
    run.log(f"{run.result['environment']}")
    run.save()
    run.run_sections()
    print_log(format_markdown(run.result), logger='current')
    return run.result
