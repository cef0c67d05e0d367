"""Packaging for mmlocalmamba: LocalMamba backbones as an OpenMMLab plugin."""
import os.path as osp

from setuptools import find_packages, setup


def read_version():
    namespace = {}
    with open(osp.join(osp.dirname(__file__), 'mmlocalmamba', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='mmlocalmamba',
    version=read_version(),
    description='LocalMamba (windowed selective scan) backbones for mmdetection and '
                'mmsegmentation',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmlocalmamba', 'mmlocalmamba.*']),
    python_requires='>=3.9',
    install_requires=[
        'torch>=2.1',
        'einops',
        'timm',
        'mmengine>=0.10.0',
    ],
    extras_require={
        # Downstream OpenMMLab packages used by the configs and tools.
        'mm': ['mmcv>=2.0.0,<2.2.0', 'mmdet==3.3.0', 'mmsegmentation==1.2.2', 'ftfy', 'regex',
               'pycocotools'],
        'tests': ['pytest', 'matplotlib', 'pycocotools', 'ftfy', 'regex'],
        # Optional CUDA kernels of the original Mamba (GPU only, never required).
        'mamba': ['mamba-ssm'],
    },
    license='Apache-2.0',
    zip_safe=False,
)
