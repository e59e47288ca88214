"""`offload.AsyncClient`: the asyncio mirror of :class:`offload.Client`.

    async with offload.AsyncClient("triton.example.org:8001") as client:
        tagger = await client.model("jet_tagger")
        outputs = await tagger.infer(points=p, features=f, mask=m)

Same checks, server choice, retries, failover and errors as the synchronous client, on
grpc.aio channels; pieces of a split batch are awaited together (pipelined).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from offload import tensors
from offload.client import Client, Model, _Attempts, _pb, drive, pipelined
from offload.errors import AuthenticationError, ModelNotFoundError, OffloadError
from offload.stats import StatsRecorder


class AsyncClient(Client):
    """Arguments as :class:`offload.Client` (`fallback="local"` is not offered here: start
    a LocalServer yourself)."""

    def __init__(self, servers: str | Sequence[str] | None = None, **options: Any) -> None:
        if options.get("fallback"):
            raise ValueError("AsyncClient has no local fallback; use offload.Client for it")
        super().__init__(servers, **options)

    async def model(self, name: str, version: str | int | None = None) -> AsyncModel:  # type: ignore[override]
        key = (name, "" if version is None else str(version))
        if key not in self._models:
            pb = _pb()
            try:
                metadata = await self._acall("ModelMetadata", pb.ModelMetadataRequest(
                    name=name, version=key[1]), model=name)
                config = await self._acall("ModelConfig", pb.ModelConfigRequest(
                    name=name, version=key[1]), model=name)
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
                raise ModelNotFoundError(f"{error}; the server has: {names}",
                                         model=name) from None
            self._models[key] = AsyncModel(self, tensors.model_info(metadata, config), key[1])
        return self._models[key]  # type: ignore[return-value]

    async def models(self) -> list[dict[str, str]]:  # type: ignore[override]
        response = await self._acall("RepositoryIndex", _pb().RepositoryIndexRequest(), model=None)
        return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
                for m in response.models]

    async def ready(self) -> bool:  # type: ignore[override]
        for endpoint in self._pool.endpoints:
            try:
                response = await endpoint.aio_method("ServerReady")(
                    _pb().ServerReadyRequest(), timeout=5,
                    metadata=endpoint.call_options.get("metadata"))
            except grpc.RpcError:
                continue
            if response.ready:
                return True
        return False

    async def close(self) -> None:  # type: ignore[override]
        if not self._closed:
            self._closed = True
            await asyncio.gather(*(e.close_aio() for e in self._pool.endpoints))
            self._pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _acall(self, method: str, request: Any, *, model: str | None,
                     timeout: float | None = None, rows: int = 0,
                     stats: StatsRecorder | None = None) -> Any:
        """One request with retries and failover, on this event loop."""
        return await drive(_Attempts(self, method, request, model, rows, stats,
                                     time.monotonic() + (timeout or self.timeout)))

    def _start_fallback(self, model: str | None) -> bool:
        return False


class AsyncModel(Model):
    async def infer(self, inputs: Mapping[str, Any] | None = None, /, *,  # type: ignore[override]
                    timeout: float | None = None, version: str | int | None = None,
                    **named: Any) -> dict[str, np.ndarray]:
        client: AsyncClient = self._client  # type: ignore[assignment]
        target = self if version is None or str(version) == self.version else \
            await client.model(self.name, version)
        prepared = self._prepare(target, {**(inputs or {}), **named})

        async def send(piece: tensors.Prepared) -> dict[str, np.ndarray]:
            request = tensors.build_request(_pb(), target.info, piece, target.version)
            return tensors.decode_response(_pb(), await client._acall(
                "ModelInfer", request, model=self.name, timeout=timeout,
                rows=piece.batch or 1, stats=self._stats), target.info)

        return await pipelined(tensors.pieces(prepared, target.info.max_batch_size), send,
                               client.pipeline)

    async def infer_ragged(self, entries: Sequence[Mapping[str, Any]], *,  # type: ignore[override]
                           timeout: float | None = None) -> list[dict[str, np.ndarray]]:
        return list(await asyncio.gather(*(self.infer(e, timeout=timeout) for e in entries)))

    def submit(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        raise TypeError("AsyncModel has no submit(): use asyncio.create_task(model.infer(...))")

    async def server_stats(self):  # type: ignore[override]
        from offload.stats import server_stats

        request = _pb().ModelStatisticsRequest(name=self.name, version=self.version)
        return server_stats(await self._client._acall("ModelStatistics", request,  # type: ignore[attr-defined]
                                                      model=self.name))
