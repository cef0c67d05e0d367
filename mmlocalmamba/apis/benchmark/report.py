"""Ratios between same-run rows, and the markdown tables of a benchmark result (no torch).

The ratios follow the issues' conventions: throughput ratios (``infer``, ``train``: ours / the
peer's img/s, higher is better), memory ratios (``*_peak``) and time ratios (``*_step``,
``*_fwd``, ``*_fwd_bwd``: our time / the peer's, lower is better).
"""
from typing import Dict, List, Optional, Sequence

#: (ours, classification peer, backbone peer) for ``ratios_to_swin`` / ``ratios_to_deit``.
SWIN_PAIRS = (('LocalVMamba-T', 'Swin-T', 'Swin-T'), ('LocalVMamba-S', 'Swin-S', None),
              ('ConvNeXt-T', 'Swin-T', None))
DEIT_PAIRS = (('LocalVim-T', 'DeiT-T', 'ViT-Ti'), ('LocalVim-S', 'DeiT-S', None))
#: result keys of the row lists, by what they hold.
CLS_KEYS = {'swin': 'models', 'deit': 'vim_cls'}
BACKBONE_KEYS = {'swin': 'backbone', 'deit': 'vim_backbone'}
STEP_KEYS = {'det': 'det_step', 'seg': 'seg_step', 'det_vim': 'det_vim_step'}
DASH = '—'


def find_row(rows: Optional[Sequence[dict]], model: Optional[str], **match) -> Optional[dict]:
    """The first row of ``model`` without an error whose items include ``match``."""
    for row in rows or ():
        if (row.get('model') == model and 'error' not in row and
                all(row.get(k) == v for k, v in match.items())):
            return row
    return None


def _ratio(a: Optional[dict], b: Optional[dict], key: str) -> Optional[float]:
    if a is None or b is None or not a.get(key) or not b.get(key):
        return None
    return a[key] / b[key]


def _pair_ratios(result: dict, family: str, mine: str, cls_peer: str,
                 backbone_peer: Optional[str]) -> Dict[str, float]:
    rows = result.get(CLS_KEYS[family])
    a, b = find_row(rows, mine), find_row(rows, cls_peer)
    out = dict(infer=_ratio(a, b, 'infer_img_s'), train=_ratio(a, b, 'train_img_s'),
               train_peak=_ratio(a, b, 'train_peak_gib'))
    if backbone_peer:
        rows = result.get(BACKBONE_KEYS[family])
        for work in ('det', 'seg'):
            a, b = find_row(rows, mine, work=work), find_row(rows, backbone_peer, work=work)
            out[f'{work}_fwd'] = _ratio(a, b, 'fwd_ms')
            out[f'{work}_fwd_bwd'] = _ratio(a, b, 'fwd_bwd_ms')
            out[f'{work}_fwd_bwd_peak'] = _ratio(a, b, 'peak_gib')
    if family == 'swin' and backbone_peer:
        for section in ('det', 'seg'):
            rows = result.get(STEP_KEYS[section])
            a, b = find_row(rows, mine), find_row(rows, backbone_peer)
            out[f'{section}_step'] = _ratio(a, b, 's_iter')
            out[f'{section}_step_peak'] = _ratio(a, b, 'peak_mb')
    return {k: v for k, v in out.items() if v is not None}


def compute_ratios(result: dict) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``ratios_to_swin`` and ``ratios_to_deit`` from the rows present in ``result``."""
    out = {}
    for key, family, pairs in (('ratios_to_swin', 'swin', SWIN_PAIRS),
                               ('ratios_to_deit', 'deit', DEIT_PAIRS)):
        ratios = {}
        for mine, cls_peer, backbone_peer in pairs:
            found = _pair_ratios(result, family, mine, cls_peer, backbone_peer)
            if found:
                ratios[mine] = found
        out[key] = ratios
    return out


#: result keys whose dictionaries merge entry by entry (the rest: a later value replaces).
MERGED_KEYS = ('sections', 'compile', 'profile')


def combine_results(results: Sequence[dict]) -> dict:
    """One result from several runs (e.g. sections measured in separate calls), later runs
    winning; the earlier runs' environments are kept in ``merged_environments``."""
    out: dict = {}
    for result in results:
        for key, value in result.items():
            if key in MERGED_KEYS and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            elif key == 'environment' and out.get('environment'):
                out.setdefault('merged_environments', []).append(out['environment'])
                out[key] = value
            elif key == 'merged_environments':
                out.setdefault(key, []).extend(value)
            else:
                out[key] = value
    out.update(compute_ratios(out))
    return out


# ----------------------------------------------------------------------------- formatting
def fmt(value, spec: str) -> str:
    return DASH if value is None else format(value, spec)


def fmt_ratio(value: Optional[float], time: bool = False) -> str:
    if value is None:
        return DASH
    text = f'{value:.3f}×' if value < 0.1 else f'{value:.2f}×'
    return f'{text} time' if time else text


def _get(row: Optional[dict], key: str):
    return None if row is None else row.get(key)


def _line(label: str, a: Optional[dict], b: Optional[dict], key: str, spec: str,
          time: bool = False, peer_prefix: str = '') -> str:
    va, vb = _get(a, key), _get(b, key)
    ratio = va / vb if va and vb else None
    peer = f'{peer_prefix}{fmt(vb, spec)}' if vb is not None else DASH
    return f'| {label} | {fmt(va, spec)} | {peer} | {fmt_ratio(ratio, time)} |'


def _double_line(label: str, a: Optional[dict], b: Optional[dict], keys: Sequence[str],
                 spec: str, peer_prefix: str = '') -> str:
    mine = ' / '.join(fmt(_get(a, k), spec) for k in keys)
    peer = ' / '.join(fmt(_get(b, k), spec) for k in keys)
    ratios = ' / '.join(fmt_ratio(_get(a, k) / _get(b, k) if _get(a, k) and _get(b, k) else None)
                        for k in keys)
    return f'| {label} | {mine} | {peer_prefix}{peer} | {ratios} |'


def _cls_label(row: Optional[dict], what: str) -> str:
    if row is None:
        return what
    return f"{what} b{row['batch']} {row['size']}²"


def _shape(row: Optional[dict]) -> str:
    if row is None:
        return ''
    return (f"{row['height']}²" if row['height'] == row['width'] else
            f"{row['height']}×{row['width']}")


def swin_table(result: dict) -> List[str]:
    """Issue 12's table: LocalVMamba-T / -S against Swin-T / -S."""
    cls, bb = result.get('models'), result.get('backbone')
    t, s = find_row(cls, 'LocalVMamba-T'), find_row(cls, 'Swin-T')
    lines = ['| work | LocalVMamba-T | Swin-T | ratio |', '|---|---|---|---|']
    if t or s:
        lines += [_line(_cls_label(t or s, 'classification inference') + ' (img/s)', t, s,
                        'infer_img_s', '.0f'),
                  _line(_cls_label(t or s, 'classification training fwd+bwd') + ' (img/s)', t,
                        s, 'train_img_s', '.0f'),
                  _line(_cls_label(t or s, 'training peak memory') + ' (GiB)', t, s,
                        'train_peak_gib', '.1f')]
    for work in ('det', 'seg'):
        a, b = find_row(bb, 'LocalVMamba-T', work=work), find_row(bb, 'Swin-T', work=work)
        ref = a or b
        if ref is not None:
            lines.append(_line(f"backbone fwd+bwd, batch {ref['batch']}, {_shape(ref)} (ms)", a,
                               b, 'fwd_bwd_ms', '.1f', time=True))
            lines.append(_line('its peak memory (GiB)', a, b, 'peak_gib', '.2f'))
    for section, title in (('det', 'Mask R-CNN'), ('seg', 'UperNet')):
        rows = result.get(STEP_KEYS[section])
        a, b = find_row(rows, 'LocalVMamba-T'), find_row(rows, 'Swin-T')
        ref = a or b
        if ref is not None:
            size = (f"{ref['width']}×{ref['height']}" if section == 'det' else _shape(ref))
            lines.append(_line(f"**{title} train step**, batch {ref['batch']}, {size} (s/iter, "
                               f"AMP {ref['amp']})", a, b, 's_iter', '.3f', time=True))
            lines.append(_line(f'{title} step peak memory (MB)', a, b, 'peak_mb', '.0f'))
    a, b = find_row(cls, 'LocalVMamba-S'), find_row(cls, 'Swin-S')
    if a or b:
        lines.append(_double_line(_cls_label(a or b, 'LocalVMamba-S vs Swin-S, inference / '
                                                     'training') + ' (img/s)', a, b,
                                  ('infer_img_s', 'train_img_s'), '.0f'))
        lines.append(_line('LocalVMamba-S vs Swin-S, training peak memory (GiB)', a, b,
                           'train_peak_gib', '.1f'))
    return lines


def deit_table(result: dict) -> List[str]:
    """Issue 13's table: LocalVim-T / -S against DeiT-T / -S and ViT-Ti."""
    cls, bb = result.get('vim_cls'), result.get('vim_backbone')
    t, dt = find_row(cls, 'LocalVim-T'), find_row(cls, 'DeiT-T')
    s, ds = find_row(cls, 'LocalVim-S'), find_row(cls, 'DeiT-S')
    lines = ['| work | LocalVim | DeiT / ViT | ratio |', '|---|---|---|---|']
    if t or dt:
        lines += [_line(_cls_label(t or dt, 'T: inference') + ' (img/s)', t, dt, 'infer_img_s',
                        '.0f', peer_prefix='DeiT-T '),
                  _line(_cls_label(t or dt, 'T: training fwd+bwd') + ' (img/s)', t, dt,
                        'train_img_s', '.0f', peer_prefix='DeiT-T '),
                  _line('T: training peak memory (GiB)', t, dt, 'train_peak_gib', '.1f',
                        peer_prefix='DeiT-T ')]
    if s or ds:
        lines += [_double_line(_cls_label(s or ds, 'S: inference / training') + ' (img/s)', s,
                               ds, ('infer_img_s', 'train_img_s'), '.0f', peer_prefix='DeiT-S '),
                  _line('S: training peak memory (GiB)', s, ds, 'train_peak_gib', '.1f',
                        peer_prefix='DeiT-S ')]
    a, b = find_row(bb, 'LocalVim-T', work='det'), find_row(bb, 'ViT-Ti', work='det')
    ref = a or b
    if ref is not None:
        lines.append(_line(f"T backbone fwd+bwd, batch {ref['batch']}, {_shape(ref)} (ms)", a, b,
                           'fwd_bwd_ms', '.1f', time=True,
                           peer_prefix='ViT-Ti (global attention) '))
        lines.append(_line('its peak memory (GiB)', a, b, 'peak_gib', '.2f'))
    row = find_row(result.get('det_vim_step'), 'LocalVim-T')
    if row is not None:
        lines.append(_line(f"Cascade Mask R-CNN LocalVim-T train step, batch {row['batch']}, "
                           f"{_shape(row)} (s/iter, AMP {row['amp']})", row, None, 's_iter',
                           '.3f'))
        lines.append(_line('its peak memory (MB)', row, None, 'peak_mb', '.0f'))
    return lines


def compile_tables(result: dict) -> List[str]:
    """Issue 15's rows: eager vs compiled step times, first calls, the fresh-cache Triton run."""
    comp = result.get('compile') or {}
    lines = []
    parts = [(k, v) for k, v in comp.items() if k != 'triton_first_call']
    if parts:
        lines += ['| work | size | eager | torch.compile | eager / compiled | first compiled call '
                  '(s, compile included) | Dynamo graphs / breaks / frames |',
                  '|---|---|---|---|---|---|---|']
        for _, part in parts:
            if 'error' in part and 'eager_ms' not in part:
                lines.append(f"| {part.get('work', '?')} | {DASH} | error: "
                             f"{_last(part['error'])} | | | | |")
                continue
            for i, size in enumerate(part['sizes']):
                counters = part['counters'][i] if i < len(part.get('counters', [])) else None
                count = (f"{counters['unique_graphs']} / {counters['graph_breaks']} / "
                         f"{counters['frames']}" if counters else DASH)
                compiled = part['compiled_ms'][i] if i < len(part['compiled_ms']) else None
                first = part['first_call_s'][i] if i < len(part['first_call_s']) else None
                speed = part['eager_ms'][i] / compiled if compiled else None
                lines.append(f"| {part['work']} | {'×'.join(map(str, size))} | "
                             f"{fmt(part['eager_ms'][i], '.1f')} ms | {fmt(compiled, '.1f')} ms | "
                             f"{fmt_ratio(speed)} | {fmt(first, '.1f')} | {count} |")
            if part.get('error'):
                lines.append(f"| {part['work']} | | error: {_last(part['error'])} | | | | |")
    tri = comp.get('triton_first_call')
    if tri and 'shapes' in tri:
        if lines:
            lines.append('')
        lines += [f"| shape (batch {tri['batch']}, in order, fresh Triton cache) | kernels "
                  f"compiled | first fwd+bwd (s) | next call (ms) | new Triton cache entries |",
                  '|---|---|---|---|---|']
        runs = [(tri.get('without_precompile'), 'in the launch, one after another'),
                (tri, 'precompiled in parallel' if tri.get('precompile', False)
                 else 'in the launch, one after another')]
        for run, how in runs:
            for row in (run or {}).get('shapes', []):
                lines.append(f"| {row['height']}×{row['width']} | {how} | {row['first_s']:.1f} | "
                             f"{row['warm_s'] * 1e3:.0f} | {row['new_cache_entries']} |")
    elif tri and 'error' in tri:
        lines.append(f"fresh-cache Triton run failed: {_last(tri['error'])}")
    return lines


def raw_tables(result: dict) -> List[str]:
    lines = []
    rows = (result.get('models') or []) + (result.get('vim_cls') or [])
    if rows:
        lines += ['| model | params (M) | inference img/s | training fwd+bwd img/s | '
                  'train peak GiB | batch, size |', '|---|---|---|---|---|---|']
        lines += [f"| {r['model']} | {fmt(r.get('params_m'), '.1f')} | "
                  f"{fmt(r.get('infer_img_s'), '.0f')} | {fmt(r.get('train_img_s'), '.0f')} | "
                  f"{fmt(r.get('train_peak_gib'), '.1f')} | "
                  f"{r.get('batch', '')}, {r.get('size', '')}² |"
                  if 'error' not in r else f"| {r['model']} | error: {_last(r['error'])} | | | | |"
                  for r in rows]
    rows = (result.get('backbone') or []) + (result.get('vim_backbone') or [])
    if rows:
        lines += ['', '| backbone | batch | size | fwd ms | fwd+bwd ms | fwd+bwd peak GiB |',
                  '|---|---|---|---|---|---|']
        lines += [f"| {r['model']} | {r['batch']} | {_shape(r)} | {fmt(r.get('fwd_ms'), '.1f')} | "
                  f"{fmt(r.get('fwd_bwd_ms'), '.1f')} | {fmt(r.get('peak_gib'), '.2f')} |"
                  if 'error' not in r else f"| {r['model']} | error: {_last(r['error'])} | | | | |"
                  for r in rows]
    rows = [(section, r) for section, key in STEP_KEYS.items() for r in result.get(key) or []]
    if rows:
        lines += ['', '| train step | section | config | batch | input (padded) | '
                  's/iter (median) | first step s | peak MB | AMP |',
                  '|---|---|---|---|---|---|---|---|---|']
        lines += [f"| {r['model']} | {section} | `{r['config']}` | {r['batch']} | "
                  f"{'×'.join(map(str, r['input_shape'][2:]))} | {r['s_iter']:.3f} | "
                  f"{r['first_s']:.2f} | {fmt(r.get('peak_mb'), '.0f')} | {r['amp']} |"
                  if 'error' not in r else
                  f"| {r['model']} | {section} | `{r.get('config', '')}` | error: "
                  f"{_last(r['error'])} | | | | | |"
                  for section, r in rows]
    return lines


def _last(text: str) -> str:
    return (text.strip().splitlines() or [''])[-1][:160].replace('|', '/')


def scan_table(result: dict) -> List[str]:
    if not result.get('scan'):
        return []
    lines = ['| stage | B×K×D×L (N=16) | fwd ms | fwd TB/s (official bytes) | % of copy | '
             'fwd TB/s (own bytes) | fwd+bwd ms | with projection fwd+bwd ms |',
             '|---|---|---|---|---|---|---|---|']
    for s in result['scan']:
        lines.append(f"| {s['stage'] + 1} | {s['B']}×{s['K']}×{s['D']}×{s['L']} | "
                     f"{s['fwd_ms']:.3f} | {s['fwd_official_tbps']:.2f} | "
                     f"{s['fwd_pct_copy_official']:.0f}% | {s['fwd_fused_tbps']:.2f} | "
                     f"{s['fwd_bwd_ms']:.3f} | {s['op_fwd_bwd_ms']:.3f} |")
    return lines


def profile_tables(result: dict, rows: int = 12) -> List[str]:
    from .profiling import GROUPS
    lines = []
    for title, prof in (result.get('profile') or {}).items():
        if 'error' in prof:
            lines += [f'**{title}**: error: {_last(prof["error"])}', '']
            continue
        unit = 'kernel' if prof.get('device') == 'cuda' else 'CPU op'
        lines += [f"**{title}**: wall {prof['wall_ms']:.1f} ms, {unit} time "
                  f"{prof['kernel_ms']:.1f} ms, {prof['num_kernels']} {unit}s", '',
                  '| group | ms | % |', '|---|---|---|']
        lines += [f"| {g} | {prof['groups'][g]:.2f} | {prof['groups_pct'][g]:.1f} |"
                  for g in GROUPS]
        lines += ['', f'| top {unit}s | group | ms | % | calls |', '|---|---|---|---|---|']
        lines += [f"| `{e['name'][:90]}` | {e['group']} | {e['ms']:.2f} | {e['pct']:.1f} | "
                  f"{e['calls']} |" for e in prof['top'][:rows]]
        lines.append('')
    return lines


def header(result: dict) -> List[str]:
    env, settings = result.get('environment', {}), result.get('settings', {})
    device = env.get('device', '?')
    if env.get('sm_count'):
        device += f" ({env['sm_count']} SMs, {env['memory_gib']} GiB)"
    versions = ', '.join(f'{k} {env[k]}' for k in ('torch', 'triton', 'cuda', 'python', 'timm',
                                                   'mmengine', 'mmcv', 'mmdet', 'mmseg')
                         if env.get(k))
    lines = [f"Measured with `tools/benchmark.py` on {device}, {versions}, {env.get('date', '?')} "
             f"(UTC), commit {env.get('commit') or '?'}."]
    if settings:
        lines.append(f"Random weights; classification and backbones under {settings.get('dtype')} "
                     f"autocast, median of {settings.get('iters')} timed calls after "
                     f"{settings.get('warmup')} warm-ups; train steps with AMP "
                     f"{settings.get('amp')}, median of {settings.get('step_iters')} steps after "
                     f"{settings.get('step_warmup')}.")
    if result.get('copy_tbps'):
        lines.append(f"Device-to-device copy bandwidth {result['copy_tbps']:.2f} TB/s.")
    failed = {k: v for k, v in (result.get('sections') or {}).items() if v.get('status') != 'ok'}
    for name, info in failed.items():
        lines.append(f"Section `{name}`: {info.get('status')}"
                     f"{': ' + _last(info['error']) if info.get('error') else ''}.")
    return lines


def format_markdown(result: dict) -> str:
    """The tables of a result, issue rows first (work | LocalMamba model | peer | ratio)."""
    out = ['# Benchmark run', ''] + header(result)
    blocks = [('LocalVMamba vs Swin (issue 12)', swin_table(result)
               if any(result.get(k) for k in ('models', 'backbone', 'det_step', 'seg_step'))
               else []),
              ('LocalVim vs DeiT / ViT (issue 13)', deit_table(result)
               if any(result.get(k) for k in ('vim_cls', 'vim_backbone', 'det_vim_step'))
               else []),
              ('torch.compile and first-call compilation (issue 15)', compile_tables(result)),
              ('All rows', raw_tables(result)),
              ('Scan kernel alone (LocalVMamba-T stage shapes)', scan_table(result)),
              ('Profiles (one step)', profile_tables(result))]
    for title, lines in blocks:
        if lines:
            out += ['', f'## {title}', ''] + lines
    return '\n'.join(out).rstrip() + '\n'


def plot(result: dict, png: str) -> None:
    """Bar charts of the classification throughputs (``models`` and ``vim_cls`` rows) to
    ``png``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    models = [m for m in (result.get('models') or []) + (result.get('vim_cls') or [])
              if 'error' not in m]
    names = [m['model'] for m in models]
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 1.2 * len(names)), 4.0))
    colors = ['#d1495b', '#00798c', '#edae49', '#66a182', '#2e4057', '#8d96a3']
    for ax, key, title in zip(axes, ['infer_img_s', 'train_img_s'],
                              ['inference img/s', 'training (fwd+bwd) img/s']):
        vals = [m[key] for m in models]
        bars = ax.bar(names, vals, color=[colors[i % len(colors)] for i in range(len(names))])
        ax.bar_label(bars, fmt='%.0f')
        ax.set_title(f'{title}, b128, 224², bf16')
        ax.set_ylim(0, max(vals) * 1.15)
        ax.tick_params(axis='x', labelsize=8, labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment('right')
    env = result['environment']
    fig.suptitle(f"{env['device']} · torch {env['torch']} · triton {env.get('triton')} · "
                 f"{env['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
