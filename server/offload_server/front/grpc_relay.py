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
RESOURCE_EXHAUSTED = 8

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
    inflater: zlib._Decompress | None = None
    inflated: int = 0


@dataclass(frozen=True)
class RelayConfig:
    upstream: str  # Triton's gRPC unix socket
    policy: AccessPolicy
    max_request_bytes: int


class Connection:
    """One client connection and its twin connection to Triton."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.client: asyncio.Transport | None = None
        self.triton: asyncio.Transport | None = None
        self.client_buffer = bytearray()
        self.triton_buffer = bytearray()
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
        self.closed = False

    # ---------------------------------------------------------------- transports
    def attach_client(self, transport: asyncio.Transport) -> None:
        self.client = transport
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
            if self.client_buffer:
                self.from_client(b"")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for transport in (self.client, self.triton):
            if transport is not None:
                transport.close()

    # ------------------------------------------------------------ client -> Triton
    def from_client(self, data: bytes) -> None:
        buffer = self.client_buffer
        buffer += data
        if self.triton is None or self.closed:
            return
        to_triton, to_client = bytearray(), bytearray()
        start = 0
        if not self.preface_seen:
            if len(buffer) < len(PREFACE):
                return
            if buffer[:len(PREFACE)] != PREFACE:
                self.close()  # not HTTP/2 with prior knowledge: nothing to relay
                return
            to_triton += PREFACE
            start = len(PREFACE)
            self.preface_seen = True
        end = len(buffer)
        try:
            while end - start >= 9:
                length = int.from_bytes(buffer[start:start + 3], "big")
                if end - start < 9 + length:
                    break
                raw = bytes(buffer[start:start + 9 + length])
                start += 9 + length
                self._client_frame(raw, to_triton, to_client)
        except hpack.HPACKError as error:
            log.warning("closing a connection whose headers do not decode: %s", error)
            self._fail_connection(COMPRESSION_ERROR)
            return
        except _ProtocolViolation as error:
            log.warning("closing a connection: %s", error)
            self._fail_connection(PROTOCOL_ERROR)
            return
        del buffer[:start]
        if to_triton:
            self.triton.write(to_triton)
        if to_client and self.client is not None:
            self.client.write(to_client)

    def _client_frame(self, raw: bytes, to_triton: bytearray, to_client: bytearray) -> None:
        kind, flags = raw[3], raw[4]
        stream = int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
        if self.client_block is not None and kind != CONTINUATION:
            raise _ProtocolViolation("a header block was interrupted by another frame")
        if kind in (HEADERS, CONTINUATION):
            self._client_headers(raw, kind, flags, stream, to_triton, to_client)
            return
        if stream in self.refused:
            if kind == DATA and len(raw) > 9:  # give back the flow-control credit it took
                to_client += frame(WINDOW_UPDATE, 0, 0, (len(raw) - 9).to_bytes(4, "big"))
            if kind == RST_STREAM or (flags & END_STREAM and kind == DATA):
                self.refused.discard(stream)
            return
        if kind == DATA:
            call = self.calls.get(stream)
            if call is not None:
                refusal = self._check_data(call, _payload(raw, flags))
                if refusal is not None:
                    self._refuse(stream, refusal, to_triton, to_client)
                    to_client += frame(WINDOW_UPDATE, 0, 0, (len(raw) - 9).to_bytes(4, "big"))
                    return
                if flags & END_STREAM:
                    del self.calls[stream]
        elif kind == RST_STREAM:
            self.calls.pop(stream, None)
            self.answered.discard(stream)
        to_triton += raw

    def _client_headers(self, raw: bytes, kind: int, flags: int, stream: int,
                        to_triton: bytearray, to_client: bytearray) -> None:
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
        headers = self.decoder.decode(b"".join(fragments), raw=False)
        end_stream = bool(frames[0][4] & END_STREAM)
        for piece in frames:  # always: Triton's HPACK table must see every block
            to_triton += piece
        if stream in self.refused:  # trailers of a refused call
            if end_stream:
                self.refused.discard(stream)
        elif stream not in self.calls and stream not in self.silenced:  # a new call
            path = next((v for k, v in headers if k == ":path"), "")
            refusal = self.config.policy.check_grpc(path, headers)
            if refusal is not None:
                self._refuse(stream, refusal, to_triton, to_client)
                if end_stream:
                    self.refused.discard(stream)
            elif not end_stream:
                encoding = next((v for k, v in headers if k == "grpc-encoding"), "identity")
                self.calls[stream] = _Call(encoding=encoding.lower())
        elif end_stream:
            self.calls.pop(stream, None)

    def _check_data(self, call: _Call, data: bytes) -> Refusal | None:
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

    def _refuse(self, stream: int, refusal: Refusal, to_triton: bytearray,
                to_client: bytearray) -> None:
        """Answer the call with the refusal's status and reset it on Triton's side (which
        has its headers, but never gets its message)."""
        if len(self.refused) >= MAX_REFUSED_OPEN:
            raise _ProtocolViolation(f"{len(self.refused)} refused calls left open")
        self.refused.add(stream)
        self.silenced[stream] = None
        if len(self.silenced) > MAX_SILENCED:
            del self.silenced[next(iter(self.silenced))]
        self.calls.pop(stream, None)
        to_triton += frame(RST_STREAM, 0, stream, CANCEL.to_bytes(4, "big"))
        started = stream in self.answered
        self.answered.discard(stream)
        to_client += frame(HEADERS, END_STREAM | END_HEADERS, stream,
                           status_block(refusal.code, refusal.message,
                                        response_started=started))
        # The call is over: the client may stop sending its message.
        to_client += frame(RST_STREAM, 0, stream, NO_ERROR.to_bytes(4, "big"))
        log.info("refused stream %d: %s", stream, refusal.message)

    def _fail_connection(self, code: int) -> None:
        if self.client is not None:
            self.client.write(frame(GOAWAY, 0, 0, (0).to_bytes(4, "big")
                                    + code.to_bytes(4, "big")))
        self.close()

    # ------------------------------------------------------------ Triton -> client
    def from_triton(self, data: bytes) -> None:
        buffer = self.triton_buffer
        buffer += data
        out, credit = bytearray(), 0
        start, end = 0, len(buffer)
        while end - start >= 9:
            length = int.from_bytes(buffer[start:start + 3], "big")
            if end - start < 9 + length:
                break
            raw = bytes(buffer[start:start + 9 + length])
            start += 9 + length
            kind, flags = raw[3], raw[4]
            stream = int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
            if kind == CONTINUATION and self.triton_block is not None:
                self.triton_block[1].append(raw)
                if flags & END_HEADERS:
                    out += b"".join(self.triton_block[1])
                    self.triton_block = None
                continue
            if kind == DATA and stream in self.silenced:
                credit += length  # Triton's send window: the client never sees these
                continue
            if kind == HEADERS:
                self.answered.add(stream)
                if flags & END_STREAM:
                    self._finished(stream)
                if not flags & END_HEADERS:
                    self.triton_block = (stream, [raw])
                    continue
            elif kind == RST_STREAM:
                self._finished(stream)
            elif kind == SETTINGS and not flags & ACK:
                self._triton_settings(raw[9:])
            elif kind == DATA and flags & END_STREAM:
                self._finished(stream)
            out += raw
        del buffer[:start]
        if credit:
            out_triton = frame(WINDOW_UPDATE, 0, 0, credit.to_bytes(4, "big"))
            if self.triton is not None:
                self.triton.write(out_triton)
        if out and self.client is not None:
            self.client.write(out)

    def _finished(self, stream: int) -> None:
        self.answered.discard(stream)
        self.calls.pop(stream, None)

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

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.close()


class _ClientSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.connection.attach_client(transport)

    def other(self) -> asyncio.Transport | None:
        return self.connection.triton

    def data_received(self, data: bytes) -> None:
        self.connection.from_client(data)


class _TritonSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.connection.triton = transport

    def other(self) -> asyncio.Transport | None:
        return self.connection.client

    def data_received(self, data: bytes) -> None:
        self.connection.from_triton(data)


def protocol_factory(config: RelayConfig) -> Callable[[], asyncio.Protocol]:
    return lambda: _ClientSide(Connection(config))
