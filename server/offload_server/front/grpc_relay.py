"""The gRPC front: HTTP/2 frames relayed between network clients and Triton's unix socket.

Each client connection gets its own connection to Triton; frames pass through unchanged
except where a check refuses a call. The relay reads only what the checks need:

* request headers, decoded with HPACK (every header block of the connection, in order, so
  the decoder's table stays that of the client's encoder), for the method path and the
  credential (:mod:`offload_server.front.policy`);
* the 5-byte gRPC message prefix in request DATA frames, for the message length, and for a
  compressed message the length it inflates to (inflated no further than the limit).

A refused call gets a gRPC status from the relay (a trailers-only response, or trailers if
Triton had answered already) and is reset on Triton's side; its DATA frames are dropped in
both directions and the flow-control credit they took is given back. Header blocks always
pass, also those of refused calls: HPACK keeps a table on each end of a connection that
every header block updates, so dropping one would corrupt every later call. Other calls
on the connection go on. Response frames are parsed only for their boundaries, so that
whole header blocks are written at once.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote

import hpack

from offload_server.front.policy import AccessPolicy, Refusal

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, CANCEL, COMPRESSION_ERROR = 0x0, 0x1, 0x8, 0x9
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x1, 0x6
RESOURCE_EXHAUSTED, UNAVAILABLE = 8, 14

#: Streams a client may leave refused but unfinished before its connection is closed.
MAX_REFUSED_OPEN = 1024
#: Refused streams whose late DATA from Triton is still dropped (stream ids only grow).
MAX_SILENCED = 4096
#: Bytes buffered towards one side before reading from the other pauses.
HIGH_WATER = 4 << 20


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags))
            + stream.to_bytes(4, "big") + payload)


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_string(data: bytes) -> bytes:
    return _hpack_int(len(data), 7) + data


def status_block(code: int, message: str, *, response_started: bool) -> bytes:
    """A header block with a gRPC status, using only HPACK representations that leave the
    client's decoding table untouched (static-table references and literals without
    indexing), so it can be slipped between Triton's own header blocks."""
    block = b""
    if not response_started:  # trailers-only: the response's headers and trailers at once
        block += b"\x88"  # ":status: 200", static table entry 8
        block += _hpack_int(31, 4) + _hpack_string(b"application/grpc")  # content-type
    block += b"\x00" + _hpack_string(b"grpc-status") + _hpack_string(str(code).encode())
    encoded = quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()
    block += b"\x00" + _hpack_string(b"grpc-message") + _hpack_string(encoded)
    return block


@dataclass
class _Call:
    """What the relay tracks of one allowed call (client stream) while it sends."""

    encoding: str = "identity"
    in_body: bool = False
    prefix: bytearray = field(default_factory=bytearray)
    body_left: int = 0
    inflater: Any = None  # a zlib decompressor while a compressed message passes
    inflated: int = 0


@dataclass
class _Passing:
    """A DATA frame whose payload streams through as it arrives (so that a 16 MB frame is
    never held whole): relayed, completed with zeros (refused half way: the frame must
    still end where its header said), or dropped (refused before its header went out)."""

    stream: int
    left: int
    mode: str  # "relay", "zero" or "drop"
    end_stream: bool
    call: _Call | None = None
    length: int = 0


class _Outbound:
    """Bytes towards one peer, in order. Frames of the relay's own (a status, a reset, a
    window update) wait while a relayed frame is half written."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.mid_frame = False
        self.waiting: list[bytes] = []

    def relay(self, data: bytes) -> None:
        self.chunks.append(data)

    def inject(self, data: bytes) -> None:
        (self.waiting if self.mid_frame else self.chunks).append(data)

    def frame_done(self) -> None:
        self.mid_frame = False
        if self.waiting:
            self.chunks.extend(self.waiting)
            self.waiting.clear()

    def flush(self) -> None:
        if self.chunks and self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.chunks[0] if len(self.chunks) == 1
                                 else b"".join(self.chunks))
        self.chunks.clear()


class _Chunk:
    """Received bytes being read: what passes unchanged accumulates as one run, relayed
    with one copy (a chunk holds ~16 DATA frames of 16 KB at full speed)."""

    def __init__(self, data: bytes, out: _Outbound) -> None:
        self.data, self.view, self.out = data, memoryview(data), out
        self.run = 0  # start of the bytes not yet relayed nor skipped

    def relay_to(self, end: int) -> None:
        """Relay the run up to `end`."""
        if end > self.run:
            self.out.relay(self.data if self.run == 0 and end == len(self.data)
                           else bytes(self.view[self.run:end]))
        self.run = end

    def skip_to(self, end: int) -> None:
        """Relay the run up to where it is, then leave out everything up to `end`."""
        self.run = max(self.run, end)


@dataclass
class Admission:
    """Inference calls in flight through the front, all connections together, and their
    bound: beyond it a call is refused as Triton refuses one whose queue is full, so that
    clients back off and try again (or elsewhere) instead of piling up in Triton."""

    limit: int
    in_flight: int = 0


INFERENCE_PATHS = frozenset({"/inference.GRPCInferenceService/ModelInfer",
                             "/inference.GRPCInferenceService/ModelStreamInfer"})


@dataclass(frozen=True)
class RelayConfig:
    upstream: str  # Triton's gRPC unix socket
    policy: AccessPolicy
    max_request_bytes: int
    admission: Admission = field(default_factory=lambda: Admission(512))


class Connection:
    """One client connection and its twin connection to Triton."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.to_client, self.to_triton = _Outbound(), _Outbound()
        self.client_pending = bytearray()
        self.triton_pending = bytearray()
        self.client_passing: _Passing | None = None
        self.triton_passing: _Passing | None = None
        self.preface_seen = False
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        # A header block being received, per direction: (stream, frames, fragments).
        self.client_block: tuple[int, list[bytes], list[bytes]] | None = None
        self.triton_block: tuple[int, list[bytes]] | None = None
        self.calls: dict[int, _Call] = {}
        self.refused: set[int] = set()  # refused calls the client has not finished
        self.silenced: dict[int, None] = {}  # refused calls, oldest first
        self.answered: set[int] = set()  # streams Triton has sent headers on
        self.admitted: set[int] = set()  # inference calls counted in the admission
        self.closed = False

    @property
    def client(self) -> asyncio.Transport | None:
        return self.to_client.transport

    @property
    def triton(self) -> asyncio.Transport | None:
        return self.to_triton.transport

    # ---------------------------------------------------------------- transports
    def attach_client(self, transport: asyncio.Transport) -> None:
        self.to_client.transport = transport
        transport.pause_reading()  # until Triton's side is connected
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_unix_connection(lambda: _TritonSide(self), self.config.upstream)
        except OSError as error:
            log.warning("Triton's gRPC socket refused a connection: %s", error)
            self.close()
            return
        if self.client is not None and not self.closed:
            self.client.resume_reading()
            if self.client_pending:
                self.from_client(b"")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.config.admission.in_flight -= len(self.admitted)
        self.admitted.clear()
        for transport in (self.client, self.triton):
            if transport is not None:
                transport.close()

    # ------------------------------------------------------------ client -> Triton
    def from_client(self, data: bytes) -> None:
        if self.triton is None or self.closed:
            self.client_pending += data
            return
        if self.client_pending:
            self.client_pending += data
            data = bytes(self.client_pending)
            self.client_pending.clear()
        try:
            self._read_client(data)
        except hpack.HPACKError as error:
            log.warning("closing a connection whose headers do not decode: %s", error)
            self._fail_connection(COMPRESSION_ERROR)
        except _ProtocolViolation as error:
            log.warning("closing a connection: %s", error)
            self._fail_connection(PROTOCOL_ERROR)
        finally:
            self.to_triton.flush()
            self.to_client.flush()

    def _read_client(self, data: bytes) -> None:
        chunk, position, size = _Chunk(data, self.to_triton), 0, len(data)
        view = chunk.view
        if not self.preface_seen:
            if size < len(PREFACE):
                self.client_pending += data
                return
            if data[:len(PREFACE)] != PREFACE:
                self.close()  # not HTTP/2 with prior knowledge: nothing to relay
                return
            position = len(PREFACE)  # relayed as part of the run
            self.preface_seen = True
        try:
            while position < size:
                passing = self.client_passing
                if passing is not None:
                    take = min(passing.left, size - position)
                    self._client_payload(passing, chunk, position, take)
                    position += take
                    if passing.left == 0:
                        self._client_frame_end(passing, chunk, position)
                    continue
                if size - position < 9:
                    break
                length = int.from_bytes(data[position:position + 3], "big")
                kind, flags = data[position + 3], data[position + 4]
                if kind == DATA and not flags & PADDED and self.client_block is None:
                    head = min(length, 5)  # enough for a message prefix at the frame's start
                    if size - position < 9 + head:
                        break
                    self._client_data_start(chunk, position, length, flags, head)
                    position += 9 + head
                    passing = self.client_passing
                    if passing is not None and passing.left == 0:
                        self._client_frame_end(passing, chunk, position)
                    continue
                if size - position < 9 + length:
                    break
                chunk.relay_to(position)
                raw = bytes(view[position:position + 9 + length])
                position += 9 + length
                chunk.skip_to(position)
                self._client_frame(raw)
        finally:
            chunk.relay_to(position)
            passing = self.client_passing
            self.to_triton.mid_frame = passing is not None and passing.mode != "drop"
            if not self.to_triton.mid_frame:
                self.to_triton.frame_done()
        if position < size:
            self.client_pending += view[position:]

    def _client_data_start(self, chunk: _Chunk, position: int, length: int, flags: int,
                           head: int) -> None:
        stream = int.from_bytes(chunk.data[position + 5:position + 9], "big") & 0x7FFFFFFF
        passing = _Passing(stream, length - head, "drop", bool(flags & END_STREAM),
                           length=length)
        self.client_passing = passing
        if stream not in self.refused:
            call = self.calls.get(stream)
            refusal = None if call is None else \
                self._check_data(call, chunk.view[position + 9:position + 9 + head])
            if refusal is None:
                passing.mode, passing.call = "relay", call  # header and head join the run
                return
            chunk.relay_to(position)
            self._refuse(stream, refusal)
        chunk.relay_to(position)
        chunk.skip_to(position + 9 + head)

    def _client_payload(self, passing: _Passing, chunk: _Chunk, position: int,
                        take: int) -> None:
        if passing.mode == "relay":
            call = passing.call
            refusal = None if call is None else \
                self._check_data(call, chunk.view[position:position + take])
            if refusal is None:
                passing.left -= take  # joins the run
                return
            # Triton has this frame's start: the frame ends with zeros, then a reset.
            self._refuse(passing.stream, refusal, reset=False)
            passing.mode = "zero"
        chunk.relay_to(position)
        if passing.mode == "zero":
            self.to_triton.relay(bytes(take))
        chunk.skip_to(position + take)
        passing.left -= take

    def _client_frame_end(self, passing: _Passing, chunk: _Chunk, position: int) -> None:
        self.client_passing = None
        stream = passing.stream
        if passing.mode == "drop":
            if passing.length:  # give back the flow-control credit these bytes took
                self.to_client.inject(frame(WINDOW_UPDATE, 0, 0,
                                            passing.length.to_bytes(4, "big")))
        else:
            chunk.relay_to(position)
            self.to_triton.frame_done()
        if passing.mode == "zero":
            self.to_triton.inject(frame(RST_STREAM, 0, stream, CANCEL.to_bytes(4, "big")))
        if passing.end_stream:
            if passing.mode == "relay":
                self.calls.pop(stream, None)
            else:
                self.refused.discard(stream)

    def _client_frame(self, raw: bytes) -> None:
        """A whole frame other than an unpadded DATA frame."""
        kind, flags = raw[3], raw[4]
        stream = int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
        if self.client_block is not None and kind != CONTINUATION:
            raise _ProtocolViolation("a header block was interrupted by another frame")
        if kind in (HEADERS, CONTINUATION):
            self._client_headers(raw, kind, flags, stream)
            return
        if stream in self.refused:
            if kind == DATA and len(raw) > 9:  # give back the flow-control credit it took
                self.to_client.inject(frame(WINDOW_UPDATE, 0, 0,
                                            (len(raw) - 9).to_bytes(4, "big")))
            if kind == RST_STREAM or (flags & END_STREAM and kind == DATA):
                self.refused.discard(stream)
            return
        if kind == DATA:  # a padded one (gRPC clients do not pad): checked whole
            call = self.calls.get(stream)
            if call is not None:
                refusal = self._check_data(call, _payload(raw, flags))
                if refusal is not None:
                    self._refuse(stream, refusal)
                    self.to_client.inject(frame(WINDOW_UPDATE, 0, 0,
                                                (len(raw) - 9).to_bytes(4, "big")))
                    return
                if flags & END_STREAM:
                    del self.calls[stream]
        elif kind == RST_STREAM:
            self.calls.pop(stream, None)
            self.answered.discard(stream)
            self._release(stream)
        self.to_triton.relay(raw)

    def _client_headers(self, raw: bytes, kind: int, flags: int, stream: int) -> None:
        if kind == HEADERS:
            self.client_block = (stream, [raw], [_header_fragment(raw, flags)])
        elif self.client_block is None or self.client_block[0] != stream:
            raise _ProtocolViolation("CONTINUATION without its HEADERS")
        else:
            self.client_block[1].append(raw)
            self.client_block[2].append(raw[9:])
        if not flags & END_HEADERS:
            return
        _, frames, fragments = self.client_block
        self.client_block = None
        headers = [(str(k), str(v))
                   for k, v in self.decoder.decode(b"".join(fragments), raw=False)]
        end_stream = bool(frames[0][4] & END_STREAM)
        for piece in frames:  # always: Triton's HPACK table must see every block
            self.to_triton.relay(piece)
        if stream in self.refused:  # trailers of a refused call
            if end_stream:
                self.refused.discard(stream)
        elif stream not in self.calls and stream not in self.silenced:  # a new call
            path = next((v for k, v in headers if k == ":path"), "")
            refusal = self.config.policy.check_grpc(path, headers)
            if refusal is None and path in INFERENCE_PATHS:
                refusal = self._admit(stream)
            if refusal is not None:
                self._refuse(stream, refusal)
                if end_stream:
                    self.refused.discard(stream)
            elif not end_stream:
                encoding = next((v for k, v in headers if k == "grpc-encoding"), "identity")
                self.calls[stream] = _Call(encoding=encoding.lower())
        elif end_stream:
            self.calls.pop(stream, None)

    def _admit(self, stream: int) -> Refusal | None:
        admission = self.config.admission
        if admission.in_flight >= admission.limit:
            # Worded as Triton's full queue: clients retry it as an overload, elsewhere first.
            return Refusal(UNAVAILABLE, f"Exceeds maximum queue size: {admission.limit} "
                                        "inference requests are in flight on this server "
                                        "(offload serve --max-in-flight)")
        admission.in_flight += 1
        self.admitted.add(stream)
        return None

    def _release(self, stream: int) -> None:
        if stream in self.admitted:
            self.admitted.discard(stream)
            self.config.admission.in_flight -= 1

    def _check_data(self, call: _Call, data: bytes | memoryview) -> Refusal | None:
        limit = self.config.max_request_bytes
        position, size = 0, len(data)
        while position < size:
            if not call.in_body:
                take = min(5 - len(call.prefix), size - position)
                call.prefix += data[position:position + take]
                position += take
                if len(call.prefix) < 5:
                    break
                compressed, length = call.prefix[0], int.from_bytes(call.prefix[1:5], "big")
                call.prefix.clear()
                if length > limit:
                    return _too_large(length, limit, "")
                call.in_body, call.body_left, call.inflated = True, length, 0
                call.inflater = (zlib.decompressobj(47)  # zlib or gzip, by its header
                                 if compressed and call.encoding in ("gzip", "deflate")
                                 else None)
                if length == 0:
                    call.in_body = False
                continue
            take = min(call.body_left, size - position)
            if call.inflater is not None:
                try:
                    out = call.inflater.decompress(data[position:position + take],
                                                   limit - call.inflated + 1)
                except zlib.error:
                    call.inflater = None  # Triton refuses what does not inflate
                else:
                    call.inflated += len(out)
                    if call.inflated > limit:
                        return _too_large(call.inflated, limit, " once inflated (at least)")
            call.body_left -= take
            position += take
            if call.body_left == 0:
                call.in_body = False
        return None

    def _refuse(self, stream: int, refusal: Refusal, *, reset: bool = True) -> None:
        """Answer the call with the refusal's status and reset it on Triton's side (which
        has its headers, but never gets its whole message); `reset` False: the caller
        resets it once the frame in progress is complete."""
        if len(self.refused) >= MAX_REFUSED_OPEN:
            raise _ProtocolViolation(f"{len(self.refused)} refused calls left open")
        self.refused.add(stream)
        self._release(stream)
        self.silenced[stream] = None
        if len(self.silenced) > MAX_SILENCED:
            del self.silenced[next(iter(self.silenced))]
        self.calls.pop(stream, None)
        if reset:
            self.to_triton.inject(frame(RST_STREAM, 0, stream, CANCEL.to_bytes(4, "big")))
        started = stream in self.answered
        self.answered.discard(stream)
        self.to_client.inject(frame(HEADERS, END_STREAM | END_HEADERS, stream,
                                    status_block(refusal.code, refusal.message,
                                                 response_started=started)))
        # The call is over: the client may stop sending its message.
        self.to_client.inject(frame(RST_STREAM, 0, stream, NO_ERROR.to_bytes(4, "big")))
        log.info("refused stream %d: %s", stream, refusal.message)

    def _fail_connection(self, code: int) -> None:
        self.to_client.inject(frame(GOAWAY, 0, 0, (0).to_bytes(4, "big")
                                    + code.to_bytes(4, "big")))
        self.to_client.frame_done()  # (a half-written frame is lost with the connection)
        self.to_client.flush()
        self.close()

    # ------------------------------------------------------------ Triton -> client
    def from_triton(self, data: bytes) -> None:
        if self.triton_pending:
            self.triton_pending += data
            data = bytes(self.triton_pending)
            self.triton_pending.clear()
        try:
            self._read_triton(data)
        finally:
            self.to_client.flush()
            self.to_triton.flush()

    def _read_triton(self, data: bytes) -> None:
        chunk, position, size = _Chunk(data, self.to_client), 0, len(data)
        view = chunk.view
        try:
            while position < size:
                passing = self.triton_passing
                if passing is not None:
                    take = min(passing.left, size - position)
                    if passing.mode != "relay":
                        chunk.relay_to(position)
                        chunk.skip_to(position + take)
                    position += take
                    passing.left -= take
                    if passing.left == 0:
                        self._triton_frame_end(passing, chunk, position)
                    continue
                if size - position < 9:
                    break
                length = int.from_bytes(data[position:position + 3], "big")
                kind, flags = data[position + 3], data[position + 4]
                stream = int.from_bytes(data[position + 5:position + 9], "big") & 0x7FFFFFFF
                if kind == DATA and self.triton_block is None:
                    passing = _Passing(stream, length, "relay", bool(flags & END_STREAM),
                                       length=length)
                    if stream in self.silenced:
                        passing.mode = "drop"
                        chunk.relay_to(position)
                        chunk.skip_to(position + 9)
                    position += 9
                    self.triton_passing = passing
                    if length == 0:
                        self._triton_frame_end(passing, chunk, position)
                    continue
                if size - position < 9 + length:
                    break
                chunk.relay_to(position)
                raw = bytes(view[position:position + 9 + length])
                position += 9 + length
                chunk.skip_to(position)
                self._triton_frame(raw, kind, flags, stream)
        finally:
            chunk.relay_to(position)
            passing = self.triton_passing
            self.to_client.mid_frame = passing is not None and passing.mode == "relay"
            if not self.to_client.mid_frame:
                self.to_client.frame_done()
        if position < size:
            self.triton_pending += view[position:]

    def _triton_frame_end(self, passing: _Passing, chunk: _Chunk, position: int) -> None:
        self.triton_passing = None
        if passing.mode == "relay":
            chunk.relay_to(position)
            self.to_client.frame_done()
            if passing.end_stream:
                self._finished(passing.stream)
        elif passing.length:  # Triton's send window: the client never saw these bytes
            self.to_triton.inject(frame(WINDOW_UPDATE, 0, 0,
                                        passing.length.to_bytes(4, "big")))

    def _triton_frame(self, raw: bytes, kind: int, flags: int, stream: int) -> None:
        """A whole frame other than DATA; header blocks are written once complete."""
        if kind == CONTINUATION and self.triton_block is not None:
            self.triton_block[1].append(raw)
            if flags & END_HEADERS:
                self.to_client.relay(b"".join(self.triton_block[1]))
                self.triton_block = None
            return
        if kind == HEADERS:
            self.answered.add(stream)
            if flags & END_STREAM:
                self._finished(stream)
            if not flags & END_HEADERS:
                self.triton_block = (stream, [raw])
                return
        elif kind == RST_STREAM:
            self._finished(stream)
        elif kind == SETTINGS and not flags & ACK:
            self._triton_settings(raw[9:])
        self.to_client.relay(raw)

    def _finished(self, stream: int) -> None:
        self.answered.discard(stream)
        self.calls.pop(stream, None)
        self._release(stream)

    def _triton_settings(self, payload: bytes) -> None:
        # The limits Triton sets for the client's encoder are those of our decoder.
        for offset in range(0, len(payload) - 5, 6):
            key = int.from_bytes(payload[offset:offset + 2], "big")
            value = int.from_bytes(payload[offset + 2:offset + 6], "big")
            if key == SETTINGS_HEADER_TABLE_SIZE:
                self.decoder.max_allowed_table_size = max(self.decoder.max_allowed_table_size,
                                                          value)
            elif key == SETTINGS_MAX_HEADER_LIST_SIZE:
                self.decoder.max_header_list_size = max(self.decoder.max_header_list_size,
                                                        value)


class _ProtocolViolation(Exception):
    pass


def _too_large(size: int, limit: int, how: str) -> Refusal:
    # "message larger than" is how gRPC words it: clients recognise it (not retried).
    return Refusal(RESOURCE_EXHAUSTED, f"request message larger than this server accepts"
                                       f"{how}: {size} bytes, limit {limit} bytes (offload "
                                       "serve --max-request-size)")


def _payload(raw: bytes, flags: int) -> bytes:
    if flags & PADDED:
        pad = raw[9]
        return raw[10:len(raw) - pad]
    return raw[9:]


def _header_fragment(raw: bytes, flags: int) -> bytes:
    start, end = 9, len(raw)
    if flags & PADDED:
        end -= raw[9]
        start += 1
    if flags & PRIORITY_FLAG:
        start += 5
    if start > end:
        raise _ProtocolViolation("HEADERS frame shorter than its padding")
    return raw[start:end]


class _Side(asyncio.Protocol):
    """A transport's events, handed to the shared Connection; flow control pauses the
    other side while this side's outgoing buffer is full."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def other(self) -> asyncio.Transport | None:
        raise NotImplementedError

    def pause_writing(self) -> None:
        other = self.other()
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self.other()
        if other is not None and not self.connection.closed:
            other.resume_reading()

    def connection_lost(self, _exc: Exception | None) -> None:
        self.connection.close()


class _ClientSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # (uvloop's are not subclasses)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.connection.attach_client(transport)

    def other(self) -> asyncio.Transport | None:
        return self.connection.triton

    def data_received(self, data: bytes) -> None:
        self.connection.from_client(data)


class _TritonSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.connection.to_triton.transport = transport

    def other(self) -> asyncio.Transport | None:
        return self.connection.client

    def data_received(self, data: bytes) -> None:
        self.connection.from_triton(data)


def protocol_factory(config: RelayConfig) -> Callable[[], asyncio.Protocol]:
    return lambda: _ClientSide(Connection(config))
