"""Inductor options the backbones' ``compile()`` adds (``models/compile_options.py``).

On the CPU: the detection of the failing Inductor, the options ``LocalVim.compile`` passes to
``torch.compile``, and Inductor's Triton code generation for a middle-class-token LocalVim with
a dynamic batch (the kernels generated, not compiled: a subprocess with a stand-in sm_90 driver
and Inductor's Triton backend for the CPU; on torch 2.11 it fails there without the options,
as it did on the H200).
"""
import subprocess
import sys
import textwrap

import pytest
import torch

from mmlocalmamba.models import LocalVim, compile_options

OPTION = 'triton.coalesce_tiling_analysis'


def _vim(middle_cls_token):
    return LocalVim(arch=dict(embed_dim=32, depth=2, if_rope=False,
                              middle_cls_token=middle_cls_token),
                    img_size=64, out_indices=(1, ), drop_path_rate=0.)


def test_detection_reads_the_size_comparison(monkeypatch):
    tiling_utils = pytest.importorskip('torch._inductor.tiling_utils')

    def structural(n, pointwise_numel):
        return n == pointwise_numel

    def symbolic(n, pointwise_numel, sizevars):
        return sizevars.statically_known_equals(n, pointwise_numel)

    monkeypatch.setattr(tiling_utils, 'get_pw_red_splits', structural, raising=False)
    assert compile_options.coalescing_analysis_fails_on_class_tokens()
    assert compile_options.class_token_inductor_options() == {OPTION: False}
    monkeypatch.setattr(tiling_utils, 'get_pw_red_splits', symbolic)
    assert not compile_options.coalescing_analysis_fails_on_class_tokens()
    assert compile_options.class_token_inductor_options() == {}
    monkeypatch.delattr(tiling_utils, 'get_pw_red_splits')
    assert not compile_options.coalescing_analysis_fails_on_class_tokens()


@pytest.fixture
def compile_calls(monkeypatch):
    """The keyword arguments of every torch.compile call (nothing is compiled)."""
    calls = []

    def spy(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, 'compile', spy)
    return calls


def test_compile_adds_the_options_for_class_tokens(monkeypatch, compile_calls):
    monkeypatch.setattr(compile_options, 'coalescing_analysis_fails_on_class_tokens',
                        lambda: True)
    _vim(True).compile(dynamic=True)
    _vim(True).compile(options={OPTION: True, 'max_autotune': False})  # the user's win
    _vim(True).compile(mode='max-autotune-no-cudagraphs')
    _vim(True).compile(backend='eager')  # not Inductor
    _vim(False).compile()  # no class token
    assert compile_calls[0] == dict(dynamic=True, options={OPTION: False})
    assert compile_calls[1] == dict(options={OPTION: True, 'max_autotune': False})
    from torch._inductor import list_mode_options
    assert compile_calls[2] == dict(options={**list_mode_options('max-autotune-no-cudagraphs'),
                                             OPTION: False})
    assert compile_calls[3] == dict(backend='eager')
    assert compile_calls[4] == {}


def test_compile_adds_nothing_where_inductor_does_not_fail(monkeypatch, compile_calls):
    monkeypatch.setattr(compile_options, 'coalescing_analysis_fails_on_class_tokens',
                        lambda: False)
    _vim(True).compile(dynamic=True)
    assert compile_calls == [dict(dynamic=True)]


_CODEGEN = textwrap.dedent('''
    import torch
    import torch._inductor.config as config
    from torch._inductor import async_compile
    from mmlocalmamba.ops.triton.compile_worker import stand_in_driver
    from mmlocalmamba.models import LocalVim

    config.cpu_backend = 'triton'  # Inductor's Triton code generation, for CPU tensors
    config.compile_threads = 1
    generated = []

    class NotCompiled:
        """A generated kernel, not compiled: its launches do nothing."""
        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    def generate_only(self, kernel_name, source_code, device_str='cuda'):
        generated.append(kernel_name)
        return NotCompiled()

    async_compile.AsyncCompile.triton = generate_only
    stand_in_driver(('cuda', 90, 32), torch.device('cpu'))
    model = LocalVim(arch=dict(embed_dim=32, depth=1, if_rope=False, middle_cls_token=True),
                     img_size=64, out_indices=(0, ), drop_path_rate=0.)
    model.compile(dynamic=True)
    out = model(torch.randn(2, 3, 70, 45, requires_grad=True))
    sum(o.float().sum() for o in out).backward()
    print('GENERATED', len(generated))
''')


def test_inductor_generates_the_class_token_model_with_a_dynamic_batch():
    pytest.importorskip('triton')
    proc = subprocess.run([sys.executable, '-c', _CODEGEN], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    generated = int(proc.stdout.split('GENERATED')[-1])
    assert generated > 10  # forward and backward kernels
