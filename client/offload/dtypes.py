"""Triton data types and numpy: names, byte encodings, and the two without a numpy twin.

- BYTES: numpy object or bytes/str arrays, encoded as Triton does (each element a 4-byte
  little-endian length then its bytes); decoded as a numpy object array of `bytes`.
- BF16: sent from float32 arrays (rounded to nearest even), returned as float32.
"""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np

TRITON_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
    "BF16": np.dtype(np.float32),  # carried as float32 on the numpy side
}
#: Model-config spelling (TYPE_FP32) → protocol spelling (FP32).
CONFIG_TO_TRITON = {f"TYPE_{name}": name for name in TRITON_TO_NUMPY} | {"TYPE_STRING": "BYTES"}


def describe(triton_type: str) -> str:
    """'FP32 (float32)', for error messages."""
    numpy_name = {"BYTES": "object/bytes", "BF16": "float32, sent as bfloat16"}.get(
        triton_type, TRITON_TO_NUMPY[triton_type].name if triton_type in TRITON_TO_NUMPY else "?")
    return f"{triton_type} ({numpy_name})"


def accepts(triton_type: str, array: np.ndarray) -> bool:
    """Whether `array`'s dtype is the one this Triton type takes (byte order aside)."""
    if triton_type == "BYTES":
        return array.dtype == np.object_ or array.dtype.kind in ("S", "U")
    expected = TRITON_TO_NUMPY[triton_type]
    return array.dtype == expected or (array.dtype.byteorder == ">"
                                       and array.dtype.newbyteorder("<") == expected)


def encode(triton_type: str, array: np.ndarray) -> bytes | memoryview:
    """The raw little-endian bytes Triton expects for `array` (C order): a view of the
    array's own memory when it already is little-endian and contiguous, else one copy."""
    if triton_type == "BYTES":
        return serialize_bytes(array)
    if triton_type == "BF16":
        return float32_to_bf16_bytes(array)
    if array.dtype.byteorder == ">":  # e.g. straight from a ROOT file: one conversion
        array = array.astype(array.dtype.newbyteorder("<"))
    return memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B")  # type: ignore[arg-type]


def decode(triton_type: str, raw: bytes | memoryview, shape: list[int]) -> np.ndarray:
    """An output tensor from its raw bytes. Numeric outputs are read-only views of the
    response buffer (no copy); call .copy() to modify one."""
    if triton_type == "BYTES":
        return deserialize_bytes(raw).reshape(shape)
    if triton_type == "BF16":
        return bf16_bytes_to_float32(raw).reshape(shape)
    return np.frombuffer(raw, dtype=TRITON_TO_NUMPY[triton_type]).reshape(shape)


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in np.asarray(array).reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes | memoryview) -> np.ndarray:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("malformed BYTES tensor: truncated length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValueError(f"malformed BYTES tensor: element of {length} bytes overruns")
        items.append(bytes(raw[offset:offset + length]))
        offset += length
    result = np.empty(len(items), dtype=np.object_)
    result[:] = items
    return result


#: The largest finite bfloat16 (float32 values beyond it round to Inf).
BF16_MAX = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)


def float32_to_bf16_bytes(array: np.ndarray) -> bytes:
    """Rounded to nearest even by ml_dtypes; NaN stays NaN (a plain rounding of the bits
    turns some NaNs into ±0 or Inf)."""
    with np.errstate(invalid="ignore"):  # (NaN payloads: they stay NaN, as they should)
        return np.ascontiguousarray(array, dtype="<f4").astype(ml_dtypes.bfloat16).tobytes()


def bf16_bytes_to_float32(raw: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(raw, dtype=ml_dtypes.bfloat16).astype(np.float32)
