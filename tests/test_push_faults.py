"""The push/clone fault matrix against the archive.org emulator, with the REAL `internetarchive` client.

A clean push of v1 to a fresh item, and an incremental push of v2 onto an item holding v1, are
recorded first: R requests each. Then, for every k < R and each fault ("503", "reset", and in the
first mode "lost_reply": stored, but the reply never arrives), a fresh emulator and item get the
fault at request k, in two modes:

- "once": the k-th request of the push, whatever it is (the fault matches every request), fails
  once. egds retries (5 attempts), so the push must succeed at the first run.
- "always": the request that was k-th in the clean push (same method and key) fails on every
  attempt, so the push must stop with an EgdsError, leaving the remote's old ref in place.

Either way a re-run without faults must complete the push, after which: the remote holds every key
with the local bytes; no object or manifest was successfully PUT twice over both runs (the holdings
record, not the listing, prevents it: the emulator's listing lags by an hour, as IA's can); every
time the ref was written, everything its manifest chain reaches had been stored before; and a clone
made without credentials verifies and checks out v1 and latest bit for bit.

Because the listing lags, a push ends in two runs (`push_through`): the first uploads and stops with
ListingPending (the ref waits for the listing), the emulator settles (IA's ingest tasks ran), and
the second moves the ref and writes the card. The matrix counts the requests of both runs as one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import assert_same_cache, make_chunks, make_embeddings, object_files, write_cache
from egregora_ds import Repository
from egregora_ds.card import CARD_KEY, LATEST_KEY, REF_KEY, manifest_key, object_key
from egregora_ds.errors import CorruptObject, EgdsError
from egregora_ds.push import CARD_SETTINGS_KEY, ListingPending, PushResult
from egregora_ds.store.base import RemoteError
from egregora_ds.testing.ia_emulator import S3_HOST, IAEmulator, RequestRecord
from egregora_ds.transfer import DOWNLOAD_ATTEMPTS, manifest_object_keys

EGDS = Path(sys.executable).with_name("egds")
KEYS = {"IA_ACCESS_KEY_ID": "test-access", "IA_SECRET_ACCESS_KEY": "test-secret"}
ATTEMPTS = 5  # store/ia.py retries every request this many times in all
LAG = 3600.0  # the listing lags uploads by an hour: re-runs must rely on the holdings record
METADATA = "<metadata>"


# ---- the log, as keys ---------------------------------------------------------------------------


def key_of(record: RequestRecord, identifier: str) -> str:
    if record.host == S3_HOST and record.path.startswith(f"/{identifier}/"):
        return record.path[len(identifier) + 2:]
    for prefix in (f"/download/{identifier}/", f"/0/items/{identifier}/"):
        if record.path.startswith(prefix):
            return record.path[len(prefix):]
    if record.path == f"/metadata/{identifier}":
        return METADATA
    raise AssertionError(f"a request for something else than {identifier}: {record}")


def path_of(method: str, key: str, identifier: str) -> tuple[str, str]:
    """(host, path) of the request egds makes for `key` (the inverse of key_of, without redirects)."""
    if key == METADATA:
        return "archive.org", f"/metadata/{identifier}"
    if method == "PUT":
        return S3_HOST, f"/{identifier}/{key}"
    return "archive.org", f"/download/{identifier}/{key}"


@dataclass(frozen=True)
class Step:
    method: str
    key: str
    occurrence: int  # how many requests with the same method and key came before it

    def __str__(self) -> str:
        return f"{self.method} {self.key}" + (f" (#{self.occurrence + 1})" if self.occurrence else "")


def steps(records: list[RequestRecord], identifier: str) -> list[Step]:
    seen: Counter[tuple[str, str]] = Counter()
    out = []
    for record in sorted(records, key=lambda r: r.index):
        key = key_of(record, identifier)
        out.append(Step(record.method, key, seen[(record.method, key)]))
        seen[(record.method, key)] += 1
    return out


def inject_always(emu: IAEmulator, fault: str, step: Step, identifier: str, times: int = ATTEMPTS) -> None:
    """Make the request `step` fail `times` times in a row: every attempt egds makes at it."""
    host, path = path_of(step.method, step.key, identifier)
    match = lambda m, h, p: (m, h, p) == (step.method, host, path)  # noqa: E731
    for _ in range(times):
        emu.inject(fault, at=step.occurrence, match=match)


# ---- the repositories and the clean runs, built once -----------------------------------------------


@dataclass
class Template:
    v1_repo: Repository  # head v1
    v2_repo: Repository  # head v2 (a copy of v1_repo plus one snapshot)
    v1: str
    v2: str
    v1_cache: Path
    v2_cache: Path
    v1_item: dict[str, bytes]  # what an item holds after the clean push of v1 (history/ excluded)
    v2_item: dict[str, bytes]  # … and after the incremental push of v2 on top of it
    clean: dict[str, list[Step]]  # scenario -> the requests of its clean push, in order
    clone: list[Step]  # the requests of a clean clone of the v2 item


def scenario_repo(t: Template, scenario: str) -> Repository:
    return t.v1_repo if scenario == "v1" else t.v2_repo


def chain_keys(repo: Repository, head: str) -> set[str]:
    """Every object and manifest key the ref `head` reaches."""
    keys: set[str] = set()
    current: str | None = head
    while current is not None:
        manifest = repo.manifest(current)
        keys.add(manifest_key(current))
        keys |= {object_key(i, s) for i, s in manifest_object_keys(manifest)}
        current = manifest.parent
    return keys


def local_bytes(repo: Repository, key: str) -> bytes:
    name = key.rsplit("/", 1)[-1]
    stem, _, ext = name.partition(".")
    if key.startswith("egds/manifests/"):
        return repo.store.read_manifest_bytes(stem)
    return repo.store.object_path(stem, f".{ext}").read_bytes()


def ours(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.startswith("history/")}


def set_credentials(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    for name, value in KEYS.items():
        if on:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)


def push_through(repo: Repository, name: str, emu: IAEmulator) -> PushResult:
    """Push; if the uploads are not listed yet (ListingPending), let IA ingest them and push again."""
    try:
        return repo.push(name, wait=0)
    except ListingPending:
        emu.settle()
        return repo.push(name, wait=0)


def populate(emu: IAEmulator, identifier: str, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        emu.put_file(identifier, key, data, metadata={"mediatype": "data"})


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    root = tmp_path_factory.mktemp("faults")
    v1_repo = Repository.init(root / "a", cache="cache/rag", partitioning="month", model="test-model")
    chunks, vectors = make_chunks(12, months=3), make_embeddings(12, dim=8)
    write_cache(v1_repo.cache_path, chunks, vectors, index={"newsletters": 3})
    v1 = v1_repo.snapshot("v1").id
    shutil.copytree(v1_repo.cache_path, root / "original-v1")
    shutil.copytree(root / "a", root / "b")
    v2_repo = Repository.open(root / "b")
    chunks[-1]["text"] += " (revisto)"
    vectors[-1] += 1.0
    write_cache(v2_repo.cache_path, chunks, vectors, index={"newsletters": 3})
    v2 = v2_repo.snapshot("v2").id
    shutil.copytree(v2_repo.cache_path, root / "original-v2")

    with pytest.MonkeyPatch.context() as mp, IAEmulator(metadata_lag=LAG) as emu:
        mp.setenv("EGDS_IA_ENDPOINT", emu.endpoint)
        mp.setenv("EGDS_RETRY_BACKOFF", "0.001")
        set_credentials(mp, True)
        v1_repo.remote_add("clean", "ia:egds-test-faults-clean-v1")
        push_through(v1_repo, "clean", emu)
        clean_v1 = steps(emu.requests, "egds-test-faults-clean-v1")
        v1_item = ours(emu.files("egds-test-faults-clean-v1"))
        emu.clear_log()
        populate(emu, "egds-test-faults-clean-v2", v1_item)
        v2_repo.remote_add("clean", "ia:egds-test-faults-clean-v2")
        push_through(v2_repo, "clean", emu)
        clean_v2 = steps(emu.requests, "egds-test-faults-clean-v2")
        v2_item = ours(emu.files("egds-test-faults-clean-v2"))
        emu.clear_log()
        set_credentials(mp, False)
        Repository.clone("ia:egds-test-faults-clean-v2", root / "clean-clone")
        clone = steps(emu.requests, "egds-test-faults-clean-v2")
        assert emu.errors == []
    yield Template(v1_repo, v2_repo, v1, v2, root / "original-v1", root / "original-v2", v1_item, v2_item,
                   {"v1": clean_v1, "v2": clean_v2}, clone)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("EGDS_RETRY_BACKOFF", "0.001")
    monkeypatch.delenv("IA_CONFIG_FILE", raising=False)
    return monkeypatch


def test_the_clean_runs_have_the_expected_shape(template: Template):
    """What the matrix iterates over: R requests per clean push, none of them wasted."""
    v1, v2 = template.clean["v1"], template.clean["v2"]
    assert [str(s) for s in v1[:2]] == [f"GET {REF_KEY}", f"GET {METADATA}"]
    # Run 1 ends with a look at the listing (it lags: ListingPending); run 2 plans, swaps the ref, writes the card.
    card = [f"PUT {CARD_SETTINGS_KEY}", f"PUT {CARD_KEY}", f"PUT {LATEST_KEY}"]
    assert [str(s) for s in v1[-8:]] == [f"GET {METADATA} (#2)", f"GET {REF_KEY} (#2)", f"GET {METADATA} (#3)",
                                         f"GET {REF_KEY} (#3)", f"PUT {REF_KEY}", *card]
    # v2's item has a card already: its settings are read (this repository has no title or license of its own).
    assert [str(s) for s in v2[-9:]] == [f"GET {METADATA} (#2)", f"GET {REF_KEY} (#2)", f"GET {METADATA} (#3)",
                                         f"GET {REF_KEY} (#3)", f"PUT {REF_KEY}", f"GET {CARD_SETTINGS_KEY}", *card]
    # 3 partitions + index.json, 1 manifest; 3 ref reads, 3 listings; the ref, the card's 3 files.
    assert len(v1) == 4 + 1 + 3 + 3 + 1 + 3
    assert len(v2) == 1 + 1 + 3 + 3 + 1 + 1 + 3  # one changed partition; the card settings read
    assert [s.key for s in template.clone].count(METADATA) == 0


# ---- the push matrix ----------------------------------------------------------------------------


def check_remote(emu: IAEmulator, identifier: str, t: Template, scenario: str, before: dict[str, bytes],
                 case: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = scenario_repo(t, scenario)
    head = t.v1 if scenario == "v1" else t.v2
    reached = chain_keys(repo, head)

    # 1. Every key stored, with the local bytes; nothing else but the card and the ref.
    files = ours(emu.files(identifier))
    assert set(files) == reached | {CARD_KEY, LATEST_KEY, REF_KEY, CARD_SETTINGS_KEY}, case
    assert all(files[k] == local_bytes(repo, k) for k in reached), case
    assert files[REF_KEY] == f"{head}\n".encode(), case

    # 2. No object or manifest successfully PUT twice over both runs (none at all if it was there before),
    #    except that a PUT whose reply was lost after IA stored it is sent again: egds cannot know.
    log = sorted((r for r in emu.requests), key=lambda r: r.index)
    stored_puts = Counter(key_of(r, identifier) for r in log if r.method == "PUT" and r.status == 200)
    unanswered = Counter(key_of(r, identifier) for r in log if r.method == "PUT" and r.fault == "lost_reply")
    for key in reached:
        expected = 0 if key in before else 1
        assert stored_puts[key] == expected + unanswered[key], (case, key, stored_puts[key])

    # 3. The ref invariant: when the ref was written, everything it reaches had been stored already
    #    (an earlier request, both by arrival and by completion, or there before the push).
    names = {hashlib.md5(f"{i}\n".encode()).hexdigest(): i for i in (t.v1, t.v2)}
    completed = {r.index: n for n, r in enumerate(emu.requests)}  # emu.requests is in completion order
    stored: dict[str, int] = {}  # key -> index of its first successful PUT
    ref_writes = 0
    for record in log:
        if record.method != "PUT" or record.status != 200:
            continue
        key = key_of(record, identifier)
        if key == REF_KEY:
            ref_writes += 1
            md5 = next(v for k, v in record.headers.items() if k.lower() == "content-md5").lower()
            target = names[md5]
            for needed in chain_keys(repo, target) - set(before):
                assert needed in stored, (case, "ref written before", needed)
                assert completed[stored[needed]] < completed[record.index], (case, "ref overtook", needed)
        stored.setdefault(key, record.index)
    assert ref_writes >= 1, case

    # 4. A clone without credentials verifies, and v1 and latest check out bit for bit.
    set_credentials(monkeypatch, False)
    try:
        clone_dir = tmp / f"clone-{case}"
        result = Repository.clone(f"ia:{identifier}", clone_dir)
        assert result.id == head, case
        clone = Repository.open(clone_dir)
        assert_same_cache(clone.cache_path, t.v1_cache if scenario == "v1" else t.v2_cache)
        if scenario == "v2":
            clone.checkout("v1")
            assert_same_cache(clone.cache_path, t.v1_cache)
        report = clone.verify()
        assert report.ok, (case, report.problems)
        shutil.rmtree(clone_dir)
    finally:
        set_credentials(monkeypatch, True)


@pytest.mark.parametrize("fault", ["503", "reset", "lost_reply"])
@pytest.mark.parametrize("scenario", ["v1", "v2"])
def test_one_fault_at_any_request_of_a_push_is_retried_and_the_push_succeeds(
    template: Template, env: pytest.MonkeyPatch, tmp_path: Path, scenario: str, fault: str
):
    """Mode "once": the fault matches every request and fires on the k-th one of the push."""
    repo = scenario_repo(template, scenario)
    set_credentials(env, True)
    for k in range(len(template.clean[scenario])):
        case = f"once-{scenario}-{fault}-{k}"
        identifier = f"egds-test-faults-{case}"
        before = template.v1_item if scenario == "v2" else {}
        with IAEmulator(metadata_lag=LAG) as emu:
            env.setenv("EGDS_IA_ENDPOINT", emu.endpoint)
            populate(emu, identifier, before)
            repo.remote_add(case, f"ia:{identifier}")
            emu.inject(fault, at=k)
            result = push_through(repo, case, emu)  # one fault, five attempts: no error may surface
            assert [f.index for f in emu.faults_fired] == [k], case
            assert result.ref_updated, case
            again = repo.push(case, wait=0)  # nothing left to do: no PUT at all
            assert again.objects_uploaded == 0 and not again.ref_updated and not again.card_uploaded, case
            check_remote(emu, identifier, template, scenario, before, case, tmp_path, env)
            assert emu.errors == [], case


@pytest.mark.parametrize("fault", ["503", "reset"])
@pytest.mark.parametrize("scenario", ["v1", "v2"])
def test_a_request_that_fails_every_attempt_stops_the_push_cleanly_and_a_re_run_completes_it(
    template: Template, env: pytest.MonkeyPatch, tmp_path: Path, scenario: str, fault: str
):
    """Mode "always": the request that was k-th in the clean push fails on all its attempts."""
    repo = scenario_repo(template, scenario)
    set_credentials(env, True)
    for k, step in enumerate(template.clean[scenario]):
        case = f"always-{scenario}-{fault}-{k}"
        identifier = f"egds-test-faults-{case}"
        before = template.v1_item if scenario == "v2" else {}
        with IAEmulator(metadata_lag=LAG) as emu:
            env.setenv("EGDS_IA_ENDPOINT", emu.endpoint)
            populate(emu, identifier, before)
            repo.remote_add(case, f"ia:{identifier}")
            inject_always(emu, fault, step, identifier)
            with pytest.raises(EgdsError) as failure:
                push_through(repo, case, emu)
            assert isinstance(failure.value, RemoteError), (case, failure.value)
            assert "\n" not in str(failure.value) and identifier in str(failure.value), case
            assert len(emu.faults_fired) == ATTEMPTS, (case, str(step))
            # The remote's old ref is intact (v1 never had one, v2's item still names v1), unless only the
            # card failed: it is written after the ref moved, and the re-run rewrites it.
            head = template.v1 if scenario == "v1" else template.v2
            after_ref = step.key in (CARD_KEY, LATEST_KEY, CARD_SETTINGS_KEY)  # the card's reads and writes
            expected_ref = f"{head}\n".encode() if after_ref else before.get(REF_KEY)
            assert emu.get_file(identifier, REF_KEY) == expected_ref, (case, str(step))
            result = push_through(repo, case, emu)
            assert result.card_uploaded and result.ref_updated != after_ref, case
            check_remote(emu, identifier, template, scenario, before, case, tmp_path, env)
            assert emu.errors == [], case


def test_a_push_that_fails_through_the_cli_prints_one_error_line_and_no_traceback(
    template: Template, env: pytest.MonkeyPatch, tmp_path: Path
):
    set_credentials(env, True)
    repo = template.v1_repo
    identifier = "egds-test-faults-cli-push"
    with IAEmulator(metadata_lag=LAG) as emu:
        repo.remote_add("cli-push", f"ia:{identifier}")
        step = next(s for s in template.clean["v1"] if s.method == "PUT" and s.key.startswith("egds/manifests/"))
        inject_always(emu, "reset", step, identifier)
        command = [str(EGDS), "-C", str(repo.root), "push", "cli-push"]
        environment = {**os.environ, "EGDS_IA_ENDPOINT": emu.endpoint}
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("egds: error: "), done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        assert emu.get_file(identifier, REF_KEY) is None
        # The re-run uploads the manifest, but the listing lags: exit 75, one line saying to run it again.
        done = subprocess.run([*command, "--wait", "0"], env=environment, capture_output=True, text=True, timeout=120)
        assert done.returncode == 75, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"egds push cli-push" in lines[0] and "again later" in lines[0], done.stderr
        assert emu.get_file(identifier, REF_KEY) is None
        emu.settle()
        done = subprocess.run([*command, "--wait", "0"], env=environment, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert emu.get_file(identifier, REF_KEY) == f"{template.v1}\n".encode()
        assert emu.errors == []


# ---- clone under faults -------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "reset"])
def test_one_fault_at_any_download_of_a_clone_is_retried_and_the_clone_is_identical(
    template: Template, env: pytest.MonkeyPatch, tmp_path: Path, fault: str
):
    set_credentials(env, False)
    for k in range(len(template.clone)):
        case = f"clone-once-{fault}-{k}"
        identifier = f"egds-test-faults-{case}"
        with IAEmulator() as emu:
            env.setenv("EGDS_IA_ENDPOINT", emu.endpoint)
            populate(emu, identifier, template.v2_item)
            emu.inject(fault, at=k)
            Repository.clone(f"ia:{identifier}", tmp_path / case)
            assert [f.index for f in emu.faults_fired] == [k], case
            clone = Repository.open(tmp_path / case)
            assert clone.head() == template.v2
            v2_objects = manifest_object_keys(template.v2_repo.manifest(template.v2))
            assert object_files(clone) == {f"{i}{s}" for i, s in v2_objects}, case  # nothing damaged kept
            assert_same_cache(clone.cache_path, template.v2_cache)
            assert clone.verify().ok, case
            assert emu.errors == [], case


@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "empty-dir"])
@pytest.mark.parametrize("fault", ["500", "reset", "corrupt"])
def test_a_clone_whose_download_keeps_failing_stops_cleanly_and_leaves_nothing_behind(
    template: Template, env: pytest.MonkeyPatch, tmp_path: Path, fault: str, existing: bool
):
    """The ref, the head manifest, its parent (all read before the directory is made) and an object
    (after), each failing on every attempt."""
    set_credentials(env, False)
    head, parent = manifest_key(template.v2), manifest_key(template.v1)
    chosen = [s for s in template.clone if s.key in (REF_KEY, head, parent) and s.occurrence < 2]
    chosen += [s for s in template.clone if s.key.endswith(".parquet")][-1:]
    assert [str(s) for s in chosen[:3]] == [f"GET {REF_KEY}", f"GET {head}", f"GET {parent}"]
    for n, step in enumerate(chosen):
        case = f"clone-always-{fault}-{existing}-{n}"
        identifier = f"egds-test-faults-{case}"
        target = tmp_path / case
        if existing:
            target.mkdir()
        with IAEmulator() as emu:
            env.setenv("EGDS_IA_ENDPOINT", emu.endpoint)
            populate(emu, identifier, template.v2_item)
            # A damaged body is re-read DOWNLOAD_ATTEMPTS times; a failed request is retried ATTEMPTS times.
            inject_always(emu, fault, step, identifier, DOWNLOAD_ATTEMPTS if fault == "corrupt" else ATTEMPTS)
            with pytest.raises(EgdsError) as failure:
                Repository.clone(f"ia:{identifier}", target)
            expected = (RemoteError,) if fault != "corrupt" or step.key == REF_KEY else (CorruptObject,)
            assert isinstance(failure.value, expected), (case, str(step), failure.value)
            if existing:
                assert target.is_dir() and list(target.iterdir()) == [], case
            else:
                assert not target.exists(), case
            assert emu.errors == [], case


def test_a_clone_that_fails_through_the_cli_prints_one_error_line_and_leaves_no_directory(
    template: Template, env: pytest.MonkeyPatch, tmp_path: Path
):
    identifier = "egds-test-faults-cli-clone"
    with IAEmulator() as emu:
        populate(emu, identifier, template.v2_item)
        step = next(s for s in template.clone if s.key.endswith(".parquet"))
        inject_always(emu, "500", step, identifier)
        environment = {k: v for k, v in os.environ.items() if k not in KEYS}
        environment["EGDS_IA_ENDPOINT"] = emu.endpoint
        done = subprocess.run([str(EGDS), "clone", f"ia:{identifier}", "copy"], env=environment, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("egds: error: "), done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        assert not (tmp_path / "copy").exists()
        assert emu.errors == []
