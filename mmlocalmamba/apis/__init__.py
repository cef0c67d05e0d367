"""High-level entry points used by ``tools/``: runners for mmdet/mmseg configs and inference.

Outside the model core: mmdet, mmseg and mmcv are imported lazily inside the functions, only
for the library a config asks for.
"""
from .inference import checkpoint_dataset_meta, collect_images, tile_images, visualize_predictions
from .runner import (SUPPORTED_SCOPES, build_runner, config_scope, load_config,
                     prepare_test_config, prepare_train_config, setup_scope, test_main,
                     test_parser, train_main, train_parser)

__all__ = [
    'SUPPORTED_SCOPES', 'build_runner', 'config_scope', 'load_config', 'prepare_test_config',
    'prepare_train_config', 'setup_scope', 'test_main', 'test_parser', 'train_main',
    'train_parser', 'checkpoint_dataset_meta', 'collect_images', 'tile_images',
    'visualize_predictions'
]
