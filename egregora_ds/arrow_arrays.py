"""Arrow arrays built straight from numpy buffers and Python strings.

`pa.array()` probes every input for pandas types and so imports pandas when it is installed:
0.15 s and ~50 MiB in every fresh egds process, for nothing (measured in benchmarks/README.md).
These constructors assemble the buffers themselves. Strings are encoded with `str.encode`, which
also avoids the UTF-8 copy CPython caches inside each str that pyarrow's converter asks for.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

_NUMPY_TYPES = {
    np.dtype("<i8"): pa.int64(),
    np.dtype("<i4"): pa.int32(),
    np.dtype("<f2"): pa.float16(),
    np.dtype("<f4"): pa.float32(),
    np.dtype("<f8"): pa.float64(),
}


def numeric_array(values: np.ndarray, arrow_type: pa.DataType | None = None) -> pa.Array:
    """A zero-copy Arrow view of a contiguous little-endian 1-D numpy array (no nulls)."""
    values = np.ascontiguousarray(values)
    if values.dtype not in _NUMPY_TYPES:
        raise TypeError(f"numeric_array: unsupported dtype {values.dtype}")
    return pa.Array.from_buffers(arrow_type or _NUMPY_TYPES[values.dtype], len(values), [None, pa.py_buffer(values)])


def bool_array(mask: np.ndarray) -> pa.Array:
    bits = np.packbits(np.asarray(mask, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


def int64_array(values: Sequence[Any]) -> pa.Array:
    """Python ints (or None) -> int64. OverflowError beyond int64, TypeError for anything else
    (bool included: True is not a chunk id)."""
    if not set(map(type, values)) <= {int, type(None)}:
        raise TypeError("int64_array: a value is not an int")
    if None not in values:
        return numeric_array(np.fromiter(values, dtype=np.int64, count=len(values)))
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    data = np.fromiter((0 if v is None else v for v in values), dtype=np.int64, count=len(values))
    return pa.Array.from_buffers(pa.int64(), len(values), [_validity(valid), pa.py_buffer(data)], null_count=int((~valid).sum()))


def string_array(values: Sequence[str | None]) -> pa.Array:
    """Python strs (or None) -> utf8 (large_utf8 beyond 2 GiB of text). UnicodeEncodeError for a
    str that UTF-8 cannot carry (a lone surrogate)."""
    valid = None
    if None in values:
        valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
        encoded = [b"" if v is None else v.encode() for v in values]
    else:
        encoded = list(map(str.encode, values))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    data = pa.py_buffer(b"".join(encoded))
    del encoded
    if offsets[-1] < 2**31:
        arrow_type, offsets = pa.string(), offsets.astype(np.int32)
    else:
        arrow_type = pa.large_string()
    validity = None if valid is None else _validity(valid)
    null_count = 0 if valid is None else int((~valid).sum())
    return pa.Array.from_buffers(arrow_type, len(offsets) - 1, [validity, pa.py_buffer(offsets), data], null_count=null_count)


def _validity(valid: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def text_scalar(value: str, large: bool = False) -> pa.Scalar:
    """A utf8 (or large_utf8) scalar; `pa.scalar` would probe for pandas like `pa.array`."""
    array = string_array([value])
    return (array.cast(pa.large_string()) if large else array)[0]


def filled_values(array: pa.Array, dtype: str) -> np.ndarray:
    """The values of a primitive array as numpy (`dtype`, e.g. "<i8"), nulls as 0."""
    data = np.frombuffer(array.buffers()[1], dtype=dtype)[array.offset : array.offset + len(array)]
    if array.null_count:
        data = data.copy()
        data[~valid_values(array)] = 0
    return data


def bool_values(array: pa.Array) -> np.ndarray:
    """A boolean array as numpy bools, nulls as False (`to_numpy` would go through pandas' converter)."""
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=bool)
    bits = np.unpackbits(np.frombuffer(array.buffers()[1], dtype=np.uint8), count=array.offset + n, bitorder="little")
    values = bits[array.offset :].astype(bool)
    if array.null_count:
        values &= valid_values(array)
    return values


def valid_values(array: pa.Array) -> np.ndarray:
    """Which slots hold a value (not null), as numpy bools."""
    n = len(array)
    if array.null_count == 0:
        return np.ones(n, dtype=bool)
    if array.null_count == n and array.buffers()[0] is None:
        return np.zeros(n, dtype=bool)
    bits = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), count=array.offset + n, bitorder="little")
    return bits[array.offset :].astype(bool)


def numpy_view(array: pa.Array) -> np.ndarray:
    """A primitive array's values as a zero-copy numpy view (nulls as 0, then copied)."""
    return filled_values(array, np.dtype(array.type.to_pandas_dtype()).newbyteorder("<").str)
