"""chat.transport.write_directly: a write goes straight to the socket while nothing waits in Twisted's buffer.

A real connected socket pair; the Twisted connection is a stand-in with the
attributes of twisted.internet.abstract.FileDescriptor that the fast path
reads, and a buffered ``write`` that records what it was given.
"""

import socket

import pytest

from chat.transport import ClientConnection, write_directly


class Connection:
    """What write_directly uses of a Twisted TCP connection; ``buffered`` is what went through Twisted's buffer."""

    def __init__(self, sock):
        self.socket = sock
        self.connected = True
        self.disconnecting = False
        self._writeDisconnected = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.buffered = []

    def write(self, data):
        self.buffered.append(bytes(data))
        self._tempDataLen += len(data)

    def writeSequence(self, iovec):
        for data in iovec:
            self.write(data)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def read_all(sock) -> bytes:
    received = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return received
        if not chunk:
            return received
        received += chunk


def test_a_write_the_kernel_takes_never_touches_twisteds_buffer(pair):
    ours, theirs = pair
    connection = Connection(ours)
    write_directly(connection)

    connection.write(b"event: message.delta\n\n")
    connection.writeSequence([b"5\r\n", b"hello", b"\r\n"])

    assert connection.buffered == []
    assert read_all(theirs) == b"event: message.delta\n\n5\r\nhello\r\n"


def test_what_the_kernel_does_not_take_is_buffered_and_so_is_all_that_follows(pair):
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    connection = Connection(ours)
    write_directly(connection)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once

    connection.write(big)
    connection.write(b"after")

    sent_directly = len(big) - len(connection.buffered[0])
    assert 0 < sent_directly < len(big)
    # Once something waits in the buffer, later writes queue behind it: the order holds.
    assert connection.buffered[1] == b"after"
    assert read_all(theirs) == big[:sent_directly]


def test_a_closed_connection_is_left_to_twisted(pair):
    ours, _ = pair
    connection = Connection(ours)
    write_directly(connection)
    connection.connected = False

    connection.write(b"late")

    assert connection.buffered == [b"late"]


def test_installing_twice_wraps_once(pair):
    ours, theirs = pair
    connection = Connection(ours)
    write_directly(connection)
    write_directly(connection)

    connection.write(b"once")

    assert read_all(theirs) == b"once"


class Request:
    """What ClientConnection.write_body reads and writes of daphne's Twisted request."""

    def __init__(self, **state):
        self.startedWriting = True
        self.chunked = True
        self.finished = False
        self._disconnected = False
        self.channel = object()
        self.sentLength = 0
        self.__dict__.update(state)


def test_a_body_chunk_is_written_with_twisteds_chunked_framing(pair):
    ours, theirs = pair
    connection = Connection(ours)
    write_directly(connection)
    request = Request()
    client = ClientConnection(connection, connection, request)

    assert client.write_body(b"data: {}\n\n")
    assert client.write_body(b"x" * 300)

    assert read_all(theirs) == b"a\r\ndata: {}\n\n\r\n12c\r\n" + b"x" * 300 + b"\r\n"
    assert request.sentLength == 310


@pytest.mark.parametrize(
    "state",
    [{"startedWriting": False}, {"chunked": False}, {"finished": True}, {"_disconnected": True}, {"channel": None}],
)
def test_a_chunk_daphne_must_write_is_left_to_asgi(pair, state):
    ours, theirs = pair
    connection = Connection(ours)
    client = ClientConnection(connection, connection, Request(**state))

    assert not client.write_body(b"data: {}\n\n")
    assert read_all(theirs) == b""
    assert connection.buffered == []


def test_without_the_request_nothing_is_written_directly(pair):
    ours, _ = pair
    connection = Connection(ours)

    assert not ClientConnection(connection, connection).write_body(b"data: {}\n\n")
