"""A bare websocket client on a raw socket, for what polite clients never do.

It sends any frame (invalid UTF-8, fragments, no pongs), can stop reading,
and shows exactly which frames the server wrote.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

from websockets.frames import Close, Frame, Opcode

from sanic_ws_ext.testing import time_unit


class RawClient:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str = "/ws",
        *,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Set before connect so the advertised window stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * time_unit())
        status = head.split(b" ", 2)[1]
        if status != b"101":
            raise ConnectionError(f"handshake refused: {head!r}")
        return cls(reader, writer)

    def send_frame(self, opcode: Opcode, payload: bytes, *, fin: bool = True) -> None:
        self.writer.write(Frame(opcode, payload, fin=fin).serialize(mask=True))

    async def read_frame(self, timeout: float | None = None) -> Frame:
        """The next frame; raises ``asyncio.IncompleteReadError`` at EOF."""
        return await asyncio.wait_for(self._read_frame(), timeout or 5 * time_unit())

    async def _read_frame(self) -> Frame:
        head = await self.reader.readexactly(2)
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        payload = await self.reader.readexactly(length)
        return Frame(Opcode(head[0] & 0x0F), payload, fin=bool(head[0] & 0x80))

    async def read_until_close(
        self, timeout: float | None = None
    ) -> tuple[Close, list[Frame]]:
        """Read frames until the close frame; returns it and what came before."""
        before: list[Frame] = []
        while True:
            frame = await self.read_frame(timeout)
            if frame.opcode is Opcode.CLOSE:
                return Close.parse(frame.data), before
            before.append(frame)

    def close_socket(self) -> None:
        self.writer.transport.abort()
