"""tools/benchmark.py on the CPU: options, ratios, JSON / markdown, batch builders, the
fresh-Triton-cache process and the profiler tables (the GPU numbers come from the GPU machine)."""
import contextlib
import io
import json
import logging
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.logging import MMLogger

from mmlocalmamba.apis.benchmark import (cli, compiling, measure, profiling, report, steps,
                                          workloads)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CPU = torch.device('cpu')


def cpu_args(tmp_path, *extra):
    return cli.parse_args(['--device', 'cpu', '--tiny', '--json', str(tmp_path / 'b.json'),
                           '--md', str(tmp_path / 'b.md'), *extra])


# ----------------------------------------------------------------------------- options
def test_sections_in_run_order_with_aliases():
    assert cli.sections_of('all') == list(cli.SECTIONS)
    assert cli.sections_of('models') == ['cls', 'backbone']
    assert cli.sections_of('seg, det,det') == ['det', 'seg']
    assert cli.sections_of('none') == []
    with pytest.raises(ValueError, match='detx'):
        cli.sections_of('detx')


def test_parse_args_defaults_tiny_and_errors(capsys):
    args = cli.parse_args([])
    assert args.sections == list(cli.SECTIONS)
    assert (args.iters, args.warmup, args.step_iters, args.step_warmup) == (10, 3, 5, 2)
    assert (args.device, args.dtype, args.amp) == ('cuda', 'bf16', 'fp16')
    assert args.configs == steps.STEP_CONFIGS
    tiny = cli.parse_args(['--tiny', '--what', 'det', '--iters', '7'])
    assert (tiny.iters, tiny.warmup, tiny.step_iters, tiny.step_warmup) == (1, 0, 1, 0)
    for bad in (['--what', 'bogus'], ['--models', 'Swin-T,Foo'], ['--profile', 'train'],
                ['--compile-parts', 'cls,det'], ['--config', 'det=x.py'],
                ['--config', 'cls:A=x.py']):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)
    assert 'expected' in capsys.readouterr().err


def test_config_overrides_add_and_replace_rows():
    configs = cli.step_configs(['det:LocalVMamba-S=configs/mmdet/maskrcnn_localvmamba_s.py',
                                'seg:Swin-T=other.py'])
    assert configs['det']['LocalVMamba-S'] == 'configs/mmdet/maskrcnn_localvmamba_s.py'
    assert list(configs['det']) == ['LocalVMamba-T', 'Swin-T', 'LocalVMamba-S']
    assert configs['seg']['Swin-T'] == 'other.py'
    assert steps.STEP_CONFIGS['seg']['Swin-T'].startswith('mmseg::')


def test_default_configs_resolve():
    for rows in steps.STEP_CONFIGS.values():
        for config in rows.values():
            assert osp.isfile(steps.resolve_config(config)), config
    with pytest.raises(FileNotFoundError):
        steps.resolve_config('mmdet::swin/no_such_config.py')


def test_local_vim_backbone_as_the_cascade_config_builds_it():
    from mmengine.config import Config

    from mmlocalmamba.apis.benchmark.workloads import LOCAL_VIM_DET
    cfg = Config.fromfile(steps.resolve_config(steps.STEP_CONFIGS['det_vim']['LocalVim-T']))
    backbone = cfg.model.backbone
    assert backbone.type == 'LocalVim'
    for key, value in LOCAL_VIM_DET.items():
        assert tuple(backbone[key]) == value if isinstance(value, tuple) else \
            backbone[key] == value, key


# ----------------------------------------------------------------------------- ratios, markdown
def _cls(model, infer, train, peak, batch=128, size=224):
    return dict(model=model, batch=batch, size=size, params_m=25.0, infer_img_s=infer,
                train_img_s=train, train_peak_gib=peak)


def _bb(model, work, fwd_bwd, peak, batch, size):
    return dict(model=model, work=work, batch=batch, height=size[0], width=size[1],
                fwd_ms=fwd_bwd / 4, fwd_bwd_ms=fwd_bwd, peak_gib=peak)


def _step(model, s_iter, peak_mb, batch, size, config='c.py'):
    return dict(model=model, config=config, batch=batch, height=size[0], width=size[1],
                input_shape=[batch, 3, size[0], -(-size[1] // 32) * 32], s_iter=s_iter,
                first_s=7.0, peak_mb=peak_mb, amp='fp16')


def fake_result():
    return dict(
        environment=dict(device='NVIDIA H200', sm_count=132, memory_gib=139.8, torch='2.11.0',
                         triton='3.6.0', cuda='13.0', python='3.12.3', mmdet='3.3.0',
                         date='2026-12-01', commit='abc1234'),
        settings=dict(dtype='bf16', iters=10, warmup=3, amp='fp16', step_iters=5,
                      step_warmup=2),
        models=[_cls('LocalVMamba-T', 3362, 709, 15.8), _cls('Swin-T', 5450, 2108, 8.7),
                _cls('LocalVMamba-S', 1965, 393, 25.0), _cls('Swin-S', 3517, 1328, 12.5),
                dict(model='ConvNeXt-T', error='Traceback\nOutOfMemoryError: boom')],
        backbone=[_bb('LocalVMamba-T', 'det', 118, 3.0, 2, (800, 1344)),
                  _bb('Swin-T', 'det', 55, 1.5, 2, (800, 1344)),
                  _bb('LocalVMamba-T', 'seg', 123, 4.0, 8, (512, 512)),
                  _bb('Swin-T', 'seg', 45, 2.0, 8, (512, 512))],
        det_step=[_step('LocalVMamba-T', 0.210, 6578, 2, (800, 1333)),
                  _step('Swin-T', 0.146, 4370, 2, (800, 1333))],
        seg_step=[_step('LocalVMamba-T', 0.201, 9000, 8, (512, 512)),
                  _step('Swin-T', 0.135, 6000, 8, (512, 512))],
        vim_cls=[_cls('LocalVim-T', 1469, 456, 18.9), _cls('DeiT-T', 22868, 4649, 2.3),
                 _cls('LocalVim-S', 786, 252, 37.6), _cls('DeiT-S', 18041, 5368, 4.4)],
        vim_backbone=[_bb('LocalVim-T', 'det', 128, 6.5, 2, (1024, 1024)),
                      _bb('ViT-Ti', 'det', 21.8, 0.82, 2, (1024, 1024))],
        det_vim_step=[_step('LocalVim-T', 0.5, 12000, 2, (1024, 1024))],
        compile=dict(
            cls_train=dict(work='LocalVMamba-T classification training fwd+bwd b128 (ms)',
                           sizes=[[224, 224], [256, 256]], eager_ms=[180.0, 240.0],
                           compiled_ms=[150.0, 200.0], first_call_s=[60.0, 30.0],
                           counters=[dict(unique_graphs=1, graph_breaks=0, frames=1),
                                     dict(unique_graphs=2, graph_breaks=0, frames=2)]),
            det=dict(work='Mask R-CNN', error='Traceback\nRuntimeError: compile failed'),
            triton_first_call=dict(batch=2, shapes=[
                dict(height=800, width=1344, first_s=55.0, warm_s=0.12, new_cache_entries=9),
                dict(height=800, width=1216, first_s=2.0, warm_s=0.11, new_cache_entries=0)])),
        profile={'cls:LocalVMamba-T': dict(
            device='cuda', wall_ms=180.0, kernel_ms=170.0, num_kernels=900,
            groups={g: 10.0 for g in profiling.GROUPS},
            groups_pct={g: 100 / len(profiling.GROUPS) for g in profiling.GROUPS},
            top=[dict(name='scan_bwd_kernel', ms=90.0, pct=53.0, calls=45, group='scan')])},
        sections=dict(cls=dict(status='ok', seconds=30.0),
                      scan=dict(status='error', error='Traceback\nValueError: no')))


def test_ratios_keys_and_values():
    r = report.compute_ratios(fake_result())
    t = r['ratios_to_swin']['LocalVMamba-T']
    assert {'infer', 'train', 'train_peak', 'det_step', 'seg_step'} <= set(t)
    assert t['infer'] == pytest.approx(3362 / 5450)
    assert t['train'] == pytest.approx(709 / 2108)
    assert t['train_peak'] == pytest.approx(15.8 / 8.7)
    assert t['det_step'] == pytest.approx(0.210 / 0.146)
    assert t['det_step_peak'] == pytest.approx(6578 / 4370)
    assert t['seg_step'] == pytest.approx(0.201 / 0.135)
    assert t['det_fwd_bwd'] == pytest.approx(118 / 55)
    assert t['seg_fwd_bwd'] == pytest.approx(123 / 45)
    s = r['ratios_to_swin']['LocalVMamba-S']
    assert set(s) == {'infer', 'train', 'train_peak'}
    assert s['train'] == pytest.approx(393 / 1328)
    assert 'ConvNeXt-T' not in r['ratios_to_swin']  # its row failed
    v = r['ratios_to_deit']['LocalVim-T']
    assert {'infer', 'train', 'train_peak', 'det_fwd_bwd', 'det_fwd_bwd_peak'} <= set(v)
    assert v['det_fwd_bwd'] == pytest.approx(128 / 21.8)
    assert v['det_fwd_bwd_peak'] == pytest.approx(6.5 / 0.82)
    assert set(r['ratios_to_deit']['LocalVim-S']) == {'infer', 'train', 'train_peak'}
    assert r['ratios_to_deit']['LocalVim-S']['infer'] == pytest.approx(786 / 18041)


def test_ratios_of_partial_results():
    r = report.compute_ratios(dict(det_step=fake_result()['det_step']))
    assert r == dict(ratios_to_swin={'LocalVMamba-T': dict(det_step=pytest.approx(0.210 / 0.146),
                                                           det_step_peak=pytest.approx(
                                                               6578 / 4370))},
                     ratios_to_deit={})
    assert report.compute_ratios({}) == dict(ratios_to_swin={}, ratios_to_deit={})


def test_markdown_has_the_issue_rows():
    text = report.format_markdown(fake_result())
    for row in (
            '| classification inference b128 224² (img/s) | 3362 | 5450 | 0.62× |',
            '| classification training fwd+bwd b128 224² (img/s) | 709 | 2108 | 0.34× |',
            '| training peak memory b128 224² (GiB) | 15.8 | 8.7 | 1.82× |',
            '| backbone fwd+bwd, batch 2, 800×1344 (ms) | 118.0 | 55.0 | 2.15× time |',
            '| backbone fwd+bwd, batch 8, 512² (ms) | 123.0 | 45.0 | 2.73× time |',
            '| **Mask R-CNN train step**, batch 2, 1333×800 (s/iter, AMP fp16) | 0.210 | 0.146 | '
            '1.44× time |',
            '| Mask R-CNN step peak memory (MB) | 6578 | 4370 | 1.51× |',
            '| **UperNet train step**, batch 8, 512² (s/iter, AMP fp16) | 0.201 | 0.135 | '
            '1.49× time |',
            '| LocalVMamba-S vs Swin-S, inference / training b128 224² (img/s) | 1965 / 393 | '
            '3517 / 1328 | 0.56× / 0.30× |',
            '| T: inference b128 224² (img/s) | 1469 | DeiT-T 22868 | 0.064× |',
            '| S: inference / training b128 224² (img/s) | 786 / 252 | DeiT-S 18041 / 5368 | '
            '0.044× / 0.047× |',
            '| T backbone fwd+bwd, batch 2, 1024² (ms) | 128.0 | ViT-Ti (global attention) 21.8 | '
            '5.87× time |',
            '| Cascade Mask R-CNN LocalVim-T train step, batch 2, 1024² (s/iter, AMP fp16) | '
            '0.500 | — | — |',
            '| LocalVMamba-T classification training fwd+bwd b128 (ms) | 256×256 | 240.0 ms | '
            '200.0 ms | 1.20× | 30.0 | 2 / 0 / 2 |',
            '| 800×1216 | in the launch, one after another | 2.0 | 110 | 0 |',
            '| scan | 10.00 | 12.5 |',
            '| ConvNeXt-T | error: OutOfMemoryError: boom | | | | |',
            '| LocalVim-T | det_vim | `c.py` | 2 | 1024×1024 | 0.500 | 7.00 | 12000 | fp16 |'):
        assert row in text, row
    assert 'RuntimeError: compile failed' in text
    assert 'Section `scan`: error: ValueError: no.' in text
    assert 'NVIDIA H200 (132 SMs, 139.8 GiB)' in text and 'mmdet 3.3.0' in text


# ----------------------------------------------------------------------------- the run
def test_run_writes_after_each_section_and_records_failures(tmp_path, monkeypatch):
    args = cpu_args(tmp_path, '--what', 'cls,backbone,det')
    seen = []

    def cls(self):
        self.result['models'] = fake_result()['models']

    def backbone(self):
        seen.append(json.load(open(args.json))['sections']['cls']['status'])
        raise RuntimeError('no backbone today')

    def det(self):
        self.result['det_step'] = fake_result()['det_step']

    monkeypatch.setattr(cli.Run, 'section_cls', cls)
    monkeypatch.setattr(cli.Run, 'section_backbone', backbone)
    monkeypatch.setattr(cli.Run, 'section_det', det)
    run = cli.Run(args, log=lambda msg: None)
    run.run_sections()
    assert seen == ['ok']  # the JSON was on disk before the next section started
    result = json.load(open(args.json))
    assert [result['sections'][s]['status'] for s in ('cls', 'backbone', 'det')] == \
        ['ok', 'error', 'ok']
    assert 'no backbone today' in result['sections']['backbone']['error']
    assert result['ratios_to_swin']['LocalVMamba-T']['det_step'] == pytest.approx(0.21 / 0.146)
    assert result['environment']['device'].startswith('cpu')
    assert result['settings']['sizes']['det_size'] == [64, 96]
    assert '| **Mask R-CNN train step**' in open(args.md).read()


def test_merge_keeps_other_sections_and_budget_skips(tmp_path, monkeypatch):
    monkeypatch.setattr(cli.Run, 'section_cls',
                        lambda self: self.result.update(models=fake_result()['models']))
    cli.Run(cpu_args(tmp_path, '--what', 'cls'), log=lambda msg: None).run_sections()
    run = cli.Run(cpu_args(tmp_path, '--what', 'seg,scan', '--merge', '--budget-s', '-1'),
                  log=lambda msg: None)
    run.run_sections()
    result = json.load(open(tmp_path / 'b.json'))
    assert result['models'][0]['model'] == 'LocalVMamba-T'
    assert result['sections']['cls']['status'] == 'ok'
    assert result['sections']['seg']['status'].startswith('skipped')
    assert len(result['merged_environments']) == 1
    assert 'infer' in result['ratios_to_swin']['LocalVMamba-T']


def test_combine_runs_of_separate_calls(tmp_path):
    full = fake_result()
    first = {k: full[k] for k in ('environment', 'settings', 'models', 'det_step')}
    first.update(sections=dict(cls=dict(status='ok')), compile=dict(cls_train=full['compile'][
        'cls_train']))
    second = dict(environment=dict(full['environment'], date='2026-12-02'),
                  det_step=full['det_step'][:1], vim_cls=full['vim_cls'],
                  sections=dict(vim=dict(status='ok')),
                  compile=dict(triton_first_call=full['compile']['triton_first_call']))
    paths = []
    for index, result in enumerate((first, second)):
        paths.append(str(tmp_path / f'run{index}.json'))
        json.dump(result, open(paths[-1], 'w'))
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        cli.main(['--combine', *paths, '--json', str(tmp_path / 'all.json'), '--md',
                  str(tmp_path / 'all.md')])
    finally:
        logger.removeHandler(handler)
    combined = json.load(open(tmp_path / 'all.json'))
    assert set(combined['sections']) == {'cls', 'vim'}
    assert set(combined['compile']) == {'cls_train', 'triton_first_call'}
    assert len(combined['det_step']) == 1  # a later run's rows replace the earlier ones
    assert combined['environment']['date'] == '2026-12-02'
    assert combined['merged_environments'][0]['date'] == '2026-12-01'
    assert 'det_step' not in combined['ratios_to_swin']['LocalVMamba-T']  # no Swin-T step
    assert 'infer' in combined['ratios_to_deit']['LocalVim-T']
    assert '| T: inference b128 224² (img/s) |' in open(tmp_path / 'all.md').read()
    assert '| T: inference b128 224² (img/s) |' in logged.getvalue()  # and in the log


def test_scan_section_is_skipped_on_the_cpu(tmp_path):
    run = cli.Run(cpu_args(tmp_path, '--what', 'scan'), log=lambda msg: None)
    run.run_sections()
    assert run.result['sections']['scan']['status'] == 'skipped (needs CUDA)'


# ----------------------------------------------------------------------------- measuring
def test_time_calls_and_steps_count_calls_on_the_cpu():
    calls = []
    timing = measure.time_calls(lambda: calls.append(1), CPU, iters=3, warmup=2)
    assert len(calls) == 5 and len(timing['times_ms']) == 3 and timing['first_ms'] >= 0
    timing = measure.time_steps(lambda: calls.append(1), CPU, iters=2, warmup=0)
    assert len(calls) == 7 and timing['first_s'] == timing['times_s'][0]
    assert timing['peak_mb'] is None and measure.peak_gib(lambda: None, CPU) is None


def test_environment_on_the_cpu():
    env = measure.environment(CPU)
    assert env['device'].startswith('cpu') and env['torch'] == torch.__version__
    assert {'python', 'date', 'mmengine', 'mmdet', 'mmseg', 'mmcv', 'timm'} <= set(env)
    json.dumps(env)


# ----------------------------------------------------------------------------- profiles
def test_kernel_groups():
    names = {
        'scan': ['scan_fwd_kernel', 'scan_bwd_kernel', 'mmlocalmamba::local_scan'],
        'merge': ['mmlocalmamba::scattn_merge'],
        'gemm': ['sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n', 'nvjet_tst_128x64_64x4_1x2_h_bz',
                 'void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm>', 'aten::mm'],
        'conv': ['void cudnn::cnn::conv2d_grouped_direct_kernel<float>',
                 'sm90_xmma_fprop_implicit_gemm_bf16', 'aten::mkldnn_convolution'],
        'norm': ['void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float>',
                 'triton_per_fused_native_layer_norm_3', 'aten::native_layer_norm'],
        'copy': ['Memcpy HtoD (Pageable -> Device)', 'void at::native::CatArrayBatchedCopy<>',
                 'void at::native::elementwise_kernel<direct_copy_kernel_cuda>', 'aten::copy_'],
        'elementwise': ['void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add>',
                        'triton_poi_fused_add_mul_silu_2', 'void at::native::reduce_kernel<512>',
                        'aten::mul'],
        'other': ['roi_align_forward_cuda_kernel', 'nms_cuda'],
    }
    for group, kernels in names.items():
        for name in kernels:
            assert profiling.kernel_group(name) == group, name
    scan, merge = profiling.own_kernels()
    if scan:  # triton installed: our kernels come from mmlocalmamba.ops.triton
        assert 'scan_bwd_kernel' in scan and not scan & merge
        assert all(profiling.kernel_group(name) == 'merge' for name in merge)


def test_group_times():
    out = profiling.group_times([('aten::mm', 3000, 2), ('scan_fwd_kernel', 6000, 4),
                                 ('nms_cuda', 1000, 1)])
    assert out['kernel_ms'] == pytest.approx(10.0)
    assert out['groups']['scan'] == pytest.approx(6.0) and out['groups']['gemm'] == 3.0
    assert out['groups_pct']['other'] == pytest.approx(10.0)
    assert [e['name'] for e in out['top']] == ['scan_fwd_kernel', 'aten::mm', 'nms_cuda']
    assert list(out['groups']) == list(profiling.GROUPS)


def test_profile_step_on_the_cpu():
    layer = torch.nn.Linear(64, 64)
    x = torch.randn(32, 64)

    def step():
        layer(x).relu().sum().backward()

    prof = profiling.profile_step(step, CPU, warmup=1, rows=5, host=True)
    assert prof['device'] == 'cpu' and prof['kernel_ms'] > 0 and prof['groups']['gemm'] > 0
    assert len(prof['top']) <= 5 and prof['host_ops'] and 'function calls' not in prof['top']
    text = profiling.format_profile('linear', prof)
    assert 'gemm' in text and 'cProfile' in text
    json.dumps(prof)


def test_compile_pair_on_the_cpu():
    model = torch.nn.Linear(8, 8)
    holder = dict(model=model)

    def make_step(size):
        x = torch.randn(size[0], 8)
        return lambda: holder['model'](x).sum().backward()

    def compile_fn():
        holder['model'] = torch.compile(model, backend='eager')

    out = compiling.compile_pair(make_step, compile_fn, [(4, ), (6, )], CPU, iters=1, warmup=1)
    assert len(out['eager_ms']) == len(out['compiled_ms']) == len(out['first_call_s']) == 2
    assert out['counters'][0]['unique_graphs'] >= 1
    assert len(out['speedup']) == 2 and 'error' not in out

    def broken():
        raise RuntimeError('Inductor says no')

    out = compiling.compile_pair(make_step, broken, [(4, ), (6, )], CPU, iters=1, warmup=0)
    assert len(out['eager_ms']) == 2 and out['compiled_ms'] == [] and out['speedup'] == []
    assert 'Inductor says no' in out['error']


class _TinyClassifier(torch.nn.Module):
    """Any input size, 1000 classes: stands in for LocalVMamba-T in the compile plumbing test."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.head = torch.nn.Linear(8, 1000)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


class _FakeStep:
    """What the compile section needs of a :class:`~steps.TrainStep`."""
    config, amp, num_classes = 'fake.py', 'none', 3

    def __init__(self, size, batch):
        self.model = torch.nn.Module()
        self.model.backbone = torch.nn.Conv2d(3, 4, 3)
        self.data = steps.det_batch(batch, size, self.num_classes)
        self.sizes = []

    def cudnn_setting(self):
        return contextlib.nullcontext()

    def with_cudnn_setting(self):
        return self

    def __call__(self):
        images = torch.stack(self.data['inputs']).float()
        self.sizes.append(tuple(images.shape[2:]))
        self.model.backbone(images).sum().backward()


def test_compile_section_plumbing_on_the_cpu(tmp_path, monkeypatch):
    fake = {}

    def train_step(self, section, name, size=None):
        fake['step'] = _FakeStep(self.sizes.det_size, self.sizes.det_batch)
        return fake['step']

    def first_call(shapes, batch, device, dtype, arch, log, precompile):
        fake.setdefault('first_call', []).append((shapes, batch, device, arch, precompile))
        return dict(batch=batch, precompile=precompile,
                    shapes=[dict(height=h, width=w, first_s=1.0, warm_s=0.1,
                                 new_cache_entries=0) for h, w in shapes])

    monkeypatch.setattr(cli, 'build_classifier', lambda name, size=224: _TinyClassifier())
    monkeypatch.setattr(cli.Run, 'train_step', train_step)
    monkeypatch.setattr(compiling, 'triton_first_call', first_call)
    args = cpu_args(tmp_path, '--what', 'compile', '--compile-backend', 'eager')
    run = cli.Run(args, log=lambda msg: None)
    run.run_sections()
    comp = json.load(open(args.json))['compile']
    assert set(comp) == {'cls_infer', 'cls_train', 'det', 'triton_first_call'}
    assert fake['first_call'] == [(cli.TINY.triton_shapes, 1, 'cpu', workloads.TINY_ARCH, flag)
                                  for flag in (False, True)]
    assert comp['triton_first_call']['precompile'] is True
    assert comp['triton_first_call']['without_precompile']['precompile'] is False
    for key in ('cls_infer', 'cls_train', 'det'):
        part = comp[key]
        assert 'error' not in part, part.get('error')
        assert len(part['eager_ms']) == len(part['compiled_ms']) == len(part['first_call_s']) == 2
    assert comp['cls_train']['sizes'] == [[64, 64], [96, 96]]
    assert comp['det']['compiled'] == 'model.backbone = torch.compile(model.backbone)'
    step = fake['step']
    assert isinstance(step.model.backbone, torch._dynamo.eval_frame.OptimizedModule)
    assert set(step.sizes) == {(64, 96), (64, 80)}  # eager and compiled at both sizes
    text = open(args.md).read()
    assert '| LocalVMamba-T classification inference b2 (ms) | 96×96 |' in text
    assert '| 48×96 | precompiled in parallel | 1.0 | 100 | 0 |' in text
    assert '| 48×96 | in the launch, one after another | 1.0 | 100 | 0 |' in text


def test_localvim_compile_parts_compile_the_classifier_in_place(tmp_path, monkeypatch):
    """``--compile-parts vim_infer,vim_train``: LocalVim-T through its own ``compile()`` (the
    Inductor options it needs), with the mode asked for (e.g. reduce-overhead: CUDA graphs)."""
    built = []

    def build(name, size=224):
        built.append((name, _TinyClassifier()))
        return built[-1][1]

    calls = []
    original = torch.nn.Module.compile

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **{**kwargs, 'mode': None})

    monkeypatch.setattr(cli, 'build_classifier', build)
    monkeypatch.setattr(torch.nn.Module, 'compile', spy)
    args = cpu_args(tmp_path, '--what', 'compile', '--compile-parts', 'vim_infer,vim_train',
                    '--compile-backend', 'eager', '--compile-mode', 'reduce-overhead')
    cli.Run(args, log=lambda msg: None).run_sections()
    comp = json.load(open(args.json))['compile']
    assert set(comp) == {'vim_infer', 'vim_train'}
    for key, what in (('vim_infer', 'inference'), ('vim_train', 'training fwd+bwd')):
        part = comp[key]
        assert 'error' not in part, part.get('error')
        assert len(part['compiled_ms']) == 2
        assert part['work'] == f'LocalVim-T classification {what} b2 (ms)'
        assert part['compiled'] == "classifier.compile(mode='reduce-overhead')"
    assert [name for name, _ in built] == ['LocalVim-T'] * 2
    assert calls == [dict(backend='eager', mode='reduce-overhead')] * 2


class _TinyBackbone(torch.nn.Module):
    """Two feature maps of any input: stands in for the LocalVim-T / ViT-Ti backbones."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean((2, 3))


def test_peer_and_backbone_compile_parts(tmp_path, monkeypatch):
    """``deit_*`` compile DeiT-T as ``vim_*`` compile LocalVim-T, and ``vim_backbone`` /
    ``vit_backbone`` the two backbones at the one LSJ size, each in place through its
    ``compile()`` with the mode asked for: the compiled peers of the LocalVim rows."""
    built = []

    def build(kind):
        def make(name, size=224):
            built.append((kind, name, size))
            return _TinyClassifier() if kind == 'cls' else _TinyBackbone()
        return make

    calls = []
    original = torch.nn.Module.compile

    def spy(self, *args, **kwargs):
        calls.append((type(self).__name__, kwargs))
        return original(self, *args, **{**kwargs, 'mode': None})

    monkeypatch.setattr(cli, 'build_classifier', build('cls'))
    monkeypatch.setattr(cli, 'build_backbone', build('backbone'))
    monkeypatch.setattr(torch.nn.Module, 'compile', spy)
    args = cpu_args(tmp_path, '--what', 'compile', '--compile-parts',
                    'deit_infer,deit_train,vim_backbone,vit_backbone', '--compile-backend',
                    'eager', '--compile-mode', 'max-autotune-no-cudagraphs')
    cli.Run(args, log=lambda msg: None).run_sections()
    comp = json.load(open(args.json))['compile']
    assert set(comp) == {'deit_infer', 'deit_train', 'vim_backbone', 'vit_backbone'}
    assert built == [('cls', 'DeiT-T', 64), ('cls', 'DeiT-T', 64),
                     ('backbone', 'LocalVim-T', (64, 64)), ('backbone', 'ViT-Ti', (64, 64))]
    for key, work in (('deit_infer', 'DeiT-T classification inference b2 (ms)'),
                      ('deit_train', 'DeiT-T classification training fwd+bwd b2 (ms)'),
                      ('vim_backbone', 'LocalVim-T backbone fwd+bwd b1 (ms)'),
                      ('vit_backbone', 'ViT-Ti backbone fwd+bwd b1 (ms)')):
        part = comp[key]
        assert 'error' not in part, part.get('error')
        assert part['work'] == work
        assert len(part['eager_ms']) == len(part['compiled_ms']) == (
            2 if key.startswith('deit') else 1)
    assert comp['vim_backbone']['sizes'] == [[64, 64]]
    assert comp['vim_backbone']['compiled'] == "backbone.compile(mode='max-autotune-no-cudagraphs')"
    assert calls == [(kind, dict(backend='eager', mode='max-autotune-no-cudagraphs'))
                     for kind in ['_TinyClassifier'] * 2 + ['_TinyBackbone'] * 2]
    assert '| LocalVim-T backbone fwd+bwd b1 (ms) | 64×64 |' in open(args.md).read()


def test_profiles_of_a_run_go_to_the_json(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, 'build_classifier', lambda name, size=224: _TinyClassifier())
    monkeypatch.setattr(cli.Run, 'train_step',
                        lambda self, section, name, size=None: _FakeStep((32, 48), 2))
    args = cpu_args(tmp_path, '--what', 'none', '--profile', 'cls,det:Swin-T', '--profile-rows',
                    '4')
    cli.Run(args, log=lambda msg: None).run_sections()
    profiles = json.load(open(args.json))['profile']
    assert set(profiles) == {'cls:LocalVMamba-T', 'det:Swin-T'}
    for prof in profiles.values():
        assert set(prof['groups']) == set(profiling.GROUPS) and len(prof['top']) <= 4
        assert prof['kernel_ms'] > 0 and prof['groups']['conv'] > 0
    assert '**cls:LocalVMamba-T**: wall' in open(args.md).read()


# ----------------------------------------------------------------------------- fresh Triton cache
def test_triton_first_call_runs_in_a_fresh_process_with_an_empty_cache():
    result = compiling.triton_first_call([(32, 32), (32, 48)], 1, 'cpu', 'fp32',
                                         arch=workloads.TINY_ARCH, timeout=300,
                                         log=lambda msg: None)
    assert result['cache_was_fresh']
    assert 'mmlocalmamba-triton-cache-' in result['cache_dir']
    assert not osp.exists(result['cache_dir'])  # removed afterwards
    assert [(r['height'], r['width']) for r in result['shapes']] == [(32, 32), (32, 48)]
    assert all(r['first_s'] > 0 and r['warm_s'] > 0 for r in result['shapes'])
    assert result['process_s'] >= result['setup_s']


def test_triton_first_call_reports_a_failed_process(monkeypatch):
    seen = {}

    def failed(cmd, env, **kwargs):
        seen.update(cache=env['TRITON_CACHE_DIR'], exists=osp.isdir(env['TRITON_CACHE_DIR']),
                    empty=not os.listdir(env['TRITON_CACHE_DIR']))
        return subprocess.CompletedProcess(cmd, 1, stdout='', stderr='CUDA error: out of memory')

    monkeypatch.setattr(compiling.subprocess, 'run', failed)
    with pytest.raises(RuntimeError, match='(?s)exit 1.*out of memory'):
        compiling.triton_first_call([(32, 32)], 1, 'cpu', timeout=10)
    assert seen['exists'] and seen['empty'] and not osp.exists(seen['cache'])


# ----------------------------------------------------------------------------- synthetic batches
def test_det_batch_is_what_pack_det_inputs_makes():
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    data = steps.det_batch(2, (64, 96), num_classes=4)
    assert [tuple(x.shape) for x in data['inputs']] == [(3, 64, 96)] * 2
    assert all(x.dtype == torch.uint8 for x in data['inputs'])
    for sample in data['data_samples']:
        gt = sample.gt_instances
        assert isinstance(gt.bboxes, HorizontalBoxes) and isinstance(gt.masks, BitmapMasks)
        assert 3 <= len(gt) <= 8 and gt.masks.masks.shape[1:] == (64, 96)
        assert gt.labels.dtype == torch.int64 and int(gt.labels.max()) < 4
        boxes = gt.bboxes.tensor
        assert (boxes[:, 2:] > boxes[:, :2]).all() and float(boxes[:, 2].max()) <= 96
        for mask, (x1, y1, x2, y2) in zip(gt.masks.masks, boxes.tolist()):
            ys, xs = mask.nonzero()
            assert len(ys) and xs.min() >= int(x1) and xs.max() <= x2 and ys.max() <= y2
        assert sample.img_shape == (64, 96) and sample.scale_factor == (1.0, 1.0)


def test_seg_batch_is_what_pack_seg_inputs_makes():
    data = steps.seg_batch(2, (64, 80), num_classes=150)
    for image, sample in zip(data['inputs'], data['data_samples']):
        assert image.shape == (3, 64, 80) and image.dtype == torch.uint8
        labels = sample.gt_sem_seg.data
        assert labels.shape == (1, 64, 80) and labels.dtype == torch.int64
        values = set(labels.unique().tolist())
        assert values <= set(range(150)) | {255} and len(values) > 1
        assert sample.img_shape == (64, 80) and sample.pad_shape == (64, 80)


def test_fit_preprocessor():
    cfg = dict(data_preprocessor=dict(size=(512, 512), batch_augments=[
        dict(type='BatchFixedSizePad', size=(1024, 1024)), dict(type='Other')]))
    steps.fit_preprocessor(cfg, (64, 96))
    assert cfg['data_preprocessor']['size'] == (64, 96)
    assert cfg['data_preprocessor']['batch_augments'][0]['size'] == (64, 96)
    steps.fit_preprocessor(dict(data_preprocessor=dict(size=None)), (8, 8))  # nothing to set


@pytest.mark.parametrize('config,size', [
    ('configs/mmdet/demo_maskrcnn_localvmamba.py', (64, 96)),
    ('configs/mmseg/demo_upernet_localvmamba.py', (64, 64)),
    ('configs/mmdet/demo_cascade-maskrcnn_localvim.py', (64, 64)),
])
def test_one_train_step_of_a_demo_config_on_the_synthetic_batch(config, size):
    step = steps.TrainStep(config, CPU, 'fp16', size, batch=2)
    assert step.amp == 'none' and step.optim_type == 'OptimWrapper'  # AMP is CUDA-only
    before = [p.detach().clone() for p in step.model.backbone.parameters()][:3]
    log_vars = step()
    assert torch.isfinite(torch.as_tensor(float(log_vars['loss'])))
    after = list(step.model.backbone.parameters())[:3]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # the optimizer stepped
    assert step.input_shape() == (2, 3, *size)
    row = steps.step_row('demo', step, measure.time_steps(step, CPU, 1, 0), log_vars)
    assert row['scope'] in ('mmdet', 'mmseg') and row['s_iter'] > 0 and row['peak_mb'] is None
    json.dumps(row)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tool_runs_det_seg_vim_end_to_end_on_the_cpu(tmp_path):
    """The lead's command line at tiny sizes: the real configs (ours and mmdet's / mmseg's
    Swin-T), timm's models, from the repository root with the repository on PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    out = subprocess.run(
        [sys.executable, 'tools/benchmark.py', '--what', 'det,seg,vim', '--device', 'cpu',
         '--tiny', '--json', str(tmp_path / 'b.json'), '--md', str(tmp_path / 'b.md')],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.load(open(tmp_path / 'b.json'))
    assert {s: v['status'] for s, v in result['sections'].items()} == \
        dict(det='ok', seg='ok', vim='ok')
    for key, models in (('det_step', {'LocalVMamba-T', 'Swin-T'}),
                        ('seg_step', {'LocalVMamba-T', 'Swin-T'}),
                        ('vim_cls', {'LocalVim-T', 'LocalVim-S', 'DeiT-T', 'DeiT-S'}),
                        ('vim_backbone', {'LocalVim-T', 'ViT-Ti'})):
        rows = result[key]
        assert {r['model'] for r in rows} == models and not [r for r in rows if 'error' in r]
    assert {r['scope'] for r in result['det_step']} == {'mmdet'}
    assert result['det_step'][0]['input_shape'] == [2, 3, 64, 96]
    assert {'det_step', 'seg_step'} <= set(result['ratios_to_swin']['LocalVMamba-T'])
    assert {'infer', 'train', 'det_fwd_bwd'} <= set(result['ratios_to_deit']['LocalVim-T'])
    assert {'infer', 'train'} <= set(result['ratios_to_deit']['LocalVim-S'])
    assert '| **UperNet train step**, batch 2, 64² (s/iter, AMP none) |' in \
        open(tmp_path / 'b.md').read()


def test_the_recorded_commit_says_when_the_code_differs_from_it(tmp_path):
    """A benchmark run on a working tree that differs from its commit is marked ``-dirty`` (a
    run on the GPU machine recorded the commit of a stale ``.git`` beside newer files)."""
    import shutil
    import subprocess

    from mmlocalmamba.apis.benchmark.measure import _git_commit
    if shutil.which('git') is None:
        pytest.skip('git is not installed')
    git = ['git', '-C', str(tmp_path), '-c', 'user.name=t', '-c', 'user.email=t@t']
    subprocess.run(git[:3] + ['init', '-q'], check=True)
    (tmp_path / 'a.py').write_text('x = 1\n')
    subprocess.run(git + ['add', 'a.py'], check=True)
    subprocess.run(git + ['commit', '-qm', 'c'], check=True)
    clean = _git_commit(str(tmp_path))
    assert clean and not clean.endswith('-dirty')
    (tmp_path / 'a.py').write_text('x = 2\n')
    assert _git_commit(str(tmp_path)) == clean + '-dirty'
