"""A client's connection as the app may see it under ``manage.py serve``: bytes still waiting to go out.

daphne applies no backpressure: its ASGI ``send`` hands the bytes to Twisted
and returns at once, so what an event stream writes for a client that does
not read piles up in this process. ``serve`` puts a ``ClientConnection`` in
every HTTP scope as ``scope["extensions"]["chat.transport"]``, and
``within_budget`` cuts off a stream whose client is too far behind. Under
another ASGI server, or Django's test client, the extension is absent and
nothing changes.
"""

from __future__ import annotations

import logging
from contextlib import aclosing

logger = logging.getLogger(__name__)

EXTENSION = "chat.transport"


class ClientConnection:
    """One client's connection under daphne: its Twisted transport and the socket's write buffer."""

    __slots__ = ("_transport", "_socket")

    def __init__(self, transport, socket):
        self._transport = transport
        self._socket = socket

    def pending_bytes(self) -> int:
        """Bytes written to this connection that the kernel has not taken yet, held in this process."""
        # Twisted's FileDescriptor (twisted/internet/abstract.py) keeps two
        # buffers: the bytes being sent, from ``offset``, and the writes since.
        socket = self._socket
        return len(socket.dataBuffer) - socket.offset + socket._tempDataLen

    def abort(self) -> None:
        """Reset the connection now, dropping what is buffered for it.

        A clean end of the response would keep the buffer until the client
        read it, which a client that does not read never does.
        """
        self._transport.abortConnection()


def add_to_scope(scope: dict, protocol) -> None:
    """Put the ``ClientConnection`` of daphne's HTTP request ``protocol`` in ``scope``'s extensions.

    Nothing is added when the request has no socket under it.
    """
    from twisted.internet.abstract import FileDescriptor

    transport = getattr(getattr(protocol, "channel", None), "transport", None)
    socket = transport
    # TLS wraps the socket: the wrapper's own ``transport`` is the socket's.
    while socket is not None and not isinstance(socket, FileDescriptor):
        socket = getattr(socket, "transport", None)
    if socket is not None:
        scope.setdefault("extensions", {})[EXTENSION] = ClientConnection(transport, socket)


def within_budget(stream, scope: dict, *, budget: int, label: str):
    """``stream``, cut off once its client falls ``budget`` bytes behind.

    Before each chunk, if more than ``budget`` bytes written earlier still wait
    in this process, aborts the connection, logs one line (``label`` names the
    stream) and closes ``stream`` so its ``finally`` runs; the client
    reconnects and resumes with ``Last-Event-ID``. Without the
    ``chat.transport`` extension in ``scope``, or with ``budget`` 0, returns
    ``stream`` itself.
    """
    connection = scope.get("extensions", {}).get(EXTENSION)
    if connection is None or budget <= 0:
        return stream
    return _cut_off_when_behind(stream, connection, budget, label)


async def _cut_off_when_behind(stream, connection: ClientConnection, budget: int, label: str):
    async with aclosing(stream):
        async for chunk in stream:
            pending = connection.pending_bytes()
            if pending > budget:
                logger.warning("viewer cut off: %d bytes pending (budget %d), %s", pending, budget, label)
                connection.abort()
                return
            yield chunk
