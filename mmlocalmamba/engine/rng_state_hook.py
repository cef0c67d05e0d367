"""Save and restore random-number-generator states with the checkpoints.

mmengine seeds the generators once when a runner starts, so a run resumed from a checkpoint
draws different random numbers than the uninterrupted run would have (data augmentation,
proposal sampling, stochastic depth). :class:`RNGStateHook` stores the Python, NumPy and torch
CPU (and CUDA, when present) generator states in every checkpoint and puts them back when
training resumes, which makes ``--resume`` reproduce the uninterrupted run exactly in a
deterministic setting. In distributed training every rank's state is stored.

The states are plain tensors, tuples and NumPy arrays, so checkpoints stay loadable with
``torch.load(weights_only=True)`` (see :mod:`mmlocalmamba.utils.safe_load`).
"""
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log

__all__ = ['RNGStateHook', 'get_rng_states', 'set_rng_states']

CHECKPOINT_KEY = 'rng_states'


def get_rng_states() -> Dict[str, Any]:
    """The current states of Python's, NumPy's and torch's global generators."""
    state = {
        'python': random.getstate(),
        'numpy': np.random.get_state(),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: Dict[str, Any]) -> None:
    """Restore states returned by :func:`get_rng_states`."""
    py_state = state['python']
    # Through a checkpoint tuples may come back as lists; random.setstate needs tuples.
    random.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
    np.random.set_state(tuple(state['numpy']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class RNGStateHook(Hook):
    """Keep generator states in checkpoints so that resumed training is reproducible.

    Checkpoints get ``checkpoint['rng_states']``: a list with one :func:`get_rng_states` dict
    per rank. ``after_load_checkpoint`` restores this rank's entry, but only when the runner
    resumes (``resume=True``): loading weights for fine-tuning or testing (``load_from``) keeps
    the fresh seed.

    Only rank 0 saves checkpoints, so in distributed runs the ranks' states are gathered after
    every training iteration (one small collective), before :class:`CheckpointHook` (priority
    VERY_LOW) may save, and after the other hooks of the iteration (priority LOW and higher)
    ran. Single-process runs just read the state when saving.

    Checkpoints written without this hook, or by a run with another number of ranks, resume
    with a warning and the runner's seed.
    """

    priority = 80  # after LOW (ParamSchedulerHook, 70), before VERY_LOW (CheckpointHook, 90)

    def __init__(self):
        self._gathered: Optional[List[Dict[str, Any]]] = None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        _, world_size = get_dist_info()
        if world_size > 1:
            self._gathered = all_gather_object(get_rng_states())

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        _, world_size = get_dist_info()
        if world_size == 1:
            checkpoint[CHECKPOINT_KEY] = [get_rng_states()]
        elif self._gathered is not None:
            checkpoint[CHECKPOINT_KEY] = self._gathered

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return
        states: List[Dict[str, Any]] = checkpoint.get(CHECKPOINT_KEY)
        rank, world_size = get_dist_info()
        if not states or len(states) != world_size:
            found = 'none' if not states else f'{len(states)} rank(s)'
            print_log(
                f'RNGStateHook: the checkpoint holds generator states for {found}, this run has '
                f'{world_size}; resuming with the seeded generators, so the random numbers '
                f'will differ from the uninterrupted run.', logger='current', level=30)
            return
        set_rng_states(states[rank])
