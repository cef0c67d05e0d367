"""The command-line tools: thin wrappers over the installed package.

No tool edits ``sys.path`` (the package is installed, editable or not), the kernel-development
tools live in ``tools/dev/`` with a README that describes each of them, and every Python tool
answers ``--help`` from another working directory.
"""
import glob
import os.path as osp
import re
import subprocess
import sys
import tempfile

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = sorted(glob.glob(osp.join(ROOT, 'tools', '**', '*.py'), recursive=True))


def _name(path):
    return osp.relpath(path, ROOT)


@pytest.mark.parametrize('path', TOOLS, ids=_name)
def test_no_tool_edits_sys_path(path):
    with open(path) as f:
        source = f.read()
    assert not re.search(r'sys\.path\.(insert|append|extend)|sys\.path\s*[+=]', source)


def test_developer_tools_are_in_tools_dev_and_documented():
    dev = sorted(osp.basename(p) for p in glob.glob(osp.join(ROOT, 'tools', 'dev', '*.py')))
    assert {'profile_backbone.py', 'scan_sass_report.py'} <= set(dev)
    assert not set(dev) & {osp.basename(p) for p in glob.glob(osp.join(ROOT, 'tools', '*.py'))}
    with open(osp.join(ROOT, 'tools', 'dev', 'README.md')) as f:
        readme = f.read()
    for name in dev:
        assert f'`{name}`' in readme, name


HELP_TOOLS = ['dev/profile_backbone.py', 'get_flops.py', 'make_demo_data.py', 'search_directions.py',
              'search_cls.py', 'train.py', 'test.py']
RUN_HELP = """
import runpy, sys
for path in sys.argv[1:]:
    sys.argv = [path, '--help']
    try:
        runpy.run_path(path, run_name='__main__')
    except SystemExit as stop:
        assert stop.code == 0, (path, stop.code)
    print('HELP-OK', path)
"""


def test_tools_run_from_another_directory():
    """``--help`` from a temporary directory: the imports resolve through the installed package.

    (One interpreter runs all of them: each tool as ``__main__``, as ``python tools/X.py`` does.)
    """
    paths = [osp.join(ROOT, 'tools', name) for name in HELP_TOOLS]
    out = subprocess.run([sys.executable, '-c', RUN_HELP] + paths, cwd=tempfile.gettempdir(),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    for path in paths:
        assert f'HELP-OK {path}' in out.stdout, path
