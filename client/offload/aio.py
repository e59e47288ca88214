"""`offload.AsyncClient`: the asyncio sibling of :class:`offload.Client`.

    async with offload.AsyncClient("triton.example.org:8001") as client:
        tagger = await client.model("jet_tagger")
        outputs = await tagger.infer(points=p, features=f, mask=m)

The same engine (server choice, the bound on requests in flight, retries, failover,
deadlines, errors) and transports (messages or shared memory) as the synchronous client,
on grpc.aio channels of the caller's event loop; the pieces of a split batch, and ragged
entries, are sent `pipeline` at a time under one deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from offload import protocol
from offload.client import _ClientBase, _index, _ModelBase, windowed
from offload.errors import (
    AuthenticationError,
    ModelNotFoundError,
    NotSupportedError,
    OffloadError,
)
from offload.inputs import check_piece_size
from offload.schema import ModelInfo
from offload.stats import ServerStats, server_stats


class AsyncClient(_ClientBase):
    """Arguments as :class:`offload.Client` (`fallback="local"` is not offered here: start
    a LocalServer yourself). Use it from one event loop."""

    def __init__(self, servers: str | Sequence[str] | None = None, **options: Any) -> None:
        if options.get("fallback"):
            raise ValueError("AsyncClient has no local fallback; use offload.Client for it")
        super().__init__(servers, **options)

    async def model(self, name: str, version: str | int | None = None, *,
                    max_batch_size: int | None = None) -> AsyncModel:
        """A handle to a model; its metadata and config are fetched once and cached."""
        key = (name, "" if version is None else str(version))
        if key in self._models and max_batch_size is None:
            return self._models[key]
        info = await self._fetch_info(name, key[1], max_batch_size)
        if max_batch_size is not None:
            return AsyncModel(self, info, key[1])
        return self._adopt(AsyncModel, info, key[1])

    async def models(self) -> list[dict[str, str]]:
        response = await self._engine.acall(
            "RepositoryIndex", protocol.service_pb2.RepositoryIndexRequest(), model=None)
        return _index(response)

    async def ready(self) -> bool:
        return any((await self.health(timeout=5)).values())

    async def health(self, timeout: float = 5.0) -> dict[str, bool]:
        """As Client.health(), the servers probed concurrently on this loop."""
        return await self._engine.ahealth(timeout)

    async def close(self) -> None:
        if not self.closed:
            await asyncio.gather(*(e.close_aio() for e in self._engine.pool.endpoints),
                                 return_exceptions=True)
        self._finalizer()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _fetch_info(self, name: str, version: str,
                          max_batch_size: int | None) -> ModelInfo:
        pb = protocol.service_pb2
        acall = self._engine.acall
        try:
            metadata = await acall("ModelMetadata",
                                   pb.ModelMetadataRequest(name=name, version=version),
                                   model=name)
            try:
                config = await acall("ModelConfig",
                                     pb.ModelConfigRequest(name=name, version=version),
                                     model=name)
            except NotSupportedError:
                config = None
        except ModelNotFoundError as error:
            try:
                index = await self.models()
            except AuthenticationError:
                names = "(its model index needs the server's token)"
            except OffloadError:
                names = "(could not list)"
            else:
                names = ", ".join(sorted(m["name"] for m in index
                                         if m["state"] == "READY")) or "no ready model"
            raise ModelNotFoundError(f"{error}; the server has: {names}", model=name) from None
        return self._info(name, metadata, config, max_batch_size)


class AsyncModel(_ModelBase):
    """A model on an AsyncClient's servers; obtain with ``await client.model(name)``."""

    _client: AsyncClient

    async def infer(self, inputs: Mapping[str, Any] | None = None, /, *,
                    timeout: float | None = None, version: str | int | None = None,
                    **named: Any) -> dict[str, np.ndarray]:
        """As Model.infer(), awaited; one deadline for all the pieces of a split batch."""
        target = await self._for_version(version)
        prepared = self._prepare(target, {**(inputs or {}), **named})
        check_piece_size(target.info, prepared)
        return await self._infer_async(target, prepared, self._deadline(timeout))

    async def infer_ragged(self, entries: Sequence[Mapping[str, Any]], *,
                           timeout: float | None = None) -> list[dict[str, np.ndarray]]:
        """One request per entry, `pipeline` in flight at once, one deadline for all;
        results in the entries' order."""
        deadline = self._deadline(timeout)
        prepared = [self._prepare(self, dict(entry)) for entry in entries]
        for one in prepared:
            check_piece_size(self.info, one)
        return await windowed(prepared, lambda one: self._infer_async(self, one, deadline),
                              self._client.pipeline)

    def submit(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("AsyncModel has no submit(): use asyncio.create_task(model.infer(...))")

    async def server_stats(self) -> list[ServerStats]:
        request = protocol.service_pb2.ModelStatisticsRequest(name=self.name,
                                                              version=self.version)
        return server_stats(await self._client._engine.acall("ModelStatistics", request,
                                                             model=self.name))

    async def _for_version(self, version: str | int | None) -> AsyncModel:
        if version is None or str(version) == self.version:
            return self
        return await self._client.model(self.name, version)


AsyncClient._model_class = AsyncModel
