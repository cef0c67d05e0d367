"""Long work reports progress through mmengine: demo-data generation and the direction export."""
import os.path as osp

import torch
from mmengine.logging import MMLogger

from mmlocalmamba.datasets import demo_data
from mmlocalmamba.models.local_vmamba import LocalVMamba
from mmlocalmamba.search.export import export_all


def test_demo_data_progress_bar_only_when_asked(tmp_path, capfd):
    demo_data.generate_demo_data(str(tmp_path / 'quiet'), num_train=3, num_val=2, img_size=32)
    assert 'task/s' not in capfd.readouterr().out
    demo_data.generate_demo_data(str(tmp_path / 'loud'), num_train=3, num_val=2, img_size=32,
                                 progress=True)
    out = capfd.readouterr().out
    # one bar per split and dataset (mmengine's ProgressBar: "done/total, rate task/s, ...")
    assert out.count('3/3') == 2 and out.count('2/2') == 2 and 'task/s' in out
    # progress changes nothing in the data
    for name in ('coco/train/000000000001.jpg', 'ade/annotations/training/ADE_train_00000001.png'):
        with open(tmp_path / 'quiet' / name, 'rb') as a, open(tmp_path / 'loud' / name, 'rb') as b:
            assert a.read() == b.read()


def test_export_logs_loading_and_writing(tmp_path):
    model = LocalVMamba(arch=dict(dims=16, depths=[1, 1, 1, 1], directions=None))
    path = str(tmp_path / 'supernet.pth')
    torch.save(dict(state_dict=model.state_dict()), path)
    log_file = str(tmp_path / 'export.log')
    MMLogger.get_instance('test_export_progress', log_file=log_file)  # the current logger now
    export_all(path, str(tmp_path / 'out'))
    with open(log_file) as f:
        log = f.read()
    assert f'Loading the supernet checkpoint {path} (' in log and 'MiB) ...' in log
    assert 'Loaded in ' in log
    assert 'Top-4 directions of 4 search layers; writing directions.json' in log
    assert osp.isfile(tmp_path / 'out' / 'directions.png')
