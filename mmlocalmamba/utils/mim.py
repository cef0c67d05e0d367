"""mmlocalmamba as an OpenMMLab config package: ``mmlocalmamba::<path>`` bases.

mmengine resolves a base such as ``'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'`` through a
fixed table of OpenMMLab packages (``mmengine.config.utils.MODULE2PACKAGE``) and the installed
package's ``.mim`` folder (``.mim/configs/<path>``, and ``.mim/model-index.yml``, which it reads
first). A built mmlocalmamba (wheel or non-editable ``pip install``) carries that folder (see
``setup.py``); :func:`register_config_package`, called by ``import mmlocalmamba``, adds the
package to mmengine's table. A config anywhere can then start with::

    _base_ = ['mmlocalmamba::mmdet/mask-rcnn_localvmamba-t_fpn_1x_coco.py']

as long as ``mmlocalmamba`` was imported before the config is read: ``tools/train.py``,
``tools/test.py`` and the ``mmlocalmamba-train`` / ``mmlocalmamba-test`` commands do that.
"""
import os.path as osp
from typing import Optional

__all__ = ['PACKAGE_SCOPE', 'register_config_package', 'installed_config_dir']

#: the scope name used before ``::`` in config paths
PACKAGE_SCOPE = 'mmlocalmamba'


def register_config_package() -> None:
    """Let mmengine resolve ``mmlocalmamba::<path>`` config paths (idempotent)."""
    from mmengine.config import utils as config_utils
    config_utils.MODULE2PACKAGE.setdefault(PACKAGE_SCOPE, PACKAGE_SCOPE)


def installed_config_dir() -> Optional[str]:
    """``<package>/.mim/configs`` of this installation, or None (editable install, checkout)."""
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim', 'configs')
    return path if osp.isdir(path) else None
