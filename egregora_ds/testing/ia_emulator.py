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
egds itself reaches the emulator through ``egregora_ds.store.ia.make_session`` (``EGDS_IA_ENDPOINT``), the same
function that builds its production session; ``archive_session`` below is the bare client, for tests of the
client's own behaviour.

Emulated endpoints:

- ``GET archive.org/metadata/{id}``: the item record (``{}`` for a missing item). Besides the uploaded files the
  listing holds the files archive.org adds to every item: ``{id}_files.xml`` (listed without size or mtime, as
  IA lists it), ``{id}_meta.xml`` and ``{id}_archive.torrent`` (``source: metadata``); all three download too
  (their bytes are generated here, their listed md5/size match what is served). Sources: the MDAPI docs
  (archive.org/developers/md-read.html, md-record.html) and the client's own ``_files.xml`` handling.
- ``POST archive.org/metadata/{id}``: the Metadata Write API as ``Item.modify_metadata`` sends it (form fields
  ``-target``, ``-patch`` (a JSON Patch), ``priority``, ``access``, ``secret``). 200 ``{"success": true,
  "task_id": N, "log": URL}``; an empty or no-op patch answers 400 ``{"success": false, "error": "no changes to
  _meta.xml"}`` (the client's CLI treats "no changes" as a warning); ``mediatype`` cannot be changed (400; client
  issue jjjake/internetarchive#283). The change applies at once (IA runs it as a task, usually within minutes).
- ``GET archive.org/download/{id}/{key}`` (optionally a 302 to ``ia800000.us.archive.org/0/items/...``), with one
  ``Range: bytes=a-b | a- | -n`` (206, or 416 when unsatisfiable).
- ``PUT`` and ``DELETE s3.us.archive.org/{id}/{key}``; ``GET s3.us.archive.org/?check_limit=1`` (the JSON of the
  client's ``tests/data/s3_status_check.json``: ``over_limit`` and a ``detail`` with rations and queue counts).
  Item metadata headers (``x-archive-meta*-*``) apply only when the PUT creates the item, as IA-S3 documents;
  a later change goes through the Metadata Write API above.

Items are owned by the access key whose PUT created them; another valid key is refused with 403 AccessDenied
"You lack sufficient privileges to write to this item." (the text IA-S3 answers: bibanon/tubeup#70,
jjjake/internetarchive#56 and #102). ``set_dark`` darkens an item as archive.org staff do: the record then
carries ``is_dark: true`` and no ``metadata`` or ``files`` (the client reads ``is_dark`` from the record, and its
``ItemLocateError`` "cannot be located because it is dark" comes from the missing ``metadata``), downloads answer
403, and a PUT answers 403 AccessDenied "This item has been taken offline" (jjjake/internetarchive#195, #440).
What a dark item's download and metadata-write refusals say exactly is not documented; "Item not available"
(jjjake/internetarchive#666) is used for both.

Ingest: IA answers an S3 PUT once the file is staged; a catalog task then moves it into the item, and only then
is it listed and served (archive.org/help/abouts3.txt: "staged in temporary storage and ingested ... This can
take some time"; jjjake/internetarchive#168). ``ingest_lag`` emulates that: an upload is neither listed nor
downloadable for that many seconds by ``clock`` (an overwritten key keeps serving and listing its previous
version meanwhile). ``metadata_lag`` adds a further delay to the listing only (the MDAPI record is cached),
so a fresh upload downloads at once but is listed later. ``settle()`` ends every lag. ``fail_ingest`` makes a
PUT answer 200 while its file never appears (the ingest task failed).

Faults are deterministic: ``inject(fault, at=k, match=m, times=n)`` fires on the k-th (0-based) request matching
``m`` counted from the moment of injection, and on the n-1 matching requests after it. If two faults are due on
one request, the earlier-injected fires and the other waits for the next matching request. See ``inject`` for
the kinds.
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
FAULTS = frozenset({"503", "500", "429", "reset", "corrupt", "lost_reply", "spam", "over_limit", "endless",
                    "drip", "oversized", "huge_listing"})
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,99}$")
_META_HEADER = re.compile(r"^x-archive-meta(\d*)-(.+)$", re.IGNORECASE)
_DATANODE_HOST = re.compile(r"^ia\d+\.us\.archive\.org$")
_DATANODE_PATH = re.compile(r"^/\d+/items/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_Reply = tuple[int, dict[str, str], bytes]
# (status, S3 Code, Message, Resource). The spam and over-limit texts are the ones IA-S3 sends, as the client
# shows them ("Message - Resource"): jjjake/internetarchive#298, #383, #578 (spam) and #392 (over limit).
_FAULT_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate.", ""),
    "500": (500, "InternalError", "We encountered an internal error. Please try again.", ""),
    "429": (429, "SlowDown", "Please reduce your request rate.", ""),
    "spam": (503, "SlowDown", "Please reduce your request rate.",
             "Your upload of {identifier} from username test-user@example.org appears to be spam. If you believe "
             "this is a mistake, contact info@archive.org and include this entire message in your email."),
    "over_limit": (503, "SlowDown", "Please reduce your request rate.", "total_tasks_queued exceeds global_limit"),
}
_STREAMING_FAULTS = frozenset({"endless", "drip", "oversized"})  # GET replies that misbehave while sent
OWN_FILE_SUFFIXES = ("_files.xml", "_meta.xml", "_archive.torrent")  # files IA adds to every item


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
    ingested_at: float  # downloads serve this version from then on
    listed_at: float  # the /metadata listing shows this version from then on (never before ingested_at)
    previous: _Stored | None = None  # what is served/listed while this version is pending


def _stored(received: bytes, mtime: float, ingested_at: float, listed_at: float,
            at_rest: bytes | None = None) -> _Stored:
    return _Stored(at_rest if at_rest is not None else received, hashlib.md5(received).hexdigest(),
                   hashlib.sha1(received).hexdigest(), f"{zlib.crc32(received):08x}", mtime, ingested_at,
                   max(listed_at, ingested_at))


def _version(stored: _Stored | None, now: float, when: str) -> _Stored | None:
    """The version of a key a reader sees at `now`: walk back over versions not yet ingested/listed."""
    while stored is not None and getattr(stored, when) > now:
        stored = stored.previous
    return stored


@dataclass
class _Item:
    metadata: dict
    created: float
    owner: str | None = None  # access key that created it; None: any valid key may write (put_file items)
    dark: bool = False
    files: dict[str, _Stored] = field(default_factory=dict)


@dataclass
class _Fault:
    kind: str
    at: int
    match: str | Callable[[str, str, str], bool] | None
    times: int | None = 1  # None: every matching request from the at-th on
    retry_after: str | None = None
    interval: float = 0.05
    size: int | None = None
    status: int | None = None
    seen: int = 0

    def matches(self, method: str, host: str, path: str) -> bool:
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(method, host, path))
        pattern = self.match if " " in self.match else f"{self.match} *"  # a bare "PUT" means any PUT
        return fnmatch.fnmatchcase(f"{method} {host}{path}", pattern)


@dataclass
class _IngestFailure:
    match: str | Callable[[str, str], bool] | None
    times: int | None

    def matches(self, identifier: str, key: str) -> bool:
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(identifier, key))
        return fnmatch.fnmatchcase(f"{identifier}/{key}", self.match) or fnmatch.fnmatchcase(key, self.match)


def _s3_error(status: int, code: str, message: str, resource: str = "") -> _Reply:
    extra = f"<Resource>{escape(resource)}</Resource>" if resource else ""
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message>{extra}<RequestId>ia-emulator</RequestId></Error>")
    return status, {"Content-Type": "application/xml"}, body.encode()


def _json(obj: object, status: int = 200) -> _Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def _not_found(what: str) -> _Reply:
    return 404, {"Content-Type": "text/plain; charset=utf-8"}, f"not found: {what}\n".encode()


def _not_available() -> _Reply:
    return 403, {"Content-Type": "text/plain; charset=utf-8"}, b"Item not available\n"


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


def _own_file(identifier: str, suffix: str, item: _Item, listed: list[dict]) -> tuple[dict, bytes]:
    """The bytes of one of the files IA keeps for every item, and its listing entry (shaped as MDAPI lists it)."""
    if suffix == "_meta.xml":
        fields = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, vs in sorted(item.metadata.items())
                         for v in (vs if isinstance(vs, list) else [vs]))
        data = f'<?xml version="1.0" encoding="UTF-8"?>\n<metadata>{fields}</metadata>\n'.encode()
        entry = {"source": "original", "format": "Metadata"}
    elif suffix == "_files.xml":
        rows = "".join(f'<file name="{escape(f["name"])}" source="original"><md5>{f["md5"]}</md5></file>'
                       for f in listed)
        data = f'<?xml version="1.0" encoding="UTF-8"?>\n<files>{rows}</files>\n'.encode()
        # IA lists its own _files.xml with an md5 only: its size changes as the file describes itself.
        return {"name": f"{identifier}{suffix}", "source": "original", "format": "Metadata",
                "md5": hashlib.md5(data).hexdigest(), "summation": "md5"}, data
    else:
        data = f"d8:announce32:https://archive.org/announce4:info{len(identifier)}:{identifier}e".encode()
        entry = {"source": "metadata", "format": "Archive BitTorrent", "btih": hashlib.sha1(data).hexdigest()}
    return {"name": f"{identifier}{suffix}", **entry, "size": str(len(data)), "md5": hashlib.md5(data).hexdigest(),
            "sha1": hashlib.sha1(data).hexdigest(), "crc32": f"{zlib.crc32(data):08x}",
            "mtime": str(int(item.created))}, data


def archive_session(endpoint: str, access: str | None = None, secret: str | None = None) -> ArchiveSession:
    """A real ArchiveSession whose every request (archive.org, s3, datanodes) goes through ``endpoint``
    (``http://HOST:PORT``) as an HTTP proxy. No keys -> anonymous, whatever the environment holds.
    This is the bare client (with its own urllib3 retries on archive.org); egds builds its session with
    ``egregora_ds.store.ia.make_session`` instead."""
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

    def _send(self, status: int, headers: dict[str, str], length: int | None, payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection or length is None:  # say so, or urllib3 pools the connection we are about to close
            self.send_header("Connection", "close")
            self.close_connection = True
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(payload)

    def _reset(self) -> None:
        # SO_LINGER(on, 0): close() sends RST instead of FIN, so the client sees ECONNRESET, as on a dropped link.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # makefile() holds a reference: the socket only really closes once it is gone
        self.connection.close()
        self.close_connection = True

    def _stream_fault(self, fault: _Fault, record: RequestRecord, status: int, headers: dict[str, str],
                      payload: bytes) -> None:
        """A GET reply that misbehaves while it is sent. ``record.bytes_out`` counts the body bytes handed to the
        socket, kept up to date as they go. Ends when the client hangs up (a write fails), or at the fault's size:
        nothing here can run forever."""
        try:
            if fault.kind == "endless":  # no Content-Length: the body ends when the connection does
                self._send(status, headers, None, b"")
                block = (payload or b"\0") * max(1, 65536 // max(1, len(payload)))
                while record.bytes_out < (fault.size or 1 << 30):
                    record.bytes_out += len(block)
                    self.wfile.write(block)
            elif fault.kind == "drip":  # the promised body, one byte at a time
                body = payload if fault.size is None else (payload * (fault.size // max(1, len(payload)) + 1))[:fault.size]
                self._send(status, headers, len(body), b"")
                for i in range(len(body)):
                    record.bytes_out += 1
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(fault.interval)
            else:  # "oversized": a Content-Length far beyond the body, then the connection closes
                record.bytes_out = len(payload)
                self._send(status, headers, fault.size or 1 << 40, payload)
        except OSError:
            pass  # the client hung up: that is how these end
        self.close_connection = True

    def _dispatch(self) -> None:
        emu = self.server.emulator
        host, path, query = self._target()
        index, fault = emu._admit(self.command, host, path)
        kind = fault.kind if fault else None
        log = lambda status, n_in, n_out: emu._record(  # noqa: E731  (returns the record)
            RequestRecord(index, self.command, host, path, query, status, n_in, n_out,
                          {k: v for k, v in self.headers.items() if k.lower() != "authorization"}, kind))
        if kind == "reset" and self.command != "GET":
            length = int(self.headers.get("Content-Length") or 0)
            received = self._read_body(limit=length // 2)  # the client is cut off mid-body
            log(None, len(received), 0)
            return self._reset()
        body = self._read_body()  # always drain it, so a keep-alive connection stays in sync
        if len(body) < int(self.headers.get("Content-Length") or 0):  # the client hung up mid-body: act on nothing
            self.close_connection = True
            return log(None, len(body), 0)
        if kind in _FAULT_ERRORS:  # the request is answered, but not acted on
            status, code, message, resource = _FAULT_ERRORS[kind]
            identifier = path.lstrip("/").split("/")[0] if host == S3_HOST else "the item"
            reply = _s3_error(status, code, message, resource.format(identifier=identifier))
            if fault is not None and fault.retry_after is not None:
                reply[1]["Retry-After"] = fault.retry_after
        else:
            try:
                reply = emu._route(self.command, host, path, query, self.headers, body, kind == "corrupt")
                if kind == "huge_listing" and reply[0] == 200 and path.startswith("/metadata/"):
                    reply = (200, reply[1], _padded_json(reply[2], fault.size if fault else None))
            except Exception:  # an emulator bug must surface as a 500 plus emu.errors, not a hang
                emu.errors.append(traceback.format_exc())
                reply = _s3_error(500, "InternalError", "emulator bug; see IAEmulator.errors")
        status, headers, payload = reply
        if kind == "lost_reply":  # acted on (a PUT is stored), but the connection drops before the reply
            log(status, len(body), 0)
            return self._reset()
        if kind == "corrupt" and self.command == "GET":
            payload = _flip(payload)
        if kind == "reset":  # a GET: promise the whole body, deliver half, then drop the connection
            log(None, len(body), len(payload) // 2)
            self._send(status, headers, len(payload), payload[: len(payload) // 2])
            return self._reset()
        if kind in _STREAMING_FAULTS and self.command == "GET" and fault is not None:
            status = fault.status or status
            record = log(status, len(body), 0)  # before sending: the client may never finish reading it
            self._stream_fault(fault, record, status, headers, payload)
            return None
        log(status, len(body), len(payload))  # before sending: once the client has the reply, the log shows it
        self._send(status, headers, len(payload), payload)


def _padded_json(payload: bytes, size: int | None) -> bytes:
    """The same JSON object grown to `size` bytes by an extra key: a listing too large for any sane cap."""
    size = size or 1 << 30
    head = payload.rstrip()[:-1].rstrip()  # without the closing brace
    head += b", " if head != b"{" else b""
    filler = max(0, size - len(head) - len(b'"x-padding": ""}'))
    return head + b'"x-padding": "' + b"x" * filler + b'"}'


class IAEmulator:
    """archive.org on 127.0.0.1. ``with IAEmulator() as emu: s = emu.session()``.

    State is ``identifier -> item (metadata, owner, dark flag) + {key: versions}``, guarded by one lock.

    Switches for tests (all documented on their methods):
    - ``IAEmulator(ingest_lag=S)``: uploads are neither listed nor served for S seconds by ``clock``.
    - ``IAEmulator(metadata_lag=S)``: uploads are served at once but listed S seconds later.
    - ``settle()``: end every lag now.
    - ``fail_ingest(match=..., times=...)``: matching PUTs answer 200 but their file never appears.
    - ``set_dark(identifier)`` / ``set_owner(identifier, access_key)``: a darkened item; an item of another account.
    - ``inject(kind, at=, match=, times=, retry_after=, interval=, size=)``: request faults (503/429 with
      Retry-After, spam and over-limit refusals, resets, corruption, endless/drip/oversized bodies, huge listings).
    - ``over_limit = True``: ``check_limit`` answers ``over_limit: 1`` (``limit_reason`` says why).
    """

    def __init__(self, *, keys: Mapping[str, str] | None = None, redirect_downloads: bool = False,
                 ingest_lag: float = 0.0, metadata_lag: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.keys = dict(keys if keys is not None else {"test-access": "test-secret"})  # access -> secret
        self.redirect_downloads = redirect_downloads
        self.ingest_lag = ingest_lag
        self.metadata_lag = metadata_lag
        self.clock = clock
        self.over_limit = False  # check_limit answers over_limit=1 while True
        self.limit_reason = "total_tasks_queued exceeds global_limit"  # shown in check_limit while over_limit
        self.requests: list[RequestRecord] = []
        self.faults_fired: list[RequestRecord] = []
        self.failed_ingests: list[tuple[str, str]] = []  # (identifier, key) of every PUT whose ingest failed
        self.errors: list[str] = []  # tracebacks of emulator bugs; tests may assert it stays empty
        self._items: dict[str, _Item] = {}
        self._faults: list[_Fault] = []
        self._ingest_failures: list[_IngestFailure] = []
        self._tasks = 0
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
    def inject(self, fault: str, at: int = 0, match: str | Callable[[str, str, str], bool] | None = None, *,
               times: int | None = 1, retry_after: str | int | None = None, interval: float = 0.05,
               size: int | None = None, status: int | None = None) -> None:
        """Arm ``fault`` for the ``at``-th (0-based) request from now that matches ``match``, and for the next
        ``times - 1`` matching requests (``times=None``: every one from then on). ``match``: None (any), a method
        ("PUT"), an fnmatch pattern over "METHOD hostpath" ("GET archive.org/download/*"), or a
        callable(method, host, path).

        Refusals (answered with S3 XML, request not acted on): "503" SlowDown, "429" SlowDown, "500"
        InternalError; ``retry_after`` (seconds, or an HTTP date) adds a ``Retry-After`` header to any of them.
        "spam": 503 SlowDown whose Resource says the upload "appears to be spam"; "over_limit": 503 SlowDown
        with "total_tasks_queued exceeds global_limit" (IA's wording for a full task queue).
        Transport: "reset": a PUT/DELETE is read halfway and the connection reset, nothing stored; a GET gets
        its headers and half its body, then a reset. "lost_reply": the request is acted on in full (a PUT is
        stored), then the connection is reset before the reply. "corrupt": a GET reply has one byte flipped
        (same length); a PUT is stored with one byte flipped at rest while the listing keeps the md5 of what
        was received (bit rot).
        Hostile bodies (GET only; they end when the client hangs up, or at ``size``): "endless": no
        Content-Length, the body repeats forever (up to ``size``, default 1 GiB); "drip": the real body (or
        ``size`` bytes of it, repeated) one byte every ``interval`` seconds; "oversized": Content-Length ``size``
        (default 1 TiB) over the real body, then the connection closes. ``status`` replaces the reply's status
        for these three (e.g. an endless 503 error page); their log record's ``bytes_out`` counts the body bytes
        handed to the socket so far (the client may not have read them all). "huge_listing": a metadata listing grown to ``size`` bytes (default
        1 GiB) of valid JSON."""
        if fault not in FAULTS or at < 0 or (times is not None and times < 1):
            raise ValueError(f"unknown fault {fault!r}, negative index {at} or times {times}")
        with self._lock:
            self._faults.append(_Fault(fault, at, match, times, None if retry_after is None else str(retry_after),
                                       interval, size, status))

    def fail_ingest(self, match: str | Callable[[str, str], bool] | None = None, times: int | None = 1) -> None:
        """The next ``times`` PUTs (None: all) whose ``identifier/key`` or ``key`` matches the fnmatch pattern
        ``match`` (or callable(identifier, key); None: any) are answered 200 as usual, but their ingest fails: the
        file is never listed and never served, and a key it overwrites keeps its previous bytes. Each is recorded
        in ``failed_ingests``."""
        with self._lock:
            self._ingest_failures.append(_IngestFailure(match, times))

    def set_dark(self, identifier: str, dark: bool = True) -> None:
        """Darken an item (creating an empty one if needed): its record says ``is_dark`` and shows no metadata or
        files, downloads and metadata writes answer 403 "Item not available", and PUT/DELETE answer 403
        AccessDenied "This item has been taken offline". ``dark=False`` undarkens it."""
        with self._lock:
            self._item(identifier).dark = dark

    def set_owner(self, identifier: str, access_key: str | None) -> None:
        """Make ``access_key`` the item's owner (creating an empty item if needed): any other valid key is refused
        with 403 AccessDenied "You lack sufficient privileges to write to this item." on PUT, DELETE and metadata
        writes. ``None``: any valid key may write (the default for items made by ``put_file``)."""
        with self._lock:
            self._item(identifier).owner = access_key

    def settle(self) -> None:
        """Make every pending upload ingested and listed now."""
        with self._lock:
            for item in self._items.values():
                for stored in item.files.values():
                    stored.ingested_at = stored.listed_at = float("-inf")
                    stored.previous = None

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def put_file(self, identifier: str, key: str, data: bytes, metadata: Mapping | None = None) -> None:
        """Store a file directly (no request logged), listed and served at once; creates the item if needed."""
        with self._lock:
            item = self._item(identifier)
            item.metadata.update(metadata or {})
            item.files[key] = _stored(data, self.clock(), float("-inf"), float("-inf"))

    def get_file(self, identifier: str, key: str) -> bytes | None:
        """The newest bytes stored under ``key`` (pending ingest included), or None."""
        with self._lock:
            stored = self._items[identifier].files.get(key) if identifier in self._items else None
            return None if stored is None else stored.data

    def files(self, identifier: str) -> dict[str, bytes]:
        """Every stored file of the item, pending and history ones included (not the files IA generates)."""
        with self._lock:
            item = self._items.get(identifier)
            return {} if item is None else {k: v.data for k, v in item.files.items()}

    def item_metadata(self, identifier: str) -> dict | None:
        with self._lock:
            item = self._items.get(identifier)
            return None if item is None else dict(item.metadata)

    # -- request handling (called from handler threads) ---------------------------------------------------
    def _item(self, identifier: str) -> _Item:
        """The item, created empty if missing. Caller holds the lock."""
        if identifier not in self._items:
            self._items[identifier] = _Item({"identifier": identifier}, self.clock())
        return self._items[identifier]

    def _admit(self, method: str, host: str, path: str) -> tuple[int, _Fault | None]:
        """Number the request and pick the fault (if any) it triggers."""
        with self._lock:
            index, self._count = self._count, self._count + 1
            due = None
            for fault in self._faults:
                if fault.matches(method, host, path):
                    fault.seen += 1
                    if due is None and fault.seen > fault.at:
                        due = fault
            if due is not None and due.times is not None:
                due.times -= 1
                if due.times == 0:
                    self._faults.remove(due)
            return index, due

    def _record(self, record: RequestRecord) -> RequestRecord:
        with self._lock:
            self.requests.append(record)
            if record.fault:
                self.faults_fired.append(record)
        return record

    def _route(self, method: str, host: str, path: str, query: dict[str, str], headers: Mapping[str, str],
               body: bytes, corrupt: bool) -> _Reply:
        if host == S3_HOST:
            return self._s3(method, path, query, headers, body, corrupt)
        parts = path.lstrip("/").split("/", 2)
        if method == "POST" and len(parts) == 2 and parts[0] == "metadata":
            return self._metadata_write(parts[1], body)
        if method != "GET":
            return _s3_error(405, "MethodNotAllowed", f"{method} is not emulated on {host}")
        if _DATANODE_HOST.match(host):
            m = _DATANODE_PATH.match(path)
            return self._serve(m.group(1), m.group(2), headers) if m else _not_found(path)
        if len(parts) == 2 and parts[0] == "metadata":
            return _json(self._record_of(parts[1]))
        if len(parts) == 3 and parts[0] == "download" and parts[2]:
            if self.redirect_downloads:
                return 302, {"Location": f"http://{DATANODE}/0/items/{parts[1]}/{quote(parts[2])}"}, b""
            return self._serve(parts[1], parts[2], headers)
        return _not_found(path)

    def _listed(self, identifier: str, item: _Item, now: float) -> list[dict]:
        """The uploaded files the listing shows at `now` (caller holds the lock)."""
        files = []
        for key, stored in sorted(item.files.items()):
            shown = _version(stored, now, "listed_at")
            if shown is not None:
                files.append({"name": key, "source": "original", "format": "Unknown",
                              "size": str(len(shown.data)), "md5": shown.md5, "sha1": shown.sha1,
                              "crc32": shown.crc32, "mtime": str(int(shown.mtime))})
        return files

    def _record_of(self, identifier: str) -> dict:
        with self._lock:
            item = self._items.get(identifier)
            if item is None:
                return {}  # what archive.org answers for a missing item, with HTTP 200
            now = self.clock()
            location = {"created": int(item.created), "d1": DATANODE, "d2": "ia600000.us.archive.org",
                        "dir": f"/0/items/{identifier}", "server": DATANODE, "uniq": 1,
                        "workable_servers": [DATANODE]}
            if item.dark:
                return {**location, "is_dark": True, "item_last_updated": int(now)}
            files = self._listed(identifier, item, now)
            files += [_own_file(identifier, suffix, item, files)[0] for suffix in OWN_FILE_SUFFIXES]
            return {**location, "files": sorted(files, key=lambda f: f["name"]), "files_count": len(files),
                    "item_last_updated": int(now), "item_size": sum(int(f.get("size", 0)) for f in files),
                    "metadata": dict(item.metadata, identifier=identifier)}

    def _serve(self, identifier: str, key: str, headers: Mapping[str, str]) -> _Reply:
        with self._lock:
            item = self._items.get(identifier)
            if item is not None and item.dark:
                return _not_available()
            now = self.clock()
            stored = _version(item.files.get(key), now, "ingested_at") if item else None
            own = None
            if item is not None and stored is None and key.startswith(identifier):
                suffix = key[len(identifier):]
                if suffix in OWN_FILE_SUFFIXES:
                    own = _own_file(identifier, suffix, item, self._listed(identifier, item, now))[1]
        if stored is None and own is None:
            return _not_found(f"{identifier}/{key}")
        data = stored.data if stored is not None else own
        assert data is not None
        mtime = stored.mtime if stored is not None else item.created  # type: ignore[union-attr]
        size = len(data)
        reply_headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                         "Last-Modified": formatdate(mtime, usegmt=True),
                         "ETag": f'"{hashlib.md5(data).hexdigest() if stored is None else stored.md5}"'}
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

    def _writer(self, access: str, secret: str) -> bool:
        return bool(access) and self.keys.get(access) == secret

    def _metadata_write(self, identifier: str, body: bytes) -> _Reply:
        """The Metadata Write API (``Item.modify_metadata``): a JSON Patch against the item's metadata."""
        import jsonpatch  # a dependency of internetarchive, which the emulator serves

        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if not self._writer(form.get("access", ""), form.get("secret", "")):
            return _json({"success": False, "error": "access denied: invalid access or secret key"}, 401)
        with self._lock:
            item = self._items.get(identifier)
            if item is None:
                return _json({"success": False, "error": f"item {identifier} not found"}, 404)
            if item.dark:
                return _json({"success": False, "error": "Item not available"}, 403)
            if item.owner is not None and item.owner != form["access"]:
                return _json({"success": False, "error": "You lack sufficient privileges to write to this item."}, 403)
            if form.get("-target", "metadata") != "metadata" or "-patch" not in form:
                return _json({"success": False, "error": "only -target=metadata with -patch is emulated"}, 400)
            try:
                patch = jsonpatch.JsonPatch(json.loads(form["-patch"]))
                changed = patch.apply(dict(item.metadata))
            except (ValueError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                return _json({"success": False, "error": f"bad patch: {exc}"}, 400)
            if changed == item.metadata:
                return _json({"success": False, "error": "no changes to _meta.xml"}, 400)
            if changed.get("mediatype") != item.metadata.get("mediatype") or changed.get("identifier") != identifier:
                return _json({"success": False, "error": "mediatype and identifier cannot be changed"}, 400)
            item.metadata = changed
            self._tasks += 1
            return _json({"success": True, "task_id": self._tasks,
                          "log": f"https://catalogd.archive.org/log/{self._tasks}"})

    def _s3(self, method: str, path: str, query: dict[str, str], headers: Mapping[str, str], body: bytes,
            corrupt: bool) -> _Reply:
        if method == "GET" and path == "/" and "check_limit" in query:  # unauthenticated, as on IA
            over = int(self.over_limit)
            detail = {"accesskey_ration": 74, "accesskey_tasks_queued": 0, "bucket_ration": 24,
                      "bucket_tasks_queued": 0, "limit_reason": self.limit_reason if over else "",
                      "rationing_engaged": over, "rationing_level": 1399, "total_global_limit": 1799,
                      "total_tasks_queued": 1799 if over else 1017}
            return _json({"bucket": query.get("bucket"), "accesskey": query.get("accesskey"),
                          "over_limit": over, "detail": detail})
        if method not in ("PUT", "DELETE"):
            return _s3_error(405, "MethodNotAllowed", f"{method} {path} is not emulated")
        scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
        access, _, secret = credentials.partition(":")
        if scheme != "LOW" or not self._writer(access, secret):
            return _s3_error(403, "InvalidAccessKeyId", "The S3 access key and secret you provided are not valid.")
        identifier, _, key = path.lstrip("/").partition("/")
        if not _IDENTIFIER.match(identifier):
            return _s3_error(400, "InvalidBucketName", f"Invalid identifier: {identifier!r}")
        with self._lock:
            existing = self._items.get(identifier)
            if existing is not None and existing.dark:
                return _s3_error(403, "AccessDenied", "Access Denied", "This item has been taken offline")
            if existing is not None and existing.owner is not None and existing.owner != access:
                return _s3_error(403, "AccessDenied", "Access Denied",
                                 "You lack sufficient privileges to write to this item.")
        keep_old = (headers.get("x-archive-keep-old-version") or "").strip() == "1"
        if method == "DELETE":
            with self._lock:
                item = self._items.get(identifier)
                old = item.files.pop(key, None) if item else None
                if item and old and keep_old:
                    self._keep_history(item, key, old, self.clock(), self.clock())
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
                # Item metadata headers take effect only when the PUT creates the item (IA-S3 docs).
                item = self._items[identifier] = _Item({"identifier": identifier}, now, owner=access)
                item.metadata.update(_meta_from_headers(headers))
            if key and self._ingest_fails(identifier, key):
                self.failed_ingests.append((identifier, key))
            elif key:  # a PUT on the bare bucket only creates the item
                ingested = now + self.ingest_lag
                new = _stored(body, now, ingested, ingested + self.metadata_lag, _flip(body) if corrupt else None)
                old = item.files.get(key)
                if old is not None:
                    if keep_old:
                        self._keep_history(item, key, old, new.ingested_at, new.listed_at)
                    if old.listed_at <= now:
                        old.previous = None  # readers will never need to look further back
                    new.previous = old
                item.files[key] = new
        return 200, {"ETag": f'"{md5}"'}, b""

    def _ingest_fails(self, identifier: str, key: str) -> bool:
        """Whether this PUT's ingest is armed to fail (consumes one use). Caller holds the lock."""
        for failure in self._ingest_failures:
            if failure.matches(identifier, key):
                if failure.times is not None:
                    failure.times -= 1
                    if failure.times == 0:
                        self._ingest_failures.remove(failure)
                return True
        return False

    @staticmethod
    def _keep_history(item: _Item, key: str, old: _Stored, ingested_at: float, listed_at: float) -> None:
        """x-archive-keep-old-version: the replaced bytes live on as history/files/{key}.~N~ (N from 1), from the
        moment the replacement is ingested."""
        prefix = f"history/files/{key}.~"
        n = 1 + sum(1 for k in item.files if k.startswith(prefix) and k.endswith("~"))
        item.files[f"{prefix}{n}~"] = replace(old, ingested_at=ingested_at, listed_at=listed_at, previous=None)
