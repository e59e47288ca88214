"""What a model takes and gives, checking inputs before anything is sent, and turning
numpy arrays into requests and responses back into numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from offload import dtypes, wire
from offload.errors import InvalidInputError, MessageTooLargeError


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

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorInfo:
        return next(t for t in self.inputs if t.name == name)


def model_info(metadata, config) -> ModelInfo:
    """From ModelMetadataResponse and ModelConfigResponse messages."""
    def tensors(entries) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(t.name, t.datatype, tuple(int(d) for d in t.shape))
                     for t in entries)

    return ModelInfo(name=metadata.name, version="", platform=metadata.platform,
                     max_batch_size=int(config.config.max_batch_size),
                     inputs=tensors(metadata.inputs), outputs=tensors(metadata.outputs))


@dataclass(frozen=True)
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
    where = f"model '{info.name}'"
    if len(inputs) != len(info.inputs) or any(t.name not in inputs for t in info.inputs):
        _refuse_names(info, inputs, where)
    arrays: dict[str, np.ndarray] = {}
    batches: dict[str, int] = {}
    for tensor in info.inputs:
        value = inputs[tensor.name]
        if not isinstance(value, np.ndarray):
            if tensor.datatype == "BYTES":
                value = np.asarray(value, dtype=np.object_)
            else:  # lists and scalars take the expected type; arrays must already have it
                value = np.asarray(value, dtype=tensor.dtype)
        shape, wanted = value.shape, tensor.shape
        if (value.dtype != tensor.dtype and not dtypes.accepts(tensor.datatype, value)) or \
                len(shape) != len(wanted) or 0 in shape or \
                any(w >= 0 and w != got for w, got in zip(wanted, shape, strict=True)):
            _refuse_tensor(info, tensor, value, where)
        if check_finite and value.dtype.kind == "f" and not _all_finite(value):
            bad = int((~np.isfinite(value)).sum())
            raise InvalidInputError(
                f"{where}, input '{tensor.name}': {bad} non-finite value(s) (NaN or Inf); "
                "models give undefined results on them. Clean the input, or pass "
                "check_finite=False to send as is", model=info.name)
        if info.batched:
            batches[tensor.name] = shape[0]
        arrays[tensor.name] = value
    if len(set(batches.values())) > 1:
        shown = ", ".join(f"'{n}' {b}" for n, b in batches.items())
        raise InvalidInputError(f"{where}: inputs disagree on the batch size ({shown}); the "
                                "first dimension must be the same for all", model=info.name)
    return Prepared(arrays, next(iter(batches.values())) if batches else None)


def _all_finite(value: np.ndarray) -> bool:
    """Whether no element is NaN or ±Inf. One pass without a temporary: any NaN or Inf
    makes the float64 sum non-finite, and finite float16/float32 values cannot overflow it;
    only when the sum is not finite (or the input is float64) is each element looked at."""
    if value.size > 4096 and value.dtype.itemsize < 8 and np.isfinite(
            np.add.reduce(value, axis=None, dtype=np.float64)):
        return True  # (for small arrays the plain check below is cheaper)
    return bool(np.isfinite(value).all())


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
    if prepared.batch is None or max_batch_size <= 0 or prepared.batch <= max_batch_size:
        return [prepared]
    return [Prepared({k: v[start:start + max_batch_size] for k, v in prepared.arrays.items()},
                     min(max_batch_size, prepared.batch - start))
            for start in range(0, prepared.batch, max_batch_size)]


def build_request(service_pb2, info: ModelInfo, prepared: Prepared, version: str,
                  request_id: str = "") -> bytes:
    """The serialised ModelInferRequest, the arrays' bytes copied once, straight into it
    (see offload.wire); all outputs are returned."""
    # Checked before any copy: numeric tensors' sizes are known from their arrays.
    total = sum(_encoded_size(t.datatype, prepared.arrays[t.name]) for t in info.inputs)
    if total > _MESSAGE_BUDGET:
        raise MessageTooLargeError(
            f"model '{info.name}': a request of {total / 2**30:.2f} GiB exceeds gRPC's 2 GiB "
            "message limit; send fewer rows per call (batches larger than max_batch_size are "
            "split, but here one piece is still too large)", model=info.name)
    if request_id:
        head = service_pb2.ModelInferRequest(model_name=info.name, model_version=version,
                                             id=request_id)
        for tensor in info.inputs:
            head.inputs.add(name=tensor.name, datatype=tensor.datatype,
                            shape=prepared.arrays[tensor.name].shape)
        head_bytes = head.SerializeToString()
    else:  # the common case, written without a message object
        head_bytes = wire.request_head(info.name, version, [
            (t.name, t.datatype, prepared.arrays[t.name].shape) for t in info.inputs])
    return wire.request_bytes(head_bytes, [
        dtypes.encode(t.datatype, prepared.arrays[t.name]) for t in info.inputs])


def _encoded_size(datatype: str, value: np.ndarray) -> int:
    if datatype == "BYTES":
        return sum(4 + len(item if isinstance(item, bytes) else str(item).encode())
                   for item in value.reshape(-1))
    return value.size * (2 if datatype == "BF16" else value.dtype.itemsize)


# Room left for the request's own fields beside the raw tensors.
_MESSAGE_BUDGET = 2**31 - 1 - 64 * 1024


_SMALL_RESPONSE = 64 * 1024


def decode_response(service_pb2, payload: bytes) -> dict[str, np.ndarray]:
    """Outputs of a serialised ModelInferResponse; numeric ones are read-only views into
    `payload` (no copy)."""
    if len(payload) < _SMALL_RESPONSE:
        # Small: the protobuf parser in C beats the Python wire walk; copies are negligible.
        response = service_pb2.ModelInferResponse.FromString(payload)
        raw = list(response.raw_output_contents)
    else:
        rest, raw = wire.split_response(payload)
        response = service_pb2.ModelInferResponse.FromString(rest)
    if len(raw) != len(response.outputs):
        raise ValueError(f"response of model '{response.model_name}' has "
                         f"{len(response.outputs)} outputs but {len(raw)} raw tensors")
    return {tensor.name: dtypes.decode(tensor.datatype, raw[index], list(tensor.shape))
            for index, tensor in enumerate(response.outputs)}


def concatenate(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(pieces) == 1:
        return pieces[0]
    return {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}
