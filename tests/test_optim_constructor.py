"""PlainGroupsOptimWrapperConstructor: the default constructor's groups, as plain dicts, so that
mmengine's ``compile=True`` (torch.compile of ``train_step``, the optimizer step included) can
trace the optimizer; every shipped config with a paramwise_cfg uses it or the layer-decay one."""
import glob
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner

import mmlocalmamba  # noqa: F401  (registers the constructors)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PARAMWISE = dict(norm_decay_mult=0., custom_keys={'0.bias': dict(decay_mult=0., lr_mult=2.)})


class _Net(BaseModel):

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))

    def forward(self, x, mode='loss'):
        return dict(loss=self.body(torch.stack(x)).square().mean())


class _Data(torch.utils.data.Dataset):

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return dict(x=torch.full((4, ), float(index)))


def _optim_cfg(constructor=None):
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
               paramwise_cfg=PARAMWISE)
    if constructor:
        cfg['constructor'] = constructor
    return ConfigDict(cfg)


def test_groups_are_plain_dicts_with_the_default_constructors_content():
    ref = build_optim_wrapper(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), _optim_cfg())
    # the reason for the constructor: mmengine's groups from a config are ConfigDicts
    assert type(ref.optimizer.param_groups[0]) is ConfigDict
    net = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    got = build_optim_wrapper(net, _optim_cfg('PlainGroupsOptimWrapperConstructor'))
    groups = got.optimizer.param_groups
    assert all(type(g) is dict for g in groups)
    assert [{k: v for k, v in g.items() if k != 'params'} for g in groups] == [
        {k: v for k, v in g.items() if k != 'params'} for g in ref.optimizer.param_groups]
    assert [[p.shape for p in g['params']] for g in groups] == [
        [p.shape for p in g['params']] for g in ref.optimizer.param_groups]
    assert groups[1]['lr'] == 2e-3 and groups[1]['weight_decay'] == 0.0  # '0.bias'


def test_layer_decay_groups_are_plain_dicts():
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    cfg = ConfigDict(constructor='LayerDecayOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                     paramwise_cfg=dict(num_layers=2, layer_decay_rate=0.5))
    groups = build_optim_wrapper(model, cfg).optimizer.param_groups
    assert groups and all(type(g) is dict for g in groups)


@pytest.mark.parametrize('constructor', [None, 'PlainGroupsOptimWrapperConstructor'])
def test_runner_compile_true_trains_with_paramwise_groups(constructor, tmp_path):
    """mmengine's compile (train_step compiled, aot_eager) with a paramwise_cfg from a config:
    the default constructor's ConfigDict groups stop Dynamo in optimizer.step (torch >= 2.14),
    the plain groups train."""
    cfg = Config(dict(work_dir=str(tmp_path), compile=dict(backend='aot_eager')))
    runner = Runner(model=_Net(), work_dir=str(tmp_path), cfg=cfg,
                    train_dataloader=dict(dataset=_Data(), batch_size=2,
                                          sampler=dict(type='DefaultSampler', shuffle=False)),
                    optim_wrapper=_optim_cfg(constructor),
                    train_cfg=dict(by_epoch=True, max_epochs=1))
    torch._dynamo.reset()
    if constructor is None:
        if tuple(int(v) for v in torch.__version__.split('.')[:2]) != (2, 14):
            pytest.skip('the ConfigDict failure is the one seen with torch 2.14')
        with pytest.raises(Exception, match='UserDefinedDictVariable'):
            runner.train()
    else:
        runner.train()
        assert runner.iter == 2


def test_shipped_configs_use_plain_groups():
    """Every shipped config with a paramwise_cfg builds its optimizer with plain-dict groups."""
    allowed = {'PlainGroupsOptimWrapperConstructor', 'LayerDecayOptimWrapperConstructor'}
    checked = 0
    for path in sorted(glob.glob(osp.join(ROOT, 'configs', 'mm*', '*.py'))):
        optim = Config.fromfile(path).get('optim_wrapper') or {}
        if optim.get('paramwise_cfg'):
            assert optim.get('constructor') in allowed, path
            checked += 1
    assert checked >= 20
