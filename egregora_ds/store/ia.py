"""A remote that is an Internet Archive item: `ia:IDENTIFIER`. The only module that imports `internetarchive`.

Reads are anonymous; writes need keys, read the way the library reads them (`IA_ACCESS_KEY_ID` /
`IA_SECRET_ACCESS_KEY` or its ia.ini, see `ia configure`); keys are never printed or logged.
`EGDS_IA_ENDPOINT=http://HOST:PORT` sends every archive.org, S3 and datanode request through that
plain-HTTP endpoint as a proxy (tests, mirrors). The session is built by one function, `make_session`, in
production and under the endpoint alike: they differ only in where requests go.

How egds talks to archive.org (SPEC.md §14):
- Retries are egds's alone (the client's urllib3 retries are unmounted, its upload retries unused): every
  request gets ATTEMPTS tries, waiting BACKOFF s, then twice as long each time (at most MAX_BACKOFF), or
  what a 503/429 `Retry-After` asks if that is longer. A `Retry-After` beyond MAX_RETRY_AFTER stops at once
  and says when to try again. Retried: connection failures, per-read timeouts, cut-off replies, 5xx, 429,
  408, and 400 BadDigest/RequestTimeout/IncompleteBody (a body damaged or stalled in transit). Not retried:
  "appears to be spam" and task-queue over-limit refusals (retrying only lengthens the queue, and IA may
  ban the account), 401/403 (bad keys, another account's item, a dark item: each has its own message),
  other 4xx, a reply larger than expected, and a request over its deadline.
- Bounded: every request has a total deadline of DEADLINE_BASE s plus 1 s per DEADLINE_RATE bytes it
  may carry (`EGDS_IA_DEADLINE` changes the base); `get` reads at most its caller's `max_bytes`, the file
  list at most MAX_INVENTORY_BYTES, any other reply at most ia_http.SMALL_BODY_BYTES.
- Uploads of LARGE_UPLOAD_BYTES or more first ask IA-S3's `check_limit`, and wait (the same backoff) while
  it says the account or item is over its limit; still over after ATTEMPTS checks, the push stops. The check
  itself is tried once: an unusable answer lets the upload go ahead (the upload's own answer decides).
- A metadata write (a POST) is retried like the rest: applying the same patch twice is harmless, and the
  second answer is then "no changes".
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import msgspec

from ..errors import UsageError
from .base import READ_BLOCK, RefMoved, RemoteAuthError, RemoteError, RemoteFile, UploadSource, too_large

ENDPOINT_ENV = "EGDS_IA_ENDPOINT"
DEADLINE_ENV = "EGDS_IA_DEADLINE"

ATTEMPTS = 5
BACKOFF = 1.0
MAX_BACKOFF = 60.0
MAX_RETRY_AFTER = 300.0
"""The longest `Retry-After` egds waits for (5 minutes); a longer one ends the command with the time to retry."""
CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 60.0
"""Per socket read: a connection silent this long is dropped and the request retried."""
DEADLINE_BASE = 120.0
DEADLINE_RATE = 32 * 1024
"""Bytes per second of allowance on top of DEADLINE_BASE: a 1 GiB object may take up to 9 h 6 min."""
MAX_INVENTORY_BYTES = 64 << 20
"""The item's file list is read up to 64 MiB: about 180,000 entries of ~350 bytes, above the ~100,000 files an
item can hold (freelawproject/courtlistener#1889), while its decoding stays far below a gigabyte of memory."""
LARGE_UPLOAD_BYTES = 16 << 20
"""From this size an upload asks `check_limit` first: one small GET, against ~13 s of a 10 Mbit/s uplink that
an over-limit refusal at the end of the PUT would waste."""
MAX_REF_BYTES = 4096

_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,99}")
# Files archive.org adds to every item; they are not ours and must never be reported as such.
_ARCHIVE_OWN_SUFFIXES = ("_files.xml", "_meta.xml", "_meta.sqlite", "_reviews.xml", "_archive.torrent")
_ARCHIVE_OWN_SOURCES = frozenset({"derivative", "metadata"})
# IA-S3's words for a full task queue (jjjake/internetarchive#392 "total_tasks_queued exceeds global_limit";
# the per-item and per-account forms say bucket_/accesskey_tasks_queued and "exceeds rationed amount").
_OVER_LIMIT = re.compile(r"\b(?:total|bucket|accesskey)_tasks_queued\s+exceeds\b|exceeds\s+rationed\s+amount", re.I)
_RETRYABLE_400 = frozenset({"BadDigest", "RequestTimeout", "IncompleteBody"})
_NOT_CHANGEABLE = frozenset({"identifier", "mediatype"})  # set at creation; IA refuses to change them (#283)


class ItemUnavailable(RemoteError):
    """archive.org has darkened the item (taken it offline)."""


class ItemNotYours(RemoteAuthError):
    """The item belongs to another archive.org account."""


class UploadsRefused(RemoteError):
    """archive.org refuses uploads for a reason retrying cannot fix (spam filter, task-queue limit)."""


class RequestTooSlow(RemoteError):
    """A request ran past its total deadline."""


def check_identifier(identifier: str) -> str:
    if not _IDENTIFIER.fullmatch(identifier):
        raise UsageError(
            f"invalid Internet Archive identifier {identifier!r}: use 3-100 of A-Z a-z 0-9 . _ -, "
            "not starting with '.', '_' or '-'"
        )
    return identifier


def make_session(endpoint: str | None = None) -> Any:
    """The ArchiveSession egds uses, in production and in tests alike: the library's own session with its
    transport replaced by `ia_http.BoundedAdapter` on every prefix (no hidden retries, deadlines, bounded
    bodies). With an endpoint (`EGDS_IA_ENDPOINT` by default) it differs only in where requests go: plain
    HTTP through that endpoint as a proxy, and no config file (a developer's real keys must not leak in)."""
    import internetarchive

    from .ia_http import BoundedAdapter

    endpoint = endpoint if endpoint is not None else os.environ.get(ENDPOINT_ENV)
    if endpoint and not re.fullmatch(r"http://[A-Za-z0-9.\-\[\]:]+/?", endpoint):
        raise UsageError(f"{ENDPOINT_ENV}={endpoint!r} must look like http://HOST:PORT")
    if endpoint:
        # `general.host` cannot redirect S3 uploads, and an ini's `secure = false` reads as truthy;
        # a config dict with a config file that does not exist, plus a proxy, reaches every host.
        config: dict | None = {"general": {"secure": False}}
        config_file = os.path.join(tempfile.gettempdir(), "egds-no-ia-config", "ia.ini")
    else:
        config, config_file = None, ""  # the library's own lookup: environment keys, then its ia.ini
    session = internetarchive.ArchiveSession(config=config, config_file=config_file)
    adapter = BoundedAdapter()
    for prefix in {*session.adapters, "http://", "https://"}:
        session.mount(prefix, adapter)
    if endpoint:
        session.trust_env = False
        session.proxies = {"http": endpoint.rstrip("/")}
    return session


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A `Retry-After` header as seconds from `now`: delta-seconds or an HTTP date (RFC 9110 §10.2.3);
    None when absent or unreadable. A date in the past means 0."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _one_line(text: str, limit: int = 200) -> str:
    """Server text made safe for a one-line message: control characters and runs of space collapsed, cut."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:limit]


class _Answer:
    """What a non-2xx reply says: its status, S3 error code, human text (Message - Resource, or the JSON
    `error`), and Retry-After in seconds."""

    def __init__(self, response: Any, now: float, secrets: tuple[str, ...] = ()) -> None:
        self.status: int | None = response.status_code if response is not None else None
        # Bounded by ia_http (SMALL_BODY_BYTES); decoded as UTF-8 rather than by requests' charset guessing.
        text = response.content.decode("utf-8", "replace") if response is not None else ""
        for secret in secrets:  # a server that echoes the request must not make egds print the keys
            text = text.replace(secret, "***")
        code = re.search(r"<Code>(.*?)</Code>", text, re.S)
        message = re.search(r"<Message>(.*?)</Message>", text, re.S)
        resource = re.search(r"<Resource>(.*?)</Resource>", text, re.S)
        self.code = code.group(1).strip() if code else ""
        parts = [m.group(1).strip() for m in (message, resource) if m and "'PUT" not in m.group(1)]
        if not parts and text.lstrip().startswith("{"):
            try:
                error = json.loads(text).get("error")
            except (ValueError, AttributeError):
                error = None
            parts = [error] if isinstance(error, str) else []
        if not parts and response is not None and text.strip() and len(text) < 200 and "<" not in text:
            parts = [text]  # a short plain-text page such as "Item not available"
        reason = (response.reason or "") if response is not None else ""
        self.text = _one_line(" - ".join(parts) or reason)
        self.retry_after = retry_after_seconds(response.headers.get("Retry-After") if response is not None else None, now)

    def __str__(self) -> str:
        return f"{self.status} {self.text}".strip()


class InternetArchiveRemote:
    """Backend over IA's metadata API (inventory, metadata writes), IA-S3 (put) and the download endpoint (get)."""

    def __init__(
        self,
        identifier: str,
        *,
        session: Any = None,
        item_metadata: Mapping[str, Any] | None = None,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        max_retry_after: float = MAX_RETRY_AFTER,
        deadline_base: float | None = None,
        deadline_rate: float = DEADLINE_RATE,
        max_inventory_bytes: int = MAX_INVENTORY_BYTES,
        large_upload_bytes: int = LARGE_UPLOAD_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identifier = check_identifier(identifier)
        self.url = f"ia:{identifier}"
        self._session = session
        self.item_metadata = dict(item_metadata or {})
        self.attempts = attempts
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.deadline_base = deadline_base if deadline_base is not None else _deadline_from_env()
        self.deadline_rate = deadline_rate
        self.max_inventory_bytes = max_inventory_bytes
        self.large_upload_bytes = large_upload_bytes
        self._sleep = sleep
        self._clock = clock

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = make_session()
        return self._session

    def describe(self) -> str:
        return f"https://archive.org/details/{self.identifier}"

    # ---- reads ---------------------------------------------------------------------------------

    def inventory(self) -> dict[str, RemoteFile]:
        """One request: the metadata API lists every file with its size and md5. A dark item is an error,
        not an empty item (IA shows it without files)."""
        record = self._record()
        self._refuse_dark(record)
        own = {f"{self.identifier}{suffix}" for suffix in _ARCHIVE_OWN_SUFFIXES} | {"__ia_thumb.jpg"}
        found = {}
        for entry in record.files:
            name = entry.name
            if not isinstance(name, str) or name in own or name.startswith("history/") or (
                isinstance(entry.source, str) and entry.source in _ARCHIVE_OWN_SOURCES
            ):
                continue
            size = entry.size
            try:
                size = int(size) if isinstance(size, (int, str)) and not isinstance(size, bool) else -1
            except ValueError:
                size = -1
            found[name] = RemoteFile(size=size, md5=entry.md5 if isinstance(entry.md5, str) else None)
        return found

    def get(self, key: str, max_bytes: int) -> bytes | None:
        url = f"{self.session.protocol}//archive.org/download/{self.identifier}/{quote(key)}"
        what = f"reading {key}"

        def fetch() -> bytes | None:
            with self._deadline(max_bytes, what):
                response = self.session.get(url, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), stream=True)
                with response:
                    if response.status_code == 404:
                        return None  # its (small) body was read in full: a cut-off 404 was retried instead
                    response.raise_for_status()
                    body = _read_at_most(response, max_bytes)
                    if body is None:
                        raise too_large(self.url, key, max_bytes)
                    return body

        return self._with_retries(fetch, what)

    # ---- writes --------------------------------------------------------------------------------

    def check_writable(self) -> None:
        if not (self.session.access_key and self.session.secret_key):
            raise RemoteAuthError(
                f"pushing to {self.url} needs Internet Archive keys: set IA_ACCESS_KEY_ID and "
                "IA_SECRET_ACCESS_KEY, or run `ia configure`"
            )

    def put(self, key: str, source: bytes | UploadSource) -> None:
        import internetarchive

        self.check_writable()
        size = source.size if isinstance(source, UploadSource) else len(source)
        if size >= self.large_upload_bytes:
            self._wait_for_upload_capacity(key)
        item = internetarchive.Item(self.session, self.identifier, item_metadata={"metadata": {"identifier": self.identifier}})
        # Content-MD5 makes IA-S3 refuse a body damaged in transit (400 BadDigest). For a local object
        # it comes from the same pass that checked the bytes against their name, so the server can
        # only accept the verified bytes.
        md5 = source.verified_md5() if isinstance(source, UploadSource) else hashlib.md5(source).hexdigest()
        headers = {"x-archive-keep-old-version": "1", "Content-MD5": md5}
        what = f"upload of {key}"

        def upload() -> Any:
            with self._deadline(size, what):
                body = open(source.path, "rb") if isinstance(source, UploadSource) else io.BytesIO(source)
                with body:
                    # retries=0: retrying is ours (below), for every transient failure, not only 503. Item
                    # metadata headers only matter when this PUT creates the item (update_item_metadata).
                    return item.upload_file(
                        body, key=key, metadata=self.item_metadata, headers=headers, verify=False,
                        checksum=False, retries=0, queue_derive=False,
                        request_kwargs={"timeout": (CONNECT_TIMEOUT, READ_TIMEOUT)},
                    )

        self._with_retries(upload, what, writing=True)

    def put_ref(self, key: str, data: bytes, expected: bytes | None) -> None:
        # archive.org has no compare-and-swap: re-read just before writing narrows the window.
        if self.get(key, max_bytes=MAX_REF_BYTES) != expected:
            raise RefMoved(f"{self.url}: {key} changed while pushing")
        self.put(key, data)

    def update_item_metadata(self, wanted: Mapping[str, Any] | None = None) -> bool:
        """Make the item's metadata hold `wanted` (default: this remote's `item_metadata`, where whichever of
        `licenseurl`/`rights` is absent is removed, so a license change replaces the old one). A value of None
        or "" removes the key; keys not named are left alone; `identifier` and `mediatype` are ignored (set at
        creation, never changeable). Sends one Metadata Write (a JSON Patch) only when something differs, and
        returns whether it did. An item not yet listed (created by this push, or missing) is left alone: its
        creation took the metadata from the upload headers."""
        import internetarchive
        import requests

        if wanted is None:
            wanted = {"licenseurl": None, "rights": None, **self.item_metadata}
        self.check_writable()
        record = self._record()
        self._refuse_dark(record)
        current = record.metadata if isinstance(record.metadata, dict) else None
        if not current:
            return False
        changes = {key: "REMOVE_TAG" if value in (None, "") else value
                   for key, value in wanted.items()
                   if key not in _NOT_CHANGEABLE and not _same_value(current.get(key), value)}
        changes = {key: value for key, value in changes.items() if not (value == "REMOVE_TAG" and key not in current)}
        if not changes:
            return False
        what = "the item metadata update"
        item = internetarchive.Item(self.session, self.identifier, item_metadata={"metadata": current})

        def write() -> bool:
            with self._deadline(0, what):
                response = item.modify_metadata(changes, refresh=False, timeout=READ_TIMEOUT)
            if response.status_code == 200:
                return True
            if "no changes" in response.text:
                return False  # already as wanted (a retry after a lost reply, or someone else's write)
            raise requests.HTTPError(response=response)

        return bool(self._with_retries(write, what, writing=True))

    # ---- plumbing ------------------------------------------------------------------------------

    def _record(self) -> _Record:
        """The item's metadata record (one request), read up to max_inventory_bytes and decoded."""
        url = f"{self.session.protocol}//archive.org/metadata/{self.identifier}"
        what = "reading the item's file list"

        def fetch() -> bytes:
            with self._deadline(self.max_inventory_bytes, what):
                response = self.session.get(url, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), stream=True)
                with response:
                    response.raise_for_status()
                    body = _read_at_most(response, self.max_inventory_bytes)
            if body is None:
                raise too_large(self.url, "the item's file list (archive.org metadata API)", self.max_inventory_bytes)
            return body

        body = self._with_retries(fetch, what)
        try:
            return msgspec.json.decode(body, type=_Record)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):  # RecursionError: absurd nesting
            raise RemoteError(
                f"{self.url}: the archive.org metadata API answered something that is not an item record; "
                "try again later, and check https://archive.org/details/" + self.identifier
            ) from None

    def _refuse_dark(self, record: _Record) -> None:
        if record.is_dark is True:
            raise self._dark()

    def _dark(self) -> ItemUnavailable:
        return ItemUnavailable(
            f"{self.url}: archive.org has darkened this item (taken it offline), so egds can neither read nor write it; "
            f"ask info@archive.org why (quote the identifier {self.identifier}), or publish to another item with "
            "`egds remote add NAME ia:NEW-IDENTIFIER`"
        )

    def _wait_for_upload_capacity(self, key: str) -> None:
        """Ask IA-S3's check_limit before a large upload; wait while it says over limit, stop if it stays so.
        An unusable answer (network, not JSON) is no reason to stop: the upload itself will tell."""
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            over, reason = self._check_limit()
            if not over:
                return
            if attempt == self.attempts:
                raise UploadsRefused(
                    f"{self.url}: archive.org is over its upload limit ({reason or 'over_limit'}), still after "
                    f"{attempt} checks, so {key} and what follows it were not uploaded; wait until its task queue "
                    "drains (often an hour or more) and push again: the push resumes where it stopped"
                )
            self._sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    def _check_limit(self) -> tuple[bool, str]:
        """(over limit?, reason) from s3.us.archive.org/?check_limit=1, the request the client's
        `ArchiveSession.s3_is_overloaded` sends; made here so that its reply is bounded and an unreadable
        answer counts as "not over" (the client counts it as over and would wait forever)."""
        url = f"{self.session.protocol}//s3.us.archive.org/"
        params = {"check_limit": "1", "accesskey": self.session.access_key or "", "bucket": self.identifier}
        try:
            with self._deadline(0, "the upload-limit check"):
                response = self.session.get(url, params=params, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
            answer = response.json() if response.status_code == 200 else {}
        except (RemoteError, ValueError, OSError, _requests_exception()):
            return False, ""
        if not isinstance(answer, dict) or answer.get("over_limit") in (None, 0):
            return False, ""
        detail = answer.get("detail") if isinstance(answer.get("detail"), dict) else {}
        reason = detail.get("limit_reason") if isinstance(detail.get("limit_reason"), str) else ""
        return True, _one_line(reason, 120)

    @contextmanager
    def _deadline(self, nbytes: int, what: str) -> Iterator[None]:
        from .ia_http import Deadline, DeadlinePassed

        seconds = self.deadline_base + max(0, nbytes) / self.deadline_rate
        try:
            with Deadline(seconds):
                yield
        except DeadlinePassed:
            raise RequestTooSlow(
                f"{self.url}: {what} took longer than the {seconds:,.{0 if seconds >= 10 else 1}f} s egds allows ({self.deadline_base:g} s plus "
                f"1 s per {self.deadline_rate / 1024:g} KiB), so it was stopped; archive.org or the network is too slow "
                f"right now: try again later, or allow more time with {DEADLINE_ENV}=SECONDS"
            ) from None

    def _refusal(self, answer: _Answer, what: str, writing: bool) -> RemoteError | None:
        """The error that ends the command for this answer, or None if it is worth another attempt."""
        text = answer.text.lower()
        if "appears to be spam" in text:
            return UploadsRefused(
                f"{self.url}: archive.org refused the {what} as spam (\"appears to be spam\"), and retrying will not "
                f"change that; write to info@archive.org quoting the identifier {self.identifier} and this message, "
                "then push again once they clear it"
            )
        if _OVER_LIMIT.search(answer.text):
            return UploadsRefused(
                f"{self.url}: archive.org refused the {what}: its task queue is over its limit ({answer.text}); "
                "retrying now would only lengthen it, so nothing more was uploaded: wait until it drains (often an "
                "hour or more) and push again: the push resumes where it stopped"
            )
        status = answer.status
        if status in (401, 403):
            if "taken offline" in text or "item not available" in text:
                return self._dark()
            if "privileges to write to this item" in text:
                return ItemNotYours(
                    f"{self.url}: this archive.org item belongs to another account, so your keys cannot write to "
                    "it; publish to an item of your own (`egds remote add NAME ia:NEW-IDENTIFIER`), or use the "
                    "owner's keys (`ia configure`)"
                )
            if "privileges to write to those collections" in text:
                return RemoteAuthError(
                    f"{self.url}: archive.org refused the {what}: your account may not add items to that "
                    "collection; remove the collection from the item's metadata or ask its curators"
                )
            if not writing:
                return RemoteError(
                    f"{self.url}: archive.org refused {what} ({answer}); the item may be restricted: "
                    f"check {self.describe()}"
                )
            return RemoteAuthError(
                f"{self.url}: the {what} was refused ({answer}); check your IA keys (IA_ACCESS_KEY_ID and "
                "IA_SECRET_ACCESS_KEY, or `ia configure`)"
            )
        if status is None or status >= 500 or status in (408, 429) or (status == 400 and answer.code in _RETRYABLE_400):
            return None
        return RemoteError(
            f"{self.url}: {what} was refused ({answer}), which is not worth retrying; check the remote URL and "
            f"the item at {self.describe()}"
        )

    def _with_retries(self, action: Callable[[], Any], what: str, *, writing: bool = False) -> Any:
        import requests

        from .ia_http import ReplyTooLarge

        started = time.monotonic()
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            wait = 0.0
            try:
                return action()
            except ReplyTooLarge:
                raise RemoteError(
                    f"{self.url}: archive.org answered the {what} with more than a short reply, so it was not read; "
                    "try again later"
                ) from None
            except requests.HTTPError as exc:
                keys = (self.session.secret_key, self.session.access_key)
                answer = _Answer(exc.response, self._clock(), tuple(k for k in keys if isinstance(k, str) and k))
                refusal = self._refusal(answer, what, writing)
                if refusal is not None:
                    raise refusal from None
                if answer.retry_after is not None and answer.retry_after > self.max_retry_after:
                    resume = time.strftime("%Y-%m-%d %H:%M", time.localtime(self._clock() + answer.retry_after))
                    raise RemoteError(
                        f"{self.url}: {what} failed ({answer}): archive.org asks to wait "
                        f"{answer.retry_after / 60:,.0f} minutes, longer than the {self.max_retry_after / 60:g} egds "
                        f"waits; try again after {resume}"
                    ) from None
                wait, failure, network = answer.retry_after or 0.0, str(answer), False
            except (requests.RequestException, ConnectionError, TimeoutError) as exc:
                # connection refused or reset, per-read timeout, a reply cut off mid-body
                failure, network = type(exc).__name__, True
            if attempt == self.attempts:
                spent = time.monotonic() - started
                if network:
                    via = f" (or {ENDPOINT_ENV}={os.environ[ENDPOINT_ENV]})" if os.environ.get(ENDPOINT_ENV) else ""
                    raise RemoteError(
                        f"{self.url}: {what} failed after {attempt} attempts over {spent:,.0f} s ({failure}); "
                        f"check the network{via} and try again: a re-run resumes where this one stopped"
                    ) from None
                raise RemoteError(
                    f"{self.url}: {what} failed after {attempt} attempts over {spent:,.0f} s ({failure}); "
                    "archive.org is busy or failing: try again later: a re-run resumes where this one stopped"
                ) from None
            self._sleep(max(delay, wait))
            delay = min(delay * 2, MAX_BACKOFF)
        raise AssertionError("unreachable")


class _Entry(msgspec.Struct):
    """One file of the record; only the fields egds uses are decoded (the rest is skipped)."""

    name: Any = None
    size: Any = None
    md5: Any = None
    source: Any = None


class _Record(msgspec.Struct):
    """The metadata API's item record ({} for a missing item)."""

    files: list[_Entry] = msgspec.field(default_factory=list)
    metadata: Any = None
    is_dark: Any = False


def _read_at_most(response: Any, limit: int) -> bytes | None:
    """The streamed body, or None as soon as it passes `limit` bytes (a declared Content-Length over the
    limit is refused before anything is read). Decoded bytes are counted, so compression cannot inflate it."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    for piece in response.iter_content(min(READ_BLOCK, limit + 1)):
        body += piece
        if len(body) > limit:
            return None
    return bytes(body)


def _same_value(current: Any, wanted: Any) -> bool:
    if wanted in (None, ""):
        return current in (None, "", [])
    as_list = lambda v: [str(x) for x in v] if isinstance(v, list) else [str(v)]  # noqa: E731
    return current is not None and as_list(current) == as_list(wanted)


def _deadline_from_env() -> float:
    value = os.environ.get(DEADLINE_ENV)
    if not value:
        return DEADLINE_BASE
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(f"{DEADLINE_ENV}={value!r} must be a positive number of seconds")
    return seconds


def _requests_exception() -> type[Exception]:
    import requests

    return requests.RequestException
