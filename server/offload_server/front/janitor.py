"""Unregister the shared-memory regions of clients that are gone.

A client killed without closing leaves its regions registered, and Triton keeps them
mapped for ever. offload clients name their regions after their process (pid and start
time, see :func:`offload.shm.region_owner`), so a region whose process no longer exists on
this host is unregistered, and its segment unlinked if it is ours. Regions of other
clients (other naming) are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

import grpc

from offload import shm
from offload.protocol import SERVICE, service_pb2

log = logging.getLogger(__name__)


def process_alive(pid: int, start_time: int) -> bool:
    """Whether the process that had this pid and start time (clock ticks since boot, as in
    /proc/<pid>/stat) still runs; a reused pid has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] != "Z" and int(fields[19]) == start_time


def sweep(channel: grpc.Channel) -> list[str]:
    """Unregister the regions whose owner is gone; their names."""
    status = channel.unary_unary(
        SERVICE + "SystemSharedMemoryStatus",
        request_serializer=service_pb2.SystemSharedMemoryStatusRequest.SerializeToString,
        response_deserializer=service_pb2.SystemSharedMemoryStatusResponse.FromString,
    )(service_pb2.SystemSharedMemoryStatusRequest(), timeout=10)
    unregister = channel.unary_unary(
        SERVICE + "SystemSharedMemoryUnregister",
        request_serializer=service_pb2.SystemSharedMemoryUnregisterRequest.SerializeToString,
        response_deserializer=service_pb2.SystemSharedMemoryUnregisterResponse.FromString)
    removed = []
    for name, region in status.regions.items():
        owner = shm.region_owner(name)
        if owner is None or process_alive(*owner):
            continue
        unregister(service_pb2.SystemSharedMemoryUnregisterRequest(name=name), timeout=10)
        segment = Path("/dev/shm") / region.key.lstrip("/")
        with contextlib.suppress(OSError):
            if segment.stat().st_uid == os.getuid():
                segment.unlink()
        log.info("unregistered shared-memory region %s: its process %d is gone", name,
                 owner[0])
        removed.append(name)
    return removed


def run(upstream: str, interval: float, stop: threading.Event) -> None:
    """Sweep every `interval` seconds until `stop` is set."""
    with grpc.insecure_channel(f"unix:{upstream}") as channel:
        while not stop.wait(interval):
            try:
                sweep(channel)
            except grpc.RpcError as error:
                log.debug("shared-memory sweep failed: %s", error)
