"""Pretrained loading through init_cfg, the registries, and the safe loader."""
import argparse
import collections
import importlib
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

import mmlocalmamba  # noqa: F401  (registers the models)
from mmlocalmamba.models.local_vmamba import LocalVMamba, LocalVMambaClassifier
from mmlocalmamba.utils.checkpoint import (CheckpointShapeError, extract_state_dict,
                                           load_checkpoint_file, load_pretrained)
from mmlocalmamba.utils.safe_load import UnsafeCheckpointError, safe_torch_load

ARCH = dict(dims=8, depths=[1, 1, 1, 1],
            directions=[['h', 'w7'], ['v', 'w2_flip'], ['h_flip', 'v_flip'], ['w2', 'w7_flip']])


def official_classifier_checkpoint(path, key='state_dict', module_prefix=False, extras=True):
    """A checkpoint shaped like the official releases: VSSM weights + training extras."""
    cls = LocalVMambaClassifier(ARCH, num_classes=10)
    state = cls.state_dict()
    if module_prefix:
        state = collections.OrderedDict(('module.' + k, v) for k, v in state.items())
    ckpt = {key: state}
    if extras:
        ckpt.update(args=argparse.Namespace(lr=1e-3, model='local_vssm_tiny'),
                    epoch=np.int64(299), best_acc=np.float64(76.2))
    torch.save(ckpt, path)
    return cls


@pytest.mark.parametrize('key,module_prefix', [('state_dict', False), ('model', True)])
def test_official_checkpoint_loads_without_missing_backbone_keys(tmp_path, key, module_prefix):
    path = str(tmp_path / 'local_vssm_tiny.ckpt')
    cls = official_classifier_checkpoint(path, key, module_prefix)
    backbone = LocalVMamba(ARCH, init_cfg=dict(type='Pretrained', checkpoint=path))
    report = load_pretrained(backbone, path)
    assert report['missing'] == [] and report['unexpected'] == []
    assert report['new'] == ['outnorm0.weight', 'outnorm0.bias', 'outnorm1.weight',
                             'outnorm1.bias', 'outnorm2.weight', 'outnorm2.bias',
                             'outnorm3.weight', 'outnorm3.bias']
    assert sorted({k.split('.')[0] for k in report['skipped_head']}) == ['classifier']
    for k, v in backbone.state_dict().items():
        if not k.startswith('outnorm'):
            assert torch.equal(v, cls.state_dict()[k]), k


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_init_cfg_through_downstream_registries(tmp_path, scope):
    registry = importlib.import_module(f'{scope}.registry')
    path = str(tmp_path / 'official.ckpt')
    cls = official_classifier_checkpoint(path)
    backbone = registry.MODELS.build(
        dict(type='LocalVMamba', arch=ARCH, init_cfg=dict(type='Pretrained', checkpoint=path)))
    assert type(backbone) is LocalVMamba
    backbone.init_weights()
    ref = cls.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in backbone.state_dict().items()
               if not k.startswith('outnorm'))
    alias = registry.MODELS.build(dict(type='MM_LocalVSSM', dims=8, depths=[1, 1, 1, 1],
                                       directions=ARCH['directions'], pretrained=path))
    alias.init_weights()
    assert torch.equal(alias.patch_embed[0].weight, ref['patch_embed.0.weight'])


def test_full_detector_checkpoint_with_prefix(tmp_path):
    src = LocalVMamba(ARCH)
    state = {'backbone.' + k: v for k, v in src.state_dict().items()}
    state['neck.conv.weight'] = torch.zeros(3)
    path = str(tmp_path / 'det.pth')
    torch.save({'meta': {'epoch': 12, 'hb': HistoryBuffer()}, 'state_dict': state}, path)
    for prefix in ('backbone.', None):
        dst = LocalVMamba(ARCH)
        report = load_pretrained(dst, path, prefix=prefix)
        assert report['missing'] == [] and report['new'] == [] and report['unexpected'] == []
        assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    path = str(tmp_path / 'wide.ckpt')
    torch.save({'state_dict': LocalVMamba(dict(ARCH, dims=16)).state_dict()}, path)
    with pytest.raises(CheckpointShapeError,
                       match=r'patch_embed\.0\.weight: checkpoint \(16, 3, 4, 4\) vs model '
                       r'\(8, 3, 4, 4\)'):
        load_pretrained(LocalVMamba(ARCH), path)


def test_missing_file_and_unpublished_tiny_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='Checkpoint file not found'):
        load_checkpoint_file(str(tmp_path / 'nope.pth'))
    with pytest.raises(FileNotFoundError, match='never published'):
        load_checkpoint_file(str(tmp_path / 'local_vssm_tiny.ckpt'))
    backbone = LocalVMamba(ARCH, init_cfg=dict(type='Pretrained',
                                               checkpoint=str(tmp_path / 'nope.pth')))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        backbone.init_weights()


class NotAllowed:
    pass


def test_untrusted_pickle_content_is_refused(tmp_path):
    path = str(tmp_path / 'evil.ckpt')
    torch.save({'state_dict': {}, 'payload': NotAllowed()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r'NotAllowed.*trust_checkpoint=True'):
        safe_torch_load(path)
    with pytest.raises(UnsafeCheckpointError):
        load_pretrained(LocalVMamba(ARCH), path)
    # explicit opt-in for a file the user trusts
    assert isinstance(safe_torch_load(path, trust_checkpoint=True)['payload'], NotAllowed)


def test_history_buffer_getattr_is_narrow(tmp_path):
    hb = HistoryBuffer()
    hb.update(3.0)
    path = str(tmp_path / 'mm.pth')
    torch.save({'message_hub': {'loss': hb}}, path)
    assert safe_torch_load(path)['message_hub']['loss'].mean() == 3.0
    path = str(tmp_path / 'getattr.pth')
    torch.save({'f': getattr(argparse.Namespace, '__init__')}, path)
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(path)


def test_extract_state_dict_errors():
    with pytest.raises(KeyError, match="prefix 'backbone.'"):
        extract_state_dict({'state_dict': {'a': torch.zeros(1)}}, prefix='backbone.')
    with pytest.raises(TypeError, match='must be a dict'):
        extract_state_dict([1, 2])


def test_registered_in_root_registry_from_any_directory(tmp_path):
    import subprocess
    import sys
    code = ('from mmengine.config import Config; from mmdet.registry import MODELS; '
            "cfg = Config(dict(custom_imports=dict(imports=['mmlocalmamba'], "
            'allow_failed_imports=False))); '
            'from mmengine.utils import import_modules_from_strings as imp; '
            'imp(**cfg.custom_imports); '
            "m = MODELS.build(dict(type='LocalVMamba', arch=dict(dims=8, depths=[1, 1]), "
            'out_indices=(1,))); print(type(m).__name__)')
    out = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == 'LocalVMamba'
    assert not osp.exists(tmp_path / 'mmlocalmamba')


def test_import_has_no_process_wide_effect_on_torch_load(tmp_path):
    """After ``import mmlocalmamba`` a plain torch.load(weights_only=True) still refuses the
    types our loader accepts (numpy, HistoryBuffer, Namespace): the allow-list is scoped."""
    import subprocess
    import sys
    hb = HistoryBuffer()
    hb.update(1.0)
    files = {
        'numpy': {'meta': {'seed': np.int64(0)}, 'a': np.zeros(3)},
        'history_buffer': {'message_hub': {'log_scalars': {'loss': hb}}},
        'namespace': {'args': argparse.Namespace(lr=0.1)},
    }
    for name, obj in files.items():
        torch.save(obj, str(tmp_path / f'{name}.pth'))
    code = ('import sys, torch\n'
            'import mmlocalmamba\n'
            'from mmlocalmamba.utils.safe_load import safe_torch_load\n'
            'before = set(torch.serialization.get_safe_globals())\n'
            'for f in sys.argv[1:]:\n'
            '    safe_torch_load(f)\n'
            '    try:\n'
            '        torch.load(f, weights_only=True); print("loaded")\n'
            '    except Exception:\n'
            '        print("refused")\n'
            'print(set(torch.serialization.get_safe_globals()) == before)\n')
    out = subprocess.run([sys.executable, '-c', code] +
                         [str(tmp_path / f'{name}.pth') for name in files],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ['refused'] * len(files) + ['True']
