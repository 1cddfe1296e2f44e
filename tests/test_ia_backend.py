"""The archive.org backend (egregora_ds.store.ia) against the emulator, through the REAL internetarchive client.

Every remote here is built on `make_session(emu.endpoint)`, the function that also builds the production
session; waits are recorded by an injected `sleep` instead of slept, and deadlines are made small through the
constructor, so nothing here sleeps for long.
"""

from __future__ import annotations

import hashlib
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egregora_ds.store.base import RemoteAuthError, RemoteError, UploadSource
from egregora_ds.store.ia import (
    ATTEMPTS,
    InternetArchiveRemote,
    ItemNotYours,
    ItemUnavailable,
    RequestTooSlow,
    UploadsRefused,
    make_session,
    retry_after_seconds,
)
from egregora_ds.store.ia_http import BoundedAdapter
from egregora_ds.testing.ia_emulator import IAEmulator

ITEM = "egds-backend-test"
KEY = "egds/objects/ab/cdef.parquet"
DATA = bytes(range(256)) * 8  # 2 KiB
NOW = 1_800_000_000.0


@pytest.fixture
def emu():
    with IAEmulator() as emulator:
        yield emulator
        assert emulator.errors == []


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    monkeypatch.setenv("IA_ACCESS_KEY_ID", "test-access")
    monkeypatch.setenv("IA_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.delenv("EGDS_IA_ENDPOINT", raising=False)
    monkeypatch.delenv("EGDS_IA_DEADLINE", raising=False)


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def remote(emu: IAEmulator, **options) -> tuple[InternetArchiveRemote, Sleeps]:
    sleeps = Sleeps()
    options = {"sleep": sleeps, "clock": lambda: NOW, **options}
    return InternetArchiveRemote(ITEM, session=make_session(emu.endpoint), **options), sleeps


def requests_to(emu: IAEmulator, method: str, fragment: str) -> list:
    return [r for r in emu.requests if r.method == method and fragment in f"{r.host}{r.path}"]


# ---- one retry policy, the same in tests and production (issue 9.8) ------------------------------------


def test_the_production_and_the_test_session_share_one_transport_without_urllib3_retries(emu, monkeypatch, tmp_path):
    monkeypatch.setenv("IA_CONFIG_FILE", str(tmp_path / "no-ia.ini"))
    production, test = make_session(None), make_session(emu.endpoint)
    for session in (production, test):
        adapters = {prefix: adapter for prefix, adapter in session.adapters.items()}
        assert adapters and all(isinstance(a, BoundedAdapter) for a in adapters.values()), adapters
        assert all(a.max_retries.total == 0 and not a.max_retries.read for a in adapters.values())
    # They differ only in where requests go.
    assert (production.protocol, production.proxies, production.trust_env) == ("https:", {}, True)
    assert (test.protocol, test.proxies, test.trust_env) == ("http:", {"http": emu.endpoint}, False)
    assert production.headers == test.headers and production.access_key == test.access_key == "test-access"


def test_a_persistent_503_stops_after_the_documented_attempts_with_one_clear_line(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("503", match=f"GET archive.org/download/{ITEM}/*", times=None)
    ia, sleeps = remote(emu)
    with pytest.raises(RemoteError) as raised:
        ia.get(KEY, 10_000)
    message = str(raised.value)
    assert "\n" not in message and f"ia:{ITEM}" in message and KEY in message
    assert f"after {ATTEMPTS} attempts" in message and "503 Please reduce your request rate." in message
    assert "try again later" in message and "RetryError" not in message
    assert len(requests_to(emu, "GET", "/download/")) == ATTEMPTS == 5
    assert sleeps == [1.0, 2.0, 4.0, 8.0]


def test_a_503_on_the_file_list_is_retried_by_egds_alone_once(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("503", match=f"GET archive.org/metadata/{ITEM}")
    ia, sleeps = remote(emu)
    assert KEY in ia.inventory()
    assert [r.status for r in requests_to(emu, "GET", "/metadata/")] == [503, 200] and sleeps == [1.0]


# ---- Retry-After, spam, over-limit, check_limit -------------------------------------------------------


def test_retry_after_seconds_on_a_503_is_waited_for(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("503", match="GET archive.org/download/*", retry_after=7)
    ia, sleeps = remote(emu)
    assert ia.get(KEY, 10_000) == DATA
    assert sleeps == [7.0]


def test_retry_after_as_an_http_date_on_a_429_is_waited_for(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("429", match="GET archive.org/download/*", retry_after=formatdate(NOW + 42, usegmt=True))
    ia, sleeps = remote(emu)
    assert ia.get(KEY, 10_000) == DATA
    assert sleeps == [42.0]


def test_a_short_retry_after_never_shortens_the_backoff(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("429", match="GET archive.org/download/*", retry_after=0, times=2)
    ia, sleeps = remote(emu)
    assert ia.get(KEY, 10_000) == DATA
    assert sleeps == [1.0, 2.0]


def test_a_retry_after_beyond_the_cap_stops_at_once_and_says_when_to_retry(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("503", match="GET archive.org/download/*", retry_after=3600, times=None)
    ia, sleeps = remote(emu)
    with pytest.raises(RemoteError) as raised:
        ia.get(KEY, 10_000)
    assert "asks to wait 60 minutes, longer than the 5 egds waits; try again after" in str(raised.value)
    assert len(requests_to(emu, "GET", "/download/")) == 1 and sleeps == []


def test_an_upload_refused_as_spam_is_not_retried_and_says_whom_to_write_to(emu):
    emu.inject("spam", match="PUT", times=None)
    ia, sleeps = remote(emu)
    with pytest.raises(UploadsRefused) as raised:
        ia.put(KEY, DATA)
    message = str(raised.value)
    assert "appears to be spam" in message and "info@archive.org" in message and ITEM in message
    assert "IA keys" not in message and "\n" not in message
    assert len(requests_to(emu, "PUT", "")) == 1 and sleeps == [] and emu.files(ITEM) == {}


def test_an_upload_refused_over_the_task_queue_limit_is_not_retried(emu):
    emu.inject("over_limit", match="PUT", times=None)
    ia, sleeps = remote(emu)
    with pytest.raises(UploadsRefused) as raised:
        ia.put(KEY, DATA)
    assert "over its limit (Please reduce your request rate. - total_tasks_queued exceeds global_limit)" in str(raised.value)
    assert "push again" in str(raised.value)
    assert len(requests_to(emu, "PUT", "")) == 1 and sleeps == []


def test_a_large_upload_asks_check_limit_first_and_stops_while_over_limit(emu):
    emu.over_limit = True
    ia, sleeps = remote(emu, large_upload_bytes=len(DATA))
    with pytest.raises(UploadsRefused) as raised:
        ia.put(KEY, DATA)
    assert "over its upload limit (total_tasks_queued exceeds global_limit)" in str(raised.value)
    checks = [r for r in emu.requests if r.query.get("check_limit") == "1"]
    assert len(checks) == ATTEMPTS and requests_to(emu, "PUT", "") == []
    assert checks[0].query == {"check_limit": "1", "accesskey": "test-access", "bucket": ITEM}
    assert sleeps == [1.0, 2.0, 4.0, 8.0]


def test_a_large_upload_goes_ahead_once_check_limit_says_there_is_room(emu):
    ia, sleeps = remote(emu, large_upload_bytes=len(DATA))
    ia.put(KEY, DATA)
    assert [(r.method, r.host) for r in emu.requests] == [("GET", "s3.us.archive.org"), ("PUT", "s3.us.archive.org")]
    assert emu.get_file(ITEM, KEY) == DATA and sleeps == []


def test_a_small_upload_does_not_ask_check_limit(emu):
    emu.over_limit = True
    ia, _ = remote(emu, large_upload_bytes=len(DATA) + 1)
    ia.put(KEY, DATA)
    assert [r.method for r in emu.requests] == ["PUT"]


def test_an_unreadable_check_limit_answer_does_not_block_the_upload(emu):
    emu.inject("500", match="GET s3.us.archive.org/*", times=None)
    ia, _ = remote(emu, large_upload_bytes=1)
    ia.put(KEY, DATA)
    assert emu.get_file(ITEM, KEY) == DATA


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), (" 0 ", 0.0), (formatdate(NOW + 90, usegmt=True), 90.0), (formatdate(NOW - 90, usegmt=True), 0.0),
    ("", None), (None, None), ("soon", None), ("-5", None), ("1.5", None), ("٣", None),
])
def test_retry_after_reads_delta_seconds_and_http_dates(value, seconds):
    assert retry_after_seconds(value, NOW) == seconds


@given(st.integers(min_value=0, max_value=10**7))
def test_an_http_date_retry_after_round_trips_to_its_delay(delay):
    assert retry_after_seconds(formatdate(NOW + delay, usegmt=True), NOW) == float(delay)


# ---- a darkened item, another account's item (issue 9.8) -------------------------------------------------


def test_a_dark_item_gets_its_own_message_when_listed_instead_of_reading_as_empty(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.set_dark(ITEM)
    ia, _ = remote(emu)
    with pytest.raises(ItemUnavailable) as raised:
        ia.inventory()
    message = str(raised.value)
    assert "darkened" in message and "info@archive.org" in message and "IA keys" not in message
    assert "`egds remote add NAME ia:NEW-IDENTIFIER`" in message


def test_an_upload_to_a_dark_item_gets_the_dark_message_not_check_your_keys(emu):
    emu.set_dark(ITEM)
    ia, sleeps = remote(emu)
    with pytest.raises(ItemUnavailable) as raised:
        ia.put(KEY, DATA)
    assert "darkened" in str(raised.value) and "IA keys" not in str(raised.value)
    assert len(requests_to(emu, "PUT", "")) == 1 and sleeps == []


def test_an_upload_to_another_accounts_item_says_so_and_is_not_retried(emu):
    emu.set_owner(ITEM, "someone-else")
    ia, sleeps = remote(emu)
    with pytest.raises(ItemNotYours) as raised:
        ia.put(KEY, DATA)
    message = str(raised.value)
    assert "belongs to another account" in message and "check your IA keys" not in message
    assert len(requests_to(emu, "PUT", "")) == 1 and sleeps == [] and emu.files(ITEM) == {}


def test_wrong_keys_still_say_check_your_ia_keys(emu):
    session = make_session(emu.endpoint)
    session.secret_key = "wrong"
    ia = InternetArchiveRemote(ITEM, session=session, sleep=Sleeps())
    with pytest.raises(RemoteAuthError) as raised:
        ia.put(KEY, DATA)
    assert not isinstance(raised.value, ItemNotYours)
    assert "check your IA keys" in str(raised.value) and "wrong" not in str(raised.value)


# ---- item metadata after creation (issue 9.8) -------------------------------------------------------------


def created(emu: IAEmulator, **metadata) -> None:
    ia, _ = remote(emu, item_metadata={"mediatype": "data", **metadata})
    ia.put(KEY, DATA)


def posts(emu: IAEmulator) -> list:
    return requests_to(emu, "POST", f"/metadata/{ITEM}")


def test_a_changed_title_and_description_reach_an_existing_item_through_one_metadata_write(emu):
    created(emu, title="Old title", licenseurl="https://creativecommons.org/licenses/by/4.0/")
    ia, _ = remote(emu, item_metadata={"mediatype": "texts", "title": "New title", "description": "About it",
                                       "licenseurl": "https://creativecommons.org/licenses/by/4.0/"})
    assert ia.update_item_metadata() is True
    metadata = emu.item_metadata(ITEM)
    assert (metadata["title"], metadata["description"], metadata["mediatype"]) == ("New title", "About it", "data")
    assert len(posts(emu)) == 1
    assert ia.update_item_metadata() is False and len(posts(emu)) == 1  # nothing differs: nothing sent


def test_upload_headers_do_not_change_an_existing_items_metadata(emu):
    created(emu, title="Old title")
    ia, _ = remote(emu, item_metadata={"mediatype": "data", "title": "New title"})
    ia.put("other-key", b"x")
    assert emu.item_metadata(ITEM)["title"] == "Old title"  # why update_item_metadata exists


def test_a_license_change_replaces_the_old_license_field(emu):
    created(emu, title="T", licenseurl="https://creativecommons.org/licenses/by/4.0/")
    ia, _ = remote(emu, item_metadata={"title": "T", "rights": "All rights reserved"})
    assert ia.update_item_metadata() is True
    metadata = emu.item_metadata(ITEM)
    assert metadata["rights"] == "All rights reserved" and "licenseurl" not in metadata


def test_an_explicit_none_removes_a_field_and_unnamed_fields_are_left_alone(emu):
    created(emu, title="T", description="D", creator="someone")
    ia, _ = remote(emu)
    assert ia.update_item_metadata({"description": None, "title": "T"}) is True
    metadata = emu.item_metadata(ITEM)
    assert "description" not in metadata and metadata["creator"] == "someone" and metadata["title"] == "T"


def test_metadata_of_an_item_not_yet_listed_is_left_to_its_creating_upload(emu):
    ia, _ = remote(emu, item_metadata={"title": "T"})
    assert ia.update_item_metadata() is False
    assert posts(emu) == [] and emu.item_metadata(ITEM) is None


def test_a_metadata_write_to_another_accounts_item_says_so(emu):
    created(emu, title="T")
    emu.set_owner(ITEM, "someone-else")
    ia, _ = remote(emu, item_metadata={"title": "Mine now"})
    with pytest.raises(ItemNotYours):
        ia.update_item_metadata()
    assert emu.item_metadata(ITEM)["title"] == "T"


def test_a_metadata_write_to_a_dark_item_gets_the_dark_message(emu):
    created(emu, title="T")
    emu.set_dark(ITEM)
    ia, _ = remote(emu, item_metadata={"title": "Other"})
    with pytest.raises(ItemUnavailable):
        ia.update_item_metadata()
    assert posts(emu) == []


def test_a_failed_metadata_write_is_retried_and_a_lost_reply_is_not_an_error(emu):
    created(emu, title="T")
    emu.inject("lost_reply", match=f"POST archive.org/metadata/{ITEM}")
    ia, sleeps = remote(emu, item_metadata={"title": "New"})
    assert ia.update_item_metadata() is False  # applied by the lost attempt; the retry hears "no changes"
    assert emu.item_metadata(ITEM)["title"] == "New" and len(posts(emu)) == 2 and sleeps == [1.0]


# ---- bounded reads and deadlines (issue 10.9) ----------------------------------------------------------


def test_a_dripping_download_is_stopped_at_its_total_deadline(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("drip", match="GET archive.org/download/*", interval=0.02, times=None)  # 2 KiB: 40 s in full
    ia, sleeps = remote(emu, deadline_base=0.3)
    with pytest.raises(RequestTooSlow) as raised:
        ia.get(KEY, len(DATA))
    message = str(raised.value)
    assert f"reading {KEY} took longer than the 0.4 s egds allows" in message and "EGDS_IA_DEADLINE=SECONDS" in message
    assert len(requests_to(emu, "GET", "/download/")) == 1 and sleeps == []  # not retried
    assert emu.faults_fired[0].bytes_out < len(DATA)


def test_a_dripping_file_list_is_stopped_at_its_total_deadline(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("drip", match=f"GET archive.org/metadata/{ITEM}", interval=0.02)
    ia, _ = remote(emu, deadline_base=0.3, max_inventory_bytes=4096)
    with pytest.raises(RequestTooSlow, match="reading the item's file list took longer"):
        ia.inventory()


def test_the_deadline_env_var_sets_the_base(monkeypatch, emu):
    monkeypatch.setenv("EGDS_IA_DEADLINE", "2.5")
    assert InternetArchiveRemote(ITEM, session=make_session(emu.endpoint)).deadline_base == 2.5
    monkeypatch.setenv("EGDS_IA_DEADLINE", "soon")
    with pytest.raises(Exception, match="EGDS_IA_DEADLINE='soon' must be a positive number of seconds"):
        InternetArchiveRemote(ITEM)


def test_an_endless_download_is_cut_at_max_bytes(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("endless", match="GET archive.org/download/*", size=256 << 20)
    ia, _ = remote(emu)
    with pytest.raises(RemoteError, match="is larger than the 100,000 bytes egds expects of it"):
        ia.get(KEY, 100_000)
    assert emu.faults_fired[0].bytes_out < 32 << 20  # the client hung up long before the 256 MiB


def test_an_oversized_content_length_is_refused_before_reading(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("oversized", match="GET archive.org/download/*")
    ia, _ = remote(emu)
    with pytest.raises(RemoteError, match="larger than the 100,000 bytes"):
        ia.get(KEY, 100_000)


@pytest.mark.parametrize("what", ["download", "metadata"])
def test_an_endless_error_page_is_read_only_up_to_the_small_body_cap(emu, what):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("endless", match=f"GET archive.org/{what}/*", status=503, size=256 << 20, times=None)
    ia, _ = remote(emu, attempts=2)
    with pytest.raises(RemoteError, match="failed after 2 attempts"):
        ia.get(KEY, 100_000) if what == "download" else ia.inventory()
    assert len(emu.faults_fired) == 2 and all(r.bytes_out < 32 << 20 for r in emu.faults_fired)


def test_a_huge_file_list_is_refused_at_the_inventory_cap(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("huge_listing", match=f"GET archive.org/metadata/{ITEM}", size=2 << 20)
    ia, _ = remote(emu, max_inventory_bytes=1 << 20)
    with pytest.raises(RemoteError, match="the item's file list .* is larger than the 1,048,576 bytes"):
        ia.inventory()


def test_the_inventory_leaves_out_archive_orgs_own_files_and_history(emu):
    ia, _ = remote(emu)
    ia.put(KEY, DATA)
    ia.put(KEY, DATA[::-1])  # keep-old-version: the first bytes move to history/
    emu.settle()
    assert set(ia.inventory()) == {KEY}
    assert ia.inventory()[KEY].md5 == hashlib.md5(DATA[::-1]).hexdigest()
    assert any(k.startswith("history/files/") for k in emu.files(ITEM))


# ---- ingest lag and failed ingest as the backend sees them ---------------------------------------------


def test_under_ingest_lag_an_upload_is_neither_listed_nor_served_until_ingested(emu):
    now = [NOW]
    emu.clock, emu.ingest_lag = (lambda: now[0]), 60
    ia, _ = remote(emu)
    ia.put(KEY, DATA)
    assert ia.inventory() == {} and ia.get(KEY, 10_000) is None
    now[0] += 61
    assert KEY in ia.inventory() and ia.get(KEY, 10_000) == DATA


def test_a_failed_ingest_is_accepted_but_never_appears(emu, tmp_path):
    emu.fail_ingest(match="*.parquet")
    path = tmp_path / "object"
    path.write_bytes(DATA)
    import blake3

    ia, _ = remote(emu)
    ia.put(KEY, UploadSource(path, blake3.blake3(DATA).hexdigest(), ".parquet"))  # 200: no error
    emu.settle()
    assert KEY not in ia.inventory() and ia.get(KEY, 10_000) is None
    assert emu.failed_ingests == [(ITEM, KEY)]


@pytest.fixture
def stalling_server():
    """A loopback server that accepts connections, reads what comes, and answers one header byte every 50 ms:
    only a total deadline ends such a request (each read gets its byte long before any per-read timeout)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.05)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 2000:  # bounded: 100 s at most
                try:
                    if conn.recv(1 << 16) == b"":
                        return  # the client shut the connection down
                except TimeoutError:
                    pass  # nothing to read right now
                except OSError:
                    return
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the client hung up

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    server.close()


@pytest.mark.parametrize("operation", ["get", "put", "inventory"])
def test_the_total_deadline_also_ends_a_reply_whose_headers_trickle_in(stalling_server, operation):
    ia = InternetArchiveRemote(ITEM, session=make_session(stalling_server), deadline_base=0.3, sleep=Sleeps(),
                               max_inventory_bytes=4096)
    with pytest.raises(RequestTooSlow, match=r"took longer than the 0\.\d s egds allows \(0\.3 s plus"):
        if operation == "get":
            ia.get(KEY, 100)
        elif operation == "put":
            ia.put(KEY, DATA)
        else:
            ia.inventory()


def test_a_server_echoing_the_request_cannot_make_egds_print_the_keys(emu):
    emu.inject("500", match="PUT", times=None)
    ia, _ = remote(emu, attempts=1)
    # The emulator's 500 message does not echo; craft one that does, as a hostile endpoint could.
    from egregora_ds.testing import ia_emulator

    original = ia_emulator._FAULT_ERRORS["500"]
    ia_emulator._FAULT_ERRORS["500"] = (500, "InternalError", "you sent LOW test-access:test-secret", "")
    try:
        with pytest.raises(RemoteError) as raised:
            ia.put(KEY, DATA)
    finally:
        ia_emulator._FAULT_ERRORS["500"] = original
    assert "test-secret" not in str(raised.value) and "test-access" not in str(raised.value)
    assert "LOW ***:***" in str(raised.value)


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b'{"files": {"a": 1}}', b'{"metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
def test_a_file_list_that_is_not_an_item_record_is_a_clear_error(emu, body, monkeypatch):
    ia, _ = remote(emu)
    from egregora_ds.testing import ia_emulator

    # Every JSON answer of the emulator becomes `body` (a damaged or hostile metadata API).
    monkeypatch.setattr(ia_emulator, "_json", lambda obj, status=200: (200, {"Content-Type": "application/json"}, body))
    with pytest.raises(RemoteError, match="answered something that is not an item record; try again later"):
        ia.inventory()
