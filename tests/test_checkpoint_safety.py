"""Checkpoints that cannot hurt: the checked, scoped allow-list, clear errors for bad files,
the trust opt-in at every entry point, mmengine's loader schemes (URLs without network) and
checkpoints from which nothing loads.

Every crafted file is written at test time into ``tmp_path``.
"""
import argparse
import gzip
import io
import os
import os.path as osp
import pathlib
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

import mmlocalmamba  # noqa: F401  (registers the models and the timm hook)
from mmlocalmamba.models.local_vim import LocalVim
from mmlocalmamba.models.local_vmamba import LocalVMamba, LocalVMambaClassifier
from mmlocalmamba.utils.checkpoint import (CheckpointMismatchError, CheckpointShapeError,
                                           load_checkpoint_file, load_pretrained,
                                           safe_mmengine_loading)
from mmlocalmamba.utils.safe_load import (TRUST_ENV, CheckpointFormatError,
                                          UnsafeCheckpointError, safe_torch_load)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ARCH = dict(dims=8, depths=[1, 1, 1, 1],
            directions=[['h', 'w7'], ['v', 'w2_flip'], ['h_flip', 'v_flip'], ['w2', 'w7_flip']])
VIM_ARCH = dict(embed_dim=16, depth=2, directions=[['h', 'v']] * 2)


# --------------------------------------------------------------------------------------------
# crafted content
# --------------------------------------------------------------------------------------------
class ForgedDtype:
    """Pickles as ``numpy.dtype`` with a state of the file's choosing."""

    def __init__(self, code, state):
        self.code, self.state = code, state

    def __reduce__(self):
        return np.dtype, (self.code, False, True), self.state


class ForgedArray:
    """Pickles as a numpy array of ``dtype`` whose raw data is ``data``."""

    def __init__(self, dtype, data, shape=(1, )):
        self.dtype, self.data, self.shape = dtype, data, shape

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0, ), b'b'),
                (1, self.shape, self.dtype, False, self.data))


def object_field_dtype():
    """A structured dtype with an object field whose flags (0) claim it holds no objects."""
    return ForgedDtype('V8', (3, '|', None, ('a', ), {'a': (np.dtype('O'), 0)}, 8, 1, 0))


class RegisterStatistics:
    """Calls ``HistoryBuffer.register_statistics`` when unpickled (through getattr)."""

    def __reduce__(self):
        return HistoryBuffer.register_statistics, (HistoryBuffer.max, )


class NotAllowed:
    """A class outside the allow-list (importable, so trusted loads can rebuild it)."""


class Payload:
    """Creates ``path`` when unpickled: proof that unpickling ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path), )


def poisoned_history_buffer_file(path):
    """A genuine HistoryBuffer saved while the class registry maps 'mean' to ``min``: what a
    file that poisons the registry of every HistoryBuffer of the loading process looks like."""
    buffer = HistoryBuffer()
    buffer.update(1.0)
    buffer.update(5.0)
    registry = HistoryBuffer._statistics_methods
    registry['mean'] = HistoryBuffer.min
    try:
        torch.save({'message_hub': {'log_scalars': {'loss': buffer}}}, path)
    finally:
        registry['mean'] = HistoryBuffer.mean


def run_python(code, *args, env=None):
    """Run ``code`` in a fresh interpreter (a crash there cannot kill pytest)."""
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, **(env or {})))


# --------------------------------------------------------------------------------------------
# 1. the checked, scoped allow-list
# --------------------------------------------------------------------------------------------
def test_object_field_dtype_is_refused_not_crashed_in_a_subprocess(tmp_path):
    path = tmp_path / 'forged_dtype.pth'
    # 0xdeadbeef read as an object pointer would crash the process
    torch.save({'state_dict': {}, 'x': ForgedArray(object_field_dtype(),
                                                   struct.pack('<Q', 0xdeadbeef))}, str(path))
    code = """
        import sys
        from mmlocalmamba import LocalVMamba
        from mmlocalmamba.utils.safe_load import UnsafeCheckpointError, safe_torch_load
        try:
            safe_torch_load(sys.argv[1])
        except UnsafeCheckpointError as err:
            print('REFUSED', err)
        model = LocalVMamba(dict(dims=8, depths=[1]), out_indices=(0,),
                            init_cfg=dict(type='Pretrained', checkpoint=sys.argv[1]))
        try:
            model.init_weights()
        except UnsafeCheckpointError:
            print('INIT_CFG_REFUSED')
    """
    out = run_python(code, path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'REFUSED' in out.stdout and 'INIT_CFG_REFUSED' in out.stdout
    message = out.stdout.splitlines()[0]
    assert str(path) in message and "object field(s) ['a']" in message
    assert 'flags (0)' in message and 'trust' not in message


def test_dtype_state_numpy_never_writes_is_refused(tmp_path):
    path = str(tmp_path / 'flags.pth')
    # a float64 dtype whose flags claim Python objects (63), and one with fields
    for state in [(3, '<', None, None, None, -1, -1, 63),
                  (3, '<', None, ('a', ), {'a': (np.dtype('f8'), 0)}, 8, 1, 0)]:
        torch.save({'x': ForgedArray(ForgedDtype('f8', state), bytes(8))}, path)
        with pytest.raises(UnsafeCheckpointError, match="numpy dtype 'f8' whose state") as info:
            safe_torch_load(path)
        assert 'flags.pth' in str(info.value) and 'trust' not in str(info.value)


def test_array_data_of_the_wrong_size_is_refused(tmp_path):
    path = str(tmp_path / 'short.pth')
    torch.save({'x': ForgedArray(np.dtype('f8'), bytes(8), shape=(1000, ))}, path)
    with pytest.raises(UnsafeCheckpointError, match=r'shape \(1000,\) .* with 8 bytes'):
        safe_torch_load(path)


def test_object_arrays_are_not_rebuilt_but_may_be_trusted(tmp_path):
    path = str(tmp_path / 'objects.pth')
    torch.save({'x': np.array([1, 'a'], dtype=object)}, path)
    with pytest.raises(UnsafeCheckpointError, match="numpy dtype 'O8'.*trust_checkpoint=True"):
        safe_torch_load(path)
    assert list(safe_torch_load(path, trust_checkpoint=True)['x']) == [1, 'a']


def test_history_buffer_class_statistics_cannot_be_poisoned(tmp_path):
    path = str(tmp_path / 'poisoned.pth')
    poisoned_history_buffer_file(path)
    with pytest.raises(UnsafeCheckpointError,
                       match="registers the statistic 'mean' as 'HistoryBuffer.min'"):
        safe_torch_load(path)
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean
    buffer = HistoryBuffer()
    buffer.update(1.0)
    buffer.update(5.0)
    assert buffer.statistics('mean') == 3.0


def test_getattr_gives_out_only_the_statistics_methods(tmp_path):
    for name, obj in [('call', RegisterStatistics()),
                      ('attr', HistoryBuffer.register_statistics),
                      ('other', getattr(argparse.Namespace, '__init__'))]:
        path = str(tmp_path / f'{name}.pth')
        torch.save({'x': obj}, path)
        with pytest.raises(UnsafeCheckpointError, match=r'getattr\(') as info:
            safe_torch_load(path)
        assert f'{name}.pth' in str(info.value)
    assert 'register_statistics' in str(
        pytest.raises(UnsafeCheckpointError, safe_torch_load, str(tmp_path / 'call.pth')).value)
    assert set(HistoryBuffer._statistics_methods) == {'min', 'max', 'current', 'mean'}


def test_checkpoint_content_comes_back_as_plain_objects(tmp_path):
    from mmlocalmamba.engine.rng_state_hook import get_rng_states
    buffer = HistoryBuffer()
    buffer.update(2.0)
    buffer.update(4.0)
    path = str(tmp_path / 'mixed.pth')
    torch.save({'state_dict': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=0.1),
                'epoch': np.int64(7), 'acc': np.float32(0.5), 'flag': np.bool_(True),
                'big_endian': np.arange(6, dtype='>i4').reshape(2, 3), 'names': np.array(['a']),
                'empty': b'', 'rng': get_rng_states(), 'dtype': np.dtype('u2'),
                'hub': {'loss': buffer}}, path)
    ckpt = safe_torch_load(path)
    assert type(ckpt['big_endian']) is np.ndarray and ckpt['big_endian'][1, 2] == 5
    genuine = pickle.loads(pickle.dumps(np.arange(6, dtype='>i4')))  # what numpy rebuilds
    assert ckpt['big_endian'].dtype == genuine.dtype
    assert type(ckpt['epoch']) is np.int64 and ckpt['epoch'] == 7
    assert type(ckpt['flag']) is np.bool_ and ckpt['args'].lr == 0.1
    assert ckpt['dtype'] == np.dtype('u2') and ckpt['empty'] == b''
    assert type(ckpt['rng']['numpy'][1]) is np.ndarray
    np.random.set_state(ckpt['rng']['numpy'])
    restored = ckpt['hub']['loss']
    assert type(restored) is HistoryBuffer and restored.mean() == 3.0
    assert type(restored._log_history) is np.ndarray
    # the restored buffer pickles as a plain HistoryBuffer again (next checkpoint)
    buf = io.BytesIO()
    torch.save({'hub': restored, 'a': ckpt['big_endian']}, buf)
    assert b'_CheckedArray' not in buf.getvalue() and b'HistoryBufferState' not in buf.getvalue()


def test_scoped_allow_list_sets_aside_the_process_entries_of_the_same_names(tmp_path):
    path = str(tmp_path / 'forged_dtype.pth')
    torch.save({'x': ForgedArray(object_field_dtype(), bytes(8))}, path)
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([np.dtype])  # what a user's program may have done
    try:
        with pytest.raises(UnsafeCheckpointError, match='object field'):
            safe_torch_load(path)
        assert np.dtype in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def test_nested_scopes_keep_the_allow_list_until_the_outermost_exits(tmp_path):
    from mmlocalmamba.utils.safe_load import checkpoint_types_allowed
    path = str(tmp_path / 'numpy.pth')
    torch.save({'a': np.zeros(2)}, path)
    before = set(torch.serialization.get_safe_globals())
    with checkpoint_types_allowed():
        with checkpoint_types_allowed():
            pass
        assert safe_torch_load(path)['a'].shape == (2, )  # a load inside an outer scope
        torch.load(path, weights_only=True)
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


RESUME_SCRIPT = """
import pickle, sys
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner
import mmlocalmamba
from mmlocalmamba.utils.checkpoint import safe_mmengine_loading

class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)
    def forward(self, inputs, data_samples=None, mode='tensor'):
        loss = self.fc(torch.stack(inputs)).pow(2).mean()
        return dict(loss=loss) if mode == 'loss' else [loss]

def runner(work_dir, epochs, resume=False, load_from=None):
    data = [torch.randn(2) for _ in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=lambda b: dict(inputs=b))
    return Runner(model=Toy(), work_dir=work_dir, train_dataloader=loader,
                  optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
                  train_cfg=dict(by_epoch=True, max_epochs=epochs),
                  default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
                  custom_hooks=[dict(type='RNGStateHook')], resume=resume, load_from=load_from,
                  experiment_name=f'exp{epochs}{resume}', default_scope='mmengine')

work = sys.argv[1]
runner(work, 1).train()
ckpt = work + '/epoch_1.pth'
try:
    runner(work + '/plain', 2, resume=True, load_from=ckpt).train()
    print('PLAIN_RESUMED')
except pickle.UnpicklingError:
    print('PLAIN_REFUSED')
resumed = runner(work + '/ours', 2, resume=True, load_from=ckpt)
with safe_mmengine_loading():
    resumed.train()
buffer = resumed.message_hub.get_scalar('train/loss')
print('RESUMED', resumed.epoch, type(buffer).__name__, len(buffer.data[0]))
"""


def test_mmengine_runner_resume_through_the_scoped_loader_in_a_subprocess(tmp_path):
    out = run_python(RESUME_SCRIPT, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(('PLAIN', 'RESUMED'))]
    # torch >= 2.6 alone refuses mmengine's own checkpoints (HistoryBuffer, numpy); importing
    # mmlocalmamba does not change that; our scoped loader resumes them
    assert lines[0] == 'PLAIN_REFUSED'
    assert lines[1] == 'RESUMED 2 HistoryBuffer 4'


# --------------------------------------------------------------------------------------------
# 2. mmengine's CheckpointLoader schemes, URLs without network
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fake_download(tmp_path, monkeypatch):
    """Replace torch.hub's downloader (used by mmengine's load_from_http) by a local copy."""
    calls = []
    sources = {}
    hub = tmp_path / 'hub'
    monkeypatch.setattr(torch.hub, '_hub_dir', str(hub))

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append(dict(url=url, progress=progress))
        if url not in sources:
            raise OSError(f'HTTP Error 404: Not Found ({url})')
        with open(sources[url], 'rb') as src, open(dst, 'wb') as out:
            out.write(src.read())

    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    return sources, calls, hub


def test_url_checkpoint_downloads_with_progress_and_loads_checked(tmp_path, fake_download):
    sources, calls, hub = fake_download
    src = LocalVMamba(ARCH)
    path = str(tmp_path / 'det.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in src.state_dict().items()},
                'meta': {'seed': np.int64(1)}}, path)
    url = 'https://example.com/files/det.pth'
    sources[url] = path
    model = LocalVMamba(ARCH, init_cfg=dict(type='Pretrained', checkpoint=url))
    model.init_weights()
    assert calls == [dict(url=url, progress=True)]
    assert osp.isfile(hub / 'checkpoints' / 'det.pth')
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())
    assert type(load_checkpoint_file(url)['meta']['seed']) is np.int64  # cached: no download
    assert len(calls) == 1


def test_url_payload_is_refused_although_mmengine_would_unpickle_it(tmp_path, fake_download):
    sources, _, _ = fake_download
    marker = tmp_path / 'payload_ran'
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {}, 'x': Payload(str(marker))}, path)
    url = 'https://example.com/evil.pth'
    sources[url] = path
    with pytest.raises(UnsafeCheckpointError, match=r'evil\.pth.*pathlib'):
        load_checkpoint_file(url)
    with pytest.raises(UnsafeCheckpointError):
        LocalVMamba(ARCH, init_cfg=dict(type='Pretrained', checkpoint=url)).init_weights()
    assert not marker.exists()


def test_url_failures_name_the_url_and_what_to_do(tmp_path, fake_download):
    sources, _, hub = fake_download
    with pytest.raises(FileNotFoundError, match=r"local_vssm_tiny\.ckpt.*404.*never published"):
        load_checkpoint_file('https://github.com/hunto/LocalMamba/releases/download/v1.0.0/'
                             'local_vssm_tiny.ckpt')
    page = tmp_path / 'page.html'
    page.write_text('<!DOCTYPE html><html><body>Sign in</body></html>')
    sources['https://example.com/model.pth'] = str(page)
    with pytest.raises(CheckpointFormatError, match=r'HTML.*Delete the cached file') as info:
        load_checkpoint_file('https://example.com/model.pth')
    assert str(hub / 'checkpoints' / 'model.pth') in str(info.value)
    assert 'trust' not in str(info.value)


def test_other_mmengine_schemes_load_through_the_checked_path(tmp_path, fake_download):
    from mmengine.runner.checkpoint import get_torchvision_models
    sources, calls, _ = fake_download
    url = get_torchvision_models()['resnet18']
    marker = tmp_path / 'payload_ran'
    path = str(tmp_path / 'evil.pth')
    torch.save({'x': Payload(str(marker))}, path)
    sources[url] = path
    with pytest.raises(UnsafeCheckpointError, match='pathlib'):
        load_checkpoint_file('torchvision://resnet18')
    assert calls[0]['url'] == url and not marker.exists()
    assert os.environ.get('TORCH_FORCE_WEIGHTS_ONLY_LOAD') is None  # restored


def test_safe_mmengine_loading_restores_mmengine_schemes(tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint
    before = dict(CheckpointLoader._schemes)
    hb = HistoryBuffer()
    hb.update(1.0)
    path = str(tmp_path / 'mm.pth')
    torch.save({'message_hub': {'loss': hb}, 'state_dict': {}}, path)
    with safe_mmengine_loading():
        assert type(_load_checkpoint(path)['message_hub']['loss']) is HistoryBuffer
    assert CheckpointLoader._schemes == before


# --------------------------------------------------------------------------------------------
# 3. checkpoints from which nothing loads
# --------------------------------------------------------------------------------------------
def test_checkpoint_of_the_other_family_is_named():
    vim = LocalVim(VIM_ARCH, img_size=32, patch_size=8)
    with pytest.raises(CheckpointMismatchError, match='it is a LocalVim checkpoint') as info:
        load_pretrained(LocalVMamba(ARCH), {'state_dict': vim.state_dict()})
    assert 'Build a LocalVim backbone' in str(info.value)
    # and the other way round (LocalVim's own check)
    with pytest.raises(ValueError, match='LocalVMamba .*checkpoint'):
        load_pretrained(LocalVim(VIM_ARCH, img_size=32, patch_size=8),
                        {'model': LocalVMamba(ARCH).state_dict()})


def test_empty_state_dict_and_numpy_arrays_are_named(tmp_path):
    with pytest.raises(CheckpointMismatchError, match='state dict is empty'):
        load_pretrained(LocalVMamba(ARCH), {'state_dict': {}})
    arrays = {k: v.numpy() for k, v in LocalVMamba(ARCH).state_dict().items()}
    path = str(tmp_path / 'arrays.pth')
    torch.save({'model': arrays}, path)
    with pytest.raises(CheckpointMismatchError, match=r'numpy arrays instead of torch tensors'):
        load_pretrained(LocalVMamba(ARCH), path)


def test_wrong_prefix_is_named():
    state = {'encoder.body.' + k: v for k, v in LocalVMamba(ARCH).state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"prefix 'encoder\.body\.'"):
        load_pretrained(LocalVMamba(ARCH), {'state_dict': state})
    model = LocalVMamba(ARCH)
    assert load_pretrained(model, {'state_dict': state}, prefix='encoder.body.')['missing'] == []


def test_checkpoint_of_another_model_is_an_error_with_both_key_sets():
    state = {'stages.0.conv.weight': torch.zeros(1), 'head.fc.bias': torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError, match=r"none of its .*'stages\.0\.conv"):
        load_pretrained(LocalVMamba(ARCH), {'state_dict': state})


def test_other_model_size_names_the_shapes():
    big = LocalVMamba(dict(ARCH, dims=16))
    with pytest.raises(CheckpointShapeError, match='another model size'):
        load_pretrained(LocalVMamba(ARCH), {'state_dict': big.state_dict()})


def test_test_checkpoint_must_cover_every_part_of_the_model():
    from mmlocalmamba.apis.runner import PartialCheckpointError, check_checkpoint_covers_model

    class Detector(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(2, 2)
            self.neck = torch.nn.Linear(2, 2)
            self.head = torch.nn.Linear(2, 2)

    model = Detector()
    full = {'state_dict': {'module.' + k: v for k, v in model.state_dict().items()}}
    check_checkpoint_covers_model(model, full, 'full.pth')
    backbone_only = {'state_dict': {k: v for k, v in model.state_dict().items()
                                    if k.startswith('backbone.')}}
    with pytest.raises(PartialCheckpointError,
                       match=r"'bb\.pth' has no weights for head, neck.*--allow-partial"):
        check_checkpoint_covers_model(model, backbone_only, 'bb.pth')
    imagenet = {'model': LocalVMambaClassifier(ARCH, num_classes=3).state_dict()}
    with pytest.raises(PartialCheckpointError, match='ImageNet classification'):
        check_checkpoint_covers_model(model, imagenet, 'in1k.pth')


# --------------------------------------------------------------------------------------------
# 4. files that are not checkpoints; the trust opt-in
# --------------------------------------------------------------------------------------------
def _saved_bytes(legacy=False):
    buf = io.BytesIO()
    torch.save({'state_dict': LocalVMamba(ARCH).state_dict()}, buf,
               _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _zip_of_other_files():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as archive:
        archive.writestr('images/a.jpg', b'x')
        archive.writestr('labels.txt', 'cat')
    return buf.getvalue()


NOT_CHECKPOINTS = {
    'empty': (lambda: b'', 'is empty'),
    'truncated_zip': (lambda: _saved_bytes()[:5000], 'damaged or truncated zip'),
    'truncated_pickle': (lambda: _saved_bytes(legacy=True)[:5000], 'ends early'),
    'text': (lambda: b'epoch 12, loss 0.3\n', 'text file'),
    'html': (lambda: b'<!DOCTYPE html>\n<html>', 'HTML'),
    'lfs_pointer': (lambda: b'version https://git-lfs.github.com/spec/v1\noid sha256:ab\n',
                    'Git LFS pointer'),
    'png': (lambda: b'\x89PNG\r\n\x1a\n' + bytes(64), 'PNG image'),
    'zip_of_images': (_zip_of_other_files, 'zip archive without a torch checkpoint'),
    'gzip': (lambda: gzip.compress(b'abc'), 'gzip'),
    'npy': (lambda: (lambda b: (np.save(b, np.zeros(3)), b.getvalue())[1])(io.BytesIO()),
            'NumPy'),
    'binary': (lambda: bytes(range(1, 40)), 'neither a zip archive nor a pickle'),
}


@pytest.mark.parametrize('kind', sorted(NOT_CHECKPOINTS))
def test_files_that_are_not_checkpoints_get_clear_errors(tmp_path, kind):
    make, what = NOT_CHECKPOINTS[kind]
    path = tmp_path / f'{kind}.pth'
    path.write_bytes(make())
    for load in (safe_torch_load, load_checkpoint_file,
                 lambda p: load_pretrained(LocalVMamba(ARCH), p)):
        with pytest.raises(CheckpointFormatError) as info:
            load(str(path))
        message = str(info.value)
        assert what in message and str(path) in message
        assert 'trust' not in message.lower()  # trusting would not help: not a pickle


def test_trust_env_value_is_read_each_time(monkeypatch, tmp_path):
    path = str(tmp_path / 'custom.pth')
    torch.save({'state_dict': {}, 'x': NotAllowed()}, path)
    for value, trusted in [('1', True), ('yes', True), ('0', False), ('', False)]:
        monkeypatch.setenv(TRUST_ENV, value)
        if trusted:
            assert isinstance(safe_torch_load(path)['x'], NotAllowed)
        else:
            with pytest.raises(UnsafeCheckpointError, match=r'NotAllowed.*trust_checkpoint=True'):
                safe_torch_load(path)
    monkeypatch.setenv(TRUST_ENV, '1')
    with pytest.raises(UnsafeCheckpointError):  # the argument wins over the variable
        safe_torch_load(path, trust_checkpoint=False)


def _trusted_only_checkpoint(path, state):
    torch.save({'state_dict': state, 'extra': NotAllowed()}, path)
    return path


def test_trust_opt_in_at_init_cfg_and_load_pretrained(monkeypatch, tmp_path):
    src = LocalVMamba(ARCH)
    path = _trusted_only_checkpoint(str(tmp_path / 'custom.pth'), src.state_dict())
    monkeypatch.delenv(TRUST_ENV, raising=False)
    model = LocalVMamba(ARCH, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(UnsafeCheckpointError, match='NotAllowed'):
        model.init_weights()
    assert load_pretrained(LocalVMamba(ARCH), path, trust_checkpoint=True)['missing'] == []
    monkeypatch.setenv(TRUST_ENV, '1')
    model.init_weights()
    assert torch.equal(model.patch_embed[0].weight, src.patch_embed[0].weight)


def test_trust_opt_in_at_mmengine_loading(monkeypatch, tmp_path):
    from mmengine.runner.checkpoint import _load_checkpoint
    path = _trusted_only_checkpoint(str(tmp_path / 'custom.pth'), {'w': torch.ones(1)})
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with safe_mmengine_loading(), pytest.raises(UnsafeCheckpointError, match='NotAllowed'):
        _load_checkpoint(path)
    monkeypatch.setenv(TRUST_ENV, '1')
    with safe_mmengine_loading():
        assert isinstance(_load_checkpoint(path)['extra'], NotAllowed)


def test_trust_opt_in_and_official_files_at_timm_checkpoint_path(monkeypatch, tmp_path):
    import timm
    src = timm.create_model('local_vssm_tiny', num_classes=4, drop_path_rate=0.0)
    official = str(tmp_path / 'official.ckpt')
    # official releases: {'model': ...} with training extras (numpy scalars, Namespace)
    torch.save({'model': {'module.' + k: v for k, v in src.state_dict().items()},
                'epoch': np.int64(299), 'args': argparse.Namespace(lr=1e-3)}, official)
    model = timm.create_model('local_vssm_tiny', num_classes=4, checkpoint_path=official)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())
    custom = _trusted_only_checkpoint(str(tmp_path / 'custom.pth'), src.state_dict())
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(UnsafeCheckpointError, match='NotAllowed'):
        timm.create_model('local_vssm_tiny', num_classes=4, checkpoint_path=custom)
    monkeypatch.setenv(TRUST_ENV, '1')
    timm.create_model('local_vssm_tiny', num_classes=4, checkpoint_path=custom)
    # other timm models keep timm's own loader
    from timm.models import _factory
    assert _factory.load_checkpoint.__module__ == 'mmlocalmamba.utils.checkpoint'


def test_trust_opt_in_at_the_search_export_tool(monkeypatch, tmp_path):
    from mmlocalmamba.search.export import export_directions
    supernet = LocalVMamba(dict(dims=8, depths=[1], directions=None), out_indices=(0, ))
    path = _trusted_only_checkpoint(str(tmp_path / 'supernet.pth'), supernet.state_dict())
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(UnsafeCheckpointError, match='NotAllowed'):
        export_directions(path, topk=2)
    monkeypatch.setenv(TRUST_ENV, '1')
    assert len(export_directions(path, topk=2).directions[0]) == 2
    out = run_python('import sys; sys.argv[0] = "tools/search_directions.py"\n'
                     'import runpy; runpy.run_path("tools/search_directions.py", '
                     'run_name="__main__")', path, '--topk', '2', '--out-dir', tmp_path / 'o',
                     env={TRUST_ENV: '0'})
    assert out.returncode != 0 and 'NotAllowed' in out.stderr
