"""Named remotes: URL parsing, `.egds/remotes.json`, and the local record of what each remote holds."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import msgspec

from .atomic import atomic_write_bytes
from .errors import UsageError
from .store.base import Remote
from .store.directory import LOCK_WAIT, DirectoryRemote
from .store.ia import InternetArchiveRemote, check_identifier
from .store.memory import memory_remote

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")


class RemoteConfig(msgspec.Struct, frozen=True):
    url: str
    title: str = ""
    description: str = ""
    license: str = ""


def normalise_url(url: str, base: Path) -> str:
    """`ia:ID` stays as is (validated); a path or file:// URL becomes an absolute path."""
    url = url.strip()
    if url.startswith("memory:") and len(url) > len("memory:"):
        return url  # process-local, for tests and embedding applications
    if url.startswith("ia:"):
        check_identifier(url[3:])
        return url
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path.startswith("/"):
            raise UsageError(f"malformed remote URL {url!r}: use file:///absolute/path")
        return str(Path(path).resolve())
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) or not url:
        raise UsageError(f"unsupported remote URL {url!r}: use a directory path, file:///path or ia:IDENTIFIER")
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", url)
    if scheme and not (os.name == "nt" and re.match(r"^[A-Za-z]:[\\/]", url)):
        # `ai:ID` (a typo of ia:ID) would otherwise become a local folder named "ai:ID", and a push
        # "succeed" into it. A folder whose name has a colon is still reachable as ./NAME.
        raise UsageError(
            f"unknown remote URL scheme {scheme.group(1) + ':'!r} in {url!r}: use ia:IDENTIFIER for an Internet "
            f"Archive item, a directory path or file:///absolute/path (write ./{url} for a folder of that name)"
        )
    return str((base / url).resolve())


# SPDX ids a dataset is usually published under -> the URL archive.org's `licenseurl` field expects.
_LICENSE_URLS = {
    "CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/",
    "CC-BY-SA-4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
    "CC-BY-NC-4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
    "CC-BY-NC-SA-4.0": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "CC-BY-ND-4.0": "https://creativecommons.org/licenses/by-nd/4.0/",
    "CC-BY-NC-ND-4.0": "https://creativecommons.org/licenses/by-nc-nd/4.0/",
    "ODBL-1.0": "https://opendatacommons.org/licenses/odbl/1-0/",
    "PDDL-1.0": "https://opendatacommons.org/licenses/pddl/1-0/",
    "ODC-BY-1.0": "https://opendatacommons.org/licenses/by/1-0/",
}


def license_metadata(license: str) -> dict[str, str]:
    """archive.org item metadata for a license: `licenseurl` for a known SPDX id or a URL (what the
    item page shows as its license), else the text as `rights`."""
    license = license.strip()
    if not license:
        return {}
    if re.match(r"^https?://", license):
        return {"licenseurl": license}
    url = _LICENSE_URLS.get(license.upper())
    return {"licenseurl": url} if url else {"rights": license}


def open_remote(url: str, *, title: str = "", description: str = "", subject: str = "", license: str = "") -> Remote:
    if url.startswith("ia:"):
        metadata = {"mediatype": "data", "title": title or f"egds dataset {url[3:]}"}
        if description:
            metadata["description"] = description
        metadata["subject"] = subject or "embeddings;egds;parquet"
        metadata.update(license_metadata(license))
        return InternetArchiveRemote(url[3:], item_metadata=metadata, backoff=float(os.environ.get("EGDS_RETRY_BACKOFF", "1")))
    if url.startswith("memory:"):
        return memory_remote(url[len("memory:") :])
    # How long a push waits for another push to the same directory to finish.
    return DirectoryRemote(Path(url), lock_wait=env_seconds("EGDS_REMOTE_LOCK_WAIT", LOCK_WAIT))


def env_seconds(name: str, default: float) -> float:
    """A duration in seconds from the environment variable `name`, else `default`."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"{name}={text!r} is not a number of seconds; set it to e.g. 60, or unset it")
    return value


class RemoteRegistry:
    """`.egds/remotes.json`: name -> RemoteConfig."""

    def __init__(self, root: Path) -> None:
        self.path = root / "remotes.json"
        self.record_dir = root / "remotes"

    def load(self) -> dict[str, RemoteConfig]:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=dict[str, RemoteConfig])
        except FileNotFoundError:
            return {}
        except msgspec.DecodeError as exc:
            raise UsageError(f"{self.path} is damaged ({exc}); fix or delete it and add the remotes again") from None

    def save(self, remotes: dict[str, RemoteConfig]) -> None:
        atomic_write_bytes(self.path, msgspec.json.format(msgspec.json.encode(dict(sorted(remotes.items()))), indent=2) + b"\n")

    def add(self, name: str, config: RemoteConfig) -> None:
        if not _NAME.fullmatch(name):
            raise UsageError(f"invalid remote name {name!r}: use a letter then letters, digits, '.', '_' or '-'")
        remotes = self.load()
        if name in remotes:
            raise UsageError(f"remote {name!r} already exists ({remotes[name].url}); remove it first")
        remotes[name] = config
        self.save(remotes)

    def remove(self, name: str) -> RemoteConfig:
        remotes = self.load()
        if name not in remotes:
            raise UsageError(f"no remote named {name!r}; see `egds remote list`")
        config = remotes.pop(name)
        self.save(remotes)
        (self.record_dir / f"{name}.known").unlink(missing_ok=True)
        return config

    def get(self, name: str) -> RemoteConfig:
        remotes = self.load()
        if name not in remotes:
            known = ", ".join(sorted(remotes)) or "none"
            raise UsageError(f"no remote named {name!r} (known: {known}); add one with `egds remote add NAME URL`")
        return remotes[name]


CONFIRMED, UPLOADED, ABSENT = "C", "U", "A"
_HOLDINGS_HEADER = (
    "# egds holdings record 2: one line per observation, STATE UNIX-SECONDS KEY; C = confirmed (listed by the "
    "remote's inventory or read back and verified), U = uploaded (accepted, not listed yet), A = absent (not "
    "listed); the last line for a key wins\n"
)
_HOLDING_LINE = re.compile(r"([CUA]) (\d{1,12}(?:\.\d*)?) (\S+)")


class Holding(msgspec.Struct, frozen=True):
    state: str
    """CONFIRMED, UPLOADED or ABSENT."""
    since: float
    """Unix time of the observation (0 for a line of the first format, which had no time)."""


class HoldingsRecord:
    """What we last saw a remote hold: `.egds/remotes/<name>.known` (SPEC.md §14.2).

    A cache of the remote's own listing, never a substitute for it: push reads the inventory every
    time and only uses the record for what the listing cannot show yet, i.e. an upload archive.org
    accepted but has not ingested (UPLOADED, with its time, so a re-run neither re-uploads it while it
    may still appear nor waits for it forever). Append-only and fsynced per call, so an interrupted
    push keeps what it achieved; the last line for a key wins. A line that is just a key (the first
    format) reads as UPLOADED at time 0: never trusted without the listing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def entries(self) -> dict[str, Holding]:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return {}
        found: dict[str, Holding] = {}
        for line in lines:
            if not line or line.startswith("#"):
                continue
            match = _HOLDING_LINE.fullmatch(line)
            if match:
                found[match.group(3)] = Holding(match.group(1), float(match.group(2)))
            elif " " not in line:
                found[line] = Holding(UPLOADED, 0.0)
        return found

    def load(self) -> set[str]:
        """Keys the remote holds or was last seen to accept (confirmed or uploaded, not absent)."""
        return {key for key, holding in self.entries().items() if holding.state != ABSENT}

    def add(self, key: str) -> None:
        self.add_many([key])

    def add_many(self, keys: list[str]) -> None:
        """Record keys as confirmed: read back from the remote and verified (fetch, clone, pull)."""
        self.record(CONFIRMED, keys)

    def record(self, state: str, keys: list[str], when: float | None = None) -> None:
        if not keys:
            return
        stamp = str(int(time.time() if when is None else when))  # whole seconds, never later than now
        text = "".join(f"{state} {stamp} {key}\n" for key in keys)
        with self._lock:  # uploads finish on several threads
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as out:
                if out.tell() == 0:
                    out.write(_HOLDINGS_HEADER)
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
