"""The package's layering rules (tools/dev/check_layout.py): the real package and the checker."""
import importlib.util
import os.path as osp


ROOT = osp.join(osp.dirname(__file__), '..')


def _checker():
    spec = importlib.util.spec_from_file_location(
        'check_layout', osp.join(ROOT, 'tools', 'dev', 'check_layout.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_follows_the_layout_rules():
    assert _checker().check(osp.join(ROOT, 'mmlocalmamba')) == []


def _write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_each_kind_of_violation(tmp_path):
    pkg = tmp_path / 'mmlocalmamba'
    _write(pkg, {
        '__init__.py': '',
        'ops/__init__.py': '',
        'ops/a.py': 'import os\nLEVEL = os.environ.get("MMLOCALMAMBA_X")\nfrom . import b\n',
        'ops/b.py': 'from .a import LEVEL\n\ndef v3_kernel():\n    pass\n',
        'ops/triton/__init__.py': 'from ..a import LEVEL\n',
        'ops/scan_v2.py': '',
        'models/__init__.py': '',
        'models/m.py': 'x = 1\n',
        'utils/__init__.py': '',
        'utils/u.py': 'def f():\n    from ..models.m import x\n    return x\n',
    })
    problems = '\n'.join(_checker().check(str(pkg)))
    assert 'import cycle: mmlocalmamba.ops.a -> mmlocalmamba.ops.b' in problems
    assert "identifier 'v3_kernel' is named after a version" in problems
    assert 'scan_v2.py: module named after a version' in problems
    assert 'leaf package ops/triton imports mmlocalmamba.ops.a' in problems
    assert 'mmlocalmamba.utils.u (utils) imports the higher layer mmlocalmamba.models.m' in (
        problems)
    assert "ops read the setting 'MMLOCALMAMBA_X'" in problems
    assert 'ops read an environment variable' in problems


def test_checker_accepts_a_clean_package(tmp_path):
    pkg = tmp_path / 'mmlocalmamba'
    _write(pkg, {
        '__init__.py': 'from .models import m\n',
        'ops/__init__.py': '',
        'ops/a.py': 'import os\nINTERP = os.environ.get("TRITON_INTERPRET", "0")\n',
        'models/__init__.py': '',
        'models/m.py': 'from ..ops.a import INTERP\nofficial_v_reverse = True\n',
    })
    assert _checker().check(str(pkg)) == []
