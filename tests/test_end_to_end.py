"""End to end through the tools' code: train, save, evaluate (CocoMetric / IoUMetric), TTA,
resume, checkpoints under torch's weights_only loading, 2-process torchrun (gloo, CPU).

The demo configs are used through small child configs (written to a temporary directory) that
shrink the backbone, the images (64 px) and the schedule to a few iterations, and point at a
tiny generated copy of the demo data.
"""
import math
import os
import os.path as osp
import pickle
import signal
import socket
import subprocess
import sys

import pytest
import torch

import mmdet  # noqa: F401  (test requirements: the mmdet/mmseg stack)
import mmseg  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_DEMO = osp.join(ROOT, 'configs', 'mmdet',
                    'mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py')
SEG_DEMO = osp.join(ROOT, 'configs', 'mmseg',
                    'upernet_localvmamba-demo_1xb4-300iter_demo-ade-128x128.py')

TINY_BACKBONE = """dict(
        arch=dict(_delete_=True, dims=16, depths=[1, 1, 1, 1], d_state=4, ssm_ratio=1.0,
                  directions=[['h', 'v_flip', 'w2', 'w7_flip']] * 4))"""

DET_CHILD = """
_base_ = [{base!r}]
model = dict(
    backbone={backbone},
    neck=dict(in_channels=[16, 32, 64, 128]),
    train_cfg=dict(rcnn=dict(sampler=dict(num=64)),
                   rpn_proposal=dict(nms_pre=200, max_per_img=100)),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100)))
data_root = {data_root!r}
img_scale = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=2, val_interval=2)
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3), logger=dict(interval=1))
"""

SEG_CHILD = """
_base_ = [{base!r}]
model = dict(
    backbone={backbone},
    data_preprocessor=dict(size=(64, 64)),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=32),
    auxiliary_head=dict(in_channels=64, channels=16))
data_root = {data_root!r}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=4)
param_scheduler = [dict(type='PolyLR', power=1.0, begin=0, end=4, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1))
"""


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    """A tiny copy of both demo datasets: 4 train / 2 val images of 64x64."""
    from mmlocalmamba.datasets.demo_data import make_ade20k_demo, make_coco_demo
    root = tmp_path_factory.mktemp('demo_data')
    make_coco_demo(str(root / 'coco'), num_train=4, num_val=2, img_size=64, seed=1)
    make_ade20k_demo(str(root / 'ade'), num_train=4, num_val=2, img_size=64, seed=1)
    return root


@pytest.fixture(scope='module')
def det_config(demo_root, tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'tiny_det.py'
    path.write_text(DET_CHILD.format(base=DET_DEMO, backbone=TINY_BACKBONE,
                                     data_root=str(demo_root / 'coco') + '/'))
    return str(path)


@pytest.fixture(scope='module')
def seg_config(demo_root, tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'tiny_seg.py'
    path.write_text(SEG_CHILD.format(base=SEG_DEMO, backbone=TINY_BACKBONE,
                                     data_root=str(demo_root / 'ade')))
    return str(path)


@pytest.fixture(scope='module')
def det_run(det_config, tmp_path_factory):
    """Train the tiny detector for 2 epochs (4 iterations) with tools/train.py's code."""
    from mmlocalmamba.apis import train_main
    work_dir = str(tmp_path_factory.mktemp('det_work'))
    train_main([det_config, '--work-dir', work_dir])
    return work_dir


@pytest.fixture(scope='module')
def seg_run(seg_config, tmp_path_factory):
    from mmlocalmamba.apis import train_main
    work_dir = str(tmp_path_factory.mktemp('seg_work'))
    train_main([seg_config, '--work-dir', work_dir])
    return work_dir


def _finite_metrics(metrics, keys):
    for key in keys:
        assert key in metrics, (key, metrics)
        value = float(metrics[key])
        assert math.isfinite(value), (key, value)
        assert 0.0 <= value <= 100.0, (key, value)


def test_demo_detector_trains_saves_and_evaluates(det_run, det_config, tmp_path):
    from mmlocalmamba.apis import test_main
    from mmlocalmamba.utils.safe_load import safe_torch_load
    ckpt_path = osp.join(det_run, 'epoch_2.pth')
    assert osp.isfile(ckpt_path)
    # A real mmengine checkpoint (message hub, optimizer, schedulers, RNG states) loads with
    # weights_only=True through the checked, scoped allow-list, no trust flag.
    ckpt = safe_torch_load(ckpt_path)
    assert {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers',
            'rng_states'} <= set(ckpt)
    assert ckpt['meta']['epoch'] == 2 and ckpt['meta']['iter'] == 4
    assert ckpt['meta']['dataset_meta']['classes'] == ('circle', 'square', 'triangle', 'star')
    assert type(ckpt['message_hub']['log_scalars']['train/loss']).__name__ == 'HistoryBuffer'

    out = str(tmp_path / 'preds.pkl')
    show_dir = str(tmp_path / 'show')
    metrics = test_main([det_config, ckpt_path, '--work-dir', str(tmp_path / 'test'),
                         '--out', out, '--show-dir', show_dir])
    _finite_metrics(metrics, ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP',
                              'coco/segm_mAP_50'])
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 2 and {'bboxes', 'scores', 'labels', 'masks'} <= set(
        preds[0]['pred_instances'])
    painted = [n for n in os.listdir(show_dir) if n.endswith('.jpg')]
    assert len(painted) == 2


def test_demo_segmentor_trains_and_evaluates_with_and_without_tta(seg_run, seg_config,
                                                                  tmp_path):
    from mmseg.models import SegTTAModel

    from mmlocalmamba.apis import build_runner, load_config, prepare_test_config, test_main
    ckpt = osp.join(seg_run, 'iter_4.pth')
    assert osp.isfile(ckpt)
    plain = test_main([seg_config, ckpt, '--work-dir', str(tmp_path / 'plain'),
                       '--out', str(tmp_path / 'png'), '--show-dir', str(tmp_path / 'show')])
    _finite_metrics(plain, ['mIoU', 'aAcc', 'mAcc'])
    assert sorted(os.listdir(tmp_path / 'png')) == ['ADE_val_00000001.png',
                                                    'ADE_val_00000002.png']
    painted = [f for _, _, files in os.walk(tmp_path / 'show') for f in files
               if f.endswith('.png')]
    assert len(painted) == 2

    cfg = prepare_test_config(load_config(seg_config), ckpt, work_dir=str(tmp_path / 'tta'),
                              tta=True)
    runner = build_runner(cfg)
    assert isinstance(runner.model, SegTTAModel)
    sample = runner.test_dataloader.dataset[0]
    # 3 scales x 2 flips, each a differently sized or flipped view
    assert len(sample['inputs']) == 6
    shapes = sorted({tuple(x.shape[1:]) for x in sample['inputs']})
    assert shapes == [(48, 48), (64, 64), (80, 80)]
    flips = [s.flip for s in sample['data_samples']]
    assert flips.count(True) == 3 and flips.count(False) == 3
    tta = runner.test()
    _finite_metrics(tta, ['mIoU', 'aAcc', 'mAcc'])

    # the CLI path of the same thing
    cli = test_main([seg_config, ckpt, '--tta', '--work-dir', str(tmp_path / 'tta_cli')])
    assert cli['mIoU'] == pytest.approx(tta['mIoU'])


def _state(path):
    from mmlocalmamba.utils.safe_load import safe_torch_load
    return safe_torch_load(path)['state_dict']


def test_resume_reproduces_the_uninterrupted_run(det_config, tmp_path):
    """Train 2 epochs; or 1 epoch, stop, --resume to 2 epochs: identical weights."""
    from mmlocalmamba.apis import train_main
    common = ['randomness.seed=3', 'randomness.deterministic=True', 'val_cfg=None',
              'val_dataloader=None', 'val_evaluator=None']
    full, parts = str(tmp_path / 'full'), str(tmp_path / 'parts')
    train_main([det_config, '--work-dir', full, '--cfg-options', *common])
    train_main([det_config, '--work-dir', parts, '--cfg-options', 'train_cfg.max_epochs=1',
                *common])
    first = _state(osp.join(parts, 'epoch_1.pth'))
    assert not osp.exists(osp.join(parts, 'epoch_2.pth'))
    train_main([det_config, '--work-dir', parts, '--resume', '--cfg-options', *common])

    reference, resumed = _state(osp.join(full, 'epoch_2.pth')), _state(
        osp.join(parts, 'epoch_2.pth'))
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key
    # and training did move the weights in the second epoch
    assert any(not torch.equal(first[k], resumed[k]) for k in first)
    # the interrupted run's first epoch equals the uninterrupted run's
    epoch1 = _state(osp.join(full, 'epoch_1.pth'))
    assert all(torch.equal(epoch1[k], first[k]) for k in first)


def test_resume_from_explicit_checkpoint_and_load_from(det_run, det_config, tmp_path):
    """--resume PATH restores the loop position; load_from only the weights."""
    from mmlocalmamba.apis import build_runner, load_config, prepare_train_config
    ckpt = osp.join(det_run, 'epoch_1.pth')
    cfg = prepare_train_config(load_config(det_config), work_dir=str(tmp_path / 'a'),
                               resume=ckpt)
    runner = build_runner(cfg)
    runner._init_model_weights()
    runner.load_or_resume()
    assert runner.epoch == 1 and runner.iter == 2
    weights = _state(ckpt)
    own = runner.model.state_dict()
    assert all(torch.equal(own[k], weights[k]) for k in weights)

    cfg = load_config(det_config, {'load_from': ckpt})
    prepare_train_config(cfg, work_dir=str(tmp_path / 'b'))
    runner = build_runner(cfg)
    runner.load_or_resume()
    assert runner.epoch == 0 and runner.iter == 0
    own = runner.model.state_dict()
    assert all(torch.equal(own[k], weights[k]) for k in weights)

    with pytest.raises(FileNotFoundError, match='--resume'):
        prepare_train_config(load_config(det_config), resume=str(tmp_path / 'missing.pth'))


class NotAllowed:
    """A class outside the checkpoint allow-list (importable: trusted loads rebuild it)."""


def test_trust_opt_in_at_train_resume_and_test_tools(det_run, det_config, tmp_path,
                                                     monkeypatch):
    """MMLOCALMAMBA_TRUST_CHECKPOINTS=1 is honoured by --resume and tools/test.py alike."""
    from mmlocalmamba.apis import build_runner, load_config, prepare_train_config, test_main
    from mmlocalmamba.utils.safe_load import TRUST_ENV, UnsafeCheckpointError, safe_torch_load
    ckpt = safe_torch_load(osp.join(det_run, 'epoch_1.pth'))
    ckpt['extra'] = NotAllowed()
    path = str(tmp_path / 'custom.pth')
    torch.save(ckpt, path)

    def resumed_runner(work_dir):
        cfg = prepare_train_config(load_config(det_config), work_dir=str(tmp_path / work_dir),
                                   resume=path)
        runner = build_runner(cfg)
        runner._init_model_weights()
        runner.load_or_resume()
        return runner

    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(UnsafeCheckpointError, match=r'custom\.pth.*NotAllowed.*' + TRUST_ENV):
        resumed_runner('a')
    with pytest.raises(UnsafeCheckpointError, match='NotAllowed'):
        test_main([det_config, path, '--work-dir', str(tmp_path / 'test_a')])
    monkeypatch.setenv(TRUST_ENV, '1')
    assert resumed_runner('b').epoch == 1
    metrics = test_main([det_config, path, '--work-dir', str(tmp_path / 'test_b')])
    _finite_metrics(metrics, ['coco/bbox_mAP'])


def test_test_tool_refuses_a_checkpoint_without_detector_weights(det_run, det_config, tmp_path):
    from mmlocalmamba.apis import test_main
    from mmlocalmamba.apis.runner import PartialCheckpointError
    state = _state(osp.join(det_run, 'epoch_2.pth'))
    path = str(tmp_path / 'backbone_only.pth')
    torch.save({'state_dict': {k: v for k, v in state.items() if k.startswith('backbone.')}},
               path)
    with pytest.raises(PartialCheckpointError,
                       match=r'no weights for neck, roi_head, rpn_head of the MaskRCNN.*'
                       r'--allow-partial-checkpoint'):
        test_main([det_config, path, '--work-dir', str(tmp_path / 'a')])
    metrics = test_main([det_config, path, '--allow-partial-checkpoint', '--work-dir',
                         str(tmp_path / 'b')])
    assert isinstance(metrics, dict)


def test_tool_errors_are_clear(det_config, tmp_path):
    from mmlocalmamba.apis import load_config, prepare_test_config, prepare_train_config
    cfg = load_config(det_config)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='--amp needs'):
            prepare_train_config(cfg, amp=True)
    with pytest.raises(ValueError, match='--tta needs tta_model'):
        prepare_test_config(load_config(det_config), __file__, tta=True)
    with pytest.raises(ValueError, match=r'\.pkl'):
        prepare_test_config(load_config(det_config), __file__, out=str(tmp_path / 'x.json'))
    with pytest.raises(FileNotFoundError):
        prepare_test_config(load_config(det_config), str(tmp_path / 'none.pth'))
    bad = tmp_path / 'no_scope.py'
    bad.write_text('model = dict(type="X")\n')
    with pytest.raises(ValueError, match='default_scope'):
        load_config(str(bad))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_torchrun_gloo_training(det_config, tmp_path):
    """tools/dist_train.sh with 2 CPU processes: gloo, DDP, the data split over the ranks."""
    work_dir = str(tmp_path / 'dist')
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()), OMP_NUM_THREADS='1')
    cmd = ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), det_config, '2', '--work-dir',
           work_dir, '--cfg-options', 'val_cfg=None', 'val_dataloader=None',
           'val_evaluator=None']
    # own process group: a hung run is killed with all its workers
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail('distributed training did not finish in 300 s:\n' + output[-3000:])
    assert proc.returncode == 0, output[-3000:]
    from mmlocalmamba.utils.safe_load import safe_torch_load
    ckpt = safe_torch_load(osp.join(work_dir, 'epoch_2.pth'))
    # 4 images, 2 ranks x batch 2: one iteration per epoch (two in a single process)
    assert ckpt['meta']['iter'] == 2
    # both ranks' generator states were gathered into the checkpoint
    assert len(ckpt['rng_states']) == 2
    logs = [osp.join(r, f) for r, _, fs in os.walk(work_dir) for f in fs if f.endswith('.log')]
    text = open(logs[0]).read()
    assert 'Distributed training: True' in text and 'Distributed launcher: pytorch' in text
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values()
               if v.is_floating_point())


_GROUP_THREADS_PROBE = r"""
import glob, json, sys
from mmlocalmamba.apis import test_main, train_main
from mmengine.model import is_model_wrapper
config, work_dir = sys.argv[1:3]
opts = ['--launcher', 'pytorch', '--work-dir', work_dir]
model = train_main([config, *opts, '--cfg-options', 'train_cfg.max_epochs=1', 'val_cfg=None',
                    'val_dataloader=None', 'val_evaluator=None'])
after_train = [open(p).read().strip() for p in glob.glob('/proc/self/task/*/comm')]
test_main([config, work_dir + '/epoch_1.pth', *opts])
after_test = [open(p).read().strip() for p in glob.glob('/proc/self/task/*/comm')]
print(json.dumps(dict(wrapped=is_model_wrapper(model), after_train=after_train,
                      after_test=after_test)))
"""


@pytest.mark.skipif(not osp.isdir('/proc/self/task'), reason='thread names from /proc (Linux)')
def test_launcher_runs_end_with_the_gloo_group_and_its_threads_gone(det_config, tmp_path):
    """A regression: destroy_process_group alone left the gloo group alive behind the runner's
    DDP wrapper, and its threads, torn down at interpreter exit, aborted a finished torchrun job
    now and then (``terminate called without an active exception``, SIGABRT)."""
    import json
    env = dict(os.environ, RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', _GROUP_THREADS_PROBE, det_config,
                           str(tmp_path / 'work')], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not found['wrapped']  # train_main hands back the model, not its DDP wrapper
    for when in ('after_train', 'after_test'):
        assert not [n for n in found[when] if 'gloo' in n], (when, found[when])


def test_prediction_images_and_learning_curve(det_run, det_config, seg_run, seg_config,
                                              demo_root, tmp_path):
    """tools/visualize.py's and tools/plot_curve.py's code on the trained tiny models."""
    from PIL import Image

    from mmlocalmamba.apis import collect_images, visualize_predictions
    from mmlocalmamba.apis.curves import plot_map_curve, read_scalars
    det_images = collect_images([str(demo_root / 'coco' / 'val')], limit=8)
    assert [osp.basename(p) for p in det_images] == ['000000000001.jpg', '000000000002.jpg']
    out = visualize_predictions(det_config, osp.join(det_run, 'epoch_2.pth'), det_images,
                                str(tmp_path / 'det.png'), columns=2, score_thr=0.0)
    # two 64x64 paintings side by side with 4 px borders
    assert Image.open(out).size == (2 * 64 + 3 * 4, 64 + 2 * 4)
    seg_images = collect_images([str(demo_root / 'ade' / 'images' / 'validation')], limit=1)
    out = visualize_predictions(seg_config, osp.join(seg_run, 'iter_4.pth'), seg_images,
                                str(tmp_path / 'seg.png'))
    assert Image.open(out).size == (64 + 2 * 4, 64 + 2 * 4)
    with pytest.raises(FileNotFoundError):
        collect_images([str(tmp_path / 'nothing-here')])

    scalars = read_scalars(det_run)
    assert sorted(scalars['coco/bbox_mAP']) == [2]  # validated once, after epoch 2
    assert sorted(scalars['train/loss']) == [1, 2]
    assert all(v > 0 for v in scalars['train/loss'].values())
    png = plot_map_curve(scalars, str(tmp_path / 'curve.png'))
    assert Image.open(png).size[0] > 100


def test_compile_option_compiles_the_backbone_in_place(det_config, tmp_path):
    """``compile`` in a config (here aot_eager) trains through tools/train.py's code with the
    backbone compiled in place: train_step is not compiled (mmengine's whole-step compile stops
    in its AMP context under torch 2.11), the checkpoint keys are the uncompiled model's."""
    from mmlocalmamba.apis import train_main
    torch._dynamo.reset()
    work_dir = str(tmp_path / 'work')
    model = train_main([det_config, '--work-dir', work_dir, '--cfg-options',
                        'train_cfg.max_epochs=1', 'val_cfg=None', 'val_dataloader=None',
                        'val_evaluator=None', 'compile.backend=aot_eager'])
    assert model.backbone._compiled_call_impl is not None
    assert 'train_step' not in vars(model)  # mmengine's compile would set it on the instance
    keys = _state(osp.join(work_dir, 'epoch_1.pth')).keys()
    assert keys == model.state_dict().keys() and not any('_orig_mod' in k for k in keys)
    torch._dynamo.reset()


def test_compile_option_is_checked(tmp_path):
    from mmengine.config import Config

    from mmlocalmamba.apis.runner import compile_backbone

    class Runner:
        cfg = Config(dict(compile='yes'))
        model = torch.nn.Linear(2, 2)

    with pytest.raises(TypeError, match="compile must be True, False, None or a dict.*'yes'"):
        compile_backbone(Runner())
    Runner.cfg = Config(dict(compile=True))
    with pytest.raises(ValueError, match='Linear has no backbone module'):
        compile_backbone(Runner())
    Runner.cfg = Config(dict(compile=False))
    assert compile_backbone(Runner()) is False
