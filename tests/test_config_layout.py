"""How the shipped configs are written: each states only what differs from its bases.

A config that repeats a value of its base hides which values are its own. For every config
under ``configs/`` with a ``_base_``, the file is executed on its own (as mmengine does, with
``_base_`` bound to the merged bases) and every value it sets is compared with the value the
bases already give: equal values are redundant. Python helper variables that the file itself
reads (e.g. ``embed_dim``) are exempt unless they equal the base's variable of the same name, and
a ``_delete_=True`` dict is a replacement, so its contents are not compared.
"""
import ast
import functools
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


@functools.lru_cache(maxsize=None)
def _resolved(path):
    """``Config.fromfile(path).to_dict()``, once per file (mmdet/mmseg bases load slowly)."""
    return Config.fromfile(path).to_dict()


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
    if bases is None or not body:  # no base, or nothing of its own
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


def test_custom_imports_name_the_package_only():
    """``import mmlocalmamba`` registers every module; the configs import nothing else.

    (The old names are checked through their equality with the new ones.)
    """
    for path in (p for p in CONFIGS if _name(p) not in RENAMED):
        assert _resolved(path)['custom_imports'] == dict(
            imports=['mmlocalmamba'], allow_failed_imports=False), _name(path)


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


# Config names before the OpenMMLab naming scheme -> their names now. The old files stay as
# one-line configs that inherit the new ones, so documented commands keep working.
RENAMED = {
    'mmdet/maskrcnn_localvmamba_t.py':
    'mmdet/mask-rcnn_localvmamba-t_fpn_1x_coco.py',
    'mmdet/maskrcnn_localvmamba_s.py':
    'mmdet/mask-rcnn_localvmamba-s_fpn_1x_coco.py',
    'mmdet/maskrcnn_localvmamba_t_ms-3x.py':
    'mmdet/mask-rcnn_localvmamba-t_fpn_ms-crop-3x_coco.py',
    'mmdet/maskrcnn_localvmamba_s_ms-3x.py':
    'mmdet/mask-rcnn_localvmamba-s_fpn_ms-crop-3x_coco.py',
    'mmdet/cascade-maskrcnn_localvim_t_lsj.py':
    'mmdet/cascade-mask-rcnn_localvim-t_sfp_lsj-100e_coco.py',
    'mmdet/cascade-maskrcnn_localvim_s_lsj.py':
    'mmdet/cascade-mask-rcnn_localvim-s_sfp_lsj-100e_coco.py',
    'mmdet/demo_maskrcnn_localvmamba.py':
    'mmdet/mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py',
    'mmdet/demo_cascade-maskrcnn_localvim.py':
    'mmdet/cascade-mask-rcnn_localvim-demo_sfp_1xb4-lsj-12e_demo-coco.py',
    'mmdet/search_maskrcnn_localvmamba_t_coco.py':
    'mmdet/mask-rcnn_localvmamba-t-search_fpn_1x_coco.py',
    'mmdet/search_maskrcnn_localvmamba_demo.py':
    'mmdet/mask-rcnn_localvmamba-demo-search_fpn_1xb4-8e_demo-coco.py',
    'mmseg/upernet_localvmamba_t_ade20k-512.py':
    'mmseg/upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py',
    'mmseg/upernet_localvmamba_s_ade20k-512.py':
    'mmseg/upernet_localvmamba-s_8xb2-160k_ade20k-512x512.py',
    'mmseg/upernet_localvim_t_ade20k-512.py':
    'mmseg/upernet_localvim-t_mln_8xb2-160k_ade20k-512x512.py',
    'mmseg/upernet_localvim_s_ade20k-512.py':
    'mmseg/upernet_localvim-s_mln_8xb2-160k_ade20k-512x512.py',
    'mmseg/demo_upernet_localvmamba.py':
    'mmseg/upernet_localvmamba-demo_1xb4-300iter_demo-ade-128x128.py',
    'mmseg/search_upernet_localvmamba_t_ade20k.py':
    'mmseg/upernet_localvmamba-t-search_8xb2-160k_ade20k-512x512.py',
    'mmseg/search_upernet_localvmamba_demo.py':
    'mmseg/upernet_localvmamba-demo-search_1xb4-300iter_demo-ade-128x128.py',
}
# {algorithm}_{backbone}[_{neck}]_[{gpus}x{batch}-]{schedule}_{dataset}[-{crop}].py
NAME_SCHEME = (r'^(mask-rcnn|cascade-mask-rcnn|upernet)_(localvmamba|localvim)-(t|s|demo)(-search)?'
               r'(_(fpn|sfp|mln))?_(\d+xb\d+-)?[a-z0-9-]+_(coco|demo-coco|ade20k-512x512|'
               r'demo-ade-128x128)\.py$')


def test_every_config_is_named_in_the_scheme_or_is_an_old_name():
    import re
    names = {_name(p) for p in CONFIGS}
    assert set(RENAMED) <= names and set(RENAMED.values()) <= names
    for name in names - set(RENAMED):
        assert re.match(NAME_SCHEME, osp.basename(name)), name


@pytest.mark.parametrize('old', sorted(RENAMED))
def test_old_config_name_is_one_line_inheriting_the_new_one(old):
    new = RENAMED[old]
    with open(osp.join(CONFIG_DIR, old)) as f:
        assert f.read() == f"_base_ = ['./{osp.basename(new)}']\n"
    assert Config.fromfile(osp.join(CONFIG_DIR, old)).to_dict() == _resolved(
        osp.join(CONFIG_DIR, new))


def test_ms_crop_3x_shares_the_1x_backbone_and_decay_rules():
    """The 3x configs change the schedule and pipeline of the 1x ones, nothing of the model."""
    for size in 'ts':
        name = osp.join(CONFIG_DIR, 'mmdet', f'mask-rcnn_localvmamba-{size}_fpn_{{}}_coco.py')
        one, three = (_resolved(name.format(s)) for s in ('1x', 'ms-crop-3x'))
        assert one['model'] == three['model']
        assert one['optim_wrapper'] == three['optim_wrapper']
        assert (one['train_cfg']['max_epochs'], three['train_cfg']['max_epochs']) == (12, 36)
