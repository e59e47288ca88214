"""System shared memory with a Triton server on the same host.

Instead of travelling inside the gRPC messages, input and output tensors go through a
POSIX shared-memory region that the client registers with the server once and reuses:
the client writes the inputs into it, the request names the region and offsets, Triton
reads them and writes the outputs there, and the client copies the outputs out. Only for
a server on this machine (`Client(..., shared_memory=True)` with a loopback address);
perf/RESULTS.md records when it pays.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from offload import dtypes
from offload.errors import (
    AuthenticationError,
    InferenceError,
    InvalidInputError,
    ProtocolError,
    SharedMemoryError,
)
from offload.inputs import Prepared
from offload.schema import ModelInfo

_ALIGN = 64
_NAME = re.compile(r"offload-(\d+)-(\d+)-[0-9a-f]{32}")


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 where /proc has none)."""
    try:
        with Path(f"/proc/{pid}/stat").open() as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def region_name() -> str:
    """A name for a new region: its owner (pid and start time, so that the server's janitor
    can unregister the regions of a process that died) and 128 random bits, so that no
    other client can guess it."""
    pid = os.getpid()
    return f"offload-{pid}-{_start_time(pid)}-{secrets.token_hex(16)}"


def region_owner(name: str) -> tuple[int, int] | None:
    """(pid, start time) of the process that registered a region named by region_name()."""
    match = _NAME.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass
class Region:
    name: str  # the name registered with Triton
    memory: shared_memory.SharedMemory
    size: int

    @property
    def key(self) -> str:
        return "/" + self.memory.name  # shm_open key, as Triton expects it


class RegionPool:
    """Regions registered with one server, reused by size (powers of two). Registration
    goes through the callables given (blocking, and a coroutine for event loops)."""

    def __init__(self, register: Callable[[Region], None],
                 unregister: Callable[[Region], None],
                 aregister: Callable[[Region], Awaitable[None]] | None = None) -> None:
        self._register, self._unregister, self._aregister = register, unregister, aregister
        self._free: dict[int, list[Region]] = {}
        self._all: list[Region] = []
        self._lock = threading.Lock()

    def acquire(self, nbytes: int) -> Region:
        region, new = self._take(nbytes)
        if new:
            self._checked(self._register, region)
            self._added(region)
        return region

    async def aacquire(self, nbytes: int) -> Region:
        region, new = self._take(nbytes)
        if new:
            assert self._aregister is not None
            try:
                await self._aregister(region)
            except BaseException as error:
                _discard(region)
                raise _as_region_error(region, error) from error
            self._added(region)
        return region

    def _take(self, nbytes: int) -> tuple[Region, bool]:
        size = 1 << max(12, (nbytes - 1).bit_length())
        with self._lock:
            if self._free.get(size):
                return self._free[size].pop(), False
        return Region(region_name(), shared_memory.SharedMemory(create=True, size=size),
                      size), True

    def _added(self, region: Region) -> None:
        with self._lock:
            self._all.append(region)

    def _checked(self, register: Callable[[Region], None], region: Region) -> None:
        try:
            register(region)
        except BaseException as error:
            _discard(region)
            raise _as_region_error(region, error) from error

    def reregister(self, region: Region) -> None:
        """Register a region the server lost; a refusal raises (AuthenticationError when
        the server wants a token, SharedMemoryError otherwise)."""
        try:
            self._register(region)
        except InferenceError as error:
            raise _as_region_error(region, error) from error

    async def areregister(self, region: Region) -> None:
        assert self._aregister is not None
        try:
            await self._aregister(region)
        except InferenceError as error:
            raise _as_region_error(region, error) from error

    def release(self, region: Region) -> None:
        with self._lock:
            self._free.setdefault(region.size, []).append(region)

    def close(self) -> None:
        with self._lock:
            regions, self._all, self._free = self._all, [], {}
        for region in regions:
            with contextlib.suppress(Exception):
                self._unregister(region)
            _discard(region)


def _discard(region: Region) -> None:
    region.memory.close()
    with contextlib.suppress(FileNotFoundError):
        region.memory.unlink()


def _as_region_error(region: Region, error: BaseException) -> BaseException:
    """What a failed registration raises: an authentication or shared-memory error as it
    is; another inference error as a SharedMemoryError that names the region."""
    if not isinstance(error, InferenceError) or isinstance(
            error, AuthenticationError | SharedMemoryError):
        return error
    return SharedMemoryError(f"shared-memory region {region.name} could not be registered "
                             f"with the server: {error}", model=error.model)


@dataclass(frozen=True)
class Layout:
    """Where each input and output sits in a region."""

    inputs: dict[str, tuple[int, int]]  # name -> (offset, bytes)
    outputs: dict[str, tuple[int, int, tuple[int, ...]]]  # name -> (offset, bytes, shape)
    nbytes: int


def layout(info: ModelInfo, prepared: Prepared) -> Layout:
    """Inputs then outputs, 64-byte aligned. An output goes through the region only when its
    size is known in advance (every non-batch dimension fixed in the model's metadata);
    the others come back in the response as usual."""
    offset, inputs, outputs = 0, {}, {}
    for tensor in info.inputs:
        if tensor.datatype in ("BYTES", "BF16"):
            raise InvalidInputError(f"model '{info.name}': input '{tensor.name}' is "
                                    f"{tensor.datatype}; shared memory carries fixed-size "
                                    "numeric tensors only", model=info.name)
        size = prepared.arrays[tensor.name].nbytes
        inputs[tensor.name] = (offset, size)
        offset = _aligned(offset + size)
    for tensor in info.outputs:
        shape = tensor.shape[1:] if info.batched else tensor.shape
        if any(d < 0 for d in shape) or tensor.datatype in ("BYTES", "BF16"):
            continue
        full = ((prepared.batch or 1), *shape) if info.batched else tuple(shape)
        size = int(np.prod(full)) * tensor.dtype.itemsize
        outputs[tensor.name] = (offset, size, full)
        offset = _aligned(offset + size)
    return Layout(inputs, outputs, max(offset, 1))


def write_inputs(region: Region, info: ModelInfo, prepared: Prepared, where: Layout) -> None:
    buffer = region.memory.buf
    for tensor in info.inputs:
        offset, _ = where.inputs[tensor.name]
        value = prepared.arrays[tensor.name]
        target: np.ndarray = np.ndarray(value.shape, dtype=value.dtype.newbyteorder("<"),
                                        buffer=buffer, offset=offset)
        np.copyto(target, value)  # converts byte order and layout on the way, one copy


def build_request(service_pb2, info: ModelInfo, prepared: Prepared, version: str,
                  region: Region, where: Layout) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=info.name, model_version=version)
    for tensor in info.inputs:
        offset, size = where.inputs[tensor.name]
        entry = request.inputs.add(name=tensor.name, datatype=tensor.datatype,
                                   shape=prepared.arrays[tensor.name].shape)
        _point(entry.parameters, region.name, offset, size)
    for tensor in info.outputs:
        entry = request.outputs.add(name=tensor.name)  # all outputs, named: all come back
        if tensor.name in where.outputs:
            offset, size, _ = where.outputs[tensor.name]
            _point(entry.parameters, region.name, offset, size)
    return request.SerializeToString()


def _point(parameters, region: str, offset: int, size: int) -> None:
    parameters["shared_memory_region"].string_param = region
    parameters["shared_memory_offset"].int64_param = offset
    parameters["shared_memory_byte_size"].int64_param = size


def read_outputs(service_pb2, payload: bytes, region: Region, where: Layout,
                 info: ModelInfo) -> dict[str, np.ndarray]:
    """The outputs: copies of those in the region (it is reused at once), views of those
    that came in the response. A response that does not fit the layout or the model's
    outputs raises ProtocolError."""
    try:
        response = service_pb2.ModelInferResponse.FromString(payload)
    except Exception as error:  # DecodeError, or a non-bytes payload
        raise ProtocolError(f"model '{info.name}': malformed ModelInferResponse: {error}",
                            model=info.name) from error
    outputs: dict[str, np.ndarray] = {}
    raw = iter(response.raw_output_contents)
    expected = {t.name: t for t in info.outputs}
    for tensor in response.outputs:
        shape = tuple(tensor.shape)
        declared = expected.get(tensor.name)
        try:
            if declared is None or tensor.datatype != declared.datatype:
                raise ValueError(f"not an output of the model ({tensor.datatype} "
                                 f"{list(shape)}; it has "
                                 + ", ".join(t.describe() for t in info.outputs) + ")")
            if tensor.name in where.outputs:
                offset, _, planned = where.outputs[tensor.name]
                if shape != planned:
                    raise ValueError(f"shape {list(shape)} is not the {list(planned)} of "
                                     "its place in the region")
                outputs[tensor.name] = np.ndarray(shape, dtype=declared.dtype,
                                                  buffer=region.memory.buf,
                                                  offset=offset).copy()
            else:
                outputs[tensor.name] = dtypes.decode(tensor.datatype, next(raw), list(shape))
        except (ValueError, KeyError, TypeError, StopIteration) as error:
            raise ProtocolError(f"model '{info.name}', output '{tensor.name}': cannot be "
                                f"read: {error}", model=info.name) from error
    if set(outputs) != set(expected):
        raise ProtocolError(f"model '{info.name}': the response has outputs "
                            f"{sorted(outputs)}, the model declares {sorted(expected)}",
                            model=info.name)
    return outputs
