"""How the shipped configs are written: each states only what differs from its bases.

A config that repeats a value of its base hides which values are its own. For every config
under ``configs/`` with a ``_base_``, the file is executed on its own (as mmengine does, with
``_base_`` bound to the merged bases) and every value it sets is compared with the value the
bases already give: equal values are redundant. Python helper variables that the file itself
reads (e.g. ``embed_dim``) are exempt unless they equal the base's variable of the same name, and
a ``_delete_=True`` dict is a replacement, so its contents are not compared.
"""
import ast
import glob
import os.path as osp
import subprocess
import sys
import tempfile
import types

import pytest

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

from mmengine.config import Config  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs')
CONFIGS = sorted(glob.glob(osp.join(CONFIG_DIR, 'mm*', '*.py')))


def _name(path):
    return osp.relpath(path, CONFIG_DIR)


def _plain(value):
    """Tuples as lists and ConfigDicts as dicts, so equal configs compare equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _merged_bases(path, bases):
    """The merged ``_base_`` configs of ``path`` (a ConfigDict), as mmengine sees them."""
    bases = [b if '::' in b else osp.abspath(osp.join(osp.dirname(path), b)) for b in bases]
    with tempfile.TemporaryDirectory() as tmp:
        probe = osp.join(tmp, 'bases.py')
        with open(probe, 'w') as f:
            f.write(f'_base_ = {bases!r}\n')
        return Config.fromfile(probe)._cfg_dict


def _own_values(path):
    """(values the file sets, names the file reads, merged bases) of a config file.

    Plain aliases (``test_dataloader = val_dataloader``) are left out: the aliased value is
    checked under its own name.
    """
    tree = ast.parse(open(path).read())
    bases, body, aliases, read = None, [], set(), set()
    for node in tree.body:
        target = (node.targets[0].id if isinstance(node, ast.Assign)
                  and isinstance(node.targets[0], ast.Name) else None)
        if target == '_base_':
            bases = ast.literal_eval(node.value)
            continue
        body.append(node)
        if target is not None and isinstance(node.value, ast.Name):
            aliases.add(target)
            continue
        read |= {n.id for n in ast.walk(node)
                 if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if bases is None:
        return None, None, None
    base = _merged_bases(path, bases if isinstance(bases, list) else [bases])
    namespace = {'_base_': base}
    exec(compile(ast.Module(body=body, type_ignores=[]), path, 'exec'), namespace)
    own = {k: v for k, v in namespace.items()
           if k != '_base_' and not k.startswith('__') and k not in aliases
           and not isinstance(v, (types.ModuleType, types.FunctionType))}
    return own, read, base.to_dict()


def _redundant(value, base, where):
    """Paths below ``where`` at which ``value`` only repeats ``base``."""
    if isinstance(value, dict):
        if value.get('_delete_') or not isinstance(base, dict):
            return []
        return [p for k, v in value.items() if k in base
                for p in _redundant(v, base[k], f'{where}.{k}')]
    return [where] if _plain(value) == _plain(base) else []


def redundant_values(path):
    """The values a config sets that its bases already have (empty: the config is minimal)."""
    own, read, base = _own_values(path)
    if own is None:
        return []
    found = []
    for key, value in own.items():
        if key not in base:
            continue
        if key in read:  # a helper the file reads: only the whole value counts
            if _plain(value) == _plain(base[key]):
                found.append(key)
        else:
            found += _redundant(value, base[key], key)
    return found


def test_redundancy_check_finds_restated_values(tmp_path):
    """The check itself: a restated leaf, a restated helper and a restated list are found."""
    (tmp_path / 'base.py').write_text(
        "norm = dict(type='BN', requires_grad=True)\n"
        "model = dict(type='M', depth=2, head=dict(norm=norm, channels=8))\n"
        "ratios = [0.5, 1.0]\n")
    (tmp_path / 'child.py').write_text(
        "_base_ = ['./base.py']\n"
        "norm = dict(type='BN', requires_grad=True)\n"
        "model = dict(depth=3, head=dict(norm=norm, channels=8), neck=dict(_delete_=True, x=1))\n"
        "ratios = (0.5, 1.0)\n"
        "other = model\n")
    assert sorted(redundant_values(str(tmp_path / 'child.py'))) == [
        'model.head.channels', 'model.head.norm.requires_grad', 'model.head.norm.type', 'norm',
        'ratios']


@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_config_states_only_what_differs(path):
    assert redundant_values(path) == []


@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_custom_imports_name_the_package_only(path):
    """``import mmlocalmamba`` registers every module; the configs import nothing else."""
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmlocalmamba'], allow_failed_imports=False)


def test_import_mmlocalmamba_registers_every_config_type():
    """What the configs name is registered by ``import mmlocalmamba`` alone (fresh process)."""
    code = (
        'import mmlocalmamba, sys\n'
        'from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS\n'
        "assert 'mmlocalmamba.engine' in sys.modules\n"
        "for name in ('LocalVMamba', 'LocalVim', 'SimpleFeaturePyramid', 'LN2d', "
        "'MM_LocalVSSM', 'MM_LocalVim'):\n"
        '    assert MODELS.get(name) is not None, name\n'
        "for name in ('RNGStateHook', 'ArchWeightsLoggerHook'):\n"
        '    assert HOOKS.get(name) is not None, name\n'
        "assert OPTIM_WRAPPER_CONSTRUCTORS.get('LayerDecayOptimWrapperConstructor')\n")
    subprocess.run([sys.executable, '-c', code], check=True, cwd=tempfile.gettempdir())
