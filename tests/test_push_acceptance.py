"""`egds push` / `clone` against the archive.org emulator, through the REAL `internetarchive` client.

Every request egds makes goes through `EGDS_IA_ENDPOINT` to `IAEmulator`, whose log is the evidence:
which keys were PUT, in what order, with which headers, and how many listings were read. Nothing of
the client is mocked; only the network is local.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import assert_same_cache, make_chunks, make_embeddings, object_files, write_cache
from egregora_ds import Repository
from egregora_ds.card import CARD_KEY, LATEST_KEY, REF_KEY, manifest_key, object_key
from egregora_ds.push import CARD_SETTINGS_KEY, ListingPending, NonFastForward, PushResult
from egregora_ds.remotes import license_metadata
from egregora_ds.testing.ia_emulator import DATANODE, S3_HOST, IAEmulator, RequestRecord
from egregora_ds.transfer import manifest_object_keys

EGDS = Path(sys.executable).with_name("egds")
ITEM = "egds-test-acceptance"
URL = f"ia:{ITEM}"
KEYS = {"IA_ACCESS_KEY_ID": "test-access", "IA_SECRET_ACCESS_KEY": "test-secret"}


# ---- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch):
    """A running emulator that egds reaches through EGDS_IA_ENDPOINT, with valid keys in the env."""
    with IAEmulator() as emulator:
        monkeypatch.setenv("EGDS_IA_ENDPOINT", emulator.endpoint)
        monkeypatch.setenv("EGDS_RETRY_BACKOFF", "0.001")
        monkeypatch.delenv("IA_CONFIG_FILE", raising=False)
        for name, value in KEYS.items():
            monkeypatch.setenv(name, value)
        yield emulator
        assert emulator.errors == []


def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)


def key_of(record: RequestRecord, identifier: str = ITEM) -> str:
    """The item key a request is about: `egds/objects/…` for an S3 PUT or a download, `<metadata>`
    for the listing, `<other>` for anything else."""
    if record.host == S3_HOST and record.path.startswith(f"/{identifier}/"):
        return record.path[len(identifier) + 2:]
    for prefix in (f"/download/{identifier}/", f"/0/items/{identifier}/"):
        if record.path.startswith(prefix):
            return record.path[len(prefix):]
    if record.path == f"/metadata/{identifier}":
        return "<metadata>"
    return "<other>"


def by_index(records: list[RequestRecord]) -> list[RequestRecord]:
    return sorted(records, key=lambda r: r.index)


def put_keys(records: list[RequestRecord]) -> Counter[str]:
    return Counter(key_of(r) for r in records if r.method == "PUT")


def header(record: RequestRecord, name: str) -> str | None:
    return next((v for k, v in record.headers.items() if k.lower() == name.lower()), None)


def version_object_keys(repo: Repository, manifest_id: str) -> set[str]:
    return {object_key(i, s) for i, s in manifest_object_keys(repo.manifest(manifest_id))}


@dataclass
class Published:
    """A 6-partition cache (plus index.json) pushed as v1, then v2 with one changed partition."""

    repo: Repository
    emu: IAEmulator
    v1_cache: Path  # copies of the pipeline's files as they were at each snapshot
    v2_cache: Path
    v1: str
    v2: str
    v1_log: list[RequestRecord]
    v2_log: list[RequestRecord]
    v1_result: PushResult
    v2_result: PushResult


def write_v1(repo: Repository) -> None:
    write_cache(repo.cache_path, make_chunks(60), make_embeddings(60, dim=16), index={"newsletters": 6})


def write_v2(repo: Repository) -> None:
    """One chunk's text and vector change; index.json and the other partitions stay byte-identical."""
    chunks, vectors = make_chunks(60), make_embeddings(60, dim=16)
    chunks[-1]["text"] += " (revisto)"
    vectors[-1] += 1.0
    write_cache(repo.cache_path, chunks, vectors, index={"newsletters": 6})


@pytest.fixture
def published(repo: Repository, emu: IAEmulator, tmp_path: Path) -> Published:
    write_v1(repo)
    v1 = repo.snapshot("v1").id
    shutil.copytree(repo.cache_path, tmp_path / "original-v1")
    repo.remote_add("origin", URL, title="Test dataset", license="CC0-1.0")
    start = len(emu.requests)
    v1_result = repo.push("origin")
    v1_log = by_index(emu.requests[start:])
    write_v2(repo)
    v2 = repo.snapshot("v2").id
    shutil.copytree(repo.cache_path, tmp_path / "original-v2")
    start = len(emu.requests)
    v2_result = repo.push("origin")
    v2_log = by_index(emu.requests[start:])
    return Published(repo, emu, tmp_path / "original-v1", tmp_path / "original-v2", v1, v2, v1_log, v2_log,
                     v1_result, v2_result)


def assert_clone_matches(clone_dir: Path, pub: Published) -> None:
    """The clone holds v2 checked out; v1 and latest both check out as the originals."""
    clone = Repository.open(clone_dir)
    assert clone.head() == pub.v2
    # Exactly v2's objects, each under its own name: nothing damaged was stored under another hash.
    assert object_files(clone) == {k.rsplit("/", 1)[-1] for k in version_object_keys(pub.repo, pub.v2)}
    assert_same_cache(clone.cache_path, pub.v2_cache)
    clone.checkout("v1")
    assert_same_cache(clone.cache_path, pub.v1_cache)
    clone.checkout("latest")
    assert_same_cache(clone.cache_path, pub.v2_cache)
    report = clone.verify()
    assert report.ok, report.problems


# ---- push --------------------------------------------------------------------------------------


def test_pushing_v1_puts_each_object_once_then_the_manifest_then_the_ref_then_the_card(published: Published):
    pub, log = published, published.v1_log
    objects = version_object_keys(pub.repo, pub.v1)
    assert len(objects) == 7  # 6 monthly partitions + index.json
    puts = put_keys(log)
    assert puts == Counter({**{k: 1 for k in objects}, manifest_key(pub.v1): 1, CARD_SETTINGS_KEY: 1, CARD_KEY: 1,
                            LATEST_KEY: 1, REF_KEY: 1})
    assert pub.v1_result.objects_uploaded == 7 and pub.v1_result.manifests_uploaded == 1
    assert pub.v1_result.ref_updated and pub.v1_result.card_uploaded

    # Order: objects, then the manifest, then a listing that shows them all, then the ref, then the card
    # (README.md, and manifest.json last): the card never describes a ref the remote does not hold.
    position = {key_of(r): i for i, r in enumerate(log) if r.method == "PUT"}
    listings = [i for i, r in enumerate(log) if key_of(r) == "<metadata>"]
    assert max(position[k] for k in objects) < position[manifest_key(pub.v1)] < listings[-1] < position[REF_KEY]
    assert position[REF_KEY] < position[CARD_SETTINGS_KEY] < position[CARD_KEY] < position[LATEST_KEY]
    assert log[-1].method == "PUT" and key_of(log[-1]) == LATEST_KEY and log[-1].status == 200

    # One listing to plan, one to see the uploads listed; nothing else is read except the ref (before
    # planning and before moving it).
    reads = [key_of(r) for r in log if r.method == "GET"]
    assert sorted(reads) == sorted(["<metadata>", "<metadata>", REF_KEY, REF_KEY])
    assert all(r.status == 200 for r in log if r.method == "PUT")

    # Every PUT carries Content-MD5 (hex, as the client sends it; the emulator answers 400 BadDigest to a
    # mismatch, so 200 means it matched) and asks IA to keep old versions of what it replaces.
    expected = {k: pub.repo.store.object_path(*_split(k)).read_bytes() for k in objects}
    expected[manifest_key(pub.v1)] = pub.repo.store.read_manifest_bytes(pub.v1)
    expected[REF_KEY] = f"{pub.v1}\n".encode()
    for record in (r for r in log if r.method == "PUT"):
        md5 = header(record, "Content-MD5")
        assert md5 is not None and len(md5) == 32, key_of(record)
        assert header(record, "x-archive-keep-old-version") == "1"
        if key_of(record) in expected:
            assert md5.lower() == hashlib.md5(expected[key_of(record)]).hexdigest(), key_of(record)

    meta = pub.emu.item_metadata(ITEM)
    assert meta is not None and meta["mediatype"] == "data" and meta["title"] == "Test dataset"
    assert meta["licenseurl"] == "https://creativecommons.org/publicdomain/zero/1.0/"  # from --license CC0-1.0


def _split(key: str) -> tuple[str, str]:
    name = key.rsplit("/", 1)[-1]
    stem, _, ext = name.partition(".")
    return stem, f".{ext}"


def test_the_remote_holds_exactly_the_local_bytes_and_a_card_and_manifest_json_of_the_latest(published: Published):
    pub = published
    files = {k: v for k, v in pub.emu.files(ITEM).items() if not k.startswith("history/")}
    for manifest_id in (pub.v1, pub.v2):
        assert files[manifest_key(manifest_id)] == pub.repo.store.read_manifest_bytes(manifest_id)
        for key in version_object_keys(pub.repo, manifest_id):
            assert files[key] == pub.repo.store.object_path(*_split(key)).read_bytes()
    assert files[REF_KEY] == f"{pub.v2}\n".encode()
    assert f'"id": "{pub.v2}"'.encode() in files[LATEST_KEY]
    card = files[CARD_KEY].decode()
    assert "# Test dataset" in card and f"egds clone {URL}" in card and "| v2 |" in card and "CC0-1.0" in card
    # The v1 card and ref were kept as history by x-archive-keep-old-version.
    history = {k for k in pub.emu.files(ITEM) if k.startswith("history/")}
    assert {f"history/files/{CARD_KEY}.~1~", f"history/files/{REF_KEY}.~1~"} <= history


def test_pushing_v2_puts_only_the_changed_partition_its_manifest_the_card_and_the_ref(published: Published):
    pub, log = published, published.v2_log
    new = version_object_keys(pub.repo, pub.v2) - version_object_keys(pub.repo, pub.v1)
    assert len(new) == 1 and next(iter(new)).endswith(".parquet")
    assert put_keys(log) == Counter({next(iter(new)): 1, manifest_key(pub.v2): 1, CARD_SETTINGS_KEY: 1, CARD_KEY: 1,
                                     LATEST_KEY: 1, REF_KEY: 1})
    assert [key_of(r) for r in log if r.method == "PUT"][-4:] == [REF_KEY, CARD_SETTINGS_KEY, CARD_KEY, LATEST_KEY]
    assert [key_of(r) for r in log if r.method == "GET"].count("<metadata>") == 2
    assert pub.v2_result.objects_uploaded == 1 and pub.v2_result.objects_skipped == 7
    assert pub.v2_result.manifests_uploaded == 1


def test_pushing_again_with_nothing_new_makes_no_put_at_all(published: Published):
    pub = published
    start = len(pub.emu.requests)
    result = pub.repo.push("origin")
    log = by_index(pub.emu.requests[start:])
    assert [r for r in log if r.method != "GET"] == []
    assert sorted(key_of(r) for r in log) == sorted(["<metadata>", REF_KEY])
    assert (result.objects_uploaded, result.manifests_uploaded, result.bytes_uploaded) == (0, 0, 0)
    assert not result.card_uploaded and not result.ref_updated
    assert result.objects_skipped == 8


def test_a_push_waits_for_the_listing_and_a_re_run_while_it_lags_uploads_nothing(repo: Repository, emu: IAEmulator):
    """IA lists new files minutes late: the ref waits until the listing shows them, and the holdings
    record keeps a re-run from sending them again meanwhile."""
    emu.metadata_lag = 3600.0
    write_v1(repo)
    head = repo.snapshot("v1").id
    repo.remote_add("origin", URL)
    with pytest.raises(ListingPending) as raised:
        repo.push("origin", wait=0)
    assert raised.value.exit_code == 75 and "egds push origin" in str(raised.value) and "\n" not in str(raised.value)
    assert emu.get_file(ITEM, REF_KEY) is None and emu.get_file(ITEM, CARD_KEY) is None
    uploaded = put_keys(emu.requests)
    assert set(uploaded) == version_object_keys(repo, head) | {manifest_key(head)}

    start = len(emu.requests)
    with pytest.raises(ListingPending):
        repo.push("origin", wait=0)
    assert [r for r in emu.requests[start:] if r.method != "GET"] == []  # nothing sent twice

    emu.settle()  # archive.org's tasks ran
    start = len(emu.requests)
    done = repo.push("origin", wait=0)
    assert set(put_keys(emu.requests[start:])) == {REF_KEY, CARD_SETTINGS_KEY, CARD_KEY, LATEST_KEY}
    assert done.ref_updated and done.objects_uploaded == 0 and done.objects_skipped == 7
    assert emu.get_file(ITEM, REF_KEY) == f"{head}\n".encode()


def test_a_dry_run_push_only_reads_and_needs_no_credentials(repo: Repository, emu: IAEmulator, monkeypatch):
    write_v1(repo)
    head = repo.snapshot("v1").id
    repo.remote_add("origin", URL)
    no_credentials(monkeypatch)
    result = repo.push("origin", dry_run=True)
    assert all(r.method == "GET" for r in emu.requests) and emu.requests
    assert emu.files(ITEM) == {} and emu.item_metadata(ITEM) is None
    assert result.dry_run and result.plan is not None and result.objects_uploaded == 0
    planned = {o.key for o in result.plan.objects}
    assert planned == version_object_keys(repo, head)
    assert result.plan.manifests == [manifest_key(head)] and result.plan.card and result.plan.ref_update
    assert repo.store.read_ref("remotes/origin/main") is None  # a dry run records nothing either

    # The real push then uploads exactly the plan.
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    start = len(emu.requests)
    repo.push("origin")
    assert set(put_keys(emu.requests[start:])) == planned | {manifest_key(head), CARD_SETTINGS_KEY, CARD_KEY, LATEST_KEY, REF_KEY}


def test_a_dry_run_through_the_cli_prints_the_plan_and_makes_no_put(repo: Repository, emu: IAEmulator):
    write_v1(repo)
    repo.snapshot("v1")
    repo.remote_add("origin", URL)
    env = {**os.environ, "EGDS_IA_ENDPOINT": emu.endpoint}
    done = subprocess.run([str(EGDS), "-C", str(repo.root), "push", "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("  upload egds/objects/") == 7 and "move ref egds/refs/main" in done.stdout
    assert all(r.method == "GET" for r in emu.requests)


def test_a_push_refuses_a_remote_that_has_versions_we_do_not_have_and_puts_nothing(repo: Repository, emu: IAEmulator):
    write_v1(repo)
    repo.snapshot("v1")
    repo.remote_add("origin", URL)
    foreign = "f" * 64  # a version someone else pushed
    emu.put_file(ITEM, REF_KEY, f"{foreign}\n".encode(), metadata={"mediatype": "data"})
    with pytest.raises(NonFastForward, match="pull first"):
        repo.push("origin")
    assert [r for r in emu.requests if r.method != "GET"] == []
    assert emu.get_file(ITEM, REF_KEY) == f"{foreign}\n".encode()


class _RacingPusher:
    """A Progress that, when the first object is up, lets another pusher move the remote ref."""

    def __init__(self, emu: IAEmulator, ref: bytes) -> None:
        self.emu, self.ref, self.moved = emu, ref, False

    def begin(self, description: str, total: int | None, unit: str = "items") -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        if not self.moved:
            self.moved = True
            self.emu.put_file(ITEM, REF_KEY, self.ref)

    def end(self) -> None:
        pass


def test_a_push_re_reads_the_ref_and_refuses_to_move_it_when_another_pusher_moved_it_meanwhile(
    repo: Repository, emu: IAEmulator
):
    write_v1(repo)
    head = repo.snapshot("v1").id
    repo.remote_add("origin", URL)
    foreign = f"{'e' * 64}\n".encode()
    with pytest.raises(NonFastForward, match="while pushing"):
        repo.push("origin", progress=_RacingPusher(emu, foreign))
    assert emu.get_file(ITEM, REF_KEY) == foreign  # theirs stays; ours was never written
    assert REF_KEY not in put_keys(emu.requests)
    assert repo.store.read_ref("remotes/origin/main") is None
    # What was uploaded is all there (hash-named, harmless); nothing was lost or damaged.
    for key in version_object_keys(repo, head) | {manifest_key(head)}:
        assert emu.get_file(ITEM, key) is not None


# ---- clone -------------------------------------------------------------------------------------


def test_the_cli_clones_without_credentials_and_checks_out_v1_and_latest_bit_for_bit(published: Published, tmp_path):
    pub = published
    env = {k: v for k, v in os.environ.items() if k not in KEYS and not k.startswith("IA_")}
    env["HOME"] = str(tmp_path / "home")  # no ia.ini from the real home either
    env["EGDS_IA_ENDPOINT"] = pub.emu.endpoint
    start = len(pub.emu.requests)

    def egds(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(EGDS), *args], env=env, capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        return done

    done = egds("clone", URL, "cloned")
    assert "v2" in done.stdout
    target = tmp_path / "cloned"
    assert Repository.open(target).head() == pub.v2
    assert_same_cache(Repository.open(target).cache_path, pub.v2_cache)
    egds("-C", str(target), "checkout", "v1")
    assert_same_cache(Repository.open(target).cache_path, pub.v1_cache)
    egds("-C", str(target), "checkout", "latest")
    assert_same_cache(Repository.open(target).cache_path, pub.v2_cache)
    assert [r for r in pub.emu.requests[start:] if r.method != "GET"] == []


def test_the_api_clones_without_credentials_and_checks_out_v1_and_latest_bit_for_bit(published: Published, tmp_path,
                                                                                      monkeypatch):
    pub = published
    no_credentials(monkeypatch)
    start = len(pub.emu.requests)
    result = Repository.clone(URL, tmp_path / "cloned")
    assert (result.version, result.id, result.partial) == (2, pub.v2, False)
    assert result.objects_fetched == 7 and result.rows == 60
    assert_clone_matches(tmp_path / "cloned", pub)
    log = pub.emu.requests[start:]
    assert [r for r in log if r.method != "GET"] == []
    assert "<metadata>" not in {key_of(r) for r in log}  # a clone follows the ref; it never needs the listing
    # The clone fetched v2's objects once, and v1's one differing partition once, at checkout v1.
    downloads = Counter(key_of(r) for r in log if r.status == 200 and key_of(r).startswith("egds/objects/"))
    assert set(downloads) == version_object_keys(pub.repo, pub.v1) | version_object_keys(pub.repo, pub.v2)
    assert set(downloads.values()) == {1}


def test_a_corrupted_object_download_is_detected_retried_and_the_clone_is_identical(published: Published, tmp_path,
                                                                                    monkeypatch):
    pub = published
    no_credentials(monkeypatch)
    pub.emu.inject("corrupt", at=2, match=f"GET archive.org/download/{ITEM}/egds/objects/*")
    start = len(pub.emu.requests)
    Repository.clone(URL, tmp_path / "cloned")
    assert len(pub.emu.faults_fired) == 1
    damaged = key_of(pub.emu.faults_fired[0])
    assert [key_of(r) for r in pub.emu.requests[start:]].count(damaged) == 2  # fetched again after the bad hash
    assert_clone_matches(tmp_path / "cloned", pub)


@pytest.mark.parametrize("which", ["manifest", "ref"])
def test_a_corrupted_manifest_or_ref_download_is_detected_retried_and_the_clone_is_identical(
    published: Published, tmp_path, monkeypatch, which: str
):
    pub = published
    no_credentials(monkeypatch)
    key = manifest_key(pub.v2) if which == "manifest" else REF_KEY
    pub.emu.inject("corrupt", at=0, match=f"GET archive.org/download/{ITEM}/{key}")
    Repository.clone(URL, tmp_path / "cloned")
    assert len(pub.emu.faults_fired) == 1 and key_of(pub.emu.faults_fired[0]) == key
    assert_clone_matches(tmp_path / "cloned", pub)


def test_downloads_redirected_to_a_datanode_clone_identically(published: Published, tmp_path, monkeypatch):
    pub = published
    no_credentials(monkeypatch)
    pub.emu.redirect_downloads = True
    start = len(pub.emu.requests)
    Repository.clone(URL, tmp_path / "cloned")
    log = pub.emu.requests[start:]
    redirects = [r for r in log if r.host == "archive.org" and r.path.startswith("/download/")]
    served = [r for r in log if r.host == DATANODE]
    assert redirects and all(r.status == 302 for r in redirects)
    assert served and {key_of(r) for r in served if r.status == 200} >= version_object_keys(pub.repo, pub.v2)
    assert_clone_matches(tmp_path / "cloned", pub)


def test_a_clone_made_at_v1_pulls_v2_after_it_is_pushed(repo: Repository, emu: IAEmulator, tmp_path, monkeypatch):
    write_v1(repo)
    repo.snapshot("v1")
    shutil.copytree(repo.cache_path, tmp_path / "original-v1")
    repo.remote_add("origin", URL)
    repo.push("origin")
    no_credentials(monkeypatch)
    Repository.clone(URL, tmp_path / "cloned")
    clone = Repository.open(tmp_path / "cloned")
    assert_same_cache(clone.cache_path, tmp_path / "original-v1")

    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    write_v2(repo)
    v2 = repo.snapshot("v2").id
    repo.push("origin")
    no_credentials(monkeypatch)
    start = len(emu.requests)
    result = clone.pull("origin")
    assert result.updated and (result.version, result.id) == (2, v2) and result.objects_fetched == 1
    assert_same_cache(clone.cache_path, repo.cache_path)
    assert [r for r in emu.requests[start:] if r.method != "GET"] == []


@pytest.mark.parametrize(
    ("license", "metadata"),
    [
        ("CC-BY-4.0", {"licenseurl": "https://creativecommons.org/licenses/by/4.0/"}),
        ("cc0-1.0", {"licenseurl": "https://creativecommons.org/publicdomain/zero/1.0/"}),
        ("https://example.org/terms", {"licenseurl": "https://example.org/terms"}),
        ("Uso interno, peça autorização", {"rights": "Uso interno, peça autorização"}),
        ("  ", {}),
    ],
)
def test_the_license_becomes_the_items_license_url_or_rights_text(license: str, metadata: dict) -> None:
    assert license_metadata(license) == metadata
