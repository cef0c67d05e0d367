"""Learning curves from mmengine's scalar logs (``<work_dir>/<timestamp>/vis_data/scalars.json``).

:func:`read_scalars` collects the validation metrics per epoch and the mean training loss per
epoch; :func:`plot_map_curve` draws the COCO bbox/segm mAP per epoch (matplotlib, imported
lazily).
"""
import glob
import json
import os
import os.path as osp
from collections import defaultdict
from typing import Dict, List

__all__ = ['find_scalar_logs', 'read_scalars', 'plot_map_curve']


def find_scalar_logs(work_dir: str) -> List[str]:
    """All ``scalars.json`` files of a work dir, oldest run first."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not logs:
        raise FileNotFoundError(f'No */vis_data/scalars.json under {work_dir!r}: has a run with '
                                f'this work dir logged anything yet?')
    return logs


def read_scalars(work_dir: str) -> Dict[str, Dict[int, float]]:
    """Per-epoch values from every run of a work dir (later runs override earlier ones).

    Returns:
        ``{name: {epoch: value}}`` with the validation metrics under their names (e.g.
        ``'coco/bbox_mAP'``) and ``'train/loss'``, the mean training loss of each epoch.
    """
    values: Dict[str, Dict[int, float]] = defaultdict(dict)
    losses: Dict[int, List[float]] = defaultdict(list)
    for path in find_scalar_logs(work_dir):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                record = json.loads(line)
                if 'coco/bbox_mAP' in record or 'mIoU' in record:  # a validation record
                    epoch = int(record['step'])
                    for key, value in record.items():
                        if key not in ('step', 'time', 'data_time') and isinstance(
                                value, (int, float)):
                            values[key][epoch] = float(value)
                elif 'loss' in record and 'epoch' in record:
                    losses[int(record['epoch'])].append(float(record['loss']))
    for epoch, items in losses.items():
        values['train/loss'][epoch] = sum(items) / len(items)
    return dict(values)


def plot_map_curve(scalars: Dict[str, Dict[int, float]], out_file: str,
                   title: str = 'Mask R-CNN + LocalVMamba, demo data (CPU)',
                   target: float = 0.5) -> str:
    """Plot bbox and segm mAP per epoch (and the training loss on a second axis) to a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    if 'coco/bbox_mAP' not in scalars:
        raise ValueError('No coco/bbox_mAP values to plot: did validation run?')
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, label, style in (('coco/bbox_mAP', 'bbox mAP', 'o-'),
                              ('coco/segm_mAP', 'segm mAP', 's-'),
                              ('coco/bbox_mAP_50', 'bbox mAP@0.5', '.--')):
        if key in scalars:
            epochs = sorted(scalars[key])
            ax.plot(epochs, [scalars[key][e] for e in epochs], style, label=label)
    ax.axhline(target, color='grey', lw=0.8, ls=':', label=f'target {target}')
    ax.set_xlabel('epoch')
    ax.set_ylabel('mAP (demo val set)')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if 'train/loss' in scalars:
        ax2 = ax.twinx()
        epochs = sorted(scalars['train/loss'])
        ax2.plot(epochs, [scalars['train/loss'][e] for e in epochs], color='tab:red', lw=1,
                 alpha=0.5, label='train loss')
        ax2.set_ylabel('train loss (epoch mean)', color='tab:red')
        lines, labels = ax.get_legend_handles_labels()
        lines2, labels2 = ax2.get_legend_handles_labels()
        ax.legend(lines + lines2, labels + labels2, loc='center right', fontsize=8)
    else:
        ax.legend(loc='lower right', fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file)
    plt.close(fig)
    return out_file
