"""Requests built from numpy arrays and responses read into numpy arrays, at the protobuf
wire level for the tensors (offload.wire); malformed responses raise ProtocolError."""

from __future__ import annotations

import math

import numpy as np

from offload import dtypes, wire
from offload.errors import ProtocolError
from offload.inputs import Prepared, _check_size, _encoded_size
from offload.schema import ModelInfo


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
            found = _tensors_after(payload, len(head), layout)
            if found is not None:
                return found
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
    template: tuple
    if all(t.datatype in _PLAIN for t in outputs):
        layout: list[tuple] = []
        at = head
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
