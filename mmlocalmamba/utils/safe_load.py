"""Loading checkpoints safely: ``torch.load(weights_only=True)`` with a scoped, checked allow-list.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``: only tensors, containers and
allow-listed globals may appear. Checkpoints in our field carry a few more types: the official
LocalMamba releases an ``argparse.Namespace`` and numpy scalars; mmengine checkpoints numpy arrays
and its ``HistoryBuffer`` (message hub); :class:`~mmlocalmamba.engine.RNGStateHook` numpy
generator states. Allow-listing the numpy and mmengine classes themselves would not be harmless:

* ``numpy.dtype`` takes its type flags from the file, so a file can declare an object field while
  claiming to hold no Python objects; the array built from it crashes the process when touched;
* ``HistoryBuffer.__setstate__`` writes its *class-level* statistics registry from the file (a
  file can make ``mean`` compute the minimum for every buffer of the process);
* a general ``getattr`` hands out any attribute of an allowed object (``register_statistics``).

So this module never hands those classes to the unpickler. Their names resolve to stand-ins that
check what the file says before anything is built:

* ``numpy.dtype`` -> :class:`_DtypeState`: only plain bool/int/uint/float/complex and fixed-size
  str/bytes types are rebuilt, and only when the state the file gives is exactly the state numpy
  itself writes for that type (no fields, no sub-arrays, no metadata, no flags of its own); other
  dtypes (objects, structured) are not rebuilt, and a forged one that hides an object field
  behind its flags is named as a forgery;
* ``numpy...._reconstruct`` -> an ndarray whose ``__setstate__`` (:class:`_CheckedArray`) accepts
  only a checked dtype and a raw buffer of exactly the right size (never a list of objects);
* ``numpy....scalar`` -> a checked scalar from a checked dtype and a buffer of its size;
* ``HistoryBuffer`` -> :class:`_HistoryBufferState`: restores the instance (history arrays,
  ``max_length``) and never touches the class registry; a file that maps a statistic to another
  method is refused;
* ``builtins.getattr`` -> exactly ``getattr(HistoryBuffer, name)`` for the four statistics
  methods (``min``, ``max``, ``current``, ``mean``) that ``HistoryBuffer`` pickles;
* ``builtins.bytes`` -> only ``bytes()`` (how protocol 2 writes ``b''``);
* ``argparse.Namespace`` and ``mmengine.config.ConfigDict`` as themselves: they build nothing
  but their attributes/items and hold no class-level state.

The allow-list is **scoped**: :func:`checkpoint_types_allowed` adds it around our own loads only
(``torch.serialization.safe_globals``), so ``import mmlocalmamba`` changes nothing for other
``torch.load`` calls of the process. After loading, the stand-ins are replaced by plain numpy
arrays and dtypes (:func:`safe_torch_load` does it).

Errors name the file and what was found: :class:`CheckpointFormatError` for files that are not
checkpoints at all (empty, truncated, text, images, other archives; trusting them would not help,
so no trust is offered), :class:`UnsafeCheckpointError` for checkpoints that reference other
classes (loadable with ``trust_checkpoint=True`` / ``MMLOCALMAMBA_TRUST_CHECKPOINTS=1`` when the
user trusts the file) or hold invalid numpy/mmengine content (never loaded).
"""
import argparse
import contextlib
import functools
import io
import math
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

__all__ = [
    'TRUST_ENV', 'CheckpointFormatError', 'UnsafeCheckpointError', 'is_trusted',
    'checkpoint_globals', 'checkpoint_types_allowed', 'safe_torch_load', 'check_checkpoint_file',
    'checkpoint_file_problem', 'load_error', 'plain_checkpoint_objects'
]

TRUST_ENV = 'MMLOCALMAMBA_TRUST_CHECKPOINTS'
_TRUE = ('1', 'true', 'yes', 'on')


class CheckpointFormatError(ValueError):
    """The file is not a torch checkpoint (empty, truncated, text, image, other archive...)."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint references objects outside the allow-list, or holds invalid content."""


class _RefusedContent(pickle.UnpicklingError):
    """Raised by the stand-ins below; :func:`safe_torch_load` turns it into a named error.

    ``crafted``: content that numpy, mmengine and torch never write (as opposed to content
    that a genuine writer may produce but the safe loader does not rebuild, e.g. object arrays).
    """

    def __init__(self, message: str, crafted: bool = True):
        super().__init__(message)
        self.crafted = crafted


def is_trusted(trust_checkpoint: Optional[bool] = None) -> bool:
    """The trust opt-in: ``trust_checkpoint`` when given, else ``$MMLOCALMAMBA_TRUST_CHECKPOINTS``.

    Trusted files are unpickled in full (``weights_only=False``): only for files whose origin
    the user trusts, since unpickling can run arbitrary code.
    """
    if trust_checkpoint is not None:
        return bool(trust_checkpoint)
    return os.environ.get(TRUST_ENV, '').strip().lower() in _TRUE


# --------------------------------------------------------------------------------------------
# numpy stand-ins
# --------------------------------------------------------------------------------------------
#: Type codes a checkpoint may use: numbers and fixed-size strings, never objects, void
#: (structured) types, datetimes or anything with fields.
_DTYPE_CODE = re.compile(r'(b1|[iu][1248]|f[248]|c(8|16)|[US][0-9]{1,6})')


class _DtypeState:
    """What ``numpy.dtype`` resolves to: a dtype description, checked before numpy sees it.

    Plain types become a real dtype (:attr:`dtype`) when their state is exactly the one numpy
    writes. Other types (objects, structured, datetimes, ...) are not rebuilt: the description
    stays inert and using it (in an array, a scalar or as a value) refuses the file. Their state
    is still read for contradictions: a structured type that declares an object field while its
    flags claim it holds no Python objects is a forgery (arrays of it read arbitrary memory as
    object pointers and crash the process).
    """

    def __new__(cls, code=None, align=False, copy=True):
        if align not in (True, False) or copy not in (True, False):
            raise _RefusedContent(f'a numpy dtype {code!r} with align={align!r}, copy={copy!r}')
        self = object.__new__(cls)
        self.code = code
        self.dtype: Optional[np.dtype] = None
        self.holds_objects = isinstance(code, str) and code.startswith('O')
        self.refused = None
        if not (isinstance(code, str) and _DTYPE_CODE.fullmatch(code)) or align:
            self.refused = (f'a numpy dtype {code!r}: the safe loader rebuilds only plain number '
                            f'types (bool, int, uint, float, complex) and fixed-size str/bytes '
                            f'types, not object, structured or other dtypes')
        return self

    def __repr__(self) -> str:
        return f'numpy.dtype({self.code!r})'

    def __setstate__(self, state) -> None:
        if not (isinstance(state, tuple) and len(state) >= 8):
            raise _RefusedContent(f'a numpy dtype {self.code!r} with the state {state!r:.120}')
        endian, fields, flags = state[1], state[4], state[7]
        if self.refused is not None:
            self._check_object_flags(fields, flags)
            return
        dtype = np.dtype(self.code)
        if endian in ('<', '>'):
            dtype = dtype.newbyteorder(endian)
        expected = dtype.__reduce__()[2]
        if state != expected:
            # numpy writes exactly this state for this type; anything else (fields, flags that
            # hide object pointers, sub-arrays, metadata) is not a genuine dtype of this type
            raise _RefusedContent(
                f'a numpy dtype {self.code!r} whose state {state!r:.160} is not the one numpy '
                f'writes for it, {expected!r}: fields or flags that a genuine {dtype.str} dtype '
                f'does not have')
        self.dtype = dtype

    def _check_object_flags(self, fields, flags) -> None:
        if not isinstance(fields, dict):
            return
        with_objects = sorted(
            str(name) for name, spec in fields.items()
            if isinstance(spec, tuple) and spec and getattr(spec[0], 'holds_objects', False))
        if with_objects and not (isinstance(flags, int) and flags & 1):
            raise _RefusedContent(
                f'a numpy dtype {self.code!r} that declares the object field(s) '
                f'{with_objects} while its flags ({flags!r}) claim that it holds no Python '
                f'objects; arrays of it would read arbitrary memory as object pointers')
        self.holds_objects = bool(with_objects)


def _checked_dtype(value: Any, what: str) -> np.dtype:
    if isinstance(value, _DtypeState):
        if value.refused is not None:
            raise _RefusedContent(f'{what} of {value.refused}', crafted=False)
        if value.dtype is not None:
            return value.dtype
    raise _RefusedContent(f'{what} with the dtype {value!r:.80} (not a checked numpy dtype)')


class _NdarrayClass:
    """What ``numpy.ndarray`` resolves to: only a marker for ``_reconstruct``'s first argument."""

    def __new__(cls, *args, **kwargs):
        raise _RefusedContent('a call of numpy.ndarray (arrays are only rebuilt from their '
                              'pickled state)')


class _CheckedArray(np.ndarray):
    """An ndarray whose pickled state is checked before numpy rebuilds it.

    Only the unpickler creates these; :func:`plain_checkpoint_objects` turns them into plain
    ndarrays (``__reduce__`` also pickles them as plain ndarrays). The class is in the
    allow-list only so that the unpickler may build it; a file that names it cannot call it.
    """

    def __new__(cls, *args, **kwargs):
        raise _RefusedContent('a call of a numpy array class (arrays are only rebuilt from '
                              'their pickled state)')

    def __setstate__(self, state) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _RefusedContent(f'a numpy array with the state {type(state).__name__} '
                                  f'{state!r:.80}')
        version, shape, dtype, fortran, data = state
        dtype = _checked_dtype(dtype, 'a numpy array')
        if not (isinstance(shape, tuple) and all(
                type(n) is int and 0 <= n < 2**40 for n in shape) and len(shape) <= 32):
            raise _RefusedContent(f'a numpy array with the shape {shape!r}')
        if version != 1 or fortran not in (True, False) or not isinstance(data, bytes):
            raise _RefusedContent(
                f'a numpy array state (version {version!r}, fortran {fortran!r}, data '
                f'{type(data).__name__}); only raw buffers of version-1 array states are accepted')
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise _RefusedContent(f'a numpy array of shape {shape} and dtype {dtype.str} with '
                                  f'{len(data)} bytes of data')
        super().__setstate__((version, shape, dtype, fortran, data))

    def __reduce__(self):
        return self.view(np.ndarray).__reduce__()


def _reconstruct(cls, shape, typecode) -> _CheckedArray:
    """What ``numpy.core.multiarray._reconstruct`` resolves to: an empty, checked array."""
    if cls is not _NdarrayClass or shape != (0, ) or typecode != b'b':
        raise _RefusedContent(f'numpy _reconstruct({getattr(cls, "__name__", cls)!r}, '
                              f'{shape!r}, {typecode!r}) (only plain ndarrays are accepted)')
    return np.ndarray.__new__(_CheckedArray, (0, ), np.uint8)


def _scalar(dtype, data=None):
    """What ``numpy.core.multiarray.scalar`` resolves to: a checked numpy scalar."""
    dtype = _checked_dtype(dtype, 'a numpy scalar')
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _RefusedContent(f'a numpy {dtype.str} scalar with {type(data).__name__} data '
                              f'{data!r:.40}')
    return np.frombuffer(data, dtype=dtype, count=1)[0].copy()


# --------------------------------------------------------------------------------------------
# mmengine and builtin stand-ins
# --------------------------------------------------------------------------------------------
#: The statistics ``HistoryBuffer`` registers itself and pickles as getattr(HistoryBuffer, name).
_STATISTICS = ('current', 'max', 'mean', 'min')


def _history_buffer_class():
    from mmengine.logging import HistoryBuffer
    return HistoryBuffer


@functools.lru_cache(maxsize=None)
def _history_buffer_state():
    history_buffer = _history_buffer_class()

    class _HistoryBufferState(history_buffer):
        """What mmengine's ``HistoryBuffer`` resolves to: restores an instance, nothing else.

        The class-level statistics registry is never written from a file: a state that maps a
        statistic to anything but the method of that name is refused, a matching one is dropped.
        The object becomes a plain ``HistoryBuffer`` once its state is checked.
        """

        def __new__(cls, *args, **kwargs):
            if args or kwargs:
                raise _RefusedContent('HistoryBuffer.__new__ with arguments')
            return object.__new__(cls)

        def __init__(self, *args, **kwargs):
            raise _RefusedContent('a call of HistoryBuffer (buffers are only restored from '
                                  'their pickled state)')

        def __setstate__(self, state) -> None:
            keys = {'max_length', '_log_history', '_count_history'}
            if not isinstance(state, dict) or not keys <= set(state) or set(state) - keys - {
                    'statistics_methods'}:
                raise _RefusedContent(
                    f'a HistoryBuffer state with the keys '
                    f'{sorted(state) if isinstance(state, dict) else type(state).__name__}; '
                    f'expected {sorted(keys)} and optionally statistics_methods')
            methods = state.get('statistics_methods', {})
            if not isinstance(methods, dict):
                raise _RefusedContent(f'HistoryBuffer statistics_methods of type '
                                      f'{type(methods).__name__}')
            for name, method in methods.items():
                if name not in _STATISTICS or method is not getattr(history_buffer, name):
                    raise _RefusedContent(
                        f'a HistoryBuffer state that registers the statistic {name!r} as '
                        f'{getattr(method, "__qualname__", method)!r}: it would change how every '
                        f'HistoryBuffer of the process computes {name!r}')
            max_length = state['max_length']
            if type(max_length) is not int or max_length < 1:
                raise _RefusedContent(f'a HistoryBuffer with max_length {max_length!r}')
            arrays = []
            for key in ('_log_history', '_count_history'):
                value = state[key]
                if not (isinstance(value, np.ndarray) and value.ndim == 1
                        and value.dtype.kind in 'biuf'):
                    raise _RefusedContent(f'a HistoryBuffer {key} of type '
                                          f'{type(value).__name__}')
                arrays.append(value.view(np.ndarray))
            if len(arrays[0]) != len(arrays[1]):
                raise _RefusedContent(f'a HistoryBuffer with {len(arrays[0])} values and '
                                      f'{len(arrays[1])} counts')
            self.__class__ = history_buffer
            self._set_default_statistics()  # the defaults only, as HistoryBuffer() does
            self.__dict__.update(max_length=max_length, _log_history=arrays[0],
                                 _count_history=arrays[1])

    return _HistoryBufferState


def _getattr(obj, name):
    """What ``builtins.getattr`` resolves to: the HistoryBuffer statistics methods only."""
    stand_in = _history_buffer_state()
    if obj is stand_in and name in _STATISTICS:
        return getattr(_history_buffer_class(), name)
    owner = 'HistoryBuffer' if obj is stand_in else getattr(obj, '__name__',
                                                            type(obj).__name__)
    raise _RefusedContent(f'getattr({owner}, {name!r}); only getattr(HistoryBuffer, n) for n in '
                          f'{list(_STATISTICS)} is accepted')


def _bytes(*args):
    """What ``builtins.bytes`` resolves to: ``bytes()`` only (protocol 2 writes ``b''`` so)."""
    if args:
        raise _RefusedContent(f'a call of bytes with {len(args)} argument(s)')
    return b''


def checkpoint_globals() -> List[Tuple[Any, str]]:
    """The allow-list: ``(object, 'module.name')`` pairs for ``torch.serialization``.

    Names of numpy and mmengine classes map to the checking stand-ins of this module (see the
    module docstring); ``argparse.Namespace`` and mmengine's ``ConfigDict`` map to themselves.
    """
    entries: List[Tuple[Any, str]] = [
        (argparse.Namespace, 'argparse.Namespace'),
        (_bytes, 'builtins.bytes'),
        (_NdarrayClass, 'numpy.ndarray'),
        (_DtypeState, 'numpy.dtype'),
        (_CheckedArray, f'{__name__}._CheckedArray'),
        (_history_buffer_state(), 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_getattr, 'builtins.getattr'),
    ]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries += [(_reconstruct, f'{module}._reconstruct'), (_scalar, f'{module}.scalar')]
    try:
        from mmengine.config import ConfigDict
        entries.append((ConfigDict, 'mmengine.config.config.ConfigDict'))
    except ImportError:  # pragma: no cover - mmengine is a dependency
        pass
    return entries


def _global_name(entry) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f'{entry.__module__}.{entry.__qualname__}'


_active_scopes = 0


@contextlib.contextmanager
def checkpoint_types_allowed() -> Iterator[None]:
    """Context in which ``torch.load(weights_only=True)`` accepts :func:`checkpoint_globals`.

    Entries that the process allow-listed under the same names (e.g. a plain ``numpy.dtype``)
    are set aside meanwhile, so that the checked stand-ins are the ones used; everything is
    restored on exit. Nested uses keep the list until the outermost one exits. Objects loaded
    inside the context may hold stand-ins: :func:`plain_checkpoint_objects` replaces them
    (:func:`safe_torch_load` does both).
    """
    global _active_scopes
    if _active_scopes:
        _active_scopes += 1
        try:
            yield
        finally:
            _active_scopes -= 1
        return
    ours = checkpoint_globals()
    names = {name for _, name in ours}
    saved = torch.serialization.get_safe_globals()
    clashing = [g for g in saved if _global_name(g) in names]
    if clashing:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals([g for g in saved if g not in clashing])
    _active_scopes = 1
    try:
        with torch.serialization.safe_globals(ours):
            yield
    finally:
        _active_scopes = 0
        if clashing:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(saved)


# --------------------------------------------------------------------------------------------
# after loading
# --------------------------------------------------------------------------------------------
def plain_checkpoint_objects(obj: Any) -> Any:
    """Replace the checked stand-ins in a loaded object by plain numpy arrays and dtypes.

    Walks the containers a weights-only checkpoint can hold (dicts, lists, tuples, sets,
    ``Namespace`` and ``HistoryBuffer`` attributes); shared objects stay shared.
    """
    history_buffer = _history_buffer_class()
    done: Dict[int, Any] = {}

    def walk(value):
        key = id(value)
        if key in done:
            return done[key]
        if isinstance(value, _CheckedArray):
            out = value.view(np.ndarray)
        elif isinstance(value, _DtypeState):
            out = _checked_dtype(value, 'a standalone value')
        elif isinstance(value, tuple):
            items = tuple(walk(v) for v in value)
            out = value if all(a is b for a, b in zip(items, value)) else (
                type(value)(*items) if hasattr(value, '_fields') else type(value)(items))
        elif isinstance(value, (torch.Tensor, str, bytes, int, float, complex, type(None))):
            return value
        else:
            done[key] = value  # containers are updated in place (cycles, sharing)
            if isinstance(value, dict):
                for k, v in list(value.items()):
                    new = walk(v)
                    if new is not v:
                        dict.__setitem__(value, k, new)
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    value[i] = walk(v)
            elif isinstance(value, (set, frozenset)):
                items = {walk(v) for v in value}
                if isinstance(value, set):
                    value.clear()
                    value.update(items)
            elif isinstance(value, (argparse.Namespace, history_buffer)):
                for k, v in list(vars(value).items()):
                    vars(value)[k] = walk(v)
            return value
        done[key] = out
        return out

    return walk(obj)


# --------------------------------------------------------------------------------------------
# file checks
# --------------------------------------------------------------------------------------------
_SIGNATURES = (
    (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
    (b'\xff\xd8\xff', 'a JPEG image'),
    (b'GIF8', 'a GIF image'),
    (b'%PDF', 'a PDF document'),
    (b'\x1f\x8b', 'a gzip-compressed file (decompress it first)'),
    (b'BZh', 'a bzip2-compressed file (decompress it first)'),
    (b'\xfd7zXZ\x00', 'an xz-compressed file (decompress it first)'),
    (b'7z\xbc\xaf\x27\x1c', 'a 7-zip archive'),
    (b'\x93NUMPY', 'a NumPy .npy file, not a torch checkpoint (load it with numpy.load)'),
    (b'\x89HDF\r\n\x1a\n', 'an HDF5 file, not a torch checkpoint'),
    (b'\x7fELF', 'an executable (ELF) file'),
)


def _display_name(f) -> str:
    if isinstance(f, (str, os.PathLike)):
        return repr(os.fspath(f))
    return repr(getattr(f, 'name', None) or f'<{type(f).__name__}>')


def _zip_problem(f) -> Optional[str]:
    try:
        with zipfile.ZipFile(f) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        return (f'is a damaged or truncated zip archive ({err}); torch checkpoints are zip '
                f'archives, so the file is probably incomplete (an interrupted download or copy)')
    if any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
        return None
    shown = ', '.join(names[:5]) + (', ...' if len(names) > 5 else '')
    return (f'is a zip archive without a torch checkpoint in it (no data.pkl; it holds '
            f'{len(names)} file(s): {shown or "none"})')


def _text_problem(head: bytes) -> Optional[str]:
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the end of the sample
            return None
        text = head[:err.start].decode('utf-8')
    if not text or any(ord(c) < 32 and c not in '\t\r\n' for c in text):
        return None
    start = text.lstrip()[:40]
    if start.startswith('version https://git-lfs'):
        return ('is a Git LFS pointer, not the checkpoint itself (fetch the file with '
                '"git lfs pull")')
    if start.lower().startswith(('<!doctype html', '<html', '<?xml')):
        return f'is an HTML/XML page (starts with {start[:20]!r}), probably a failed download'
    return f'is a text file (starts with {start!r}), not a torch checkpoint'


def checkpoint_file_problem(f) -> Optional[str]:
    """What makes ``f`` clearly not a torch checkpoint (None: it may be one).

    Recognises empty files, damaged or truncated zip archives, zip archives of something else,
    text (and HTML, Git LFS pointers), images, compressed files and other common formats. Files
    that start like a pickle or a torch zip archive pass (the unpickler decides the rest).

    Args:
        f: a path, or a seekable binary file object (its position is restored).

    Returns:
        e.g. ``'is empty (0 bytes)'``, to follow "the file ...".

    Raises:
        FileNotFoundError: ``f`` is a path that does not exist.
    """
    if isinstance(f, (str, os.PathLike)):
        if not os.path.isfile(f):
            raise FileNotFoundError(f'Checkpoint file not found: {_display_name(f)}')
        with open(f, 'rb') as handle:
            head = handle.read(512)
        size = os.path.getsize(f)
        zip_source = f
    else:
        if not (hasattr(f, 'seek') and hasattr(f, 'tell')):
            return None
        pos = f.tell()
        head = f.read(512)
        f.seek(0, io.SEEK_END)
        size = f.tell() - pos
        f.seek(pos)
        zip_source = f
    problem = None
    if size == 0:
        problem = 'is empty (0 bytes)'
    elif head.startswith((b'PK\x03\x04', b'PK\x05\x06')):
        problem = _zip_problem(zip_source)
        if not isinstance(f, (str, os.PathLike)):
            f.seek(pos)
    elif head[:1] == b'\x80' and len(head) > 1 and 2 <= head[1] <= 5:
        problem = None  # a pickle (torch's legacy format or a plain pickle)
    else:
        problem = next((what for sig, what in _SIGNATURES if head.startswith(sig)), None)
        problem = problem and f'is {problem}'
        problem = problem or _text_problem(head) or (
            f'is not a torch checkpoint (it is neither a zip archive nor a pickle; it starts '
            f'with the bytes {head[:8].hex(" ")})')
    return problem


def check_checkpoint_file(f) -> None:
    """Raise :class:`CheckpointFormatError` when ``f`` is clearly not a torch checkpoint.

    See :func:`checkpoint_file_problem`; the message names the file and what it is.
    """
    problem = checkpoint_file_problem(f)
    if problem:
        raise CheckpointFormatError(f'Cannot load checkpoint {_display_name(f)}: the file '
                                    f'{problem}.')


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def _refusal(err: BaseException) -> Optional[_RefusedContent]:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, _RefusedContent):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _unsupported_globals(message: str) -> List[str]:
    found = re.findall(r'Unsupported global: GLOBAL (\S+)', message)
    found += re.findall(r'whose module (\S+) is blocked', message)
    return sorted(set(found))


def load_error(name: str, err: BaseException,
               also_found: Optional[List[str]] = None) -> Optional[BaseException]:
    """The named error for an exception of ``torch.load`` (None: re-raise it unchanged).

    Args:
        name: how to name the file in the message (e.g. its quoted path).
        err: what ``torch.load`` (or a stand-in) raised.
        also_found: further globals of the file outside the allow-list, named too.
    """
    refused = _refusal(err)
    if refused is not None and refused.crafted:
        return UnsafeCheckpointError(
            f'Refusing to load checkpoint {name}: it holds {refused}. numpy, mmengine and torch '
            f'never write this, so the file was made to look like a checkpoint; it is not '
            f'loaded.')
    if refused is not None:
        return UnsafeCheckpointError(
            f'Refusing to load checkpoint {name}: it holds {refused}. If you made this file '
            f'yourself and trust it, load it with trust_checkpoint=True or set {TRUST_ENV}=1 '
            f'(full unpickling).')
    message = str(err)
    if isinstance(err, (EOFError, struct.error)) or any(
            sign in message.lower() for sign in ('truncated', 'ran out of input',
                                                 'unexpected eof', 'corrupted')):
        return CheckpointFormatError(
            f'Cannot load checkpoint {name}: the file ends early ({type(err).__name__}: '
            f'{message.splitlines()[0] if message else "no more data"}); it is probably '
            f'truncated (an interrupted download or copy).')
    if isinstance(err, RuntimeError) and ('PytorchStreamReader' in message
                                          or 'zip archive' in message):
        return CheckpointFormatError(
            f'Cannot load checkpoint {name}: the zip archive is damaged or incomplete '
            f'({message.splitlines()[0]}).')
    if isinstance(err, pickle.UnpicklingError):
        found = _unsupported_globals(message)
        found = sorted(set(found) | set(also_found or ()))
        culprit = (f'it references {", ".join(found)}, which '
                   f'{"is" if len(found) == 1 else "are"} not' if found else
                   'it holds objects that are not')
        return UnsafeCheckpointError(
            f'Refusing to unpickle checkpoint {name}: {culprit} in the allow-list of safe types '
            f'(unpickling other classes can run arbitrary code). If you trust this file, load it '
            f'with trust_checkpoint=True or set {TRUST_ENV}=1.')
    if isinstance(err, (KeyError, ValueError, TypeError, AttributeError, IndexError)):
        return CheckpointFormatError(
            f'Cannot load checkpoint {name}: the file is not a valid torch checkpoint '
            f'({type(err).__name__}: {message[:200]}).')
    return None


def _other_unsafe_globals(f, err: BaseException) -> List[str]:
    """All globals of a checkpoint file outside the allow-list (torch names only the first)."""
    if not (isinstance(f, (str, os.PathLike)) and isinstance(err, pickle.UnpicklingError)
            and _unsupported_globals(str(err))):
        return []
    try:
        with checkpoint_types_allowed():
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(f))
    except Exception:  # noqa: B902 - only a better message is at stake
        return []


def safe_torch_load(f, map_location='cpu', trust_checkpoint: Optional[bool] = None) -> Any:
    """Load a checkpoint with ``weights_only=True`` and the checked allow-list of this module.

    Args:
        f: a path, or a binary file object.
        map_location: as in ``torch.load``. Default: 'cpu'.
        trust_checkpoint: unpickle in full (``weights_only=False``), only for files the user
            trusts. None reads ``$MMLOCALMAMBA_TRUST_CHECKPOINTS`` (:func:`is_trusted`).

    Returns:
        The loaded object; numpy content comes back as plain numpy arrays and scalars,
        mmengine's ``HistoryBuffer`` as plain instances.

    Raises:
        FileNotFoundError: ``f`` is a path that does not exist.
        CheckpointFormatError: the file is not a torch checkpoint (see
            :func:`check_checkpoint_file`) or ends early.
        UnsafeCheckpointError: the file references classes outside the allow-list, or holds
            numpy/mmengine content that genuine checkpoints never hold.
    """
    check_checkpoint_file(f)
    trusted = is_trusted(trust_checkpoint)
    try:
        if trusted:
            return torch.load(f, map_location=map_location, weights_only=False)
        with checkpoint_types_allowed():
            obj = torch.load(f, map_location=map_location, weights_only=True)
        return plain_checkpoint_objects(obj)
    except Exception as err:  # noqa: B902 - torch.load raises many types for bad files
        named = load_error(_display_name(f), err, _other_unsafe_globals(f, err))
        if named is None:
            raise
        raise named from err
