"""Build hook of mmlocalmamba; the metadata is in pyproject.toml.

A wheel (and so a non-editable ``pip install .``) carries the repository's top-level
``configs/``, ``tools/`` and ``model-index.yml`` inside the package as ``mmlocalmamba/.mim/``,
the OpenMMLab layout: mmengine resolves ``_base_ = ['mmlocalmamba::mmdet/<name>.py']`` there,
and ``mim`` finds the tools there. They are copied into the build directory when the package is
built, so the repository keeps a single copy. Editable installs skip the copy: from a checkout,
use the configs by their paths.
"""
import os.path as osp
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = osp.dirname(osp.abspath(__file__))
#: what goes into mmlocalmamba/.mim (paths relative to the repository root)
MIM_CONTENT = ('configs', 'tools', 'model-index.yml')


class BuildPyWithMim(build_py):
    """``build_py`` that also writes ``mmlocalmamba/.mim`` into the build directory."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        target = osp.join(self.build_lib, 'mmlocalmamba', '.mim')
        for name in MIM_CONTENT:
            src, dst = osp.join(ROOT, name), osp.join(target, name)
            if not osp.exists(src):
                raise FileNotFoundError(f'{src} is missing: the package needs it in .mim/')
            if osp.isdir(src):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
            else:
                self.mkpath(osp.dirname(dst))
                shutil.copy2(src, dst)


setup(cmdclass={'build_py': BuildPyWithMim})
