"""A small SSE reader for tests: one thread per viewer, over a real socket."""

import json
import socket
import threading

import httpx

from tests.servers import eventually


class SSEEvent:
    __slots__ = ("id", "type", "data", "raw")

    def __init__(self, id, type, data):
        self.id, self.type, self.raw = id, type, data
        self.data = json.loads(data) if data else None

    def __repr__(self):
        return f"SSEEvent({self.id!r}, {self.type!r})"


def parse_lines(lines):
    """Yield SSEEvents and ':' comments (as ("comment", text)) from an iterator of lines."""
    event_id, event_type, data = None, "message", []
    for line in lines:
        if line == "":
            if data:
                yield SSEEvent(event_id, event_type, "\n".join(data))
            event_id, event_type, data = None, "message", []
        elif line.startswith(":"):
            yield ("comment", line)
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                event_id = value
            elif name == "event":
                event_type = value
            elif name == "data":
                data.append(value)


class Viewer(threading.Thread):
    """Reads an event stream until ``until(event)`` is true, the stream ends, or ``close()``.

    ``presence`` events (who is viewing: they come and go with other viewers,
    orthogonal to the messages) are kept apart in ``presence``, so ``events``
    is the stream's sequence of everything else, in order; with
    ``with_presence=True`` they stay in ``events`` too, in stream order.
    """

    def __init__(
        self,
        client: httpx.Client,
        path: str,
        *,
        until=None,
        headers=None,
        method="GET",
        json_body=None,
        with_presence=False,
    ):
        super().__init__(daemon=True)
        self.with_presence = with_presence
        self.client, self.path, self.until = client, path, until
        self.headers = headers or {}
        self.method, self.json_body = method, json_body
        self.events: list[SSEEvent] = []
        self.presence: list[SSEEvent] = []
        self.comments: list[str] = []
        self.status = None
        self.response_headers = None
        self.error = None
        self.ended = threading.Event()
        self.ready = threading.Event()
        self._closing = False
        self._response = None

    def run(self):
        try:
            with self.client.stream(
                self.method,
                self.path,
                headers={"Accept": "text/event-stream", **self.headers},
                json=self.json_body,
                timeout=httpx.Timeout(60, read=60),
            ) as response:
                self._response = response
                self.status = response.status_code
                self.response_headers = response.headers
                self.ready.set()
                if response.status_code != 200:
                    response.read()
                    self.body = response.text
                    return
                for item in parse_lines(response.iter_lines()):
                    if isinstance(item, tuple):
                        self.comments.append(item[1])
                        continue
                    if item.type == "presence":
                        self.presence.append(item)
                    if item.type != "presence" or self.with_presence:
                        self.events.append(item)
                    if self.until is not None and self.until(item):
                        return
        except Exception as exc:  # recorded for the test to assert on
            if not self._closing:
                self.error = exc
        finally:
            self.ready.set()
            self.ended.set()

    def close(self):
        """Drop the connection now, as a closed browser tab does (a FIN reaches the server at once)."""
        self._closing = True
        if self._response is not None:
            stream = self._response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                # close() from another thread would not interrupt the reader's recv().
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.ended.wait(5)

    def wait(self, timeout=60):
        assert self.ended.wait(timeout), f"stream did not end within {timeout}s; got {len(self.events)} events"
        assert self.error is None, repr(self.error)
        return self.events

    def wait_for(self, predicate, timeout=30):
        """Return the first event matching ``predicate``, waiting up to ``timeout`` s; AssertionError if the
        stream ends or the time passes without one."""

        def matched():
            ended = self.ended.is_set()  # read before the events: an event added before the end is seen
            found = next((e for e in list(self.events) if predicate(e)), None)
            if found is None and ended:
                raise AssertionError(no_match())
            return found

        def no_match():
            return f"no matching event; got {[e.type for e in self.events]}"

        return eventually(matched, timeout=timeout, interval=0.01, message=no_match)


def start_viewer(client, path, **kwargs) -> Viewer:
    viewer = Viewer(client, path, **kwargs)
    viewer.start()
    assert viewer.ready.wait(30)
    return viewer


def final_for(message_id):
    finals = {"message.completed", "message.failed", "message.cancelled", "message.interrupted"}
    return lambda e: e.type in finals and e.data["id"] == message_id
