"""Training-loop helpers for mmengine runners (hooks).

Importing this package registers its hooks in mmengine's root ``HOOKS`` registry, so configs of
any scope (mmdet, mmseg) can use them, e.g. ``custom_hooks=[dict(type='RNGStateHook')]`` with
``custom_imports=dict(imports=['mmlocalmamba', 'mmlocalmamba.engine'])``. Only mmengine and
torch are imported here.
"""
from .rng_state_hook import RNGStateHook

__all__ = ['RNGStateHook']
