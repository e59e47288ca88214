"""ModelInfer messages built and read at the protobuf wire level, for the tensor bytes.

A request's tensors go straight from the numpy buffers into the one bytes object gRPC
sends (one copy, where building the message would take three: `tobytes`, the protobuf
field, serialisation). A response's tensors are found in the received bytes and viewed by
numpy without copying (parsing it as a message would copy each tensor twice). Everything
but the tensor bytes still goes through the generated protobuf classes.
"""

from __future__ import annotations

from collections.abc import Sequence

# Field numbers in Triton's grpc_service.proto.
REQUEST_RAW_INPUT_CONTENTS = 7
RESPONSE_RAW_OUTPUT_CONTENTS = 6
_LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_RAW_TAG = varint(REQUEST_RAW_INPUT_CONTENTS << 3 | _LENGTH_DELIMITED)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message, packed repeated)."""
    return varint(number << 3 | _LENGTH_DELIMITED) + varint(len(payload)) + payload


def request_head(model_name: str, model_version: str,
                 inputs: Sequence[tuple[str, str, Sequence[int]]]) -> bytes:
    """ModelInferRequest's fields before the tensors, written directly: model_name (1),
    model_version (2), and per input an InferInputTensor (5) of name (1), datatype (2) and
    shape (3, packed int64). Equal to the generated class's serialisation (tested), without
    building a message object per request."""
    parts = [_field(1, model_name.encode())]
    if model_version:
        parts.append(_field(2, model_version.encode()))
    for name, datatype, shape in inputs:
        packed = b"".join(varint(d & 0xFFFFFFFFFFFFFFFF) for d in shape)
        tensor = _field(1, name.encode()) + _field(2, datatype.encode())
        if shape:
            tensor += _field(3, packed)
        parts.append(_field(5, tensor))
    return b"".join(parts)


def raw_prefix(length: int) -> bytes:
    """The tag and length that precede one raw_input_contents entry of `length` bytes."""
    return _RAW_TAG + varint(length)


def request_bytes(head: bytes, tensors: Sequence[bytes | memoryview]) -> bytes:
    """The serialised request: `head` (the message without raw_input_contents, already
    serialised) followed by one raw_input_contents field per tensor, in input order."""
    parts: list[bytes | memoryview] = [head]
    for data in tensors:
        parts += [raw_prefix(len(data) if isinstance(data, bytes) else data.nbytes), data]
    return b"".join(parts)


def read_varint(data: memoryview, offset: int) -> tuple[int, int]:
    """(the varint at `offset`, the offset after it)."""
    result = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, offset
        shift += 7


def split_response(payload: bytes) -> tuple[bytes, list[memoryview]]:
    """(the response without raw_output_contents, to parse as a message; views of each
    raw_output_contents entry in order, into `payload`)."""
    view = memoryview(payload)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    offset, end = 0, len(view)
    while offset < end:
        start = offset
        tag, offset = read_varint(view, offset)
        wire = tag & 7
        if wire == _LENGTH_DELIMITED:
            length, offset = read_varint(view, offset)
            if tag >> 3 == RESPONSE_RAW_OUTPUT_CONTENTS:
                raw.append(view[offset:offset + length])
            else:
                rest.append(view[start:offset + length])
            offset += length
        elif wire == 0:
            _, offset = read_varint(view, offset)
            rest.append(view[start:offset])
        elif wire == 1:
            offset += 8
            rest.append(view[start:offset])
        elif wire == 5:
            offset += 4
            rest.append(view[start:offset])
        else:
            raise ValueError(f"malformed ModelInferResponse: wire type {wire} at byte {start}")
    if offset != end:
        raise ValueError("malformed ModelInferResponse: truncated")
    return b"".join(rest), raw
