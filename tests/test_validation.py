"""Inputs that get clear answers: constructor arguments checked when a model is built, the
tools' command-line values, half-precision models on CPU and empty batches."""
import importlib.util
import os.path as osp

import pytest
import torch

import mmlocalmamba  # noqa: F401  (registers the models)
from mmlocalmamba.models.base import MAX_WINDOW
from mmlocalmamba.models.compat import MM_LocalVSSM
from mmlocalmamba.models.compat_vim import MM_LocalVim
from mmlocalmamba.models.local_vim import LocalVim, LocalVimBlock, LocalVimClassifier, LocalVimMixer
from mmlocalmamba.models.local_vmamba import (SS2D, LocalVMamba, LocalVMambaClassifier, VSSBlock)
from mmlocalmamba.ops.scan_orders import parse_direction

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
VM = dict(dims=8, depths=[1, 1])
VIM = dict(embed_dim=16, depth=2)


def _vmamba(**kw):
    arch = dict(VM, **kw.pop('arch', {}))
    kw.setdefault('out_indices', (0, 1))
    return LocalVMamba(arch, **kw)


def _vim(**kw):
    arch = dict(VIM, **kw.pop('arch', {}))
    kw.setdefault('img_size', 32)
    kw.setdefault('patch_size', 8)
    return LocalVim(arch, **kw)


BAD_VMAMBA = [
    (dict(drop_path_rate=-0.1), r'drop_path_rate must be a number in \[0, 1\), got -0\.1'),
    (dict(drop_path_rate=1.0), r'drop_path_rate must be a number in \[0, 1\), got 1\.0'),
    (dict(drop_path_rate='0.1'), r"drop_path_rate must be .*got '0\.1'"),
    (dict(arch=dict(dims=0)), r'arch dims must be an integer >= 1, got 0'),
    (dict(arch=dict(dims=[8, 0])), r'arch dims must be a non-empty list of integers >= 1'),
    (dict(arch=dict(dims=8.0)), r'arch dims must be an integer >= 1, got 8\.0'),
    (dict(arch=dict(depths=[])), r'arch depths must be a non-empty list .*got \[\]'),
    (dict(arch=dict(depths=[1, 0])), r'arch depths must be .*got \[1, 0\]'),
    (dict(arch=dict(d_state=0)), r'arch d_state must be an integer >= 1, got 0'),
    (dict(arch=dict(ssm_ratio=0)), r'arch ssm_ratio must be a number > 0, got 0'),
    (dict(arch=dict(dt_rank=0)), r"arch dt_rank \(or 'auto'\) must be an integer >= 1, got 0"),
    (dict(arch=dict(dt_rank='full')), r"arch dt_rank \(or 'auto'\) .*got 'full'"),
    (dict(arch=dict(directions=[['h\n'], ['v']])), r"Unknown scan direction 'h\\n'"),
    (dict(arch=dict(directions=[['h'], ['w65']])), r'K=65 .* must be in \[1, 64\]: a window'),
    (dict(arch=dict(directions=None, candidates=['h', 'w100'])),
     r'K=100 of direction .w100. must be in \[1, 64\]'),
    (dict(out_indices=(1, 1)), r'increasing without repeats, got \[1, 1\]'),
    (dict(out_indices=(1, 0)), r'increasing without repeats, got \[1, 0\]'),
    (dict(out_indices=(2, )), r'within \[0, 2\)'),
    (dict(in_channels=0), r'in_channels must be an integer >= 1, got 0'),
    (dict(patch_size=0), r'patch_size must be an integer >= 1, got 0'),
    (dict(patch_norm='yes'), r"patch_norm must be True or False, got 'yes'"),
    (dict(with_cp=2), r'with_cp must be True or False, got 2'),
    (dict(norm_eval=None), r'norm_eval must be True or False, got None'),
    (dict(official_v_reverse='no'), r'official_v_reverse must be True or False'),
    (dict(frozen_stages=5), r'frozen_stages must be an integer in \[-1, 2\]'),
    (dict(scan_backend='cuda'), r"Unknown scan_backend 'cuda'"),
    (dict(pretrained=3), r'pretrained must be a checkpoint path or URL'),
    (dict(init_cfg='ckpt.pth'), r'init_cfg must be a dict, a list of dicts or None'),
]


@pytest.mark.parametrize('kwargs,match', BAD_VMAMBA, ids=[m for _, m in BAD_VMAMBA])
def test_localvmamba_refuses_bad_arguments_naming_value_and_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _vmamba(**kwargs)


BAD_VIM = [
    (dict(arch=dict(embed_dim=0)), r'arch embed_dim must be an integer >= 1, got 0'),
    (dict(arch=dict(depth=-1)), r'arch depth must be an integer >= 1, got -1'),
    (dict(arch=dict(d_state=0)), r'arch d_state must be an integer >= 1'),
    (dict(arch=dict(d_conv=0)), r'arch d_conv must be an integer >= 1'),
    (dict(arch=dict(expand=-2)), r'arch expand must be a number > 0, got -2'),
    (dict(arch=dict(dt_rank=1.5)), r"arch dt_rank \(or 'auto'\) must be an integer"),
    (dict(arch=dict(norm_eps=0)), r'arch norm_eps must be a number > 0, got 0'),
    (dict(arch=dict(rope_pt_seq_len=0)), r'arch rope_pt_seq_len must be an integer >= 1'),
    (dict(arch=dict(rms_norm='rms')), r"arch rms_norm must be True or False, got 'rms'"),
    (dict(arch=dict(if_rope=None)), r'arch if_rope must be True or False'),
    (dict(arch=dict(directions=[['h'], ['v ']])), r"Unknown scan direction 'v '"),
    (dict(img_size=0), r'img_size must be a positive integer or a pair'),
    (dict(img_size=(32, 32, 3)), r'img_size must be .*got \(32, 32, 3\)'),
    (dict(patch_size=0), r'patch_size must be an integer >= 1, got 0'),
    (dict(in_channels=-3), r'in_channels must be an integer >= 1, got -3'),
    (dict(drop_rate=1.5), r'drop_rate must be a number in \[0, 1\), got 1\.5'),
    (dict(drop_path_rate=-0.2), r'drop_path_rate must be a number in \[0, 1\), got -0\.2'),
    (dict(out_indices=(1, 1)), r'increasing without repeats, got \[1, 1\]'),
    (dict(out_indices=(-1, 0)), r'increasing without repeats, got \[-1, 0\]'),
]


@pytest.mark.parametrize('kwargs,match', BAD_VIM, ids=[m for _, m in BAD_VIM])
def test_localvim_refuses_bad_arguments_naming_value_and_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _vim(**kwargs)


def test_classifiers_and_aliases_check_their_own_arguments():
    with pytest.raises(ValueError, match=r'LocalVMambaClassifier: num_classes must be an '
                       r'integer >= 0, got -1'):
        LocalVMambaClassifier(VM, num_classes=-1)
    with pytest.raises(ValueError, match=r'LocalVimClassifier: num_classes must be .*got 2\.5'):
        LocalVimClassifier(VIM, img_size=32, patch_size=8, num_classes=2.5)
    assert LocalVMambaClassifier(VM, num_classes=0)(torch.randn(1, 3, 32, 32)).shape == (1, 16)
    with pytest.raises(ValueError, match=r'MM_LocalVSSM: drop_path_rate must be .*got -1'):
        MM_LocalVSSM(dims=8, depths=[1], directions=[['h']], out_indices=(0, ),
                     drop_path_rate=-1)
    with pytest.raises(ValueError, match=r'MM_LocalVSSM: arch d_state must be .*got 0'):
        MM_LocalVSSM(dims=8, depths=[1], directions=[['h']], out_indices=(0, ), ssm_d_state=0)
    with pytest.raises(ValueError, match=r'MM_LocalVim: img_size must be'):
        MM_LocalVim(embed_dim=16, depth=2, directions=[['h']] * 2, out_indices=(1, ),
                    img_size=-1)
    with pytest.raises(ValueError, match=r"MM_LocalVim: Unknown scan direction 'h\\n'"):
        MM_LocalVim(embed_dim=16, depth=2, directions=[['h\n']] * 2, out_indices=(1, ))


BAD_LAYERS = [
    (SS2D, dict(d_model=0), r'SS2D: d_model must be an integer >= 1, got 0'),
    (SS2D, dict(d_state=-1), r'SS2D: d_state must be an integer >= 1, got -1'),
    (SS2D, dict(ssm_ratio=0.01), r'ssm_ratio=0\.01 with d_model=8 gives .* = 0 inner'),
    (SS2D, dict(dt_rank=0), r"SS2D: dt_rank \(or 'auto'\) must be an integer >= 1"),
    (SS2D, dict(dt_min=0), r'SS2D: dt_min must be a number > 0, got 0'),
    (SS2D, dict(dt_min=0.1, dt_max=0.01), r'SS2D: dt_max must be a number >= 0\.1, got 0\.01'),
    (SS2D, dict(dt_init_floor=-1), r'dt_init_floor must be a number >= 0'),
    (SS2D, dict(directions=[]), r'SS2D: directions must be a non-empty list'),
    (SS2D, dict(directions='h'), r'SS2D: directions must be a non-empty list .*got .h.'),
    (SS2D, dict(directions=['h\n']), r"SS2D: Unknown scan direction 'h\\n'"),
    (SS2D, dict(directions=['w0']), r"Unknown scan direction 'w0'"),
    (SS2D, dict(directions=[f'w{MAX_WINDOW + 1}']), r'must be in \[1, 64\]'),
    (SS2D, dict(search='no'), r"SS2D: search must be True or False, got 'no'"),
    (SS2D, dict(scan_backend='gpu'), r"Unknown scan_backend 'gpu'"),
    (LocalVimMixer, dict(d_conv=0), r'LocalVimMixer: d_conv must be an integer >= 1'),
    (LocalVimMixer, dict(expand=0), r'LocalVimMixer: expand must be a number > 0, got 0'),
    (LocalVimMixer, dict(directions=['x']), r"LocalVimMixer: Unknown scan direction 'x'"),
    (LocalVimMixer, dict(official_v_reverse=3), r'official_v_reverse must be True or False'),
]


@pytest.mark.parametrize('cls,kwargs,match', BAD_LAYERS, ids=[m for _, _, m in BAD_LAYERS])
def test_scan_layers_refuse_bad_arguments(cls, kwargs, match):
    kwargs = dict(dict(d_model=8, directions=['h', 'v']), **kwargs)
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_blocks_refuse_bad_drop_path():
    with pytest.raises(ValueError, match=r'VSSBlock: drop_path must be a number in \[0, 1\)'):
        VSSBlock(8, drop_path=-0.5, directions=['h'])
    mixer = LocalVimMixer(8, ['h'])
    with pytest.raises(ValueError, match=r'LocalVimBlock: drop_path must be .*got 1'):
        LocalVimBlock(8, mixer, drop_path=1)


def test_directions_are_matched_exactly():
    for bad in ('h\n', 'v_flip\n', ' h', 'H', 'w2_flip ', 'w07', 'h_flip_flip'):
        with pytest.raises(ValueError, match='Unknown scan direction'):
            parse_direction(bad)
    assert parse_direction('w7_flip') == ('w', 7, True)


def test_valid_edge_values_are_accepted():
    model = _vmamba(drop_path_rate=0, with_cp=1, arch=dict(
        dt_rank=2, directions=[['h', f'w{MAX_WINDOW}'], ['w1']]))
    assert model.with_cp is True
    assert [o.shape for o in model(torch.randn(1, 3, 32, 32))] == [(1, 8, 8, 8), (1, 16, 4, 4)]
    vim = _vim(img_size=(32, 48), drop_path_rate=0.5, out_indices=-1)
    assert vim(torch.randn(1, 3, 32, 48))[0].shape == (1, 16, 4, 6)


# --------------------------------------------------------------------------------------------
# dtypes and empty batches
# --------------------------------------------------------------------------------------------
def _models():
    return {
        'LocalVMamba': _vmamba(arch=dict(directions=[['h', 'w2'], ['v_flip', 'w7']])),
        'LocalVim': _vim(out_indices=(0, 1)),
        'LocalVMambaClassifier': LocalVMambaClassifier(VM, num_classes=5),
        'LocalVimClassifier': LocalVimClassifier(VIM, img_size=32, patch_size=8, num_classes=5),
    }


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out, )


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize('name', ['LocalVMamba', 'LocalVim', 'LocalVMambaClassifier',
                                  'LocalVimClassifier'])
def test_half_precision_models_run_on_cpu(name, dtype):
    model = _models()[name].eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = _as_tuple(model(x))
        outs = _as_tuple(model.to(dtype)(x.to(dtype)))
    assert [o.dtype for o in outs] == [dtype] * len(reference)
    for out, ref in zip(outs, reference):
        assert out.shape == ref.shape
        err = ((out.float() - ref).norm() / ref.norm()).item()
        assert err < 0.05, err


@pytest.mark.xfail(strict=True, reason='ops: batch 0, lead')
@pytest.mark.parametrize('name', ['LocalVMamba', 'LocalVim', 'LocalVMambaClassifier',
                                  'LocalVimClassifier'])
def test_empty_batch_gives_empty_outputs_forward_and_backward(name):
    model = _models()[name]
    expected = [o.shape[1:] for o in _as_tuple(model(torch.randn(1, 3, 32, 32)))]
    x = torch.randn(0, 3, 32, 32, requires_grad=True)
    outs = _as_tuple(model(x))
    assert [o.shape for o in outs] == [(0, ) + tuple(s) for s in expected]
    sum(o.sum() for o in outs).backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


# --------------------------------------------------------------------------------------------
# command-line values
# --------------------------------------------------------------------------------------------
def _tool(name):
    spec = importlib.util.spec_from_file_location(f'tool_{name}',
                                                  osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('shape,message', [
    (['224', '224', '224'], 'one or two numbers (H [W]), got 224 224 224'),
    (['224', '0'], "must be an integer >= 1, got '0'"),
    (['a'], "must be an integer >= 1, got 'a'"),
])
def test_get_flops_shape_takes_one_or_two_positive_numbers(shape, message, capsys):
    with pytest.raises(SystemExit) as info:
        _tool('get_flops').main(['local_vssm_tiny', '--shape', *shape])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize('tool,argv,message', [
    ('search_cls', ['root', '--batch-size', '0'], "--batch-size: must be an integer >= 1"),
    ('search_cls', ['root', '--lr', '-1'], "--lr: must be a number > 0, got '-1'"),
    ('search_cls', ['root', '--num-workers', '-1'], '--num-workers: must be an integer >= 0'),
    ('search_directions', ['ckpt', '--topk', '0'], "--topk: must be an integer >= 1, got '0'"),
    ('visualize', ['cfg', 'ckpt', 'img', '--out', 'x.png', '--score-thr', '1.5'],
     "--score-thr: must be a number in [0, 1], got '1.5'"),
    ('visualize', ['cfg', 'ckpt', 'img', '--out', 'x.png', '--columns', '0'],
     '--columns: must be an integer >= 1'),
    ('make_demo_data', ['--num-train', '0'], '--num-train: must be an integer >= 1'),
    ('make_demo_data', ['--img-size', '64', '64', '64'], '--img-size takes one (S) or two'),
    ('make_demo_imagefolder', ['coco', 'out', '--context', '0'], '--context: must be a number > 0'),
])
def test_tools_check_their_numbers(tool, argv, message, capsys):
    module = _tool(tool)
    parse = getattr(module, 'parse_args', None) or module.main
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
