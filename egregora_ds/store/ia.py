"""A remote that is an Internet Archive item: `ia:IDENTIFIER`. The only module that imports
`internetarchive`.

Reads are anonymous; writes need keys, read the way the library reads them (`IA_ACCESS_KEY_ID` /
`IA_SECRET_ACCESS_KEY` or its ia.ini, see `ia configure`); keys are never printed or logged.
`EGDS_IA_ENDPOINT=http://HOST:PORT` sends every archive.org, S3 and datanode request through that
plain-HTTP endpoint as a proxy (tests, mirrors): the library's own session does the work.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import UsageError
from .base import READ_BLOCK, RefMoved, RemoteAuthError, RemoteError, RemoteFile, UploadSource, too_large

ENDPOINT_ENV = "EGDS_IA_ENDPOINT"
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,99}")
# Files archive.org adds to every item; they are not ours and must never be reported as such.
_ARCHIVE_OWN = re.compile(r"^[^/]*_(files\.xml|meta\.xml|meta\.sqlite|reviews\.xml|archive\.torrent)$|^__ia_thumb\.jpg$")


def check_identifier(identifier: str) -> str:
    if not _IDENTIFIER.fullmatch(identifier):
        raise UsageError(
            f"invalid Internet Archive identifier {identifier!r}: use 3-100 of A-Z a-z 0-9 . _ -, "
            "not starting with '.', '_' or '-'"
        )
    return identifier


def make_session(endpoint: str | None = None) -> Any:
    """An ArchiveSession; with an endpoint, one whose every request goes through it as a proxy."""
    import internetarchive

    endpoint = endpoint if endpoint is not None else os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        return internetarchive.get_session()
    if not re.fullmatch(r"http://[A-Za-z0-9.\-\[\]:]+/?", endpoint):
        raise UsageError(f"{ENDPOINT_ENV}={endpoint!r} must look like http://HOST:PORT")
    # `general.host` cannot redirect S3 uploads, and an ini's `secure = false` reads as truthy;
    # a config dict with a config file that does not exist, plus a proxy, reaches every host.
    missing_config = os.path.join(tempfile.gettempdir(), "egds-no-ia-config", "ia.ini")
    session = internetarchive.ArchiveSession(config={"general": {"secure": False}}, config_file=missing_config)
    session.trust_env = False
    session.proxies = {"http": endpoint.rstrip("/")}
    # Retrying is ours (with our backoff, on every host alike); the library's own archive.org
    # adapter would add invisible 2-4 s sleeps on top.
    session.mount_http_adapter(max_retries=0)
    return session


class InternetArchiveRemote:
    """Backend over IA's metadata API (inventory), IA-S3 (put) and the download endpoint (get)."""

    def __init__(
        self,
        identifier: str,
        *,
        session: Any = None,
        item_metadata: Mapping[str, str] | None = None,
        attempts: int = 5,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.identifier = check_identifier(identifier)
        self.url = f"ia:{identifier}"
        self._session = session
        self.item_metadata = dict(item_metadata or {})
        self.attempts = attempts
        self.backoff = backoff
        self._sleep = sleep

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = make_session()
        return self._session

    def describe(self) -> str:
        return f"https://archive.org/details/{self.identifier}"

    # ---- reads ---------------------------------------------------------------------------------

    def inventory(self) -> dict[str, RemoteFile]:
        """One request: the metadata API lists every file with its size and md5."""
        url = f"{self.session.protocol}//archive.org/metadata/{self.identifier}"
        response = self._request("GET", url, what="the item's file list", timeout=60)
        try:
            listing = response.json()
        except ValueError:
            raise RemoteError(f"{self.url}: the metadata API did not return JSON") from None
        files = listing.get("files", []) if isinstance(listing, dict) else []
        found = {}
        for entry in files:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or _ARCHIVE_OWN.match(name) or name.startswith("history/"):
                continue
            try:
                found[name] = RemoteFile(size=int(entry.get("size", -1)), md5=entry.get("md5"))
            except (TypeError, ValueError):
                found[name] = RemoteFile(size=-1, md5=entry.get("md5"))
        return found

    def get(self, key: str, max_bytes: int) -> bytes | None:
        url = f"{self.session.protocol}//archive.org/download/{self.identifier}/{key}"

        def fetch() -> bytes | None:
            response = self.session.request("GET", url, timeout=300, allow_redirects=True, stream=True)
            with response:
                if response.status_code == 404:
                    # Read the (small) body anyway: a reply cut off mid-way is a failed request to
                    # retry, not proof that the key is absent.
                    for _ in zip(range(16), response.iter_content(4096)):
                        pass
                    return None
                response.raise_for_status()
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise too_large(self.url, key, max_bytes)
                body = bytearray()
                for piece in response.iter_content(READ_BLOCK):
                    body += piece
                    if len(body) > max_bytes:
                        raise too_large(self.url, key, max_bytes)
                return bytes(body)

        return self._with_retries(fetch, f"reading {key}")

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
        item = internetarchive.Item(self.session, self.identifier, item_metadata={"metadata": {"identifier": self.identifier}})
        # Content-MD5 makes IA-S3 refuse a body damaged in transit (400 BadDigest). For a local object
        # it comes from the same pass that checked the bytes against their name, so the server can
        # only accept the verified bytes.
        md5 = source.verified_md5() if isinstance(source, UploadSource) else hashlib.md5(source).hexdigest()
        headers = {"x-archive-keep-old-version": "1", "Content-MD5": md5}

        def upload() -> Any:
            body = open(source.path, "rb") if isinstance(source, UploadSource) else io.BytesIO(source)
            with body:
                # retries=0: retrying is ours (below), for every transient failure, not only 503.
                return item.upload_file(
                    body, key=key, metadata=self.item_metadata, headers=headers, verify=False,
                    checksum=False, retries=0, queue_derive=False,
                )

        self._with_retries(upload, f"upload of {key}")

    def put_ref(self, key: str, data: bytes, expected: bytes | None) -> None:
        # archive.org has no compare-and-swap: re-read just before writing narrows the window.
        if self.get(key, max_bytes=4096) != expected:
            raise RefMoved(f"{self.url}: {key} changed while pushing")
        self.put(key, data)

    # ---- plumbing ------------------------------------------------------------------------------

    def _request(self, method: str, url: str, *, what: str, timeout: float, missing_ok: bool = False) -> Any:
        def send() -> Any:
            response = self.session.request(method, url, timeout=timeout, allow_redirects=True)
            if missing_ok and response.status_code == 404:
                return None
            response.raise_for_status()
            return response

        return self._with_retries(send, f"reading {what}")

    def _with_retries(self, action: Callable[[], Any], what: str) -> Any:
        import requests

        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                message = _s3_message(exc)
                if status in (401, 403):
                    raise RemoteAuthError(f"{self.url}: {what} was refused ({status} {message}); check your IA keys") from None
                transient = status is None or status >= 500 or status in (400, 408, 429)  # 400: BadDigest
                if not transient:
                    raise RemoteError(f"{self.url}: {what} was refused ({status} {message}); check the remote URL and your IA keys") from None
                if attempt == self.attempts:
                    # Messages must say what to do: a busy or failing archive.org is worth another try later
                    # (a re-run resumes: objects already pushed or fetched are not transferred again).
                    raise RemoteError(
                        f"{self.url}: {what} failed after {attempt} attempts ({status} {message}); "
                        "archive.org may be busy: try again later"
                    ) from None
            except requests.RequestException as exc:  # connection reset, timeout, truncated body
                if attempt == self.attempts:
                    raise RemoteError(
                        f"{self.url}: {what} failed after {attempt} attempts ({type(exc).__name__}); "
                        f"check the network (or {ENDPOINT_ENV}) and try again"
                    ) from None
            self._sleep(delay)
            delay = min(delay * 2, 60.0)
        raise AssertionError("unreachable")


def _s3_message(exc: Any) -> str:
    text = exc.response.text if exc.response is not None else ""
    match = re.search(r"<Message>(.*?)</Message>", text or "", re.S)
    return (match.group(1) if match else (exc.response.reason if exc.response is not None else "")).strip()[:200]
