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

from egregora_ds.testing.ia_emulator import OWN_FILE_SUFFIXES, S3_HOST, IAEmulator, archive_session

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


# ---- ingest: lag and failure ------------------------------------------------------------------------------


def download(session, key=KEY, identifier=ITEM):
    return session.get(f"http://archive.org/download/{identifier}/{key}")


def plain(emu):
    """A bare requests session through the emulator: no retries of its own (the client's archive.org adapter
    retries 429 and 5xx itself, which would hide the faults under test)."""
    session = requests.Session()
    session.trust_env, session.proxies = False, {"http": emu.endpoint}
    return session


def test_ingest_lag_hides_a_fresh_upload_from_the_listing_and_from_downloads_until_ingested(emu):
    now = [1_700_000_000.0]
    emu.clock, emu.ingest_lag = (lambda: now[0]), 60
    session = emu.session()
    assert upload(session).status_code == 200
    assert KEY not in listed(session) and download(session).status_code == 404
    now[0] += 61
    assert KEY in listed(session) and download(session).content == DATA


def test_under_ingest_lag_an_overwritten_key_serves_its_previous_bytes(emu):
    emu.put_file(ITEM, KEY, b"old")
    emu.ingest_lag = 3600
    session = emu.session()
    upload(session, data=b"new")
    assert download(session).content == b"old" and listed(session)[KEY]["md5"] == hashlib.md5(b"old").hexdigest()
    emu.settle()
    assert download(session).content == b"new"


def test_a_failed_ingest_answers_200_but_the_file_never_appears(emu):
    emu.fail_ingest(match="*.parquet")
    session = emu.session()
    assert upload(session).status_code == 200
    assert upload(session, key="egds/refs/main", data=b"ref").status_code == 200  # not matched: ingested
    emu.settle()
    assert KEY not in listed(session) and download(session).status_code == 404
    assert emu.get_file(ITEM, KEY) is None and emu.get_file(ITEM, "egds/refs/main") == b"ref"
    assert emu.failed_ingests == [(ITEM, KEY)]
    upload(session)  # `times` was 1: the next one is ingested
    assert download(session).content == DATA


def test_a_failed_ingest_of_an_overwrite_keeps_the_previous_bytes(emu):
    emu.put_file(ITEM, KEY, b"old")
    emu.fail_ingest()
    session = emu.session()
    upload(session, data=b"new", headers={"x-archive-keep-old-version": "1"})
    assert download(session).content == b"old" and emu.files(ITEM) == {KEY: b"old"}


# ---- refusals: 429/503 with Retry-After, spam, over limit ---------------------------------------------------


def test_a_429_carries_retry_after_in_seconds(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("429", match="GET archive.org/download/*", retry_after=30)
    reply = download(plain(emu))
    assert (reply.status_code, reply.headers["Retry-After"]) == (429, "30")
    assert b"<Code>SlowDown</Code>" in reply.content
    assert download(plain(emu)).content == DATA  # fired once


def test_a_503_carries_retry_after_as_an_http_date(emu):
    when = "Wed, 21 Oct 2015 07:28:00 GMT"
    emu.inject("503", match="PUT", retry_after=when)
    with pytest.raises(requests.HTTPError) as raised:
        upload(emu.session())
    assert raised.value.response.status_code == 503 and raised.value.response.headers["Retry-After"] == when


def test_a_spam_refusal_is_a_503_slowdown_that_says_appears_to_be_spam(emu):
    emu.inject("spam", match="PUT")
    with pytest.raises(requests.HTTPError, match=f"Your upload of {ITEM} from username .* appears to be spam"):
        upload(emu.session())
    assert emu.files(ITEM) == {}


def test_the_client_itself_stops_retrying_on_spam(emu):
    emu.inject("spam", match="PUT", times=None)
    with pytest.raises(requests.HTTPError, match="appears to be spam"):
        upload(emu.session(), retries=3)
    assert put_paths(emu) == [f"/{ITEM}/{KEY}"]  # the client's own spam check (jjjake/internetarchive#383)


def test_an_over_limit_refusal_names_the_full_task_queue(emu):
    emu.inject("over_limit", match="PUT")
    with pytest.raises(requests.HTTPError, match="Please reduce your request rate. - total_tasks_queued exceeds global_limit"):
        upload(emu.session())


def test_check_limit_answers_with_the_real_services_fields(emu):
    emu.over_limit = True
    answer = requests.get(f"{emu.endpoint}/?check_limit=1&accesskey=a&bucket={ITEM}", headers={"Host": S3_HOST}).json()
    assert answer["over_limit"] == 1 and answer["bucket"] == ITEM and answer["accesskey"] == "a"
    assert set(answer["detail"]) == {"accesskey_ration", "accesskey_tasks_queued", "bucket_ration",
                                     "bucket_tasks_queued", "limit_reason", "rationing_engaged", "rationing_level",
                                     "total_global_limit", "total_tasks_queued"}
    assert answer["detail"]["limit_reason"] == "total_tasks_queued exceeds global_limit"
    assert emu.session().s3_is_overloaded(identifier=ITEM) is True
    emu.over_limit = False
    assert emu.session().s3_is_overloaded(identifier=ITEM) is False


def test_a_fault_with_times_fires_that_many_times_and_none_means_forever(emu):
    emu.put_file(ITEM, KEY, DATA)
    session = plain(emu)
    emu.inject("500", match="GET archive.org/download/*", times=2)
    assert [download(session).status_code for _ in range(3)] == [500, 500, 200]
    emu.inject("500", match="GET archive.org/download/*", times=None)
    assert {download(session).status_code for _ in range(5)} == {500}


# ---- the item's own files and history -----------------------------------------------------------------------


def test_the_listing_holds_the_files_archive_org_adds_to_every_item_and_they_download(emu):
    session = emu.session()
    upload(session, metadata={"title": "T"})
    files = {f["name"]: f for f in session.get_item(ITEM).files}
    assert set(files) == {KEY, f"{ITEM}_files.xml", f"{ITEM}_meta.xml", f"{ITEM}_archive.torrent"}
    assert "size" not in files[f"{ITEM}_files.xml"] and files[f"{ITEM}_files.xml"]["format"] == "Metadata"
    assert files[f"{ITEM}_archive.torrent"]["source"] == "metadata"
    meta = download(session, f"{ITEM}_meta.xml").content
    assert b"<title>T</title>" in meta and hashlib.md5(meta).hexdigest() == files[f"{ITEM}_meta.xml"]["md5"]
    assert int(files[f"{ITEM}_meta.xml"]["size"]) == len(meta)
    assert KEY.encode() in download(session, f"{ITEM}_files.xml").content
    assert emu.files(ITEM) == {KEY: DATA}  # generated, not stored


def test_a_delete_with_keep_old_version_moves_the_file_to_history(emu):
    emu.put_file(ITEM, KEY, b"v1")
    session = emu.session()
    response = session.delete(f"http://s3.us.archive.org/{ITEM}/{KEY}",
                              headers={"Authorization": "LOW test-access:test-secret", "x-archive-keep-old-version": "1"})
    assert response.status_code == 204
    assert emu.files(ITEM) == {f"history/files/{KEY}.~1~": b"v1"}


# ---- a darkened item, another account's item -----------------------------------------------------------------


def test_a_dark_item_reads_as_dark_without_metadata_or_files(emu):
    emu.put_file(ITEM, KEY, DATA, metadata={"title": "T"})
    emu.set_dark(ITEM)
    session = emu.session()
    record = session.get_metadata(ITEM)
    assert record["is_dark"] is True and "metadata" not in record and "files" not in record and record["created"]
    item = session.get_item(ITEM)
    assert item.is_dark is True and item.files == [] and item.metadata == {}
    assert download(session).status_code == 403


def test_an_upload_to_a_dark_item_is_refused_as_taken_offline(emu):
    emu.set_dark(ITEM)
    with pytest.raises(requests.HTTPError, match="Access Denied - This item has been taken offline") as raised:
        upload(emu.session())
    assert raised.value.response.status_code == 403 and b"<Code>AccessDenied</Code>" in raised.value.response.content
    emu.set_dark(ITEM, False)
    assert upload(emu.session()).status_code == 200


def test_an_item_belongs_to_the_key_that_created_it(emu):
    emu.keys["other-access"] = "other-secret"
    upload(emu.session())
    with pytest.raises(requests.HTTPError, match="Access Denied - You lack sufficient privileges to write to this item"):
        upload(emu.session("other-access", "other-secret"), data=b"theirs")
    assert emu.get_file(ITEM, KEY) == DATA


def test_set_owner_hands_an_item_to_another_account(emu):
    emu.set_owner(ITEM, "someone-else")
    with pytest.raises(requests.HTTPError, match="lack sufficient privileges") as raised:
        upload(emu.session())
    assert raised.value.response.status_code == 403
    emu.set_owner(ITEM, None)
    assert upload(emu.session()).status_code == 200


# ---- item metadata: headers at creation only, then the Metadata Write API -------------------------------------


def test_metadata_headers_apply_only_when_the_put_creates_the_item(emu):
    session = emu.session()
    upload(session, metadata={"title": "First"})
    upload(session, key="other", metadata={"title": "Second", "description": "D"})
    metadata = emu.item_metadata(ITEM)
    assert metadata["title"] == "First" and "description" not in metadata


def test_modify_metadata_changes_the_item_through_a_json_patch(emu):
    session = emu.session()
    upload(session, metadata={"title": "First", "mediatype": "data"})
    item = session.get_item(ITEM)
    response = item.modify_metadata({"title": "Second", "description": "D"})
    assert response.status_code == 200 and response.json()["success"] is True and "task_id" in response.json()
    assert item.metadata["title"] == "Second" and emu.item_metadata(ITEM)["description"] == "D"
    post = [r for r in emu.requests if r.method == "POST"][0]
    assert (post.host, post.path) == ("archive.org", f"/metadata/{ITEM}")
    assert "Authorization" not in post.headers  # the keys travel in the form body, never in the log


def test_a_metadata_write_that_changes_nothing_answers_no_changes(emu):
    session = emu.session()
    upload(session, metadata={"title": "Same"})
    response = session.get_item(ITEM).modify_metadata({"title": "Same"})
    assert response.status_code == 400 and response.json() == {"success": False, "error": "no changes to _meta.xml"}


def test_a_metadata_write_cannot_change_the_mediatype(emu):
    session = emu.session()
    upload(session, metadata={"mediatype": "data"})
    response = session.get_item(ITEM).modify_metadata({"mediatype": "texts"})
    assert response.status_code == 400 and emu.item_metadata(ITEM)["mediatype"] == "data"


def test_a_metadata_write_needs_valid_keys_and_the_owners(emu):
    emu.keys["other-access"] = "other-secret"
    upload(emu.session(), metadata={"title": "Mine"})
    assert emu.session(secret="wrong").get_item(ITEM).modify_metadata({"title": "X"}).status_code == 401
    refused = emu.session("other-access", "other-secret").get_item(ITEM).modify_metadata({"title": "X"})
    assert refused.status_code == 403 and "lack sufficient privileges" in refused.json()["error"]
    emu.set_dark(ITEM)
    assert emu.session().get_item(ITEM, item_metadata={"metadata": {"title": "Mine"}}).modify_metadata(
        {"title": "X"}).json()["error"] == "Item not available"
    assert emu.item_metadata(ITEM)["title"] == "Mine"


# ---- hostile bodies ------------------------------------------------------------------------------------------


def test_an_endless_body_streams_until_the_client_hangs_up(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("endless", match="GET archive.org/download/*")
    with emu.session().get(f"http://archive.org/download/{ITEM}/{KEY}", stream=True) as reply:
        assert "Content-Length" not in reply.headers
        received = 0
        for piece in reply.iter_content(1 << 16):
            received += len(piece)
            if received > 4 * len(DATA) * 64:
                break
    assert received > len(DATA)


def test_a_drip_sends_one_byte_per_interval(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("drip", match="GET archive.org/download/*", interval=0.01, size=5)
    reply = emu.session().get(f"http://archive.org/download/{ITEM}/{KEY}")
    assert reply.content == DATA[:5] and emu.faults_fired[0].bytes_out == 5


def test_an_oversized_content_length_promises_more_than_is_sent(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("oversized", match="GET archive.org/download/*", size=10**9)
    with emu.session().get(f"http://archive.org/download/{ITEM}/{KEY}", stream=True) as reply:
        assert reply.headers["Content-Length"] == str(10**9)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            reply.content


def test_a_huge_listing_is_valid_json_of_the_requested_size(emu):
    emu.put_file(ITEM, KEY, DATA)
    emu.inject("huge_listing", match=f"GET archive.org/metadata/{ITEM}", size=1 << 20)
    reply = plain(emu).get(f"http://archive.org/metadata/{ITEM}")
    assert len(reply.content) == 1 << 20 and KEY in {f["name"] for f in reply.json()["files"]}
    emu.inject("huge_listing", match="GET archive.org/metadata/*", size=1000)
    assert len(plain(emu).get("http://archive.org/metadata/egds-no-such-item").content) == 1000
