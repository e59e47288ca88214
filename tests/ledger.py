"""A client streaming valid requests while a test does something to the server: every one of
its requests must come back, right and in order (the ledger)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import tiny_models as tm

import offload


class StreamingClient:
    """A thread sending `mlp` requests of 1–4 rows through its own client until stopped
    (and at least `minimum` of them), recording each result or exception in order."""

    def __init__(self, url: str, *, token: str | None = None, minimum: int = 20,
                 **client_options: object) -> None:
        self.url, self.token, self.minimum = url, token, minimum
        self.client_options = client_options
        self.ledger: list[tuple[int, np.ndarray, dict | BaseException]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streaming-client")

    def __enter__(self) -> StreamingClient:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        with offload.Client(self.url, token=self.token, **self.client_options) as client:
            model = client.model("mlp")
            index = 0
            while not self._stop.is_set() or index < self.minimum:
                x = np.full((1 + index % 4, tm.N_FEATURES), (index % 50) / 50, np.float32)
                try:
                    self.ledger.append((index, x, model.infer(x=x)))
                except offload.OffloadError as error:
                    self.ledger.append((index, x, error))
                index += 1

    def check(self, reference: Callable[[np.ndarray], dict[str, np.ndarray]]) -> int:
        """Assert that every request was answered, right and in order; their number."""
        assert not self._thread.is_alive(), "the streaming client did not finish"
        assert [index for index, _, _ in self.ledger] == list(range(len(self.ledger)))
        assert len(self.ledger) >= self.minimum
        for index, x, result in self.ledger:
            assert not isinstance(result, BaseException), (index, result)
            np.testing.assert_allclose(result["y"], reference(x)["y"], rtol=1e-5, atol=1e-6)
        return len(self.ledger)
