"""An event stream on the wire: its response sent straight to ASGI, and the client's connection under daphne.

An ``EventStreamResponse`` leaves Django's per-chunk streaming machinery:
the project's handler (config/asgi.py) hands it to ``send_event_stream``,
one ASGI ``send`` per batch of events; under daphne, one write to the
client's connection per batch once the response's head is out.

daphne applies no backpressure: its ASGI ``send`` hands the bytes to Twisted
and returns at once, so what an event stream writes for a client that does
not read piles up in this process. ``serve`` puts a ``ClientConnection`` in
every HTTP scope as ``scope["extensions"]["chat.transport"]``:
``send_event_stream`` cuts off a stream whose client is too far behind, and
writes past daphne's per-message layers, and the connection's socket takes
a write at once while nothing waits in Twisted's buffer (``write_directly``).
Under another ASGI server, or Django's test client, the extension is absent
and nothing is cut off.
"""

from __future__ import annotations

import logging
from contextlib import aclosing

from django.http import StreamingHttpResponse

logger = logging.getLogger(__name__)

EXTENSION = "chat.transport"


class ClientConnection:
    """One client's request under daphne: the Twisted request, its connection's transport and socket."""

    __slots__ = ("_request", "_transport", "_socket")

    def __init__(self, transport, socket, request=None):
        self._request = request
        self._transport = transport
        self._socket = socket

    def write_body(self, data: bytes) -> bool:
        """Write ``data`` as the next chunk of the response body now, as daphne's ASGI ``send`` would; False if not.

        The same bytes (HTTP/1.1 chunked framing) and bookkeeping as Twisted's
        ``Request.write``, without daphne's and Twisted's per-message layers:
        about a fifth of daphne's CPU per event written to a viewer. Only once
        the response's head is out and while the request is live and chunked;
        otherwise (False) the caller sends through ASGI, which handles the rest.
        """
        request = self._request
        if (
            request is None
            or not request.startedWriting
            or not request.chunked
            or request.finished
            or request._disconnected
            or request.channel is None
        ):
            return False
        request.sentLength += len(data)
        self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True

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

    Also has the connection's socket send at once what is written while
    nothing waits in its buffer (``write_directly``). Nothing is added when
    the request has no socket under it.
    """
    from twisted.internet.abstract import FileDescriptor

    transport = getattr(getattr(protocol, "channel", None), "transport", None)
    socket = transport
    # TLS wraps the socket: the wrapper's own ``transport`` is the socket's.
    while socket is not None and not isinstance(socket, FileDescriptor):
        socket = getattr(socket, "transport", None)
    if socket is not None:
        write_directly(socket)
        scope.setdefault("extensions", {})[EXTENSION] = ClientConnection(transport, socket, protocol)


def write_directly(socket) -> None:
    """Have the Twisted connection ``socket`` send a write at once when nothing of its own is buffered.

    Twisted buffers every write and asks the reactor to say when the socket is
    writable: under the asyncio reactor that is a selector ``modify`` (and a
    new ``SelectorKey``) to add the writer, one more pass of the event loop,
    the send, and another ``modify`` to remove it; measured at about two
    thirds of daphne's CPU per event written to a viewer. Sent at once, a
    write that the kernel takes whole never touches the selector; the part it
    does not take goes to Twisted's buffer as before, and so does everything
    written while any of it waits there, so the order holds. Idempotent.
    """
    if getattr(socket, "_chat_writes_directly", False):
        return
    buffered_write = socket.write
    raw = socket.socket

    def send_now(data) -> int:
        """How much of ``data`` the kernel took (0 if it took none or the connection broke: Twisted's path tells)."""
        if (
            not socket.connected
            or socket.disconnecting
            or socket._writeDisconnected
            or socket._tempDataLen
            or socket.offset < len(socket.dataBuffer)
        ):
            return 0
        try:
            return raw.send(data)
        except OSError:
            return 0

    def write(data: bytes) -> None:
        sent = send_now(data) if data else 0
        if sent < len(data):
            buffered_write(data[sent:] if sent else data)

    def write_sequence(iovec) -> None:
        if not iovec:
            return
        data = b"".join(iovec)
        sent = send_now(data)
        if sent < len(data):
            buffered_write(data[sent:] if sent else data)

    socket.write, socket.writeSequence = write, write_sequence
    socket._chat_writes_directly = True


class EventStreamResponse(StreamingHttpResponse):
    """An event stream's response: its chunks go straight to ASGI ``send`` (``send_event_stream``).

    ``stream`` yields one chunk per batch of events. The project's ASGI handler
    (config/asgi.py) sends it with ``send_event_stream``; any other handler
    (Django's test client) iterates it as a plain streaming response.
    ``budget``: bytes a client may leave unread before it is cut off (0: no
    limit); ``label`` names the stream in that log line.
    """

    def __init__(self, stream, *, scope: dict, budget: int, label: str):
        super().__init__(stream, content_type="text/event-stream; charset=utf-8")
        self.stream = stream
        self.connection: ClientConnection | None = scope.get("extensions", {}).get(EXTENSION)
        self.budget = budget
        self.label = label


async def send_event_stream(response: EventStreamResponse, start: dict, send) -> None:
    """Send ``start`` (``http.response.start``), then each chunk of ``response.stream`` as one body message.

    Under daphne, once the first chunk has gone through ASGI (with the head),
    each chunk is written to the connection directly (``ClientConnection.write_body``).

    Before each chunk, if more than the response's budget written earlier
    still waits in this process (the ``chat.transport`` extension tells),
    aborts the connection, logs one line and closes the stream, so its
    ``finally`` runs; the client reconnects and resumes with ``Last-Event-ID``.
    A client disconnect cancels the caller (Django's handler), which closes
    the stream the same way.
    """
    await send(start)
    del start  # its headers are daphne's now; a stream may last hours
    connection = response.connection
    budget = response.budget if connection is not None else 0
    async with aclosing(response.stream) as stream:
        async for chunk in stream:
            if budget > 0 and (pending := connection.pending_bytes()) > budget:
                logger.warning("viewer cut off: %d bytes pending (budget %d), %s", pending, budget, response.label)
                connection.abort()
                return
            # Under daphne, straight to the connection once the head is out; else (and the first) through ASGI.
            if connection is None or not connection.write_body(chunk):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body"})
