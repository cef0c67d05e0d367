"""Paint predictions of a trained detector or segmentor with the libraries' own inferencers.

:func:`visualize_predictions` runs mmdet's ``DetInferencer`` or mmseg's ``MMSegInferencer``
(chosen by the config's ``default_scope``) from an explicit config file and checkpoint, so it
works without internet access, and writes one PNG that tiles the painted images. Class names
and palette come from the checkpoint's ``meta['dataset_meta']`` (written by mmengine runners).
"""
import os
import os.path as osp
from typing import Dict, List, Sequence

import numpy as np
from mmengine.config import Config

from ..utils.checkpoint import load_checkpoint_file, safe_mmengine_loading
from .runner import config_scope, setup_scope

__all__ = ['checkpoint_dataset_meta', 'collect_images', 'tile_images', 'visualize_predictions']


def checkpoint_dataset_meta(checkpoint: str) -> Dict:
    """``meta['dataset_meta']`` of an mmengine checkpoint ({} when absent)."""
    ckpt = load_checkpoint_file(checkpoint, map_location='cpu')
    meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    return dict(meta.get('dataset_meta') or {})


def tile_images(images: Sequence[np.ndarray], columns: int = 4, pad: int = 4) -> np.ndarray:
    """Tile RGB uint8 images (any sizes) into one grid image on a white background."""
    if not images:
        raise ValueError('tile_images needs at least one image.')
    columns = max(1, min(columns, len(images)))
    rows = (len(images) + columns - 1) // columns
    cell_h = max(img.shape[0] for img in images)
    cell_w = max(img.shape[1] for img in images)
    grid = np.full((rows * cell_h + (rows + 1) * pad, columns * cell_w + (columns + 1) * pad, 3),
                   255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        y, x = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
        grid[y:y + img.shape[0], x:x + img.shape[1]] = img[..., :3]
    return grid


def _inferencer(config: str, checkpoint: str, scope: str, device: str):
    """The library's inferencer; it loads the checkpoint through our checked loader."""
    meta = checkpoint_dataset_meta(checkpoint)
    if scope == 'mmdet':
        from mmdet.apis import DetInferencer
        with safe_mmengine_loading():
            return DetInferencer(model=config, weights=checkpoint, device=device, scope='mmdet',
                                 show_progress=False)
    from mmseg.apis import MMSegInferencer
    classes, palette = meta.get('classes'), meta.get('palette')
    if classes is None or palette is None:
        raise ValueError(f'{checkpoint!r} has no dataset_meta with classes and palette; the '
                         f'segmentation visualiser needs them.')
    with safe_mmengine_loading():
        inferencer = MMSegInferencer(model=config, weights=checkpoint, device=device,
                                     scope='mmseg', classes=list(classes),
                                     palette=[list(p) for p in palette])
    inferencer.visualizer.alpha = 0.5  # let the image show through the label colours
    return inferencer


def visualize_predictions(config: str,
                          checkpoint: str,
                          images: Sequence[str],
                          out_file: str,
                          device: str = 'cpu',
                          score_thr: float = 0.3,
                          columns: int = 4) -> str:
    """Predict ``images`` and write the painted results, tiled, to ``out_file`` (PNG).

    Args:
        config: mmdet or mmseg config file (its ``default_scope`` picks the inferencer).
        checkpoint: trained checkpoint (local file).
        images: image paths.
        out_file: the PNG to write (directories are created).
        device: torch device. Default: 'cpu'.
        score_thr: detections below this score are not drawn (detection only).
        columns: images per row of the grid.

    Returns:
        The path written.
    """
    from PIL import Image
    if not images:
        raise ValueError('visualize_predictions needs at least one image.')
    scope = config_scope(Config.fromfile(config))
    setup_scope(scope)
    inferencer = _inferencer(config, checkpoint, scope, device)
    kwargs = dict(return_vis=True, no_save_vis=True) if scope == 'mmdet' else dict(
        return_vis=True)
    if scope == 'mmdet':
        kwargs['pred_score_thr'] = score_thr
    painted: List[np.ndarray] = []
    for path in images:  # one at a time: the inferencers return one visualisation per input
        vis = inferencer([path], **kwargs)['visualization']
        # DetInferencer returns a list; MMSegInferencer the bare array for a single input
        vis = [vis] if isinstance(vis, np.ndarray) and vis.ndim == 3 else vis
        painted.extend(np.asarray(v) for v in vis)
    out_dir = osp.dirname(osp.abspath(out_file))
    os.makedirs(out_dir, exist_ok=True)
    Image.fromarray(tile_images(painted, columns=columns)).save(out_file, format='PNG')
    return out_file


def collect_images(items: Sequence[str], limit: int = 4,
                   suffixes: Sequence[str] = ('.jpg', '.jpeg', '.png')) -> List[str]:
    """Image paths from files and directories (a directory gives its first ``limit`` images).

    Raises:
        FileNotFoundError: an item does not exist, or no image was found at all.
    """
    images: List[str] = []
    for item in items:
        if osp.isdir(item):
            names = sorted(n for n in os.listdir(item) if n.lower().endswith(tuple(suffixes)))
            images.extend(osp.join(item, n) for n in names[:limit])
        elif osp.isfile(item):
            images.append(item)
        else:
            raise FileNotFoundError(f'No such image or directory: {item!r}')
    if not images:
        raise FileNotFoundError(f'No images ({", ".join(suffixes)}) in {list(items)}.')
    return images
