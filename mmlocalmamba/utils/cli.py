"""argparse value types for the command-line tools: numbers checked when they are parsed.

``parser.add_argument('--batch-size', type=positive_int)`` makes ``--batch-size 0`` an argparse
error that names the option, the value and the valid range (exit status 2), instead of a failure
deep inside the tool.
"""
import argparse
import math
from typing import Callable

__all__ = ['positive_int', 'non_negative_int', 'positive_float', 'non_negative_float',
           'probability']


def _typed(convert: Callable, check: Callable, valid: str, name: str) -> Callable:

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not check(value):
            raise argparse.ArgumentTypeError(f'must be {valid}, got {text!r}')
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _finite(value: float) -> bool:
    return math.isfinite(value)


positive_int = _typed(int, lambda v: v >= 1, 'an integer >= 1', 'positive_int')
non_negative_int = _typed(int, lambda v: v >= 0, 'an integer >= 0', 'non_negative_int')
positive_float = _typed(float, lambda v: _finite(v) and v > 0, 'a number > 0', 'positive_float')
non_negative_float = _typed(float, lambda v: _finite(v) and v >= 0, 'a number >= 0',
                            'non_negative_float')
probability = _typed(float, lambda v: 0 <= v <= 1, 'a number in [0, 1]', 'probability')
