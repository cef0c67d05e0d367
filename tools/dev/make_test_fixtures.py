#!/usr/bin/env python
"""Regenerate ``tests/data/`` (the compact golden fixtures) from the reference goldens.

    python tools/dev/make_test_fixtures.py [--reference ../shared/reference] [--out tests/data]

The reference goldens (``<reference>/golden/*.pt``, made by the official code) are about 28 MB.
This cuts the few MB that let a plain clone run the float64 fidelity tests. Nothing is computed:
every tensor is taken from a golden as it is.

* ``local_vssm_backbone_nonsquare``: ``local_vssm_backbone`` case 1 (64x96 input: 16x24 and 8x12
  maps, ``w7`` window padding, ``v``/``v_flip`` on non-square maps), cut to its first two stages:
  their weights and the two outputs they produce (no gradients: the golden's belong to the loss
  over all four stages);
* ``local_vssm_search_supernet``: the LocalVMamba search supernet (64x96, all 8 candidates in
  every block, softmax-weighted merge), the whole model with outputs and gradients;
* ``local_vim_backbone_nonsquare``: ``local_vim_backbone`` case 1 (80x112: 5x7 tokens, position
  and rope tables resized, ``w2``/``w7`` padding, LayerNorm, unfused add), the whole model with
  outputs and gradients.

A cut fixture is the golden with ``config`` (depths, directions, out_indices) and
``state_dict`` reduced to the kept stages, ``cases`` to the one case and its first ``keep``
outputs. The outputs of the first stages of a model do not depend on the later ones, so the cut
is exact. A whole-model fixture keeps the input gradient and the parameter gradients of at most
:data:`MAX_GRAD_NUMEL` elements. Outputs and gradients are the goldens' float64 values; the
official float32 outputs are left out (the float32 check compares with the float64 ones). The files are ``torch.save`` dicts of plain tensors,
numbers, strings and lists (``torch.load(weights_only=True)`` reads them), written so that the
same reference gives the same bytes.
"""
import argparse
import copy
import hashlib
import os
import os.path as osp
import re

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

#: (fixture name, source golden, case index, stages/layers kept: None keeps the whole model)
FIXTURES = (
    ('local_vssm_backbone_nonsquare', 'local_vssm_backbone', 1, 2),
    ('local_vssm_search_supernet', 'local_vssm_search_supernet', 0, None),
    ('local_vim_backbone_nonsquare', 'local_vim_backbone', 1, None),
)
#: Parameter gradients larger than this are left out (the input gradient is always kept).
MAX_GRAD_NUMEL = 8192

_CASE_KEYS = ('input', 'outputs', 'loss_weights', 'loss', 'grads')


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _own(value):
    """A copy that owns its memory (``torch.save`` writes a view's whole storage)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().contiguous()
    if isinstance(value, dict):
        return {k: _own(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_own(v) for v in value]
    return value


def _vssm_keeps(key: str, stages: int) -> bool:
    """Weights of the first ``stages`` stages (the last kept stage without its downsample)."""
    layer = re.match(r'layers\.(\d+)\.(blocks|downsample)\.', key)
    if layer:
        i = int(layer.group(1))
        return i < stages - 1 or (i == stages - 1 and layer.group(2) == 'blocks')
    norm = re.match(r'outnorm(\d+)\.', key)
    if norm:
        return int(norm.group(1)) < stages
    return key.startswith('patch_embed.')


def _vim_keeps(key: str, layers: int) -> bool:
    """Weights of the first ``layers`` layers and their output norms, and the embeddings."""
    layer = re.match(r'(layers\.|outnorm_)(\d+)\.', key)
    return int(layer.group(2)) < layers if layer else True


def _cut_config(golden: dict, keep: int) -> dict:
    config = copy.deepcopy(golden['config'])
    if golden['class'] == 'Backbone_LocalVSSM':
        config['depths'] = config['depths'][:keep]
        config['directions'] = config['directions'][:sum(config['depths'])]
    elif golden['class'] == 'Backbone_LocalVisionMamba':
        config['depth'] = keep
        config['directions'] = config['directions'][:keep]
    else:
        raise ValueError(f'Only backbone goldens can be cut, not {golden["class"]}.')
    if config['out_indices'] != list(range(len(config['out_indices']))):
        raise ValueError(f'Expected out_indices 0, 1, ..., got {config["out_indices"]}.')
    config['out_indices'] = list(range(keep))
    return config


def make_fixture(golden: dict, case: int, keep, source: str, sha256: str) -> dict:
    """The compact fixture of ``golden`` (see the module docstring)."""
    data = golden['cases'][case]
    fixture = dict(name='', source=source, source_sha256=sha256, source_case=case,
                   **{k: golden[k] for k in ('class', 'config', 'forward', 'mode', 'description',
                                             'outputs_desc')})
    if keep is None:
        fixture['cut'] = 'whole model, one case'
        fixture['state_dict'] = _own(golden['state_dict'])
        case_data = {k: data[k] for k in _CASE_KEYS}
        case_data['grads'] = {k: v for k, v in data['grads'].items()
                              if k == 'input' or v.numel() <= MAX_GRAD_NUMEL}
        fixture['cases'] = [_own(case_data)]
        return fixture
    keeps = _vssm_keeps if golden['class'] == 'Backbone_LocalVSSM' else _vim_keeps
    fixture['config'] = _cut_config(golden, keep)
    fixture['cut'] = (f'first {keep} stages/layers and their {keep} outputs (no loss or '
                      f'gradients: those of the golden include the later outputs)')
    fixture['state_dict'] = {k: _own(v) for k, v in golden['state_dict'].items() if keeps(k, keep)}
    fixture['cases'] = [dict(input=_own(data['input']), outputs=_own(data['outputs'][:keep]))]
    return fixture


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--reference', default=osp.join(ROOT, '..', 'shared', 'reference'),
                        help='the reference folder with golden/*.pt (default: ../shared/reference)')
    parser.add_argument('--out', default=osp.join(ROOT, 'tests', 'data'),
                        help='where the fixtures go (default: tests/data)')
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for name, source, case, keep in FIXTURES:
        path = osp.join(args.reference, 'golden', f'{source}.pt')
        golden = torch.load(path, map_location='cpu', weights_only=True)
        fixture = make_fixture(golden, case, keep, f'golden/{source}.pt', _sha256(path))
        fixture['name'] = name
        out = osp.join(args.out, f'{name}.pt')
        torch.save(fixture, out)
        written.append(out)
        print(f'{out}: {osp.getsize(out) / 1e6:.2f} MB from {source}.pt case {case}')
    total = sum(osp.getsize(p) for p in written)
    print(f'{len(written)} fixtures, {total / 1e6:.2f} MB')
    return written


if __name__ == '__main__':
    main()
