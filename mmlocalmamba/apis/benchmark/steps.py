"""Full mmdet / mmseg training steps from configs, on synthetic batches.

A config is built exactly as ``tools/train.py`` builds it (``MODELS.build(cfg.model)`` in the
config's default scope, SyncBN reverted to BN on one device, the config's optimizer wrapper,
``--amp`` as :func:`~mmlocalmamba.apis.runner.prepare_train_config` applies it), with the
backbone's ``init_cfg`` set to ``None`` (random weights, nothing is downloaded). One step is
``model.train_step(batch, optim_wrapper)``: data preprocessor, forward, losses, backward and
optimizer step.

The batches are what the datasets' packing transforms produce: uint8 BGR images (C, H, W) and
``DetDataSample`` (boxes as ``HorizontalBoxes``, labels, ``BitmapMasks``) or ``SegDataSample``
(label map with ignored pixels). mmdet and mmseg are imported inside the functions.
"""
import contextlib
import copy
import importlib
import logging
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

#: section -> display name -> config ('pkg::path' for a config of an installed package, or a
#: path relative to the repository root). The old config names stay valid as aliases.
STEP_CONFIGS: Dict[str, Dict[str, str]] = {
    'det': {
        'LocalVMamba-T': 'configs/mmdet/mask-rcnn_localvmamba-t_fpn_1x_coco.py',
        'Swin-T': 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    },
    'seg': {
        'LocalVMamba-T': 'configs/mmseg/upernet_localvmamba-t_8xb2-160k_ade20k-512x512.py',
        'Swin-T': 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',  # noqa: E501
    },
    'det_vim': {
        'LocalVim-T': 'configs/mmdet/cascade-mask-rcnn_localvim-t_sfp_lsj-100e_coco.py',
    },
}
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
#: AmpOptimWrapper dtypes by command-line name ('none': the config's own wrapper).
AMP_DTYPES = {'fp16': 'float16', 'bf16': 'bfloat16', 'none': None}


def resolve_config(name: str) -> str:
    """The file of ``name``: ``'mmdet::swin/x.py'`` in the installed package's ``.mim/configs``
    (as ``_base_`` resolves it), else a path as given or relative to the repository root."""
    if '::' in name:
        package, rel = name.split('::', 1)
        root = osp.dirname(importlib.import_module(package).__file__)
        path = osp.join(root, '.mim', 'configs', rel)
    else:
        path = name if osp.isabs(name) or osp.isfile(name) else osp.join(REPO_ROOT, name)
    if not osp.isfile(path):
        raise FileNotFoundError(f'Config {name!r} not found (looked for {path}).')
    return path


def config_num_classes(model_cfg, scope: str) -> int:
    """Classes of the (first) box head (mmdet) or of the decode head (mmseg)."""
    if scope == 'mmseg':
        return int(model_cfg['decode_head']['num_classes'])
    head = model_cfg['roi_head']['bbox_head']
    return int((head[0] if isinstance(head, (list, tuple)) else head)['num_classes'])


def fit_preprocessor(model_cfg, size: Tuple[int, int]) -> None:
    """Set the fixed padding sizes of the data preprocessor (``size``, ``BatchFixedSizePad``)
    to ``size`` (H, W) in place: the configs pad to their training size (512², 1024²)."""
    prep = model_cfg.get('data_preprocessor') or {}
    if prep.get('size') is not None:
        prep['size'] = tuple(size)
    for aug in prep.get('batch_augments') or []:
        if 'size' in aug:
            aug['size'] = tuple(size)


class TrainStep:
    """One config's model and optimizer wrapper, and its training step on a synthetic batch.

    Args:
        config: a config name for :func:`resolve_config`.
        device: where the model runs.
        amp: 'fp16', 'bf16' (``AmpOptimWrapper`` of that dtype, dynamic loss scale; CUDA only)
            or 'none'.
        size: (H, W) of the images; the preprocessor's fixed padding is set to it.
        batch: images per step.
    """

    def __init__(self, config: str, device: torch.device, amp: str, size: Tuple[int, int],
                 batch: int):
        from mmengine.model import revert_sync_batchnorm
        from mmengine.optim import build_optim_wrapper
        from mmengine.registry import MODELS

        from ..runner import config_scope, load_config, prepare_train_config
        self.config, self.size, self.batch = config, tuple(size), batch
        cfg = load_config(resolve_config(config))  # registers the scope, sets default scope
        self.scope = config_scope(cfg)
        cfg.model.backbone.init_cfg = None
        fit_preprocessor(cfg.model, self.size)
        self.amp = amp if device.type == 'cuda' else 'none'
        if AMP_DTYPES[self.amp] is not None:
            prepare_train_config(cfg, work_dir=osp.join(REPO_ROOT, 'work_dirs', 'benchmark'),
                                 amp=True)
            cfg.optim_wrapper.dtype = AMP_DTYPES[self.amp]
        self.num_classes = config_num_classes(cfg.model, self.scope)
        self.cudnn_benchmark = bool(cfg.get('env_cfg', {}).get('cudnn_benchmark', False))
        model = MODELS.build(cfg.model)
        with _quiet_mmengine():
            model.init_weights()
        self.model = revert_sync_batchnorm(model).to(device)
        self.model.train()
        with _quiet_mmengine():  # the constructor logs every parameter's options
            self.optim_wrapper = build_optim_wrapper(self.model, cfg.optim_wrapper)
        self.optim_type = type(self.optim_wrapper).__name__
        if self.scope == 'mmdet':
            self.data = det_batch(batch, self.size, self.num_classes)
        else:
            self.data = seg_batch(batch, self.size, self.num_classes)

    @contextlib.contextmanager
    def cudnn_setting(self):
        """``torch.backends.cudnn.benchmark`` as the config's ``env_cfg`` sets it for
        training (mmengine's runner; off unless the config turns it on)."""
        saved = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = saved

    def with_cudnn_setting(self):
        """The step as a function that runs under :meth:`cudnn_setting`."""
        def step():
            with self.cudnn_setting():
                return self()
        return step

    def input_shape(self) -> Tuple[int, ...]:
        """Shape of the batch the data preprocessor makes (padding included)."""
        with torch.no_grad():
            return tuple(self.model.data_preprocessor(copy.copy(self.data), True)['inputs'].shape)

    def __call__(self) -> Dict[str, float]:
        """One training step; returns mmengine's log variables (losses as floats)."""
        return self.model.train_step(self.data, self.optim_wrapper)


@contextlib.contextmanager
def _quiet_mmengine():
    """mmengine's current logger at WARNING (``init_weights`` logs every parameter at INFO)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _random_images(batch: int, size: Tuple[int, int], generator: torch.Generator):
    return [torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)
            for _ in range(batch)]


def _random_boxes(num: int, size: Tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``num`` boxes (x1, y1, x2, y2) inside the image, 8-50% of its sides."""
    height, width = size
    wh = rng.uniform(0.08, 0.5, (num, 2)) * (width, height)
    xy = rng.uniform(0, 1, (num, 2)) * ((width, height) - wh)
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _ellipse_masks(boxes: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(num, H, W) uint8: the ellipse inscribed in each box."""
    height, width = size
    masks = np.zeros((len(boxes), height, width), dtype=np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes):
        top, left = int(y1), int(x1)
        ys = np.arange(top, min(int(np.ceil(y2)) + 1, height))[:, None] + 0.5
        xs = np.arange(left, min(int(np.ceil(x2)) + 1, width))[None, :] + 0.5
        cy, cx = (y1 + y2) / 2, (x1 + x2) / 2
        ry, rx = max((y2 - y1) / 2, 0.5), max((x2 - x1) / 2, 0.5)
        inside = ((ys - cy) / ry)**2 + ((xs - cx) / rx)**2 <= 1
        mask[top:top + inside.shape[0], left:left + inside.shape[1]] = inside
    return masks


def det_batch(batch: int, size: Tuple[int, int], num_classes: int, objects: Sequence[int] = (3, 8),
              seed: int = 0) -> dict:
    """A packed detection batch: ``dict(inputs=[uint8 (3, H, W)], data_samples=[...])``.

    Each ``DetDataSample`` holds ``gt_instances`` with ``bboxes`` (``HorizontalBoxes``),
    ``labels`` and ``masks`` (``BitmapMasks``, ellipses in the boxes), between ``objects[0]``
    and ``objects[1]`` objects, and the metainfo ``PackDetInputs`` gives (image not resized,
    not flipped).
    """
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(batch):
        num = int(rng.integers(objects[0], objects[1] + 1))
        boxes = _random_boxes(num, size, rng)
        sample = DetDataSample(metainfo=dict(
            img_id=index, img_path=f'synthetic_{index}.jpg', ori_shape=tuple(size),
            img_shape=tuple(size), scale_factor=(1.0, 1.0), flip=False, flip_direction=None))
        sample.gt_instances = InstanceData(
            bboxes=HorizontalBoxes(torch.from_numpy(boxes)),
            labels=torch.from_numpy(rng.integers(0, num_classes, num)).long(),
            masks=BitmapMasks(_ellipse_masks(boxes, size), *size))
        samples.append(sample)
    return dict(inputs=_random_images(batch, size, generator), data_samples=samples)


def seg_batch(batch: int, size: Tuple[int, int], num_classes: int, ignore_index: int = 255,
              cell: int = 32, seed: int = 0) -> dict:
    """A packed segmentation batch: ``dict(inputs=[uint8 (3, H, W)], data_samples=[...])``.

    Each ``SegDataSample`` holds ``gt_sem_seg`` (``PixelData``, (1, H, W) int64): random classes
    on ``cell`` x ``cell`` blocks, about 5% of the blocks ``ignore_index``; metainfo as
    ``PackSegInputs`` gives it.
    """
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    height, width = size
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(batch):
        grid = (-(-height // cell), -(-width // cell))
        labels = torch.randint(0, num_classes, grid, generator=generator)
        labels[torch.rand(grid, generator=generator) < 0.05] = ignore_index
        labels = labels.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:height, :width]
        sample = SegDataSample(metainfo=dict(
            img_path=f'synthetic_{index}.jpg', seg_map_path=f'synthetic_{index}.png',
            ori_shape=tuple(size), img_shape=tuple(size), pad_shape=tuple(size),
            scale_factor=(1.0, 1.0), flip=False, flip_direction=None, reduce_zero_label=False))
        sample.gt_sem_seg = PixelData(data=labels[None].long().contiguous())
        samples.append(sample)
    return dict(inputs=_random_images(batch, size, generator), data_samples=samples)


def step_row(name: str, step: TrainStep, timing: Dict[str, object],
             log_vars: Optional[Dict[str, float]] = None) -> Dict[str, object]:
    """The JSON row of a timed step."""
    from .workloads import num_params_m
    row = dict(model=name, config=step.config, scope=step.scope, batch=step.batch,
               height=step.size[0], width=step.size[1], input_shape=list(step.input_shape()),
               amp=step.amp, optim_wrapper=step.optim_type,
               params_m=num_params_m(step.model), **timing)
    if log_vars:
        row['loss'] = float(log_vars.get('loss', float('nan')))
    return row
