"""An archive.org emulator: a loopback HTTP server that the REAL ``internetarchive`` client talks to.

Wiring (checked against internetarchive 5.12.1, requests 2.34, urllib3 2.8): a session built with
``config={"general": {"secure": False}, "s3": {...}}`` and a config file that does not exist uses ``http://``
for all of ``archive.org/metadata``, ``archive.org/download``, ``s3.us.archive.org`` and the datanode a download
redirects to. With ``trust_env = False`` and ``proxies = {"http": <emulator>}`` every one of them arrives here as
a plain-HTTP proxy request whose request line carries the absolute URI; the emulator routes on its host + path.
Origin-form requests (``GET /metadata/ID``) are routed by their Host header; an unknown host counts as
archive.org. ``IA_ACCESS_KEY_ID``/``IA_SECRET_ACCESS_KEY`` in the environment override a config *file* but not
the ``config`` dict, so an anonymous session must also clear ``session.access_key``/``secret_key`` (done below).
Through the proxy a dropped connection surfaces as ``requests.exceptions.ProxyError`` (a ``ConnectionError``);
a body cut off mid-download as ``ChunkedEncodingError``, which is NOT a ``requests.ConnectionError``.

Emulated: ``GET archive.org/metadata/{id}`` (no sub-paths: the client never GETs them), ``GET
archive.org/download/{id}/{key}`` (optionally 302 to ``ia800000.us.archive.org/0/items/...``), ``PUT`` and
``DELETE s3.us.archive.org/{id}/{key}`` and ``GET s3.us.archive.org/?check_limit=1``. Downloads honour one
``Range: bytes=a-b | a- | -n`` (206, or 416 when unsatisfiable); anything else gets the whole file. Known gaps:
real listings also hold ``{id}_files.xml``/``_meta.xml`` etc. (filter on your own key prefix); item metadata
headers on a PUT to an existing item are merged here, while real IA-S3 documents them for item creation only.

Faults are deterministic: ``inject(fault, at=k, match=m)`` fires on the k-th (0-based) request matching ``m``
counted from the moment of injection, once. If two faults are due on one request, the earlier-injected fires
and the other waits for the next matching request.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import os
import re
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from internetarchive import ArchiveSession

S3_HOST = "s3.us.archive.org"
DATANODE = "ia800000.us.archive.org"
FAULTS = frozenset({"503", "500", "reset", "corrupt", "lost_reply"})
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,99}$")
_META_HEADER = re.compile(r"^x-archive-meta(\d*)-(.+)$", re.IGNORECASE)
_DATANODE_HOST = re.compile(r"^ia\d+\.us\.archive\.org$")
_DATANODE_PATH = re.compile(r"^/\d+/items/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_Reply = tuple[int, dict[str, str], bytes]
_FAULT_ERRORS = {"503": (503, "SlowDown", "Please reduce your request rate."),
                 "500": (500, "InternalError", "We encountered an internal error. Please try again.")}


@dataclass
class RequestRecord:
    """One request as the emulator saw it. ``status`` is None when the connection was reset before the request
    was acted on; a "lost_reply" request has the status of what was done, though the client never saw it."""

    index: int  # 0-based over every request since start; clear_log() does not reset it
    method: str
    host: str
    path: str  # percent-decoded
    query: dict[str, str]
    status: int | None
    bytes_in: int
    bytes_out: int
    headers: dict[str, str]  # as received, minus Authorization
    fault: str | None = None


@dataclass
class _Stored:
    data: bytes  # bytes at rest (differ from what was received only after a "corrupt" PUT; same length)
    md5: str
    sha1: str
    crc32: str
    mtime: float
    visible_at: float  # the /metadata listing shows this version from then on
    previous: _Stored | None = None  # what the listing shows while this version is pending


def _stored(received: bytes, mtime: float, visible_at: float, at_rest: bytes | None = None) -> _Stored:
    return _Stored(at_rest if at_rest is not None else received, hashlib.md5(received).hexdigest(),
                   hashlib.sha1(received).hexdigest(), f"{zlib.crc32(received):08x}", mtime, visible_at)


@dataclass
class _Item:
    metadata: dict
    created: float
    files: dict[str, _Stored] = field(default_factory=dict)


@dataclass
class _Fault:
    kind: str
    at: int
    match: str | Callable[[str, str, str], bool] | None
    seen: int = 0

    def matches(self, method: str, host: str, path: str) -> bool:
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(method, host, path))
        pattern = self.match if " " in self.match else f"{self.match} *"  # a bare "PUT" means any PUT
        return fnmatch.fnmatchcase(f"{method} {host}{path}", pattern)


def _s3_error(status: int, code: str, message: str) -> _Reply:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message><RequestId>ia-emulator</RequestId></Error>")
    return status, {"Content-Type": "application/xml"}, body.encode()


def _json(obj: object) -> _Reply:
    return 200, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def _not_found(what: str) -> _Reply:
    return 404, {"Content-Type": "text/plain; charset=utf-8"}, f"not found: {what}\n".encode()


def _flip(payload: bytes) -> bytes:
    """Invert one byte in the middle: same length, different content (what a bad disk or proxy does)."""
    if not payload:
        return payload
    i = len(payload) // 2
    return payload[:i] + bytes([payload[i] ^ 0xFF]) + payload[i + 1:]


def _md5_from_header(value: str) -> str | None:
    """Content-MD5 as hex (what the client sends) or base64 (what S3 specifies); None if neither."""
    value = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{32}", value):
        return value.lower()
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 16 else None


def _meta_from_headers(headers: Mapping[str, str] | object) -> dict:
    """x-archive-metaNN-key: value -> {key: value}; ``--`` stands for ``_``, ``uri(...)`` is percent-encoded;
    several indexes of one key make a list, ordered by index."""
    found: dict[str, list[tuple[int, str]]] = {}
    for name, value in headers.items():  # type: ignore[attr-defined]
        m = _META_HEADER.match(name)
        if not m:
            continue
        if value.startswith("uri(") and value.endswith(")"):
            value = unquote(value[4:-1])
        found.setdefault(m.group(2).lower().replace("--", "_"), []).append((int(m.group(1) or 0), value))
    return {k: [v for _, v in sorted(vs)] if len(vs) > 1 else vs[0][1] for k, vs in found.items()}


def archive_session(endpoint: str, access: str | None = None, secret: str | None = None) -> ArchiveSession:
    """A real ArchiveSession whose every request (archive.org, s3, datanodes) goes through ``endpoint``
    (``http://HOST:PORT``) as an HTTP proxy. No keys -> anonymous, whatever the environment holds."""
    import internetarchive

    missing = os.path.join(tempfile.gettempdir(), f"ia-emulator-{uuid.uuid4().hex}", "ia.ini")  # never created
    s3 = {"access": access, "secret": secret} if access and secret else {}
    session = internetarchive.ArchiveSession(config={"general": {"secure": False}, "s3": s3}, config_file=missing)
    if not s3:
        session.access_key = session.secret_key = None  # type: ignore[assignment]  # env keys must not leak in
    session.trust_env = False  # no HTTP(S)_PROXY / NO_PROXY / .netrc from the environment
    session.proxies = {"http": endpoint}
    return session


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client holding a keep-alive connection must not block shutdown
    emulator: IAEmulator

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # a client hanging up is no bug
            self.emulator.errors.append(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "IAEmulator/1"
    timeout = 30  # an idle client cannot pin a handler thread forever
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # the emulator keeps a structured log instead

    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_DELETE = do_POST = do_GET

    def _target(self) -> tuple[str, str, dict[str, str]]:
        parts = urlsplit(self.path)
        host = parts.hostname if parts.scheme else (self.headers.get("Host") or "").rsplit(":", 1)[0]
        return (host or "").lower(), unquote(parts.path) or "/", dict(parse_qsl(parts.query, keep_blank_values=True))

    def _read_body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return b"" if limit is not None else self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length if limit is None else min(length, limit))

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:  # bounded: every pass consumes a size line, and EOF ends it
            line = self.rfile.readline(1024)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, status: int, headers: dict[str, str], length: int, payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:  # say so, or urllib3 pools the connection we are about to close
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(payload)

    def _reset(self) -> None:
        # SO_LINGER(on, 0): close() sends RST instead of FIN, so the client sees ECONNRESET, as on a dropped link.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # makefile() holds a reference: the socket only really closes once it is gone
        self.connection.close()
        self.close_connection = True

    def _dispatch(self) -> None:
        emu = self.server.emulator
        host, path, query = self._target()
        index, fault = emu._admit(self.command, host, path)
        log = lambda status, n_in, n_out: emu._record(  # noqa: E731
            RequestRecord(index, self.command, host, path, query, status, n_in, n_out,
                          {k: v for k, v in self.headers.items() if k.lower() != "authorization"}, fault))
        if fault == "reset" and self.command != "GET":
            length = int(self.headers.get("Content-Length") or 0)
            received = self._read_body(limit=length // 2)  # the client is cut off mid-body
            log(None, len(received), 0)
            return self._reset()
        body = self._read_body()  # always drain it, so a keep-alive connection stays in sync
        if len(body) < int(self.headers.get("Content-Length") or 0):  # the client hung up mid-body: act on nothing
            self.close_connection = True
            return log(None, len(body), 0)
        if fault in _FAULT_ERRORS:  # the request is answered, but not acted on
            reply = _s3_error(*_FAULT_ERRORS[fault])
        else:
            try:
                reply = emu._route(self.command, host, path, query, self.headers, body, fault == "corrupt")
            except Exception:  # an emulator bug must surface as a 500 plus emu.errors, not a hang
                emu.errors.append(traceback.format_exc())
                reply = _s3_error(500, "InternalError", "emulator bug; see IAEmulator.errors")
        status, headers, payload = reply
        if fault == "lost_reply":  # acted on (a PUT is stored), but the connection drops before the reply
            log(status, len(body), 0)
            return self._reset()
        if fault == "corrupt" and self.command == "GET":
            payload = _flip(payload)
        if fault == "reset":  # a GET: promise the whole body, deliver half, then drop the connection
            log(None, len(body), len(payload) // 2)
            self._send(status, headers, len(payload), payload[: len(payload) // 2])
            return self._reset()
        log(status, len(body), len(payload))  # before sending: once the client has the reply, the log shows it
        self._send(status, headers, len(payload), payload)


class IAEmulator:
    """archive.org on 127.0.0.1. ``with IAEmulator() as emu: s = emu.session()``.

    State is ``identifier -> item metadata + {key: bytes, mtime}``, guarded by one lock. Uploads are visible
    to downloads at once, and to the ``/metadata`` listing ``metadata_lag`` seconds later by ``clock`` (or after
    ``settle()``); while a new version is pending the listing keeps showing the previous one."""

    def __init__(self, *, keys: Mapping[str, str] | None = None, redirect_downloads: bool = False,
                 metadata_lag: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.keys = dict(keys if keys is not None else {"test-access": "test-secret"})  # access -> secret
        self.redirect_downloads = redirect_downloads
        self.metadata_lag = metadata_lag
        self.clock = clock
        self.over_limit = False  # check_limit answers over_limit=1 while True
        self.requests: list[RequestRecord] = []
        self.faults_fired: list[RequestRecord] = []
        self.errors: list[str] = []  # tracebacks of emulator bugs; tests may assert it stays empty
        self._items: dict[str, _Item] = {}
        self._faults: list[_Fault] = []
        self._count = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> IAEmulator:
        server = _Server(("127.0.0.1", 0), _Handler)  # loopback only, ephemeral port
        server.emulator = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"ia-emulator-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()  # stops serve_forever; handler threads are daemons and end on their own
            self._thread.join(timeout=5)
            self._server.server_close()
            self._server = self._thread = None

    def __enter__(self) -> IAEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "emulator not started"
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``EGDS_IA_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    proxy_url = endpoint

    def session(self, access: str = "test-access", secret: str = "test-secret", *,
                anonymous: bool = False) -> ArchiveSession:
        """A real ``internetarchive.ArchiveSession`` routed here (see ``archive_session``)."""
        return archive_session(self.endpoint, None if anonymous else access, None if anonymous else secret)

    # -- test controls -----------------------------------------------------------------------------------
    def inject(self, fault: str, at: int = 0, match: str | Callable[[str, str, str], bool] | None = None) -> None:
        """Arm ``fault`` ("503", "500", "reset", "corrupt", "lost_reply") for the ``at``-th (0-based) request from now that
        matches ``match``: None (any), a method ("PUT"), an fnmatch pattern over "METHOD hostpath"
        ("GET archive.org/download/*"), or a callable(method, host, path). Fires once.
        "503"/"500": S3 XML error (SlowDown/InternalError), request not acted on. "reset": a PUT/DELETE is read
        halfway and the connection reset, nothing stored; a GET gets its headers and half its body, then a reset.
        "corrupt": a GET reply has one byte flipped (same length); a PUT is stored with one byte flipped at
        rest while the listing keeps the md5 of what was received (bit rot). "lost_reply": the request is acted on
        in full (a PUT is stored), then the connection is reset before the reply: the client cannot tell it
        from a failure, as when a link drops after IA has stored a file."""
        if fault not in FAULTS or at < 0:
            raise ValueError(f"unknown fault {fault!r} or negative index {at}")
        with self._lock:
            self._faults.append(_Fault(fault, at, match))

    def settle(self) -> None:
        """Make every pending upload visible in the /metadata listing now."""
        with self._lock:
            for item in self._items.values():
                for stored in item.files.values():
                    stored.visible_at, stored.previous = float("-inf"), None

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def put_file(self, identifier: str, key: str, data: bytes, metadata: Mapping | None = None) -> None:
        """Store a file directly (no request logged), listed at once; creates the item if needed."""
        with self._lock:
            item = self._items.setdefault(identifier, _Item({"identifier": identifier}, self.clock()))
            item.metadata.update(metadata or {})
            item.files[key] = _stored(data, self.clock(), float("-inf"))

    def get_file(self, identifier: str, key: str) -> bytes | None:
        with self._lock:
            stored = self._items[identifier].files.get(key) if identifier in self._items else None
            return None if stored is None else stored.data

    def files(self, identifier: str) -> dict[str, bytes]:
        """Every stored file of the item, pending and history ones included."""
        with self._lock:
            item = self._items.get(identifier)
            return {} if item is None else {k: v.data for k, v in item.files.items()}

    def item_metadata(self, identifier: str) -> dict | None:
        with self._lock:
            item = self._items.get(identifier)
            return None if item is None else dict(item.metadata)

    # -- request handling (called from handler threads) ---------------------------------------------------
    def _admit(self, method: str, host: str, path: str) -> tuple[int, str | None]:
        """Number the request and pick the fault (if any) it triggers."""
        with self._lock:
            index, self._count = self._count, self._count + 1
            due = None
            for fault in self._faults:
                if fault.matches(method, host, path):
                    fault.seen += 1
                    if due is None and fault.seen > fault.at:
                        due = fault
            if due is not None:
                self._faults.remove(due)
            return index, None if due is None else due.kind

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)
            if record.fault:
                self.faults_fired.append(record)

    def _route(self, method: str, host: str, path: str, query: dict[str, str], headers: Mapping[str, str],
               body: bytes, corrupt: bool) -> _Reply:
        if host == S3_HOST:
            return self._s3(method, path, query, headers, body, corrupt)
        if method != "GET":
            return _s3_error(405, "MethodNotAllowed", f"{method} is not emulated on {host}")
        if _DATANODE_HOST.match(host):
            m = _DATANODE_PATH.match(path)
            return self._serve(m.group(1), m.group(2), headers) if m else _not_found(path)
        parts = path.lstrip("/").split("/", 2)
        if len(parts) == 2 and parts[0] == "metadata":
            return _json(self._listing(parts[1]))
        if len(parts) == 3 and parts[0] == "download" and parts[2]:
            if self.redirect_downloads:
                return 302, {"Location": f"http://{DATANODE}/0/items/{parts[1]}/{quote(parts[2])}"}, b""
            return self._serve(parts[1], parts[2], headers)
        return _not_found(path)

    def _listing(self, identifier: str) -> dict:
        with self._lock:
            item = self._items.get(identifier)
            if item is None:
                return {}  # what archive.org answers for a missing item, with HTTP 200
            now, files = self.clock(), []
            for key, stored in sorted(item.files.items()):
                shown: _Stored | None = stored
                while shown is not None and shown.visible_at > now:
                    shown = shown.previous
                if shown is not None:
                    files.append({"name": key, "source": "original", "format": "Unknown",
                                  "size": str(len(shown.data)), "md5": shown.md5, "sha1": shown.sha1,
                                  "crc32": shown.crc32, "mtime": str(int(shown.mtime))})
            return {"created": int(item.created), "d1": DATANODE, "d2": "ia600000.us.archive.org",
                    "dir": f"/0/items/{identifier}", "files": files, "files_count": len(files),
                    "item_last_updated": int(now), "item_size": sum(int(f["size"]) for f in files),
                    "metadata": dict(item.metadata, identifier=identifier), "server": DATANODE,
                    "uniq": 1, "workable_servers": [DATANODE]}

    def _serve(self, identifier: str, key: str, headers: Mapping[str, str]) -> _Reply:
        with self._lock:
            item = self._items.get(identifier)
            stored = item.files.get(key) if item else None
        if stored is None:
            return _not_found(f"{identifier}/{key}")
        data, size = stored.data, len(stored.data)
        reply_headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                         "Last-Modified": formatdate(stored.mtime, usegmt=True), "ETag": f'"{stored.md5}"'}
        m = _RANGE.match((headers.get("Range") or "").strip())
        if not m or m.groups() == ("", ""):
            return 200, reply_headers, data  # no Range, or a form we do not emulate: the whole file
        first, last = m.groups()
        start = max(size - int(last), 0) if first == "" else int(first)
        end = size - 1 if first == "" or last == "" else min(int(last), size - 1)
        if start >= size or start > end or (first == "" and int(last) == 0):
            return 416, {"Content-Range": f"bytes */{size}"}, b""
        reply_headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return 206, reply_headers, data[start:end + 1]

    def _s3(self, method: str, path: str, query: dict[str, str], headers: Mapping[str, str], body: bytes,
            corrupt: bool) -> _Reply:
        if method == "GET" and path == "/" and "check_limit" in query:  # unauthenticated, as on IA
            over = int(self.over_limit)
            detail = {"accesskey_tasks_queued": 0, "bucket_tasks_queued": 0, "total_tasks_queued": 0,
                      "rationing_engaged": over, "limit_reason": "emulated" if over else ""}
            return _json({"bucket": query.get("bucket"), "accesskey": query.get("accesskey"),
                          "over_limit": over, "detail": detail})
        if method not in ("PUT", "DELETE"):
            return _s3_error(405, "MethodNotAllowed", f"{method} {path} is not emulated")
        scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
        access, _, secret = credentials.partition(":")
        if scheme != "LOW" or not access or self.keys.get(access) != secret:
            return _s3_error(403, "InvalidAccessKeyId", "The S3 access key and secret you provided are not valid.")
        identifier, _, key = path.lstrip("/").partition("/")
        if not _IDENTIFIER.match(identifier):
            return _s3_error(400, "InvalidBucketName", f"Invalid identifier: {identifier!r}")
        keep_old = (headers.get("x-archive-keep-old-version") or "").strip() == "1"
        if method == "DELETE":
            with self._lock:
                item = self._items.get(identifier)
                old = item.files.pop(key, None) if item else None
                if item and old and keep_old:
                    self._keep_history(item, key, old, self.clock())
            return 204, {}, b""
        md5 = hashlib.md5(body).hexdigest()
        if headers.get("Content-MD5"):
            expected = _md5_from_header(headers["Content-MD5"])
            if expected is None:
                return _s3_error(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")
            if expected != md5:
                return _s3_error(400, "BadDigest", "The Content-MD5 you specified did not match what was received.")
        with self._lock:
            now = self.clock()
            item = self._items.get(identifier)
            if item is None:
                if (headers.get("x-archive-auto-make-bucket") or "").strip() != "1":
                    return _s3_error(404, "NoSuchBucket", f"The item {identifier!r} does not exist.")
                item = self._items[identifier] = _Item({"identifier": identifier}, now)
            item.metadata.update(_meta_from_headers(headers))
            if key:  # a PUT on the bare bucket only creates the item
                new = _stored(body, now, now + self.metadata_lag, _flip(body) if corrupt else None)
                old = item.files.get(key)
                if old is not None:
                    if keep_old:
                        self._keep_history(item, key, old, new.visible_at)
                    if old.visible_at <= now:
                        old.previous = None  # the listing will never need to look further back
                    new.previous = old
                item.files[key] = new
        return 200, {"ETag": f'"{md5}"'}, b""

    @staticmethod
    def _keep_history(item: _Item, key: str, old: _Stored, visible_at: float) -> None:
        """x-archive-keep-old-version: the replaced bytes live on as history/files/{key}.~N~ (N from 1)."""
        prefix = f"history/files/{key}.~"
        n = 1 + sum(1 for k in item.files if k.startswith(prefix) and k.endswith("~"))
        item.files[f"{prefix}{n}~"] = replace(old, visible_at=visible_at, previous=None)
