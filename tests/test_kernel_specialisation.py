"""The Triton kernels do not specialise the integers that change with the input size.

Triton compiles one variant per "specialisation" of each integer argument (equal to 1, a
multiple of 16, or neither); a size integer left specialised makes a new image size (or a
batch of 1) compile new kernels, tens of seconds each on first use. On the GPU,
``tests/test_custom_ops.py`` checks that new sizes compile nothing; this checks the kernels'
declarations on any machine. (Measured with ``sass_report.capture_compiles``, triton 3.6,
sm_90: the fused LocalVim layer at 64x64, 63x65, 50x84, 64x64 batch 1, 14x14 and 15x17 with a
class token compiled 25 kernels for its 10 constexpr variants before, 10 after.)
"""
import importlib

import pytest

pytest.importorskip('triton')

#: Integer arguments whose value follows the image size or the batch, and ``tab_sd`` (1 at run
#: time, never specialised: see ``scan_kernels._prologue``). Strides are not listed: they are
#: multiples of the channel counts and stay specialised for vector loads.
SIZE_ARGS = {'num_tokens', 'table_len', 'num_seg', 'seg_len', 'num_ck', 'batch', 'L', 'tab_sd'}
MODULES = ('scan_kernels', 'merge_kernels', 'vim_kernels')


def _kernels():
    from triton.runtime.jit import JITFunction
    for name in MODULES:
        module = importlib.import_module(f'mmlocalmamba.ops.triton.{name}')
        for attr, value in vars(module).items():
            if isinstance(value, JITFunction) and attr.endswith('_kernel'):
                yield f'{name}.{attr}', value


def _specialised(kernel, arg):
    index = kernel.arg_names.index(arg)
    return arg not in kernel.do_not_specialize and index not in kernel.do_not_specialize


KERNELS = dict(_kernels())


def test_every_kernel_module_is_checked():
    assert {name.split('.')[0] for name in KERNELS} == set(MODULES)


@pytest.mark.parametrize('name', sorted(KERNELS))
def test_size_integers_are_not_specialised(name):
    kernel = KERNELS[name]
    sizes = [a for a in kernel.arg_names if a in SIZE_ARGS]
    specialised = [a for a in sizes if _specialised(kernel, a)]
    assert not specialised, f'{name} specialises {specialised}'
