"""What a model takes and gives, checking inputs before anything is sent, and turning
numpy arrays into requests and responses back into numpy arrays."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from offload import dtypes, wire
from offload.errors import (
    InvalidInputError,
    MessageTooLargeError,
    NotSupportedError,
    ProtocolError,
)


@dataclass(frozen=True)
class TensorInfo:
    """An input or output: `shape` includes the batch dimension (-1) when the model batches;
    -1 marks any variable dimension."""

    name: str
    datatype: str  # protocol spelling: FP32, INT64, BYTES, ...
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return dtypes.TRITON_TO_NUMPY[self.datatype]

    @property
    def fixed_dims(self) -> tuple[tuple[int, int], ...]:
        """(axis, size) of the dimensions that must match exactly (not -1)."""
        return tuple((axis, size) for axis, size in enumerate(self.shape) if size >= 0)

    def describe(self) -> str:
        return f"'{self.name}' {self.datatype} {list(self.shape)}"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str  # "" = the server's choice (its version policy)
    platform: str
    max_batch_size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    # The framing bytes of requests, by (version, input shapes): see build_request; and
    # the last responses' bytes before their tensors: see decode_response.
    framing: dict = field(default_factory=dict, compare=False, repr=False)
    responses: list = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        # The per-call checks read these instead of recomputing them (a call's Python work
        # runs with cold caches after each round trip, so every step counts; see RESULTS.md).
        checks = tuple((t.name, t.datatype, t.dtype, len(t.shape), *_fixed_dims_check(t))
                       for t in self.inputs)
        object.__setattr__(self, "_checks", checks)
        object.__setattr__(self, "_input_names", frozenset(t.name for t in self.inputs))
        object.__setattr__(self, "_output_names", frozenset(t.name for t in self.outputs))

    def __reduce__(self) -> tuple:
        # Pickled as its description; the caches of framings and responses start anew.
        return ModelInfo, (self.name, self.version, self.platform, self.max_batch_size,
                           self.inputs, self.outputs)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorInfo:
        return next(t for t in self.inputs if t.name == name)


def _fixed_dims_check(tensor: TensorInfo) -> tuple[Callable | None, object]:
    """(getter of the dimensions that must match, what it must return), for one C-level
    call per input instead of a Python loop: operator.itemgetter gives the value itself
    for one axis and a tuple for several."""
    fixed = tensor.fixed_dims
    if not fixed:
        return None, None
    axes, sizes = zip(*fixed, strict=True)
    return operator.itemgetter(*axes), sizes[0] if len(sizes) == 1 else sizes


def model_info(metadata, config=None, *, max_batch_size: int | None = None) -> ModelInfo:
    """From a ModelMetadataResponse and, where the server has one (Triton), a
    ModelConfigResponse. Without a config the batch size is unknown: `max_batch_size`
    (the caller's) or 0 (calls are not split; the shapes are taken as declared).
    `max_batch_size` also caps the config's."""
    def tensors(entries, kind: str) -> tuple[TensorInfo, ...]:
        found = []
        for t in entries:
            if t.datatype not in dtypes.TRITON_TO_NUMPY:
                raise NotSupportedError(
                    f"model '{metadata.name}', {kind} '{t.name}': data type {t.datatype!r} "
                    f"is not one offload handles ({', '.join(dtypes.TRITON_TO_NUMPY)})",
                    model=metadata.name)
            found.append(TensorInfo(t.name, t.datatype, tuple(int(d) for d in t.shape)))
        return tuple(found)

    declared = int(config.config.max_batch_size) if config is not None else 0
    if max_batch_size is not None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        declared = min(declared, max_batch_size) if declared else max_batch_size
    return ModelInfo(name=metadata.name, version="", platform=metadata.platform,
                     max_batch_size=declared, inputs=tensors(metadata.inputs, "input"),
                     outputs=tensors(metadata.outputs, "output"))


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ took 230 ns, this 85 ns
class Prepared:
    """Checked inputs, ready to encode. `batch` is None for a model without batching."""

    arrays: dict[str, np.ndarray]
    batch: int | None

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def prepare(info: ModelInfo, inputs: Mapping[str, object], *, check_finite: bool = True
            ) -> Prepared:
    """Check inputs against the model's metadata; raise InvalidInputError naming the model,
    the tensor, what was expected and what came. Nothing is sent for refused input."""
    if len(inputs) != len(info.inputs) or not info._input_names.issuperset(inputs):
        _refuse_names(info, inputs, f"model '{info.name}'")
    arrays: dict[str, np.ndarray] = {}
    batch = None
    checks = zip(info._checks, info.inputs, strict=True)
    for (name, datatype, dtype, rank, fixed_of, fixed), tensor in checks:
        value = inputs[name]
        if type(value) is not np.ndarray:
            if isinstance(value, np.ndarray):
                value = np.asarray(value)  # a subclass (e.g. a masked array): its data
            else:  # lists and scalars take the expected type; arrays must already have it
                value = _convert(info, name, datatype, dtype, value)
        shape = value.shape
        if (value.dtype != dtype and not dtypes.accepts(datatype, value)) or \
                len(shape) != rank or 0 in shape or \
                (fixed_of is not None and fixed_of(shape) != fixed):
            _refuse_tensor(info, tensor, value, f"model '{info.name}'")
        if datatype == "BF16" and check_finite and value.size and \
                float(np.abs(value).max()) > dtypes.BF16_MAX:
            raise InvalidInputError(
                f"model '{info.name}', input '{name}': |values| up to "
                f"{float(np.abs(value).max()):.4g} exceed bfloat16's largest finite value "
                f"{dtypes.BF16_MAX:.4g} and would be sent as Inf; scale them, or pass "
                "check_finite=False", model=info.name)
        if datatype == "BYTES" and value.dtype == np.object_:
            _check_bytes_elements(info, name, value)
        if check_finite and value.dtype.kind == "f" and not _all_finite(value):
            bad = int((~np.isfinite(value)).sum())
            raise InvalidInputError(
                f"model '{info.name}', input '{name}': {bad} non-finite value(s) (NaN or "
                "Inf); models give undefined results on them. Clean the input, or pass "
                "check_finite=False to send as is", model=info.name)
        if info.max_batch_size > 0:
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:
                shown = ", ".join(f"'{n}' {a.shape[0]}"
                                  for n, a in {**arrays, name: value}.items())
                raise InvalidInputError(
                    f"model '{info.name}': inputs disagree on the batch size ({shown}); the "
                    "first dimension must be the same for all", model=info.name)
        arrays[name] = value
    return Prepared(arrays, batch)


def _convert(info: ModelInfo, name: str, datatype: str, dtype: np.dtype,
             value: object) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.object_ if datatype == "BYTES" else dtype)
    except (ValueError, TypeError, OverflowError) as error:  # ragged lists, wrong items
        raise InvalidInputError(
            f"model '{info.name}', input '{name}': a {type(value).__name__} that does not "
            f"convert to a {datatype} array ({error}); pass a numpy array of "
            f"{dtypes.describe(datatype)}", model=info.name) from None


def _check_bytes_elements(info: ModelInfo, name: str, value: np.ndarray) -> None:
    """BYTES elements must be bytes or str: anything else has no defined encoding (and
    bytes(5) would quietly send five zero bytes)."""
    for index, item in enumerate(value.reshape(-1)):
        if not isinstance(item, (bytes, str)):
            raise InvalidInputError(
                f"model '{info.name}', input '{name}': element {index} is "
                f"{type(item).__name__} {item!r:.40}; BYTES elements must be bytes or str",
                model=info.name)


def _all_finite(value: np.ndarray) -> bool:
    """Whether no element is NaN or ±Inf. Single and double precision: the sum of squares
    by BLAS (no temporary array; measured 1.4-3.5x faster than np.isfinite(...).all() from
    4 K to 4 M float32 elements) is finite unless an element is NaN or Inf, or huge values
    overflow it; only then is each element looked at. A few elements are summed in Python
    instead: any numpy call costs more than that (a call's checks run with cold caches
    after each round trip: 3-13 µs less per 16 B call than the BLAS sum in three interleaved
    runs in place)."""
    if value.size <= _SUMMED_IN_PYTHON:
        if math.isfinite(sum(value.ravel().tolist())):
            return True
    elif value.dtype.type in (np.float32, np.float64):
        flat = value.reshape(-1)
        if math.isfinite(np.dot(flat, flat)):
            return True
    return bool(np.isfinite(value).all())


_SUMMED_IN_PYTHON = 64


def _refuse_names(info: ModelInfo, inputs: Mapping[str, object], where: str) -> None:
    expected = {t.name for t in info.inputs}
    missing = [t for t in info.inputs if t.name not in inputs]
    extra = sorted(set(inputs) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(t.describe() for t in missing))
        if extra:
            parts.append("unknown " + ", ".join(f"'{n}'" for n in extra))
        raise InvalidInputError(f"{where}: {'; '.join(parts)}; it takes "
                                + ", ".join(t.describe() for t in info.inputs), model=info.name)


def _refuse_tensor(info: ModelInfo, tensor: TensorInfo, value: np.ndarray, where: str) -> None:
    """Raise the error for a tensor of the wrong type, rank, shape or size."""
    label = f"{where}, input '{tensor.name}'"
    if not dtypes.accepts(tensor.datatype, value):
        raise InvalidInputError(
            f"{label}: expected {dtypes.describe(tensor.datatype)}, got {value.dtype}; "
            f"convert with .astype(np.{tensor.dtype.name})", model=info.name)
    if 0 in value.shape and value.ndim == len(tensor.shape):
        raise InvalidInputError(f"{label}: empty tensor {list(value.shape)}; send at least "
                                "one entry", model=info.name)
    raise InvalidInputError(f"{label}: expected shape {list(tensor.shape)} (-1 = any), got "
                            f"{list(value.shape)}", model=info.name)


def split(prepared: Prepared, max_batch_size: int) -> list[Prepared]:
    """Pieces of at most max_batch_size rows (views, no copies), in order."""
    return list(pieces(prepared, max_batch_size))


def pieces(prepared: Prepared, max_batch_size: int) -> Iterator[Prepared]:
    """split(), one piece at a time: a huge call never holds all its pieces at once."""
    if prepared.batch is None or max_batch_size <= 0 or prepared.batch <= max_batch_size:
        yield prepared
        return
    for start in range(0, prepared.batch, max_batch_size):
        yield Prepared({k: v[start:start + max_batch_size] for k, v in prepared.arrays.items()},
                       min(max_batch_size, prepared.batch - start))


def build_request(service_pb2, info: ModelInfo, prepared: Prepared, version: str,
                  request_id: str = "") -> bytes:
    """The serialised ModelInferRequest, the arrays' bytes copied once, straight into it
    (see offload.wire); all outputs are returned."""
    arrays = prepared.arrays
    if not request_id:
        # Everything but the tensor bytes depends only on the shapes: built once per shape.
        inputs = info.inputs
        key = (version, arrays[inputs[0].name].shape if len(inputs) == 1 else
               tuple([arrays[t.name].shape for t in inputs]))
        framing = info.framing.get(key)
        if framing is None:
            framing = _framing(info, prepared, version)
            if framing is not None:
                if len(info.framing) >= 64:
                    info.framing.clear()
                info.framing[key] = framing
        if framing is not None:
            parts: list[object] = []
            for prefix, tensor in zip(framing, info.inputs, strict=True):
                parts.append(prefix)
                value = arrays[tensor.name]
                parts.append(value if value.flags.c_contiguous and value.dtype.byteorder != ">"
                             and tensor.datatype != "BF16"
                             else dtypes.encode(tensor.datatype, value))
            return b"".join(parts)  # type: ignore[arg-type]
    _check_size(info, prepared)
    if request_id:
        head = service_pb2.ModelInferRequest(model_name=info.name, model_version=version,
                                             id=request_id)
        for tensor in info.inputs:
            head.inputs.add(name=tensor.name, datatype=tensor.datatype,
                            shape=arrays[tensor.name].shape)
        head_bytes = head.SerializeToString()
    else:
        head_bytes = wire.request_head(info.name, version, [
            (t.name, t.datatype, arrays[t.name].shape) for t in info.inputs])
    return wire.request_bytes(head_bytes, [
        dtypes.encode(t.datatype, arrays[t.name]) for t in info.inputs])


def _framing(info: ModelInfo, prepared: Prepared, version: str) -> list[bytes] | None:
    """The bytes before each tensor's contents (the message head with the first), when
    they follow from the shapes alone: not for BYTES, whose encoded length varies."""
    if not info.inputs or any(t.datatype == "BYTES" for t in info.inputs):
        return None
    _check_size(info, prepared)
    arrays = prepared.arrays
    head = wire.request_head(info.name, version, [
        (t.name, t.datatype, arrays[t.name].shape) for t in info.inputs])
    prefixes = [wire.raw_prefix(_encoded_size(t.datatype, arrays[t.name]))
                for t in info.inputs]
    prefixes[0] = head + prefixes[0]
    return prefixes


def check_piece_size(info: ModelInfo, prepared: Prepared) -> None:
    """Raise MessageTooLargeError now if a piece of this call (the first is the largest)
    would exceed the message limit: before anything is built or sent."""
    _check_size(info, next(pieces(prepared, info.max_batch_size)))


def _check_size(info: ModelInfo, prepared: Prepared) -> None:
    # Checked before any copy: numeric tensors' sizes are known from their arrays.
    total = sum(_encoded_size(t.datatype, prepared.arrays[t.name]) for t in info.inputs)
    if total > _MESSAGE_BUDGET:
        raise MessageTooLargeError(
            f"model '{info.name}': a request of {total / 2**30:.2f} GiB exceeds gRPC's 2 GiB "
            "message limit; send fewer rows per call (batches larger than max_batch_size are "
            "split, but here one piece is still too large)", model=info.name)


def _encoded_size(datatype: str, value: np.ndarray) -> int:
    if datatype == "BYTES":
        return sum(4 + len(item if isinstance(item, bytes) else str(item).encode())
                   for item in value.reshape(-1))
    return value.size * (2 if datatype == "BF16" else value.dtype.itemsize)


# Room left for the request's own fields beside the raw tensors.
_MESSAGE_BUDGET = 2**31 - 1 - 64 * 1024


_SMALL_RESPONSE = 64 * 1024


def decode_response(service_pb2, payload: bytes, info: ModelInfo | None = None
                    ) -> dict[str, np.ndarray]:
    """Outputs of a serialised ModelInferResponse; numeric ones are read-only views into
    `payload` (no copy). A malformed response raises ProtocolError.

    With `info`, responses are recognised by their bytes before the tensors (model, version
    and output names, types and shapes, the same for every response of one shape), and only
    the tensors are read; anything else is parsed in full."""
    try:
        return _decode(service_pb2, payload, info)
    except ProtocolError:
        raise
    except Exception as error:  # a case the checks did not foresee: still the server's fault
        raise ProtocolError(f"malformed ModelInferResponse ({len(payload)} bytes): "
                            f"{type(error).__name__}: {error}") from error


def _decode(service_pb2, payload: bytes, info: ModelInfo | None) -> dict[str, np.ndarray]:
    if info is not None:
        for head, size, layout in info.responses:
            if not payload.startswith(head):
                continue
            if size:  # numeric outputs of fixed shapes: the whole framing is known
                if len(payload) != size:
                    continue
                outputs = {}
                for name, prefix, at, count, dtype, shape in layout:
                    if not payload.startswith(prefix, at - len(prefix)):
                        break
                    array = np.frombuffer(payload, dtype, count, at)
                    outputs[name] = array if shape is None else array.reshape(shape)
                else:
                    return outputs
                continue
            outputs = _tensors_after(payload, len(head), layout)
            if outputs is not None:
                return outputs
    outputs, response, raw = _parse_response(service_pb2, payload, info)
    if info is not None and raw:
        _learn_response(info, payload, response, raw)
    return outputs


def _tensors_after(payload: bytes, offset: int, layout: tuple) -> dict[str, np.ndarray] | None:
    """The raw_output_contents entries from `offset` on, decoded by `layout`; None when
    the bytes there are not exactly those entries."""
    view, end, outputs = memoryview(payload), len(payload), {}
    for name, datatype, dtype, shape in layout:
        if offset >= end or payload[offset] != _RAW_OUTPUT_TAG:
            return None
        try:
            length, offset = wire.read_varint(view, offset + 1)
        except IndexError:  # cut inside the length
            return None
        if offset + length > end:
            return None
        chunk = view[offset:offset + length]
        offset += length
        try:
            outputs[name] = (np.frombuffer(chunk, dtype).reshape(shape) if dtype is not None
                             else dtypes.decode(datatype, chunk, list(shape)))
        except ValueError:
            return None
    return outputs if offset == end else None


def _learn_response(info: ModelInfo, payload: bytes, response, raw) -> None:
    """Remember this response's bytes before its tensors (raw_output_contents, field 6,
    comes last in Triton's serialisation), for the next responses of the same shape; with
    only numeric outputs, also where each tensor starts and how long the response is."""
    tail = sum(1 + len(wire.varint(len(r))) + len(r) for r in raw)
    head = len(payload) - tail
    if not raw or head <= 0 or payload[head] != _RAW_OUTPUT_TAG:
        return
    outputs = list(response.outputs)
    if all(t.datatype in _PLAIN for t in outputs):
        layout, at = [], head
        for tensor, data in zip(outputs, raw, strict=True):
            prefix = bytes([_RAW_OUTPUT_TAG]) + wire.varint(len(data))
            at += len(prefix)
            dtype = _PLAIN[tensor.datatype]
            shape = tuple(tensor.shape)
            count = len(data) // dtype.itemsize
            layout.append((tensor.name, prefix, at, count, dtype,
                           None if shape == (count,) else shape))  # None: no reshape
            at += len(data)
        template = (payload[:head], len(payload), tuple(layout))
    else:
        template = (payload[:head], 0, tuple(
            (t.name, t.datatype, _PLAIN.get(t.datatype), tuple(t.shape)) for t in outputs))
    info.responses.insert(0, template)
    del info.responses[4:]  # a few shapes (e.g. a job's usual batch sizes)


def _parse_response(service_pb2, payload: bytes, info: ModelInfo | None = None
                    ) -> tuple[dict[str, np.ndarray], object, list]:
    """Every output of a response, parsed in full; anything malformed raises ProtocolError
    naming the model and the output. Tensors come as raw bytes (Triton) or, from other
    servers of the protocol, in the typed `contents` fields."""
    try:
        if len(payload) < _SMALL_RESPONSE:
            # Small: the protobuf parser in C beats the Python wire walk; copies are
            # negligible.
            response = service_pb2.ModelInferResponse.FromString(payload)
            raw = response.raw_output_contents
        else:
            rest, raw = wire.split_response(payload)
            response = service_pb2.ModelInferResponse.FromString(rest)
    except Exception as error:  # DecodeError, or the wire walk's ValueError/IndexError
        raise ProtocolError(f"malformed ModelInferResponse ({len(payload)} bytes): "
                            f"{error}") from error
    model = response.model_name or (info.name if info is not None else "?")
    tensors = list(response.outputs)
    if not tensors:
        raise ProtocolError(f"the response of model '{model}' has no outputs", model=model)
    if info is not None and {t.name for t in tensors} != info._output_names:
        raise ProtocolError(
            f"the response of model '{model}' has outputs "
            f"{sorted(t.name for t in tensors)}, the model declares "
            f"{sorted(info._output_names)}", model=model)
    if len(raw) not in (0, len(tensors)):
        raise ProtocolError(f"response of model '{model}' has {len(tensors)} outputs but "
                            f"{len(raw)} raw tensors", model=model)
    outputs = {}
    for index, tensor in enumerate(tensors):
        try:
            if not raw:
                outputs[tensor.name] = _from_contents(tensor)
                continue
            dtype = _PLAIN.get(tensor.datatype)
            if dtype is not None:  # numeric: a view of the payload (no copy)
                outputs[tensor.name] = np.frombuffer(raw[index], dtype).reshape(tensor.shape)
            else:
                outputs[tensor.name] = dtypes.decode(tensor.datatype, raw[index],
                                                     list(tensor.shape))
        except (ValueError, KeyError, TypeError, IndexError, OverflowError) as error:
            size = f", {len(raw[index])} bytes" if raw else ""
            raise ProtocolError(
                f"model '{model}', output '{tensor.name}' ({tensor.datatype} "
                f"{list(tensor.shape)}{size}): cannot be decoded: {error}",
                model=model) from error
    return outputs, response, raw


#: The typed field of InferTensorContents that carries each data type.
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
             "BYTES": "bytes_contents"}


def _from_contents(tensor) -> np.ndarray:
    """An output sent in the typed `contents` fields rather than as raw bytes."""
    field_name = _CONTENTS.get(tensor.datatype)
    if field_name is None:
        raise ValueError(f"{tensor.datatype} cannot travel in 'contents' (raw bytes only)")
    values = list(getattr(tensor.contents, field_name))
    shape = [int(d) for d in tensor.shape]
    if len(values) != math.prod(shape):
        raise ValueError(f"{len(values)} values in '{field_name}' for shape {shape}")
    if tensor.datatype == "BYTES":
        array = np.empty(len(values), dtype=np.object_)
        array[:] = values
        return array.reshape(shape)
    return np.array(values, dtype=dtypes.TRITON_TO_NUMPY[tensor.datatype]).reshape(shape)


_RAW_OUTPUT_TAG = wire.RESPONSE_RAW_OUTPUT_CONTENTS << 3 | 2
# Types whose bytes numpy reads as they are.
_PLAIN = {name: dtype for name, dtype in dtypes.TRITON_TO_NUMPY.items()
          if name not in ("BYTES", "BF16")}


def concatenate(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(pieces) == 1:
        return pieces[0]
    return {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}
