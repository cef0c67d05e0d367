"""An optimizer-wrapper constructor whose optimizer holds plain-dict parameter groups.

mmengine's ``DefaultOptimWrapperConstructor`` stores the parameter groups it builds into the
optimizer config; when that config comes from a config file (a ``ConfigDict``) with a
``paramwise_cfg``, the groups become ``ConfigDict`` objects, and so do the optimizer's
``param_groups``. ``torch.compile`` of a training step (mmengine's ``compile=True`` compiles
``model.train_step``, the optimizer step included) then stops inside Dynamo while it traces
``optimizer.step()`` (torch 2.14: ``'UserDefinedDictVariable' object has no attribute
'items'``). The constructor here builds the same optimizer and turns each group into a plain
dict with the same keys and values.

Config::

    optim_wrapper = dict(
        constructor='PlainGroupsOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(norm_decay_mult=0.))
"""
import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper

__all__ = ['PlainGroupsOptimWrapperConstructor', 'plain_param_groups']


def plain_param_groups(optimizer) -> None:
    """Replace every parameter group of ``optimizer`` by a plain ``dict`` (same items)."""
    optimizer.param_groups[:] = [dict(group) for group in optimizer.param_groups]


class PlainGroupsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` (same arguments, same groups) with plain-dict
    parameter groups (see the module docstring)."""

    def __call__(self, model: nn.Module) -> OptimWrapper:
        wrapper = super().__call__(model)
        plain_param_groups(wrapper.optimizer)
        return wrapper
