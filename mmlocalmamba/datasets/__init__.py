"""Dataset helpers of mmlocalmamba.

Submodules are imported on demand (e.g. ``from mmlocalmamba.datasets import
demo_data``) so that ``import mmlocalmamba`` stays light.
"""
