"""The socket `mmdlrm serve` binds before loading the model."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mmdlrm.config import ConfigError
from mmdlrm.serving.server import listening_socket


def test_connections_it_accepts_send_small_writes_at_once():
    """TCP_NODELAY on every accepted connection (asyncio sets it only on sockets that name TCP): without it a reply
    written as headers then body waited for the client's delayed ACK, about 40 ms a request."""
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]

    async def accept_one() -> int:
        found = []

        async def handle(reader, writer):
            found.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return found[0]

    assert asyncio.run(accept_one()) != 0


def test_an_address_of_another_machine_is_named_with_the_fix():
    with pytest.raises(ConfigError, match=r"cannot listen on 192\.0\.2\.1:8000 \(.*\): pass --host with an address of "
                                          r"this machine"):  # fmt: skip
        listening_socket("192.0.2.1", 8000)  # TEST-NET-1: never this machine's
