"""Fidelity to the official code from any clone: the compact golden fixtures of ``tests/data``.

``tests/data`` holds cuts of the reference goldens (``tools/dev/make_test_fixtures.py``): the
LocalVMamba backbone on a non-square input with window padding (its first two stages), the
LocalVMamba search supernet and the LocalVim backbone on a non-square input (whole models, with
gradients). These tests need nothing outside the repository; the full set in
``../shared/reference`` is checked by ``test_local_vmamba.py`` and ``test_local_vim.py``.
"""
import glob
import os.path as osp
import runpy

import pytest
import torch

from .conftest import DATA, check_golden_float64, compact_fixture, max_rel, reference_path
from .test_local_vim import _build_golden as build_vim_model
from .test_local_vim import _run_golden as run_vim
from .test_local_vmamba import build_golden_model as build_vmamba_model
from .test_local_vmamba import run_golden as run_vmamba

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FIXTURES = {
    'local_vssm_backbone_nonsquare': (build_vmamba_model, lambda fixture: run_vmamba),
    'local_vssm_search_supernet': (build_vmamba_model, lambda fixture: run_vmamba),
    'local_vim_backbone_nonsquare': (build_vim_model,
                                     lambda fixture: lambda m, x: run_vim(m, fixture, x)),
}


def _maker() -> dict:
    """The namespace of tools/dev/make_test_fixtures.py."""
    return runpy.run_path(osp.join(ROOT, 'tools', 'dev', 'make_test_fixtures.py'))


@pytest.mark.parametrize('name', sorted(FIXTURES))
def test_fidelity_float64_compact(name):
    fixture = compact_fixture(name)
    build, runner = FIXTURES[name]
    model = build(fixture).double()
    check_golden_float64(runner(fixture), model, fixture['cases'][0])


@pytest.mark.parametrize('name', sorted(FIXTURES))
def test_fidelity_float32_compact(name):
    fixture = compact_fixture(name)
    build, runner = FIXTURES[name]
    case = fixture['cases'][0]
    with torch.no_grad():
        outs = runner(fixture)(build(fixture), case['input'])
    assert len(outs) == len(case['outputs'])
    for out, ref in zip(outs, case['outputs']):
        assert out.dtype == torch.float32
        assert max_rel(out, ref) <= 1e-4


def test_fidelity_compact_fixtures_cover_what_they_claim():
    """Non-square maps with v scans and window padding, the supernet, gradients for both."""
    vssm = compact_fixture('local_vssm_backbone_nonsquare')
    assert vssm['class'] == 'Backbone_LocalVSSM' and vssm['config']['depths'] == [1, 1]
    assert [tuple(o.shape[2:]) for o in vssm['cases'][0]['outputs']] == [(16, 24), (8, 12)]
    assert 'v' in vssm['config']['directions'][1] and 'w7' in vssm['config']['directions'][0]
    # the corrected v reverse gives other outputs exactly where a v scan meets a non-square map
    fixed = build_vmamba_model(vssm)
    for m in fixed.modules():
        if hasattr(m, 'official_v_reverse'):
            m.official_v_reverse = False
    with torch.no_grad():
        outs = fixed(vssm['cases'][0]['input'])
    ref = vssm['cases'][0]['outputs']
    assert max_rel(outs[0], ref[0]) <= 1e-4 and max_rel(outs[1], ref[1]) > 1e-2

    supernet = compact_fixture('local_vssm_search_supernet')
    assert supernet['config']['directions'] is None
    assert any(k.endswith('multi_scan.weights') for k in supernet['cases'][0]['grads'])
    vim = compact_fixture('local_vim_backbone_nonsquare')
    assert vim['class'] == 'Backbone_LocalVisionMamba'
    assert tuple(vim['cases'][0]['outputs'][0].shape[2:]) == (5, 7)
    for fixture in (supernet, vim):
        assert 'input' in fixture['cases'][0]['grads']


def test_compact_fixtures_are_small_and_listed():
    files = sorted(glob.glob(osp.join(DATA, '*.pt')))
    assert [osp.basename(f)[:-3] for f in files] == sorted(FIXTURES)
    assert [name for name, *_ in _maker()['FIXTURES']] == list(FIXTURES)
    assert sum(osp.getsize(f) for f in files) < 6e6


def test_compact_fixtures_are_cut_from_the_reference(tmp_path):
    """Regenerating from ../shared/reference gives the committed bytes (and so nothing in them
    is made up). Needs the reference folder."""
    reference = osp.dirname(reference_path('golden'))
    written = _maker()['main'](['--reference', reference, '--out', str(tmp_path)])
    assert len(written) == len(FIXTURES)
    for path in written:
        with open(path, 'rb') as new, open(osp.join(DATA, osp.basename(path)), 'rb') as old:
            assert new.read() == old.read(), osp.basename(path)
