"""Load the cache's `embeddings.pkl` without letting the pickle decide anything but data.

A pickle is a program. The stock unpickler lets it import any global and call it; even restricted
to what a numpy array needs, `numpy.dtype.__setstate__` takes flags and field layouts from the
pickle (flags claiming object references over raw bytes made numpy free an address the pickle
chose: SIGSEGV), `_codecs.encode` turns a few bytes into gigabytes (nested `hex`), and object
arrays build whatever they like.

So none of numpy's own constructors ever sees pickle data. Each global the unpickler resolves is a
stand-in of ours that only *records* a description (a dtype string and byte order; a shape, an
order and a raw buffer), validates it, and builds the array with `np.frombuffer` from the validated
description. Rules (SPEC.md, "Threat model"):

- globals: `numpy._core.multiarray._reconstruct` / `scalar`, `numpy._core.numeric._frombuffer`,
  `numpy.ndarray`, `numpy.dtype` (also under their numpy 1.x names `numpy.core.*`),
  `_codecs.encode`, `builtins.bytes`; anything else is refused before it is imported;
- dtypes: booleans, integers, floats and complex numbers of a fixed size only (`b1 i1..i8 u1..u8
  f2 f4 f8 c8 c16`), one byte order, no fields, sub-arrays, metadata or flags; object, string,
  unicode, void, datetime and structured dtypes are refused;
- arrays: shape of at most 32 non-negative dimensions, raw buffer of exactly
  prod(shape) x itemsize bytes (bytes or bytearray from the file), order C or F;
- `_codecs.encode(text, "latin1")` only (how protocols 0-2 spell bytes): a str to at most as many
  bytes; `bytes()` only without arguments (an empty array's data).

Allocation bound: every buffer an array is built on is bytes the unpickler read from the file
(`frombuffer` is zero-copy; a non-native byte order costs one copy of it, as numpy's own loader
does), and no stand-in returns more bytes than it was given. So what one unpickle allocates is at
most about twice the file's size plus Python's per-object overhead for the objects its opcodes
create (one object per opcode, each opcode at least one byte of the file). A length field that
claims more bytes than the file holds reserves memory the reader never fills; where that
reservation fails, the load is refused as a MemoryError.
"""

from __future__ import annotations

import _compat_pickle
import math
import pickle
import re
from typing import Any, BinaryIO

import numpy as np

from .errors import CacheError, UnsafePickle

_NUMPY1_MODULES = {"numpy.core.multiarray": "numpy._core.multiarray", "numpy.core.numeric": "numpy._core.numeric"}
#: numpy's `dtype.__reduce__` names a plain numeric type as kind + itemsize (`f4`, `b1`, `c16`).
_NUMERIC_TYPE = re.compile(r"[biufc][0-9]{1,2}")
_MAX_DIMS = 32
#: numpy's own limit is the product of the sizes (in bytes) fitting in a signed 64-bit integer.
_MAX_ARRAY_BYTES = 1 << 62


class PickledArray:
    """What a numpy array's pickle describes; `array()` builds it once its state was given."""

    def __init__(self) -> None:
        self._built: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy's array state: (version, shape, dtype, is_fortran, raw data), or the same without
        # the version (pickles of very old numpy versions).
        if type(state) is tuple and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if type(state) is not tuple or len(state) != 4:
            raise UnsafePickle(f"an array's state is not (shape, dtype, fortran, data) ({_kind(state)})")
        shape, dtype, fortran, data = state
        if type(fortran) not in (bool, int) or fortran not in (0, 1):
            raise UnsafePickle(f"an array's order flag is {_kind(fortran)}, not a boolean")
        resolved = _dtype_of(dtype)
        array = _array_from(data, resolved, _shape_of(shape), "F" if fortran else "C")
        # numpy's own loader returns arrays of this path in native byte order (values kept).
        if not resolved.isnative:
            array = array.astype(resolved.newbyteorder("="))
        self._built = array

    def array(self) -> np.ndarray:
        if self._built is None:
            raise UnsafePickle("an array has no state (shape, dtype, data)")
        return self._built


class PickledDtype:
    """`numpy.dtype(type, align, copy)` and its `__setstate__`, recorded: only the type string and
    the byte order are ever used, and only for plain numeric types."""

    _type: str | None = None
    _byteorder: str = "="

    def __init__(self, type_string: Any = None, align: Any = False, copy: Any = True) -> None:
        if type(type_string) is not str or not _NUMERIC_TYPE.fullmatch(type_string):
            raise UnsafePickle(
                f"a dtype {type_string!r} is not a plain numeric type (object, string and structured dtypes are refused)"
            )
        self._type = type_string

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, sub-array, names, fields, itemsize, alignment, flags[, metadata])
        if type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise UnsafePickle(f"a dtype's state is {_kind(state)}, not one of a plain numeric dtype")
        byteorder, subarray, names, fields, itemsize, alignment, flags = state[1:8]
        metadata = state[8] if len(state) == 9 else None
        if byteorder not in ("<", ">", "|", "=") or (subarray, names, fields, metadata) != (None, None, None, None):
            raise UnsafePickle("a dtype's state has fields, a sub-array or metadata; only plain numeric dtypes are loaded")
        if not all(type(v) is int for v in (itemsize, alignment, flags)) or flags != 0:
            raise UnsafePickle(f"a dtype's state has flags {flags!r}; only plain numeric dtypes (flags 0) are loaded")
        self._byteorder = byteorder

    def resolve(self) -> np.dtype:
        if self._type is None:
            raise UnsafePickle("a dtype was built without its type")
        try:
            dtype = np.dtype(self._type)
        except TypeError:
            raise UnsafePickle(f"dtype {self._type} is not a numpy type") from None
        if dtype.kind not in "biufc" or dtype.itemsize not in (1, 2, 4, 8, 16):
            raise UnsafePickle(f"dtype {self._type} is not a plain numeric type")
        return dtype.newbyteorder(self._byteorder) if self._byteorder in "<>" else dtype


class _Marker:
    """`numpy.ndarray` as a pickle names it: only ever an argument of `_reconstruct`."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _Marker()


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> PickledArray:
    # numpy pickles `_reconstruct(ndarray, (0,), b"b")` and then sets the state.
    if subtype is not _NDARRAY or shape not in ((0,), [0]) or typecode not in (b"b", "b"):
        raise UnsafePickle("an array is reconstructed with arguments numpy never writes")
    return PickledArray()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # Protocol 5: numpy pickles `_frombuffer(buffer, dtype, shape, order)` for contiguous arrays.
    if order not in ("C", "F"):
        raise UnsafePickle(f"an array has order {_kind(order)}, not C or F")
    if isinstance(buffer, pickle.PickleBuffer):
        buffer = buffer.raw()
    return _array_from(buffer, _dtype_of(dtype), _shape_of(shape), order)


def _scalar(dtype: Any, data: Any = None) -> Any:
    resolved = _dtype_of(dtype)
    if type(data) is not bytes or len(data) != resolved.itemsize:
        raise UnsafePickle(f"a numpy {resolved} scalar has {_kind(data)} instead of {resolved.itemsize} bytes")
    return np.frombuffer(data, dtype=resolved)[0]


def _latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Protocols 0-2 spell bytes as `_codecs.encode(str, "latin1")`: one byte per character, never
    # more. Any other codec (`hex` doubles its input; nested, a few bytes become gigabytes) is refused.
    if type(text) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafePickle(
            f"the pickle calls _codecs.encode with {_kind(text)} and {encoding!r}; only latin1 text (how pickle "
            "protocols 0-2 write bytes) is loaded"
        )
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise UnsafePickle("the pickle's bytes (latin1 text) hold a character beyond U+00FF") from None


def _empty_bytes(*args: Any) -> bytes:
    if args:
        raise UnsafePickle("the pickle calls bytes() with arguments, which a numpy array does not need")
    return b""


_STAND_INS: dict[tuple[str, str], Any] = {
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): PickledDtype,
    ("_codecs", "encode"): _latin1_encode,
    # Protocol 0-2 write empty bytes (an empty array's data) as a call of `bytes()`; only that
    # call is allowed: `bytes(10**12)` would allocate a terabyte.
    ("builtins", "bytes"): _empty_bytes,
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, name: str) -> None:
        super().__init__(file)
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles name Python 2 modules (`__builtin__.eval`, `commands.Popen` for
        # subprocess.Popen); map them as the stock unpickler would, so the check and the message
        # are about what would really be imported.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        module = _NUMPY1_MODULES.get(module, module)
        stand_in = _STAND_INS.get((module, name))
        if stand_in is None:
            raise UnsafePickle(
                f"{self._name} refers to {module}.{name}, which a numpy array does not need; refusing to load it "
                "(a pickle can run code). Re-create the cache with plain pickle.dump({'embeddings': array})"
            )
        return stand_in

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle(
            f"{self._name} uses persistent ids, which egds does not load; re-create it with plain "
            "pickle.dump({'embeddings': array})"
        )


def load_data_pickle(file: BinaryIO, name: str) -> Any:
    """Unpickle `file` with the stand-ins; arrays at the top level of a dict are built. Anything
    else a stand-in recorded (an array nested in a list) stays a `PickledArray`, which no JSON
    check accepts. Raises UnsafePickle or CacheError, each one line naming `name`."""
    try:
        loaded = _DataOnlyUnpickler(file, name).load()
    except UnsafePickle as exc:
        raise _refusal(name, exc) from None
    except RecursionError:
        raise CacheError(f"{name} nests objects too deeply to load; re-create it with plain pickle.dump({{'embeddings': array}})") from None
    except MemoryError:
        raise CacheError(
            f"{name} needs more memory to unpickle than is available (a length it declares is larger than the file, "
            "or the machine is short of memory); re-create it with the pipeline or `egds checkout --force` a version"
        ) from None
    except Exception as exc:  # a truncated or foreign file: pickle raises many types
        detail = " ".join(str(exc).split())[:200]
        raise CacheError(
            f"{name} is not a readable pickle ({type(exc).__name__}: {detail}); re-create it with the pipeline "
            "or `egds checkout --force` a version"
        ) from None
    if type(loaded) is dict:
        built = {}
        for key, value in loaded.items():
            try:
                built[key] = value.array() if type(value) is PickledArray else value
            except UnsafePickle as exc:
                raise _refusal(name, exc) from None
        return built
    if type(loaded) is PickledArray:
        return loaded.array()
    return loaded


def _refusal(name: str, exc: UnsafePickle) -> UnsafePickle:
    """A stand-in's finding as the one-line refusal of file `name` (find_class's already is one)."""
    message = str(exc)
    if message.startswith(name):
        return exc
    return UnsafePickle(
        f"{name}: {message}; refusing to load it (a pickle can do more than hold data). Re-create it with plain "
        "pickle.dump({'embeddings': array}) of a float16/float32/float64 numpy array"
    )


def _dtype_of(dtype: Any) -> np.dtype:
    if type(dtype) is not PickledDtype:
        raise UnsafePickle(f"an array's dtype is {_kind(dtype)}, not a numpy dtype")
    return dtype.resolve()


def _shape_of(shape: Any) -> tuple[int, ...]:
    if type(shape) is int:
        shape = (shape,)
    if (
        type(shape) not in (tuple, list)
        or len(shape) > _MAX_DIMS
        or not all(type(n) is int and 0 <= n < _MAX_ARRAY_BYTES for n in shape)
        or math.prod(n for n in shape if n) >= _MAX_ARRAY_BYTES
    ):
        raise UnsafePickle(f"an array's shape is {_kind(shape)}, not up to {_MAX_DIMS} sizes numpy can hold")
    return tuple(shape)


def _array_from(data: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    if type(data) not in (bytes, bytearray) and not (type(data) is memoryview and data.contiguous):
        raise UnsafePickle(f"an array's data is {_kind(data)}, not raw bytes (object arrays are refused)")
    size = len(data) if type(data) is not memoryview else data.nbytes
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        raise UnsafePickle(
            f"an array of shape {shape} and dtype {dtype} needs {expected} bytes but its data has {size}"
        )
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape, order=order)  # type: ignore[call-overload]


def _kind(value: Any) -> str:
    """A short, safe description of a pickle-supplied value (never its whole repr: it may be huge)."""
    if isinstance(value, (str, bytes, bytearray)):
        return f"a {type(value).__name__} of length {len(value)}" if len(value) > 40 else repr(value)
    if value is None or type(value) in (bool, int, float):
        return repr(value)[:40]
    return f"a {type(value).__name__}"
