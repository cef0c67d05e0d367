"""The benchmark harness on the CPU: timing, the profiler tables, torch.compile pairs, the
fresh-Triton-cache process and the synthetic mmdet / mmseg batches (the GPU numbers come from the
GPU machine)."""
import json
import os
import os.path as osp
import subprocess

import pytest
import torch

from mmlocalmamba.apis.benchmark import compiling, measure, profiling, steps, workloads

CPU = torch.device('cpu')


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


def test_triton_first_call_runs_in_a_fresh_process_with_an_empty_cache():
    result = compiling.triton_first_call([(32, 32), (32, 48)], 1, 'cpu', 'fp32',
                                         arch=workloads.TINY_ARCH, timeout=300, log=lambda msg: None)
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
