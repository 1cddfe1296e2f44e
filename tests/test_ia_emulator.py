"""The archive.org emulator, exercised through the REAL internetarchive client (never mocked)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import socket
import time

import pytest
import requests
from internetarchive.exceptions import AuthenticationError

from egregora_ds.testing.ia_emulator import OWN_FILE_SUFFIXES, IAEmulator, archive_session

ITEM = "egds-test-item"
KEY = "egds/objects/ab/xyz.parquet"
DATA = bytes(range(256)) * 400  # 100 KiB, every byte value
SLEEP = 0.01  # retries_sleep: 0 or None would mean 30 s in the client


@pytest.fixture
def emu():
    with IAEmulator() as emulator:
        yield emulator
        assert emulator.errors == []


def upload(session, data=DATA, key=KEY, identifier=ITEM, **kwargs):
    """Item.upload_file as the project calls it; keyword arguments override the defaults."""
    options = {"verify": True, "checksum": False, "retries": 0, "retries_sleep": SLEEP, **kwargs}
    return session.get_item(identifier).upload_file(io.BytesIO(data), key=key, **options)


def listed(session, identifier=ITEM):
    """The item's listing without the files archive.org adds to every item (see the test of those)."""
    own = {f"{identifier}{suffix}" for suffix in OWN_FILE_SUFFIXES}
    return {f["name"]: f for f in session.get_item(identifier).files if f["name"] not in own}


def put_paths(emu):
    return [r.path for r in emu.requests if r.method == "PUT"]


def test_an_upload_is_listed_with_its_size_and_md5_and_downloads_back_byte_for_byte(emu, tmp_path):
    session = emu.session()
    response = upload(session, metadata={"mediatype": "data"})
    assert response.status_code == 200
    assert put_paths(emu) == [f"/{ITEM}/{KEY}"]  # exactly one object uploaded
    entry = listed(session)[KEY]
    assert entry["size"] == str(len(DATA)) and entry["md5"] == hashlib.md5(DATA).hexdigest()
    assert entry["source"] == "original" and entry["mtime"].isdigit()
    assert session.get_item(ITEM).get_file(KEY).download(file_path="out.bin", destdir=str(tmp_path)) is True
    assert (tmp_path / "out.bin").read_bytes() == DATA
    assert emu.get_file(ITEM, KEY) == DATA


def test_a_redirected_download_reaches_the_datanode_and_returns_the_same_bytes(emu, tmp_path):
    emu.redirect_downloads = True
    emu.put_file(ITEM, KEY, DATA)
    session = emu.session()
    session.get_item(ITEM).get_file(KEY).download(file_path="out.bin", destdir=str(tmp_path))
    assert (tmp_path / "out.bin").read_bytes() == DATA
    hops = [(r.host, r.status) for r in emu.requests if r.path != f"/metadata/{ITEM}"]
    assert hops == [("archive.org", 302), ("ia800000.us.archive.org", 200)]


def test_item_metadata_headers_set_mediatype_title_and_lists(emu):
    session = emu.session()
    upload(session, metadata={"mediatype": "data", "title": "Egregora – chunks", "subject": ["a b", "c"],
                              "external_identifier": "x"})
    metadata = session.get_item(ITEM).metadata
    assert metadata["identifier"] == ITEM and metadata["mediatype"] == "data"
    assert metadata["title"] == "Egregora – chunks"  # sent as uri(percent-encoded)
    assert metadata["subject"] == ["a b", "c"]  # x-archive-meta00-subject, x-archive-meta01-subject
    assert metadata["external_identifier"] == "x"  # "_" travels as "--"


def test_a_wrong_content_md5_is_rejected_with_bad_digest_and_nothing_is_stored(emu):
    with pytest.raises(requests.HTTPError, match="did not match what was received") as raised:
        upload(emu.session(), verify=False, headers={"Content-MD5": hashlib.md5(b"other").hexdigest()})
    assert raised.value.response.status_code == 400 and b"<Code>BadDigest</Code>" in raised.value.response.content
    assert emu.get_file(ITEM, KEY) is None


def test_a_base64_content_md5_is_accepted_like_the_hex_one_the_client_sends(emu):
    digest = base64.b64encode(hashlib.md5(DATA).digest()).decode()
    assert upload(emu.session(), verify=False, headers={"Content-MD5": digest}).status_code == 200
    assert emu.requests[-1].headers["Content-MD5"] == digest


def test_wrong_keys_are_refused_with_invalid_access_key_and_nothing_is_stored(emu):
    with pytest.raises(requests.HTTPError, match="not valid") as raised:
        upload(emu.session(secret="wrong"))
    assert raised.value.response.status_code == 403
    assert b"<Code>InvalidAccessKeyId</Code>" in raised.value.response.content
    assert emu.files(ITEM) == {}


def test_an_anonymous_upload_fails_before_any_request_reaches_the_emulator(emu):
    item = emu.session(anonymous=True).get_item(ITEM)  # reading metadata anonymously is fine
    emu.clear_log()
    with pytest.raises(AuthenticationError):
        item.upload_file(io.BytesIO(DATA), key=KEY)
    assert emu.requests == []


def test_an_anonymous_session_ignores_keys_in_the_environment(emu, monkeypatch):
    monkeypatch.setenv("IA_ACCESS_KEY_ID", "test-access")
    monkeypatch.setenv("IA_SECRET_ACCESS_KEY", "test-secret")
    session = emu.session(anonymous=True)
    assert session.access_key is None and session.secret_key is None


def test_a_503_on_the_first_put_is_retried_once_without_asking_check_limit(emu):
    emu.inject("503", match="PUT")
    assert upload(emu.session(), retries=1).status_code == 200
    assert [(r.method, r.path, r.status) for r in emu.requests[1:]] == [
        ("PUT", f"/{ITEM}/{KEY}", 503), ("PUT", f"/{ITEM}/{KEY}", 200)]
    assert emu.get_file(ITEM, KEY) == DATA


def test_with_two_retries_the_client_asks_check_limit_before_putting_again(emu):
    emu.inject("503", match="PUT")
    upload(emu.session(), retries=2)
    assert [(r.method, r.host, r.path, r.status) for r in emu.requests[1:]] == [
        ("PUT", "s3.us.archive.org", f"/{ITEM}/{KEY}", 503),
        ("GET", "s3.us.archive.org", "/", 200),
        ("PUT", "s3.us.archive.org", f"/{ITEM}/{KEY}", 200)]
    check = emu.requests[2]
    assert check.query == {"check_limit": "1", "accesskey": "test-access"}  # the client sends no bucket
    assert "Authorization" not in check.headers


def test_while_over_limit_the_client_spends_its_retries_on_check_limit_then_puts_anyway(emu):
    emu.over_limit = True
    emu.inject("503", match="PUT")
    upload(emu.session(), retries=3)
    assert [(r.method, r.status) for r in emu.requests[1:]] == [
        ("PUT", 503), ("GET", 200), ("GET", 200), ("PUT", 200)]
    assert requests.get(f"{emu.endpoint}/?check_limit=1", headers={"Host": "s3.us.archive.org"}).json()[
        "over_limit"] == 1


def test_a_503_without_retries_raises_http_error_with_the_slowdown_message(emu):
    emu.inject("503", match="PUT")
    with pytest.raises(requests.HTTPError, match="Please reduce your request rate") as raised:
        upload(emu.session(), retries=0)
    assert raised.value.response.status_code == 503
    assert emu.get_file(ITEM, KEY) is None
    assert [(r.fault, r.method) for r in emu.faults_fired] == [("503", "PUT")]


def test_a_fault_fires_once_on_the_kth_matching_request(emu):
    session = emu.session()
    emu.inject("500", at=1, match="PUT s3.us.archive.org/*")
    upload(session, key="first")
    with pytest.raises(requests.HTTPError, match="invalid XML|internal error"):
        upload(session, key="second")
    upload(session, key="third")
    assert sorted(emu.files(ITEM)) == ["first", "third"]
    assert [r.path for r in emu.faults_fired] == [f"/{ITEM}/second"]


def test_a_reset_during_upload_stores_nothing(emu):
    emu.inject("reset", match="PUT")
    with pytest.raises(requests.ConnectionError):  # ProxyError via the emulator; a bare ConnectionError otherwise
        upload(emu.session())
    assert emu.get_file(ITEM, KEY) is None
    fired = emu.faults_fired[0]
    assert fired.status is None and 0 < fired.bytes_in < len(DATA)


def test_a_client_hanging_up_mid_body_stores_nothing(emu):
    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as client:
        client.sendall(f"PUT http://s3.us.archive.org/{ITEM}/{KEY} HTTP/1.1\r\nHost: s3.us.archive.org\r\n"
                       "Authorization: LOW test-access:test-secret\r\nx-archive-auto-make-bucket: 1\r\n"
                       "Content-Length: 1000\r\n\r\nonly-part".encode())
    deadline = time.monotonic() + 5  # the handler thread logs the PUT once it sees EOF
    while not emu.requests and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [(r.method, r.status, r.bytes_in) for r in emu.requests] == [("PUT", None, 9)]
    assert emu.files(ITEM) == {}


def test_a_reset_during_download_raises_a_connection_error(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("reset", match="GET archive.org/download/*")
    # Mid-body, requests raises ChunkedEncodingError, which is NOT a requests.ConnectionError.
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        emu.session().get(f"http://archive.org/download/{ITEM}/{KEY}")
    assert emu.faults_fired[0].bytes_out == len(DATA) // 2


def test_a_corrupt_download_is_not_detected_by_the_client(emu, tmp_path):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("corrupt", match="GET archive.org/download/*")
    item = emu.session().get_item(ITEM)
    assert item.get_file(KEY).download(file_path="out.bin", destdir=str(tmp_path)) is True
    received = (tmp_path / "out.bin").read_bytes()
    assert len(received) == len(DATA) and received != DATA
    assert hashlib.md5(received).hexdigest() != item.get_file(KEY).md5  # only our own hashing can tell


def test_a_corrupt_put_rots_the_bytes_at_rest_while_the_listing_keeps_the_received_md5(emu):
    emu.inject("corrupt", match="PUT")
    session = emu.session()
    upload(session)
    assert listed(session)[KEY]["md5"] == hashlib.md5(DATA).hexdigest()
    served = session.get(f"http://archive.org/download/{ITEM}/{KEY}").content
    assert len(served) == len(DATA) and served != DATA


def test_metadata_lag_hides_a_fresh_upload_from_the_listing_until_the_clock_passes_it(emu):
    now = [1_700_000_000.0]
    emu.clock, emu.metadata_lag = (lambda: now[0]), 60
    session = emu.session()
    upload(session)
    assert KEY not in listed(session)
    assert session.get(f"http://archive.org/download/{ITEM}/{KEY}").content == DATA  # but downloadable
    now[0] += 61
    assert listed(session)[KEY]["mtime"] == "1700000000"


def test_settle_makes_every_pending_upload_visible(emu):
    emu.metadata_lag = 3600
    session = emu.session()
    upload(session)
    assert listed(session) == {}
    emu.settle()
    assert set(listed(session)) == {KEY}


def test_while_an_overwrite_is_pending_the_listing_shows_the_previous_version(emu):
    emu.put_file(ITEM, KEY, b"old")
    emu.metadata_lag = 3600
    session = emu.session()
    upload(session, data=b"new")
    assert listed(session)[KEY]["md5"] == hashlib.md5(b"old").hexdigest()
    assert emu.get_file(ITEM, KEY) == b"new"


def test_a_missing_item_has_empty_metadata_and_does_not_exist(emu):
    session = emu.session()
    assert session.get_metadata("egds-no-such-item") == {}
    assert session.get_item("egds-no-such-item").exists is False
    assert session.get("http://archive.org/download/egds-no-such-item/x").status_code == 404


def test_keep_old_version_keeps_the_overwritten_bytes_in_history(emu):
    session = emu.session()
    for version in (b"v1", b"v2", b"v3"):
        upload(session, data=version, headers={"x-archive-keep-old-version": "1"})
    assert emu.files(ITEM) == {KEY: b"v3", f"history/files/{KEY}.~1~": b"v1", f"history/files/{KEY}.~2~": b"v2"}
    assert f"history/files/{KEY}.~2~" in listed(session)


def test_an_overwrite_without_keep_old_version_replaces_the_file(emu):
    session = emu.session()
    upload(session, data=b"v1")
    upload(session, data=b"v2")
    assert emu.files(ITEM) == {KEY: b"v2"}


def test_delete_removes_the_file_and_answers_204(emu):
    emu.put_file(ITEM, KEY, DATA)
    session = emu.session()
    assert session.get_item(ITEM).get_file(KEY).delete().status_code == 204
    assert emu.files(ITEM) == {} and listed(session) == {}


def test_an_empty_file_uploads_and_lists_with_size_zero(emu):
    session = emu.session()
    upload(session, data=b"")
    assert listed(session)[KEY]["size"] == "0" and emu.get_file(ITEM, KEY) == b""


def test_a_range_request_returns_the_requested_slice(emu):
    emu.put_file(ITEM, KEY, b"0123456789")
    session = emu.session()
    url = f"http://archive.org/download/{ITEM}/{KEY}"
    partial = session.get(url, headers={"Range": "bytes=7-"})
    assert (partial.status_code, partial.content, partial.headers["Content-Range"]) == (206, b"789", "bytes 7-9/10")
    assert session.get(url, headers={"Range": "bytes=-2"}).content == b"89"
    assert session.get(url, headers={"Range": "bytes=10-"}).status_code == 416


def test_origin_form_requests_are_routed_by_their_host_header(emu):
    emu.put_file(ITEM, KEY, DATA)
    assert KEY in {f["name"] for f in requests.get(f"{emu.endpoint}/metadata/{ITEM}").json()["files"]}
    assert requests.get(f"{emu.endpoint}/download/{ITEM}/{KEY}").content == DATA
    denied = requests.put(f"{emu.endpoint}/{ITEM}/x", data=b"x", headers={"Host": "s3.us.archive.org"})
    assert denied.status_code == 403


def test_a_chunked_put_is_stored_whole(emu):
    connection = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    connection.request("PUT", f"http://s3.us.archive.org/{ITEM}/chunked", body=iter([b"ab", b"cd"]),
                       headers={"Authorization": "LOW test-access:test-secret", "x-archive-auto-make-bucket": "1"},
                       encode_chunked=True)
    assert connection.getresponse().status == 200
    connection.close()
    assert emu.get_file(ITEM, "chunked") == b"abcd"


def test_a_500_on_a_metadata_read_is_retried_by_the_clients_own_adapter(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("500", match="GET archive.org/metadata/*")
    assert emu.session().get_item(ITEM).exists is True
    assert [r.status for r in emu.requests] == [500, 200]


def test_archive_session_for_an_endpoint_is_the_egds_ia_endpoint_wiring(emu):
    session = archive_session(emu.endpoint, "test-access", "test-secret")
    assert session.protocol == "http:" and session.proxies == {"http": emu.endpoint}
    assert upload(session).status_code == 200
    assert emu.proxy_url == emu.endpoint == f"http://127.0.0.1:{emu.port}"


def test_the_emulator_stops_and_frees_its_port():
    with IAEmulator() as emulator:
        port = emulator.port
        assert emulator.session().get_metadata(ITEM) == {}
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
