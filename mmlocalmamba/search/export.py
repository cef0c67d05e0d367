"""Export the directions found by a search: top-k per layer, JSON, config snippet, heatmap.

Works on any checkpoint whose state dict holds supernet layers (parameters named
``...multi_scan.weights``): mmengine detection/segmentation checkpoints (``backbone.`` prefix),
checkpoints of :func:`mmlocalmamba.apis.search_cls.search_classification`, official-style
classification checkpoints (``{'model': ...}`` / ``{'state_dict': ...}``) and plain state dicts.

Selection rule (the paper's): per layer, the ``k`` candidates with the largest
``softmax(weights)``, listed in candidate order (indices sorted ascending), so that the result
reads like every released direction list. Ties go to the lower candidate index.
"""
import json
import os
import os.path as osp
import re
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log

from ..ops.scan_orders import ALL_DIRECTIONS, check_direction
from ..utils.checkpoint import extract_state_dict, load_checkpoint_file
from .arch import ARCH_PARAM_KEY, layer_label

__all__ = [
    'DirectionSearchResult', 'load_arch_logits', 'select_topk', 'export_directions',
    'infer_arch', 'format_snippet', 'save_json', 'plot_heatmap', 'export_all'
]

_VMAMBA_LAYER = re.compile(r'^layers\.(\d+)\.blocks\.(\d+)\.op\.multi_scan$')
_VIM_LAYER = re.compile(r'^layers\.(\d+)\.mixer\.multi_scan$')


@dataclass
class DirectionSearchResult:
    """What :func:`export_directions` found.

    Attributes:
        layers: module names of the search layers (``'layers.0.blocks.0.op.multi_scan'``).
        candidates: per layer, its K candidate directions.
        probs: per layer, ``softmax(weights)`` (K floats, candidate order).
        topk: how many directions were kept per layer.
        chosen: per layer, the kept candidate indices, ascending.
        directions: per layer, the kept direction names (``directions=`` of a normal model).
        arch: the sizes of the supernet inferred from its tensor shapes: ``dims``/``depths`` (and
            SSM sizes that differ from the defaults) of a LocalVMamba, ``embed_dim``/``depth`` of
            a LocalVim; None for other models.
        source: where the weights came from.
    """
    layers: List[str]
    candidates: List[List[str]]
    probs: List[List[float]]
    topk: int
    chosen: List[List[int]]
    directions: List[List[str]]
    arch: Optional[dict] = None
    source: str = ''
    entropy: List[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _load(checkpoint) -> dict:
    """The checkpoint dict; a file is loaded onto the CPU, with log lines (large files take a
    while: full detector checkpoints of the big models hold hundreds of MB)."""
    if isinstance(checkpoint, (str, os.PathLike)):
        size = osp.getsize(checkpoint) / 2**20 if osp.isfile(checkpoint) else 0.0
        print_log(f'Loading the supernet checkpoint {os.fspath(checkpoint)} ({size:.1f} MiB) ...',
                  logger='current')
        start = time.perf_counter()
        ckpt = load_checkpoint_file(checkpoint, map_location='cpu')
        print_log(f'Loaded in {time.perf_counter() - start:.1f} s.', logger='current')
        return ckpt
    if isinstance(checkpoint, dict):
        return checkpoint
    raise TypeError(f'checkpoint must be a path or a loaded dict, got {type(checkpoint).__name__}.')


def _stored_candidates(ckpt: dict) -> Optional[List[List[str]]]:
    """``search_space['candidates']`` written by the hook/trainer (top level or in ``meta``)."""
    for holder in (ckpt, ckpt.get('meta') if isinstance(ckpt.get('meta'), dict) else None):
        space = holder.get('search_space') if isinstance(holder, dict) else None
        if isinstance(space, dict) and space.get('candidates'):
            return [list(c) for c in space['candidates']]
    return None


def load_arch_logits(checkpoint: Union[str, os.PathLike, dict],
                     prefix: Optional[str] = None
                     ) -> Tuple['OrderedDict[str, torch.Tensor]', Optional[List[List[str]]], dict]:
    """The architecture weights of a supernet checkpoint.

    Args:
        checkpoint: path or URL (loaded with
            :func:`~mmlocalmamba.utils.checkpoint.load_checkpoint_file`: checked
            ``weights_only``, ``$MMLOCALMAMBA_TRUST_CHECKPOINTS`` honoured) or a loaded dict.
        prefix: keep only keys under it (e.g. ``'backbone.'``); None strips ``backbone.``
            automatically (see :func:`mmlocalmamba.utils.checkpoint.extract_state_dict`).

    Returns:
        ``({layer name: (K,) float64 logits}, stored candidates or None, state dict)``, layers in
        state-dict (= module) order.

    Raises:
        KeyError: the checkpoint holds no ``multi_scan.weights`` (not a supernet).
    """
    ckpt = _load(checkpoint)
    state = extract_state_dict(ckpt, prefix)
    logits = OrderedDict((k[:-len('.weights')], v.detach().double().flatten())
                         for k, v in state.items() if k.endswith(ARCH_PARAM_KEY))
    if not logits:
        raise KeyError(f'No architecture weights (keys ending with {ARCH_PARAM_KEY!r}) in the '
                       f'checkpoint: it is not a direction-search supernet. First keys: '
                       f'{list(state)[:5]}.')
    return logits, _stored_candidates(ckpt), state


def select_topk(probs: torch.Tensor, k: int) -> List[int]:
    """Indices of the ``k`` largest entries of a (K,) tensor, sorted ascending.

    Ties are broken towards the lower index.
    """
    probs = probs.flatten()
    if not 1 <= k <= probs.numel():
        raise ValueError(f'topk must be in [1, {probs.numel()}], got {k}.')
    order = sorted(range(probs.numel()), key=lambda i: (-float(probs[i]), i))
    return sorted(order[:k])


def _infer_vmamba_arch(state: Dict[str, torch.Tensor], layers: Sequence[str]) -> Optional[dict]:
    parsed = [_VMAMBA_LAYER.match(name) for name in layers]
    if not parsed or not all(parsed):
        return None
    stage_blocks: Dict[int, int] = OrderedDict()
    for m in parsed:
        stage, block = int(m.group(1)), int(m.group(2))
        stage_blocks[stage] = max(stage_blocks.get(stage, -1), block)
    stages = sorted(stage_blocks)
    depths = [stage_blocks[s] + 1 for s in stages]
    if stages != list(range(len(stages))) or sum(depths) != len(layers):
        return None
    try:
        dims = [int(state[f'layers.{s}.blocks.0.norm.weight'].shape[0]) for s in stages]
        op = 'layers.0.blocks.0.op.'
        d_inner = int(state[op + 'out_norm.weight'].shape[0])
        d_state = int(state[op + 'A_logs'].shape[1])
        rank = int(state[op + 'dt_projs_weight'].shape[2])
    except KeyError:
        return None
    arch = dict(dims=dims, depths=depths)
    if d_state != 16:
        arch['d_state'] = d_state
    if d_inner != 2 * dims[0]:
        arch['ssm_ratio'] = d_inner / dims[0]
    if rank != -(-dims[0] // 16):
        arch['dt_rank'] = rank
    return arch


def _infer_vim_arch(state: Dict[str, torch.Tensor], layers: Sequence[str]) -> Optional[dict]:
    parsed = [_VIM_LAYER.match(name) for name in layers]
    if not parsed or not all(parsed):
        return None
    if [int(m.group(1)) for m in parsed] != list(range(len(layers))):
        return None
    weight = state.get('patch_embed.proj.weight')
    if weight is None:
        return None
    return dict(embed_dim=int(weight.shape[0]), depth=len(layers))


def infer_arch(state: Dict[str, torch.Tensor], layers: Sequence[str]) -> Optional[dict]:
    """The supernet's sizes from its state dict: ``dims``/``depths`` of a LocalVMamba (SSM sizes
    ``d_state``, ``ssm_ratio``, ``dt_rank`` only when they differ from the defaults 16, 2.0,
    'auto'), ``embed_dim``/``depth`` of a LocalVim; None for anything else."""
    return _infer_vmamba_arch(state, layers) or _infer_vim_arch(state, layers)


def export_directions(checkpoint: Union[str, os.PathLike, dict],
                      topk: int = 4,
                      candidates: Optional[Sequence[str]] = None,
                      prefix: Optional[str] = None) -> DirectionSearchResult:
    """Pick the top-``topk`` directions of every search layer of a supernet checkpoint.

    Args:
        checkpoint: path or loaded dict (any layout of :func:`load_arch_logits`).
        topk: directions kept per layer. Default: 4 (as in the paper).
        candidates: the supernet's candidate list, if it was built with a custom one. Default:
            the list stored in the checkpoint by the search tools, else the paper's 8.
        prefix: state-dict prefix of the backbone; None detects ``backbone.``.

    Raises:
        ValueError: the number of candidates does not match the weights.
    """
    logits, stored, state = load_arch_logits(checkpoint, prefix)
    layers = list(logits)
    if candidates is not None:
        cands = [[check_direction(d) for d in candidates]] * len(layers)
    elif stored is not None:
        if len(stored) != len(layers):
            raise ValueError(f'The checkpoint describes {len(stored)} search layers but holds '
                             f'{len(layers)} architecture weights.')
        cands = stored
    else:
        cands = [list(ALL_DIRECTIONS)] * len(layers)
    probs, chosen, directions, entropy = [], [], [], []
    for name, cand in zip(layers, cands):
        w = logits[name]
        if w.numel() != len(cand):
            raise ValueError(
                f'{name}.weights has {w.numel()} entries but {len(cand)} candidates '
                f'({list(cand)}) were given; pass the candidate list the supernet was built with '
                f'(candidates=... / --candidates).')
        p = torch.softmax(w, dim=0)
        idx = select_topk(p, topk)
        probs.append([float(v) for v in p])
        chosen.append(idx)
        directions.append([cand[i] for i in idx])
        ent = -(p.clamp_min(1e-300) * p.clamp_min(1e-300).log()).sum() / torch.log(
            torch.tensor(float(len(cand)), dtype=torch.float64))
        entropy.append(float(ent) if len(cand) > 1 else 0.0)
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else '<dict>'
    return DirectionSearchResult(layers=layers, candidates=[list(c) for c in cands],
                                 probs=probs, topk=topk, chosen=chosen, directions=directions,
                                 arch=infer_arch(state, layers), source=source,
                                 entropy=entropy)


def format_snippet(result: DirectionSearchResult) -> str:
    """Python text to paste into a config.

    For a LocalVMamba or LocalVim supernet it is a ``model = dict(backbone=dict(arch=dict(
    <sizes>, directions=[...])))`` override: merged into the supernet's config it trains the found
    architecture at the supernet's size. The list has one entry per block, so it also fits any
    model of the same depths (e.g. ``dims=96`` for LocalVMamba-T after a ``tiny_search``).
    Other models get a plain ``directions = [...]`` list.
    """
    k = max(len(c) for c in result.candidates)
    head = [f'# Scan directions found by direction search: top-{result.topk} of {k} candidates '
            'per layer,', f'# from {result.source}.']
    rows = [f"{[str(d) for d in dirs]},  # {layer_label(name)}"
            for name, dirs in zip(result.layers, result.directions)]
    if result.arch is None:
        body = ''.join(f'    {row}\n' for row in rows)
        return '\n'.join(head) + '\ndirections = [\n' + body + ']\n'
    sizes = ', '.join(f'{key}={value!r}' for key, value in result.arch.items())
    head.append(f'# One list per block: it fits every model of the same depth(s). The sizes '
                f'({sizes})')
    head.append("# are the supernet's; change them to train the found directions at another "
                'width.')
    arch_items = ''.join(f'            {key}={value!r},\n' for key, value in result.arch.items())
    body = ''.join(f'                {row}\n' for row in rows)
    return ('\n'.join(head) + '\nmodel = dict(\n    backbone=dict(\n        arch=dict(\n' +
            arch_items + '            directions=[\n' + body + '            ])))\n')


def save_json(result: DirectionSearchResult, path: str) -> str:
    """Write the result (all fields) as JSON; returns the path."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result.to_dict(), f, indent=2)
        f.write('\n')
    return path


def plot_heatmap(result: DirectionSearchResult, path: str, title: Optional[str] = None,
                 dpi: int = 120) -> str:
    """Draw layers x candidates ``softmax(weights)`` as a PNG; chosen cells are framed.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).

    Returns:
        the path written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as err:  # pragma: no cover - matplotlib is in the 'tests' extra
        raise ImportError('plot_heatmap needs matplotlib: pip install matplotlib') from err
    import numpy as np

    num_layers = len(result.layers)
    width = max(len(c) for c in result.candidates)
    probs = np.full((num_layers, width), np.nan)
    for i, row in enumerate(result.probs):
        probs[i, :len(row)] = row
    same = all(c == result.candidates[0] for c in result.candidates)
    xlabels = result.candidates[0] if same else [f'cand {j}' for j in range(width)]

    fig = Figure(figsize=(1.6 + 0.85 * width, 1.6 + 0.36 * num_layers), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    # Colour range of the data itself: early in a search all values are close to 1/K.
    vmin, vmax = float(np.nanmin(probs)), float(np.nanmax(probs))
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 1e-3, vmax + 1e-3
    image = ax.imshow(probs, cmap='YlGnBu', vmin=vmin, vmax=vmax, aspect='auto',
                      interpolation='nearest')
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, label='softmax(weights)')
    digits = 3 if vmax - vmin < 0.1 else 2
    for i in range(num_layers):
        chosen = set(result.chosen[i])
        for j, p in enumerate(result.probs[i]):
            dark = (p - vmin) / (vmax - vmin) > 0.55
            ax.text(j, i, f'{p:.{digits}f}', ha='center', va='center', fontsize=7,
                    color='white' if dark else 'black',
                    fontweight='bold' if j in chosen else 'normal')
        for j in chosen:
            ax.add_patch(Rectangle((j - 0.42, i - 0.40), 0.84, 0.80, fill=False,
                                   edgecolor='red', linewidth=1.8))
    # Stage borders of a LocalVMamba supernet.
    stages = [(_VMAMBA_LAYER.match(n).group(1) if _VMAMBA_LAYER.match(n) else None)
              for n in result.layers]
    for i in range(1, num_layers):
        if stages[i] is not None and stages[i] != stages[i - 1]:
            ax.axhline(i - 0.5, color='dimgray', linewidth=1.2)
    ax.set_xticks(range(width))
    ax.set_xticklabels(xlabels, rotation=45, ha='right')
    ax.set_yticks(range(num_layers))
    ax.set_yticklabels([layer_label(n) for n in result.layers], fontsize=8)
    ax.set_xlabel('candidate direction')
    ax.set_ylabel('layer')
    ax.set_title(title or f'Direction search: softmax(weights) per layer; red frame = top-'
                 f'{result.topk}', fontsize=10)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def export_all(checkpoint, out_dir: str, topk: int = 4,
               candidates: Optional[Sequence[str]] = None, prefix: Optional[str] = None,
               name: str = 'directions') -> Tuple[DirectionSearchResult, Dict[str, str]]:
    """Export and write ``<name>.json``, ``<name>.py`` (config snippet) and ``<name>.png``.

    Returns:
        (the result, ``{'json': path, 'snippet': path, 'png': path}``).
    """
    result = export_directions(checkpoint, topk=topk, candidates=candidates, prefix=prefix)
    print_log(f'Top-{topk} directions of {len(result.layers)} search layers; writing '
              f'{name}.json, {name}.py and {name}.png to {out_dir}', logger='current')
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(json=osp.join(out_dir, f'{name}.json'),
                 snippet=osp.join(out_dir, f'{name}.py'),
                 png=osp.join(out_dir, f'{name}.png'))
    save_json(result, paths['json'])
    with open(paths['snippet'], 'w') as f:
        f.write(format_snippet(result))
    plot_heatmap(result, paths['png'])
    return result, paths
