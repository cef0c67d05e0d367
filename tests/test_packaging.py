"""The package as a user installs it: wheel contents, ``mmlocalmamba::`` config bases, metadata.

The main test builds a wheel of this checkout, installs it (not editable) into a fresh folder and,
from another directory, trains one CPU step of a user config whose only base is
``mmlocalmamba::mmdet/...``: with the installed package first on ``sys.path``, so the editable
install of the development environment cannot stand in for it (the test checks where
``mmlocalmamba`` was imported from).
"""
import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_BASE = 'mmlocalmamba::mmdet/mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py'

USER_CONFIG = """\
_base_ = [{base!r}]
data_root = {data_root!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, dims=16, depths=[1, 1, 1, 1])),
    neck=dict(in_channels=[16, 32, 64, 128]))
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
train_cfg = dict(max_epochs=1)
val_cfg = None
val_dataloader = None
val_evaluator = None
"""

# Runs in the fresh interpreter: where the package comes from, its entry points, one step.
USER_RUN = """\
import json, os, sys
from importlib import metadata
site, work = sys.argv[1], sys.argv[2]
import mmlocalmamba
assert mmlocalmamba.__file__.startswith(site), mmlocalmamba.__file__
from mmengine.config import Config
cfg = Config.fromfile('user_config.py')
scripts = {ep.name: ep.load() for ep in metadata.entry_points(group='console_scripts')
           if ep.name.startswith('mmlocalmamba-')}
scripts['mmlocalmamba-train'](['user_config.py', '--work-dir', work])
print('RESULT', json.dumps(dict(file=mmlocalmamba.__file__, scripts=sorted(scripts),
                                backbone=cfg.model.backbone.type, epochs=cfg.train_cfg.max_epochs)))
"""


def _copy_checkout(dst):
    """The working tree without git data, build outputs, data and work dirs."""
    ignore = shutil.ignore_patterns('.git', 'build', 'dist', '*.egg-info', '__pycache__',
                                    '.pytest_cache', 'work_dirs', 'data')
    shutil.copytree(ROOT, dst, ignore=ignore)
    return dst


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """A wheel built from (a copy of) this checkout, the way ``pip install .`` builds one."""
    tmp = tmp_path_factory.mktemp('wheel')
    src = _copy_checkout(str(tmp / 'src'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '--disable-pip-version-check', '-q', '-w', str(tmp / 'dist'), src],
                   check=True, capture_output=True, text=True)
    (path, ) = glob.glob(str(tmp / 'dist' / 'mmlocalmamba-*.whl'))
    return path


def test_wheel_ships_configs_tools_and_license(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names
                            if n.endswith('.dist-info/entry_points.txt'))
        metadata = next(zf.read(n).decode() for n in names if n.endswith('.dist-info/METADATA'))
    mim = 'mmlocalmamba/.mim/'
    tracked = [osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                                        recursive=True)]
    assert {mim + p for p in tracked} <= names  # every config, the old names and _base_ too
    for path in ('model-index.yml', 'configs/mmdet/metafile.yml', 'configs/mmseg/metafile.yml',
                 'tools/train.py', 'tools/test.py', 'tools/dist_train.sh',
                 'tools/dev/README.md'):
        assert mim + path in names, path
    assert not [n for n in names if '__pycache__' in n or n.endswith('.pyc')]
    assert any(n.endswith('.dist-info/licenses/LICENSE') for n in names)
    assert 'mmlocalmamba-train = mmlocalmamba.apis.cli:train' in entry_points
    assert 'License-Expression: Apache-2.0' in metadata
    assert 'Requires-Dist: timm>=0.9' in metadata


def test_installed_wheel_resolves_mmlocalmamba_bases_and_trains_a_step(wheel, tmp_path):
    from mmlocalmamba.datasets.demo_data import make_coco_demo
    site = str(tmp_path / 'site')
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q',
                    '--disable-pip-version-check', '--target', site, wheel],
                   check=True, capture_output=True, text=True)
    user = tmp_path / 'user'
    user.mkdir()
    make_coco_demo(str(user / 'coco'), num_train=2, num_val=1, img_size=64, seed=0)
    (user / 'user_config.py').write_text(
        USER_CONFIG.format(base=DEMO_BASE, data_root=str(user / 'coco') + '/'))
    env = dict(os.environ, PYTHONPATH=site, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', USER_RUN, site, str(user / 'work')], cwd=user,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.split('RESULT ', 1)[1])
    assert result['file'].startswith(site)
    assert result['scripts'] == ['mmlocalmamba-search-cls', 'mmlocalmamba-test',
                                 'mmlocalmamba-train']
    assert (result['backbone'], result['epochs']) == ('LocalVMamba', 1)
    with open(user / 'work' / 'last_checkpoint') as f:
        assert osp.basename(f.read().strip()) == 'epoch_1.pth'
    log = glob.glob(str(user / 'work' / '*' / '*.log'))[0]
    with open(log) as f:
        assert 'Epoch(train) [1][1/1]' in f.read()


def test_mmlocalmamba_scope_needs_the_package_imported():
    """``import mmlocalmamba`` adds the ``mmlocalmamba::`` scope to mmengine's package table."""
    code = ('from mmengine.config.utils import MODULE2PACKAGE as table\n'
            "assert 'mmlocalmamba' not in table\n"
            'import mmlocalmamba\n'
            "assert table['mmlocalmamba'] == 'mmlocalmamba'\n")
    subprocess.run([sys.executable, '-c', code], check=True, cwd=str(osp.dirname(ROOT)))


def test_metafiles_list_every_config_of_the_naming_scheme():
    from .test_config_layout import RENAMED
    with open(osp.join(ROOT, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    listed = []
    for meta in index['Import']:
        with open(osp.join(ROOT, meta)) as f:
            listed += [m['Config'] for m in yaml.safe_load(f)['Models']]
    configs = {osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', 'mm*', '*.py'))}
    assert sorted(listed) == sorted(configs - {'configs/' + old for old in RENAMED})


def test_rmsnorm_fallback_matches_torch():
    import torch

    from mmlocalmamba.models.norms import RMSNorm, RMSNormFallback
    assert RMSNorm is torch.nn.RMSNorm  # this torch has it: nothing replaced
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    for shape, eps, affine in ((8, 1e-5, True), ((3, 8), None, True), (8, None, False)):
        ours, ref = RMSNormFallback(shape, eps, affine).double(), torch.nn.RMSNorm(
            shape, eps, affine).double()
        if affine:
            with torch.no_grad():
                ref.weight.uniform_(0.5, 1.5)
            ours.load_state_dict(ref.state_dict())
        assert list(ours.state_dict()) == list(ref.state_dict())
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.float()(x.float()), ref.float()(x.float()))
    with pytest.raises(ValueError, match=r'\(3, 8\)'):
        RMSNormFallback((3, 8))(torch.randn(2, 8))


def test_rmsnorm_fallback_is_installed_on_torch_without_it(monkeypatch):
    """On a torch without nn.RMSNorm the fallback takes its place, so LocalVim builds."""
    import torch

    from mmlocalmamba.models import norms
    from mmlocalmamba.models.local_vim import LocalVim
    monkeypatch.delattr(torch.nn, 'RMSNorm')
    assert norms.install_rmsnorm_fallback() is norms.RMSNormFallback
    assert torch.nn.RMSNorm is norms.RMSNormFallback
    model = LocalVim(arch=dict(embed_dim=16, depth=1, directions=[['h', 'v', 'w2', 'w7']]),
                     img_size=32, out_indices=(0, ))
    assert isinstance(model.layers[0].norm, norms.RMSNormFallback)
    assert model(torch.randn(1, 3, 32, 32))[0].shape[1] == 16
