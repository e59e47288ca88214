"""How a request's tensors travel: inside the gRPC messages, or through shared memory.

A model hands each piece of a call to its client's transport, which builds the request,
sends it through the engine (blocking or on an event loop) and decodes the outputs. The
shared-memory transport registers regions with the server once, reuses them, registers one
again when the server lost it, and frees them when the client closes.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from offload import codec, protocol, shm
from offload import engine as engine_module
from offload.engine import Engine
from offload.errors import SharedMemoryError
from offload.inputs import Prepared
from offload.schema import ModelInfo
from offload.stats import StatsRecorder


class MessageTransport:
    """Tensors inside the messages: built from the numpy buffers with one copy (offload.wire)."""

    def send(self, engine: Engine, info: ModelInfo, version: str, piece: Prepared, *,
             timeout: float | None, stats: StatsRecorder) -> dict[str, np.ndarray]:
        request = codec.build_request(protocol.service_pb2, info, piece, version)
        response = engine.call("ModelInfer", request, model=info.name, timeout=timeout,
                               rows=piece.batch or 1, stats=stats)
        return codec.decode_response(protocol.service_pb2, response, info)

    async def asend(self, engine: Engine, info: ModelInfo, version: str, piece: Prepared, *,
                    deadline: float, stats: StatsRecorder) -> dict[str, np.ndarray]:
        request = codec.build_request(protocol.service_pb2, info, piece, version)
        response = await engine.acall("ModelInfer", request, model=info.name,
                                      deadline=deadline, rows=piece.batch or 1, stats=stats)
        return codec.decode_response(protocol.service_pb2, response, info)

    def close(self) -> None:
        pass


class SharedMemoryTransport:
    """Tensors through POSIX shared memory with a server on this host (offload.shm)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._new_pool()

    def _new_pool(self) -> None:
        self._generation = engine_module._generation
        self._regions = shm.RegionPool(self._register, self._unregister, self._aregister)

    def _regions_here(self) -> shm.RegionPool:
        """This process's regions: a forked child leaves its parent's to the parent."""
        if self._generation != engine_module._generation:
            engine_module._inherited.append(self._regions)
            self._new_pool()
        return self._regions

    # ------------------------------------------------------------ registration
    def _register(self, region: shm.Region) -> None:
        self._engine.call("SystemSharedMemoryRegister", _register_request(region), model=None)

    async def _aregister(self, region: shm.Region) -> None:
        await self._engine.acall("SystemSharedMemoryRegister", _register_request(region),
                                 model=None)

    def _unregister(self, region: shm.Region) -> None:
        self._engine.call("SystemSharedMemoryUnregister",
                          protocol.service_pb2.SystemSharedMemoryUnregisterRequest(
                              name=region.name), model=None, timeout=2)

    # ------------------------------------------------------------ sending
    def send(self, engine: Engine, info: ModelInfo, version: str, piece: Prepared, *,
             timeout: float | None, stats: StatsRecorder) -> dict[str, np.ndarray]:
        engine.check()
        deadline = time.monotonic() + (timeout or engine.options.timeout)
        regions = self._regions_here()
        where = shm.layout(info, piece)
        region = regions.acquire(where.nbytes)
        try:
            request = self._request(info, version, piece, region, where)
            try:
                response = engine.call("ModelInfer", request, model=info.name,
                                       timeout=timeout, rows=piece.batch or 1, stats=stats)
            except SharedMemoryError:
                # The server lost the region (it restarted, or someone unregistered it):
                # register it again and send once more; a refusal raises its own error.
                regions.reregister(region)
                response = engine.call("ModelInfer", request, model=info.name,
                                       timeout=max(deadline - time.monotonic(), 1e-3),
                                       rows=piece.batch or 1, stats=stats)
            return shm.read_outputs(protocol.service_pb2, response, region, where, info)
        finally:
            regions.release(region)

    async def asend(self, engine: Engine, info: ModelInfo, version: str, piece: Prepared, *,
                    deadline: float, stats: StatsRecorder) -> dict[str, np.ndarray]:
        engine.check()
        regions = self._regions_here()
        where = shm.layout(info, piece)
        region = await regions.aacquire(where.nbytes)
        try:
            request = self._request(info, version, piece, region, where)
            try:
                response = await engine.acall("ModelInfer", request, model=info.name,
                                              deadline=deadline, rows=piece.batch or 1,
                                              stats=stats)
            except SharedMemoryError:
                await regions.areregister(region)
                response = await engine.acall("ModelInfer", request, model=info.name,
                                              deadline=deadline, rows=piece.batch or 1,
                                              stats=stats)
            return shm.read_outputs(protocol.service_pb2, response, region, where, info)
        finally:
            regions.release(region)

    @staticmethod
    def _request(info: ModelInfo, version: str, piece: Prepared, region: shm.Region,
                 where: shm.Layout) -> bytes:
        shm.write_inputs(region, info, piece, where)
        return shm.build_request(protocol.service_pb2, info, piece, version, region, where)

    def close(self) -> None:
        if self._generation == engine_module._generation:
            with contextlib.suppress(Exception):
                self._regions.close()


def _register_request(region: shm.Region) -> Any:
    return protocol.service_pb2.SystemSharedMemoryRegisterRequest(
        name=region.name, key=region.key, offset=0, byte_size=region.size)
