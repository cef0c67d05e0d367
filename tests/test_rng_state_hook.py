"""RNGStateHook: generator states survive a weights_only checkpoint round trip."""
import io
import random
import types

import numpy as np
import torch

from mmlocalmamba.engine.rng_state_hook import RNGStateHook, get_rng_states, set_rng_states
from mmlocalmamba.utils.safe_load import safe_torch_load


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return safe_torch_load(buf)  # weights_only=True with the checked numpy types


def test_states_roundtrip_through_weights_only_checkpoint():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    _draw()
    ckpt = {}
    RNGStateHook().before_save_checkpoint(runner=None, checkpoint=ckpt)
    expected = _draw()
    ckpt = _roundtrip(ckpt)
    _draw(), _draw()  # move every generator on
    RNGStateHook().after_load_checkpoint(types.SimpleNamespace(_resume=True), ckpt)
    assert _draw() == expected


def test_states_not_restored_when_only_loading_weights():
    ckpt = {'rng_states': [get_rng_states()]}
    expected = _draw()
    RNGStateHook().after_load_checkpoint(types.SimpleNamespace(_resume=False), ckpt)
    assert _draw() != expected


def test_missing_states_leave_the_seeded_generators():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    RNGStateHook().after_load_checkpoint(types.SimpleNamespace(_resume=True), {})
    assert torch.equal(before, torch.get_rng_state())


def test_set_rng_states_accepts_list_forms():
    state = get_rng_states()
    expected = _draw()
    py = state['python']
    state['python'] = [py[0], list(py[1]), py[2]]
    state['numpy'] = list(state['numpy'])
    set_rng_states(state)
    assert _draw() == expected


def test_priority_between_param_scheduler_and_checkpoint_hooks():
    from mmengine.registry import HOOKS
    from mmengine.runner.priority import get_priority
    assert get_priority('LOW') < get_priority(RNGStateHook.priority) < get_priority('VERY_LOW')
    assert HOOKS.get('RNGStateHook') is RNGStateHook
