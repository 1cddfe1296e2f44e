"""The HTTP layer under the archive.org backend: no hidden retries, a total deadline per request, bounded bodies.

Imported only when an archive.org session is built (it pulls in requests and urllib3). `ia.make_session` mounts
`BoundedAdapter` on every prefix of the session, so every request the `internetarchive` client or egds sends
(archive.org, s3.us.archive.org, datanodes; directly or through a proxy) goes through it:

- no urllib3 retries (`max_retries=0`): retrying is egds's, in one place (`ia.InternetArchiveRemote`), so tests
  and production retry alike and a persistent 503 surfaces as itself;
- a total deadline: inside `with Deadline(seconds):` every socket a request opens is registered, and when the
  deadline passes a timer shuts them down, so a blocked read or write returns at once. Per-read socket timeouts
  alone never end a body that trickles in one byte at a time, nor headers sent that way;
- bounded bodies: a body egds does not stream itself (error pages, redirects, the client's own non-streamed
  calls such as the metadata write) is read here, at most `SMALL_BODY_BYTES`; a larger error body is cut (only
  its message matters), a larger successful one raises `ReplyTooLarge`. A streamed 2xx body is left to the
  caller, which reads it against its own cap.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

SMALL_BODY_BYTES = 1 << 20
"""The most egds reads of a reply it does not stream: error pages, redirects, JSON answers of small calls."""


class ReplyTooLarge(requests.exceptions.RequestException):
    """A reply expected to be short was longer than SMALL_BODY_BYTES. Not worth retrying."""


class DeadlinePassed(requests.exceptions.RequestException):
    """Raised by `Deadline` when its time ran out (whatever the interrupted request raised)."""


_active = threading.local()


class Deadline:
    """A total time limit for the requests made by this thread inside the `with` block.

    On expiry every socket opened (or reused) inside the block is shut down: blocked reads return EOF and
    blocked writes fail, whatever phase the request was in. The block then raises DeadlinePassed, even if the
    interrupted code returned normally (a body delimited by the connection's end would look complete)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._outer = getattr(_active, "deadline", None)
        _active.deadline = self
        self._timer.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        with self._lock:
            self._done = True
            expired = self.expired
        self._timer.cancel()
        _active.deadline = self._outer
        if expired:
            raise DeadlinePassed(f"the request took longer than {self.seconds:.0f} s") from None

    def register(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if not self.expired:
                self._sockets.append(sock)
                return
        _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to interrupt


def _register(sock: socket.socket | None) -> None:
    deadline = getattr(_active, "deadline", None)
    if deadline is not None:
        deadline.register(sock)


class _Connection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _register(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self.sock)  # a kept-alive connection is reused without connect()
        super().request(*args, **kwargs)


class _TLSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _register(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self.sock)
        super().request(*args, **kwargs)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


def _use_our_pools(manager: Any) -> Any:
    manager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
    return manager


class BoundedAdapter(HTTPAdapter):
    """requests' adapter without retries, whose connections obey `Deadline` and whose unstreamed bodies are
    bounded (module doc)."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _use_our_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # A SOCKS manager has pools of its own kind; it keeps them (and only per-read timeouts).
        return manager if proxy.lower().startswith("socks") else _use_our_pools(manager)

    def send(self, request: Any, stream: bool = False, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        response = super().send(request, stream=stream, **kwargs)
        if stream and 200 <= response.status_code < 300:
            return response  # the caller reads it, against its own cap
        try:
            data = response.raw.read(SMALL_BODY_BYTES + 1, decode_content=True)
        except Exception as exc:  # urllib3 ProtocolError/ReadTimeoutError/DecodeError, OSError: a cut-off reply
            response.close()
            raise requests.exceptions.ChunkedEncodingError(f"reply cut off ({type(exc).__name__})") from None
        response.close()
        if len(data) > SMALL_BODY_BYTES and 200 <= response.status_code < 300:
            raise ReplyTooLarge(f"a {response.status_code} reply longer than {SMALL_BODY_BYTES} bytes")
        # What `.content` returns from now on (requests' own attributes for an already-read body).
        response._content = data[:SMALL_BODY_BYTES]
        response._content_consumed = True
        return response
