"""The user documentation (README and docs/) points at files that exist and speaks to users.

Every ``configs/...py`` and ``tools/...`` path it names exists (``{t,s}`` alternatives expanded),
it has no internal references (the development set-up's ``../shared/``, issue numbers), and the
demo's figures are given as approximate. ``docs/benchmarks.md`` and ``docs/kernel_notes.md`` are
measurement logs and are only checked for paths.
"""
import glob
import itertools
import os.path as osp
import re

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOCS = [osp.join(ROOT, 'README.md')] + sorted(glob.glob(osp.join(ROOT, 'docs', '*.md')))
LOGS = {'benchmarks.md', 'kernel_notes.md'}
PATH = re.compile(r'(?<![\w./-])((?:configs|tools)/[\w./{},*-]+\.(?:py|sh|md))')


def _name(path):
    return osp.relpath(path, ROOT)


def _expand(pattern):
    """``a-{t,s}_b.py`` -> ``a-t_b.py``, ``a-s_b.py``."""
    parts = re.split(r'\{([^{}]*)\}', pattern)
    choices = [[p] if i % 2 == 0 else p.split(',') for i, p in enumerate(parts)]
    return [''.join(c) for c in itertools.product(*choices)]


@pytest.mark.parametrize('doc', DOCS, ids=_name)
def test_named_files_exist(doc):
    with open(doc) as f:
        text = f.read()
    missing = []
    for pattern in PATH.findall(text):
        for path in _expand(pattern):
            if '*' in path or '…' in path:
                if not glob.glob(osp.join(ROOT, path)):
                    missing.append(path)
            elif not osp.exists(osp.join(ROOT, path)):
                missing.append(path)
    assert not missing


@pytest.mark.parametrize('doc', [d for d in DOCS if osp.basename(d) not in LOGS], ids=_name)
def test_no_internal_references(doc):
    with open(doc) as f:
        text = f.read()
    assert '../shared' not in text
    assert not re.search(r'\bissue \d+', text, re.IGNORECASE)


def test_readme_gives_the_demo_figures_as_approximate():
    with open(osp.join(ROOT, 'README.md')) as f:
        text = f.read()
    assert 'bash tools/run_demo.sh' in text and 'bash tools/run_tests.sh' in text
    assert 'bbox mAP 0.57–0.58' in text and 'about 94.7' in text and 'about 95.6' in text
    assert not re.search(r'0\.581|0\.705|94\.70|95\.65', text)
