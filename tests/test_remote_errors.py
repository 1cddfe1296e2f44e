"""Remote errors: every bad name, URL, identifier, credential, damaged remote, transfer fault and
conflicting history is refused with an `EgdsError` whose one-line message names the thing and says
what to do; the CLI exits non-zero with one `egds: error:` line and no traceback; and nothing is left
half-written (no partial clone directory, no moved ref, no upload after a refusal).

Transient faults (a corrupt byte or a 503 once) are the opposite case: they are retried and the
operation succeeds.
"""

from __future__ import annotations

import collections
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from conftest import (
    RemoteBackend,
    assert_same_cache,
    dir_tree,
    make_backend,
    make_chunks,
    make_embeddings,
    repo_tree,
    write_cache,
)
from egregora_ds import Repository
from egregora_ds.card import REF_KEY, manifest_key, object_key
from egregora_ds.cli import app
from egregora_ds.errors import CorruptObject, EgdsError, UnsavedWork, UsageError
from egregora_ds.ids import PARQUET, hash_bytes, short
from egregora_ds.store.base import RemoteAuthError, RemoteError
from egregora_ds.store.ia import InternetArchiveRemote
from egregora_ds.clone import Diverged
from egregora_ds.push import ListingPending, NonFastForward

ROWS, DIM = 30, 8

#: A message "says what to do" when it holds an instruction.
ADVICE = re.compile(
    r"\b(run|pass|use|check (?:the|your)|choose|add|set|remove|pull|push|clone|try|report|fix|restore|keep|give|ask)\b",
    re.IGNORECASE,
)

ANY_SIZE = 1 << 30  # reads in these tests are bounded only to satisfy the protocol


def assert_message(error: BaseException | str, *needles: str, advice: bool = True) -> str:
    """One non-empty line that contains every needle and (unless told otherwise) an instruction."""
    message = str(error)
    assert message.strip() and "\n" not in message, f"not one line: {message!r}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    if advice:
        assert ADVICE.search(message), f"does not say what to do: {message!r}"
    assert "Traceback" not in message
    return message


def cli_error(root: Path, *args: str) -> tuple[int, str]:
    """Run `egds -C root ARGS` in-process; it must fail with one `egds: error:` line and no traceback."""
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    assert result.exit_code not in (0, 70), (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egds: error: "), result.stderr
    return result.exit_code, lines[0].removeprefix("egds: error: ")


def tree(path: Path) -> dict[str, bytes | None]:
    """Every file (-> bytes) and directory (-> None) under `path`: equal trees mean nothing was written."""
    if not path.exists():
        return {}
    return {p.relative_to(path).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def write_v1(repo: Repository) -> str:
    write_cache(repo.cache_path, make_chunks(ROWS), make_embeddings(ROWS, dim=DIM), index={"newsletters": 6})
    return repo.snapshot("v1").id


def edit_and_snapshot(repo: Repository, text: str) -> str:
    """Change one chunk of 2024-03 in `repo`'s cache and record it; returns the new version's id."""
    chunks, vectors = make_chunks(ROWS), make_embeddings(ROWS, dim=DIM)
    chunks[12]["text"] = text
    write_cache(repo.cache_path, chunks, vectors, index={"newsletters": 6})
    result = repo.snapshot(text)
    assert result.created
    return result.id


@dataclass
class Pushed:
    repo: Repository
    backend: RemoteBackend
    v1: str

    def clone(self, directory: Path) -> Repository:
        with self.backend.anonymous():
            Repository.clone(self.backend.url, directory)
        return Repository.open(directory)


@pytest.fixture
def pushed(remote_backend: RemoteBackend, tmp_path: Path) -> Pushed:
    repo = Repository.init(tmp_path / "origin", cache="cache/rag", model="test-model")
    v1 = write_v1(repo)
    repo.remote_add("origin", remote_backend.url)
    repo.push("origin")
    remote_backend.settle()
    return Pushed(repo, remote_backend, v1)


@pytest.fixture
def ia(ia_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RemoteBackend:
    """An empty IA item on a fresh emulator (egds pointed at it, keys set)."""
    return make_backend("ia", tmp_path, monkeypatch, ia_env)


@pytest.fixture
def ia_pushed(ia: RemoteBackend, tmp_path: Path) -> Pushed:
    repo = Repository.init(tmp_path / "origin", cache="cache/rag", model="test-model")
    v1 = write_v1(repo)
    repo.remote_add("origin", ia.url)
    repo.push("origin")
    return Pushed(repo, ia, v1)


# ---- names and URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["push", "pull"])
def test_an_unknown_remote_name_is_refused_naming_it_and_how_to_add_one(filled_repo: Repository, command: str) -> None:
    filled_repo.remote_add("backup", str(filled_repo.root.parent / "backup"))
    before = repo_tree(filled_repo.root)
    with pytest.raises(UsageError) as raised:
        getattr(filled_repo, command)("nope")
    assert_message(raised.value, "'nope'", "backup", "egds remote add")
    assert repo_tree(filled_repo.root) == before
    code, line = cli_error(filled_repo.root, command, "nope")
    assert code == 2 and "'nope'" in line
    assert repo_tree(filled_repo.root) == before


@pytest.mark.parametrize("url", ["http://x", "https://archive.org/details/x", "s3://b", "file://relative", "", "   "])
def test_remote_add_refuses_a_malformed_url_and_records_nothing(filled_repo: Repository, url: str) -> None:
    before = repo_tree(filled_repo.root)
    with pytest.raises(UsageError) as raised:
        filled_repo.remote_add("origin", url)
    message = assert_message(raised.value, repr(url.strip()))
    assert "file:///" in message  # the form that works
    assert filled_repo.remote_list() == {}
    assert repo_tree(filled_repo.root) == before
    code, line = cli_error(filled_repo.root, "remote", "add", "origin", url)
    assert code == 2 and "remote URL" in line
    assert repo_tree(filled_repo.root) == before


BAD_IDENTIFIERS = ["ab", "-abc", ".abc", "_abc", "a" * 101, "a b", "a/b", "ab\tc", "ação"]


@pytest.mark.parametrize("identifier", BAD_IDENTIFIERS, ids=lambda s: repr(s)[:16])
def test_an_invalid_ia_identifier_is_refused_with_the_rule(filled_repo: Repository, identifier: str) -> None:
    before = repo_tree(filled_repo.root)
    with pytest.raises(UsageError) as raised:
        filled_repo.remote_add("origin", f"ia:{identifier}")
    assert_message(raised.value, "identifier", "3-100", "A-Z a-z 0-9 . _ -", "not starting with '.', '_' or '-'")
    assert repo_tree(filled_repo.root) == before
    with pytest.raises(UsageError, match="3-100"):
        InternetArchiveRemote(identifier)
    code, line = cli_error(filled_repo.root, "remote", "add", "origin", f"ia:{identifier}")
    assert code == 2 and "3-100" in line


@pytest.mark.parametrize("identifier", ["ab", "-abc", "a/b"])
def test_cloning_an_invalid_ia_identifier_is_refused_before_any_request(
    ia: RemoteBackend, tmp_path: Path, identifier: str
) -> None:
    with pytest.raises(UsageError, match="3-100"):
        Repository.clone(f"ia:{identifier}", tmp_path / "clone")
    assert not (tmp_path / "clone").exists()
    assert ia.emu.requests == []


@pytest.mark.parametrize("identifier", ["abc", "a" * 100, "A.b_c-9", "0-starts-with-a-digit"])
def test_valid_ia_identifiers_at_the_edges_of_the_rule_are_accepted(filled_repo: Repository, identifier: str) -> None:
    assert filled_repo.remote_add("origin", f"ia:{identifier}").url == f"ia:{identifier}"


def test_adding_a_remote_name_twice_is_refused_and_keeps_the_first(filled_repo: Repository, tmp_path: Path) -> None:
    filled_repo.remote_add("origin", str(tmp_path / "first"))
    before = repo_tree(filled_repo.root)
    with pytest.raises(UsageError) as raised:
        filled_repo.remote_add("origin", "ia:some-item")
    assert_message(raised.value, "'origin'", "already exists", str(tmp_path / "first"))
    assert filled_repo.remote_list()["origin"].url == str(tmp_path / "first")
    code, _ = cli_error(filled_repo.root, "remote", "add", "origin", "ia:some-item")
    assert code == 2
    assert repo_tree(filled_repo.root) == before


@pytest.mark.parametrize("name", ["1origin", "a b", "-x", "", "a/b"])
def test_an_invalid_remote_name_is_refused(filled_repo: Repository, tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError) as raised:
        filled_repo.remote_add(name, str(tmp_path / "r"))
    assert_message(raised.value, "remote name")
    assert filled_repo.remote_list() == {}
    if name:  # typer itself refuses an empty positional argument
        code, _ = cli_error(filled_repo.root, "remote", "add", "--", name, str(tmp_path / "r"))
        assert code == 2


# ---- Internet Archive credentials ---------------------------------------------------------------


def test_push_to_ia_without_keys_names_them_and_ia_configure_and_writes_nothing(
    ia: RemoteBackend, filled_repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    filled_repo.remote_add("origin", ia.url)
    monkeypatch.delenv("IA_ACCESS_KEY_ID")
    monkeypatch.delenv("IA_SECRET_ACCESS_KEY")
    before = repo_tree(filled_repo.root)
    with pytest.raises(RemoteAuthError) as raised:
        filled_repo.push("origin")
    assert_message(raised.value, "IA_ACCESS_KEY_ID", "IA_SECRET_ACCESS_KEY", "`ia configure`", ia.url)
    code, line = cli_error(filled_repo.root, "push", "origin")
    assert code == 1 and "IA_ACCESS_KEY_ID" in line
    # Planning reads the ref and the file list (an up-to-date push needs no keys); nothing writes.
    assert [r.method for r in ia.emu.requests if r.method != "GET"] == []
    assert ia.emu.files(ia.identifier) == {} and ia.emu.item_metadata(ia.identifier) is None
    assert repo_tree(filled_repo.root) == before


def test_push_to_ia_with_wrong_keys_is_refused_saying_check_your_keys_and_stores_nothing(
    ia: RemoteBackend, filled_repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    filled_repo.remote_add("origin", ia.url)
    monkeypatch.setenv("IA_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(RemoteAuthError) as raised:
        filled_repo.push("origin")
    assert_message(raised.value, "403", "check your IA keys")
    assert ia.emu.files(ia.identifier) == {}
    assert filled_repo.store.read_ref("remotes/origin/main") is None
    code, _ = cli_error(filled_repo.root, "push", "origin")
    assert code == 1


# ---- damaged remotes ----------------------------------------------------------------------------


def test_a_garbage_remote_ref_is_refused_by_clone_pull_and_push_naming_the_ref(pushed: Pushed, tmp_path: Path) -> None:
    pushed.backend.put_raw(REF_KEY, b"<html>not a ref</html>\n")
    remote_before = pushed.backend.stored()
    local_before = repo_tree(pushed.repo.root)
    with pytest.raises(RemoteError) as raised, pushed.backend.anonymous():
        Repository.clone(pushed.backend.url, tmp_path / "clone")
    assert_message(raised.value, REF_KEY, "not a manifest id", advice=False)
    assert not (tmp_path / "clone").exists()
    for command in ("pull", "push"):
        with pytest.raises(RemoteError, match=re.escape(REF_KEY)):
            getattr(pushed.repo, command)("origin")
        cli_error(pushed.repo.root, command, "origin")
    cli_error(tmp_path, "clone", pushed.backend.url, "clone")
    assert not (tmp_path / "clone").exists()
    assert repo_tree(pushed.repo.root) == local_before
    assert pushed.backend.stored() == remote_before


def craft(pushed: Pushed, change: Callable[[dict], None], *, version: int | None = None, parent: str | None = None) -> tuple[str, bytes]:
    """The v1 manifest with `change` applied (and optionally a new version/parent): (its hash, its bytes)."""
    document = json.loads(pushed.repo.store.read_manifest_bytes(pushed.v1))
    change(document)
    if version is not None:
        document["version"], document["parent"] = version, parent
    data = json.dumps(document, indent=2).encode()
    return hash_bytes(data), data


def put_manifest_as_head(pushed: Pushed, manifest_id: str, data: bytes) -> None:
    pushed.backend.put_raw(manifest_key(manifest_id), data)
    pushed.backend.put_raw(REF_KEY, f"{manifest_id}\n".encode())


def set_first_object(value: str) -> Callable[[dict], None]:
    return lambda d: d["partitions"][0].__setitem__("object", value)


BAD_MANIFESTS: dict[str, Callable[[dict], None] | bytes] = {
    "not-json": b"this is { not json",
    "not-an-object": b"[1, 2, 3]\n",
    "non-hex-object-id": set_first_object("Z" * 64),
    "short-object-id": set_first_object("ab" * 8),
    "object-dot-dot-x": set_first_object("../x"),
    "object-etc-passwd": set_first_object("../../etc/passwd"),
    "index-dot-dot": lambda d: d.__setitem__("index", "../../../index"),
    "parent-dot-dot": lambda d: d.__setitem__("parent", "../../x"),
}


def bad_manifest(pushed: Pushed, kind: str) -> tuple[str, bytes]:
    spec = BAD_MANIFESTS[kind]
    if isinstance(spec, bytes):
        return hash_bytes(spec), spec
    return craft(pushed, spec)


@pytest.fixture
def path_ids(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every id egds turns into a local path or a remote key while the test runs (a spy on the four builders)."""
    import egregora_ds.transfer as transfer
    from egregora_ds.store.local import LocalStore

    seen: list[str] = []

    def spy(original: Callable[..., Any], method: bool) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            seen.append(args[1] if method else args[0])
            return original(*args)

        return wrapper

    monkeypatch.setattr(LocalStore, "object_path", spy(LocalStore.object_path, True))
    monkeypatch.setattr(LocalStore, "manifest_path", spy(LocalStore.manifest_path, True))
    monkeypatch.setattr(transfer, "object_key", spy(transfer.object_key, False))
    monkeypatch.setattr(transfer, "manifest_key", spy(transfer.manifest_key, False))
    return seen


def assert_only_hex_ids(seen: list[str]) -> None:
    bad = [i for i in seen if not re.fullmatch(r"[0-9a-f]{64}", i)]
    assert bad == [], f"a path or key was built from an unvalidated id: {bad}"


@pytest.mark.parametrize("kind", list(BAD_MANIFESTS))
def test_a_clone_refuses_an_invalid_latest_manifest_and_leaves_no_directory(
    pushed: Pushed, tmp_path: Path, kind: str, path_ids: list[str]
) -> None:
    manifest_id, data = bad_manifest(pushed, kind)
    put_manifest_as_head(pushed, manifest_id, data)
    outside = tree(tmp_path)
    with pytest.raises(CorruptObject) as raised, pushed.backend.anonymous():
        Repository.clone(pushed.backend.url, tmp_path / "clone")
    assert_message(raised.value, short(manifest_id), pushed.backend.url, advice=False)
    assert not (tmp_path / "clone").exists()
    assert tree(tmp_path) == outside, "nothing may be written anywhere, in or outside the clone directory"
    assert_only_hex_ids(path_ids)


@pytest.mark.parametrize("kind", ["object-dot-dot-x", "object-etc-passwd", "non-hex-object-id", "not-json"])
def test_a_clone_refuses_an_invalid_older_manifest_and_removes_the_half_clone(
    pushed: Pushed, tmp_path: Path, kind: str, path_ids: list[str]
) -> None:
    bad_id, bad = bad_manifest(pushed, kind)
    pushed.backend.put_raw(manifest_key(bad_id), bad)
    head_id, head = craft(pushed, lambda d: None, version=2, parent=bad_id)  # valid itself; its parent is not
    put_manifest_as_head(pushed, head_id, head)
    outside = tree(tmp_path)
    with pytest.raises(CorruptObject) as raised, pushed.backend.anonymous():
        Repository.clone(pushed.backend.url, tmp_path / "clone")
    assert_message(raised.value, short(bad_id), advice=False)
    assert not (tmp_path / "clone").exists()
    assert tree(tmp_path) == outside
    cli_error(tmp_path, "clone", pushed.backend.url, "clone")
    assert tree(tmp_path) == outside
    assert bad_id in path_ids and head_id in path_ids, "the spy saw the clone at work"
    assert_only_hex_ids(path_ids)


def test_a_failed_clone_into_an_existing_empty_directory_leaves_it_empty(pushed: Pushed, tmp_path: Path) -> None:
    manifest_id, data = bad_manifest(pushed, "object-dot-dot-x")
    pushed.backend.put_raw(manifest_key(manifest_id), data)
    head_id, head = craft(pushed, lambda d: None, version=2, parent=manifest_id)
    put_manifest_as_head(pushed, head_id, head)
    (tmp_path / "clone").mkdir()
    with pytest.raises(CorruptObject), pushed.backend.anonymous():
        Repository.clone(pushed.backend.url, tmp_path / "clone")
    assert (tmp_path / "clone").is_dir() and list((tmp_path / "clone").iterdir()) == []


@pytest.mark.parametrize("kind", ["not-json", "object-dot-dot-x", "non-hex-object-id"])
def test_a_pull_refuses_an_invalid_remote_manifest_and_changes_nothing_locally(pushed: Pushed, tmp_path: Path, kind: str) -> None:
    clone = pushed.clone(tmp_path / "clone")
    manifest_id, data = bad_manifest(pushed, kind)
    put_manifest_as_head(pushed, manifest_id, data)
    before, cache_before = repo_tree(clone.root), dir_tree(clone.cache_path)
    with pytest.raises(CorruptObject) as raised, pushed.backend.anonymous():
        clone.pull("origin")
    assert_message(raised.value, short(manifest_id), advice=False)
    assert repo_tree(clone.root) == before and dir_tree(clone.cache_path) == cache_before
    cli_error(clone.root, "pull")


def test_a_remote_manifest_whose_bytes_do_not_match_its_name_is_refused(pushed: Pushed, tmp_path: Path) -> None:
    real = pushed.repo.store.read_manifest_bytes(pushed.v1)
    claimed = "ab" * 32
    put_manifest_as_head(pushed, claimed, real)
    with pytest.raises(CorruptObject) as raised, pushed.backend.anonymous():
        Repository.clone(pushed.backend.url, tmp_path / "clone")
    assert_message(raised.value, short(claimed), "hash", advice=False)
    assert not (tmp_path / "clone").exists()
    # The same through pull, from a repository that had the honest v1.
    pushed.backend.put_raw(REF_KEY, f"{pushed.v1}\n".encode())
    clone = pushed.clone(tmp_path / "clone")
    put_manifest_as_head(pushed, claimed, real)
    before = repo_tree(clone.root)
    with pytest.raises(CorruptObject, match=short(claimed)), pushed.backend.anonymous():
        clone.pull("origin")
    assert repo_tree(clone.root) == before


def test_a_remote_object_whose_bytes_do_not_match_its_name_fails_the_clone_naming_it(pushed: Pushed, tmp_path: Path) -> None:
    partition = pushed.repo.manifest(pushed.v1).partitions[2]
    key = object_key(partition.object, PARQUET)
    good = pushed.backend.stored()[key]
    pushed.backend.put_raw(key, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(CorruptObject) as raised, pushed.backend.anonymous():
        Repository.clone(pushed.backend.url, tmp_path / "clone")
    assert_message(raised.value, short(partition.object), "hash")
    assert not (tmp_path / "clone").exists()
    code, _ = cli_error(tmp_path, "clone", pushed.backend.url, "clone")
    assert code == 1 and not (tmp_path / "clone").exists()


def test_a_clone_of_a_remote_missing_an_object_fails_and_leaves_no_directory(pushed: Pushed, tmp_path: Path) -> None:
    partition = pushed.repo.manifest(pushed.v1).partitions[0]
    key = object_key(partition.object, PARQUET)
    pushed.backend.delete_raw(key)
    with pytest.raises(EgdsError) as raised, pushed.backend.anonymous():
        Repository.clone(pushed.backend.url, tmp_path / "clone")
    assert_message(raised.value, short(partition.object), advice=False)
    assert not (tmp_path / "clone").exists()
    cli_error(tmp_path, "clone", pushed.backend.url, "clone")
    assert not (tmp_path / "clone").exists()


# Messages about a damaged remote must also say what to do (wait and retry, report it, re-push a good copy).
DAMAGE = ["garbage-ref", "bad-json-manifest", "mismatched-manifest", "missing-object"]




@pytest.mark.parametrize(
    "damage", DAMAGE
)
@pytest.mark.parametrize("remote_backend", ["directory"], indirect=True)
def test_a_damaged_remote_message_says_what_to_do(pushed: Pushed, tmp_path: Path, damage: str) -> None:
    if damage == "garbage-ref":
        pushed.backend.put_raw(REF_KEY, b"garbage\n")
    elif damage == "bad-json-manifest":
        put_manifest_as_head(pushed, hash_bytes(b"{"), b"{")
    elif damage == "mismatched-manifest":
        put_manifest_as_head(pushed, "cd" * 32, pushed.repo.store.read_manifest_bytes(pushed.v1))
    else:
        pushed.backend.delete_raw(object_key(pushed.repo.manifest(pushed.v1).partitions[0].object, PARQUET))
    with pytest.raises(EgdsError) as raised:
        Repository.clone(pushed.backend.url, tmp_path / "clone")
    message = str(raised.value)
    assert ADVICE.search(message) and "egds verify" not in message, message


@pytest.mark.parametrize("remote_backend", ["directory"], indirect=True)
def test_an_invalid_remote_manifest_message_names_it_once(pushed: Pushed, tmp_path: Path) -> None:
    manifest_id, data = bad_manifest(pushed, "object-dot-dot-x")
    put_manifest_as_head(pushed, manifest_id, data)
    with pytest.raises(CorruptObject) as raised:
        Repository.clone(pushed.backend.url, tmp_path / "clone")
    assert "manifest manifest" not in str(raised.value)


# ---- transfer faults (Internet Archive) ---------------------------------------------------------


def download(ia: RemoteBackend, what: str) -> str:
    return {"any": "GET archive.org/download/*",
            "manifest": f"GET archive.org/download/{ia.identifier}/egds/manifests/*",
            "object": f"GET archive.org/download/{ia.identifier}/egds/objects/*"}[what]


@pytest.mark.parametrize("what", ["any", "manifest", "object"])
def test_a_download_corrupted_once_is_retried_and_the_clone_succeeds(ia_pushed: Pushed, tmp_path: Path, what: str) -> None:
    emu = ia_pushed.backend.emu
    emu.inject("corrupt", match=download(ia_pushed.backend, what))
    ia_pushed.clone(tmp_path / "clone")
    assert [r.fault for r in emu.faults_fired] == ["corrupt"]
    assert_same_cache(tmp_path / "clone" / "cache" / "rag", ia_pushed.repo.cache_path)
    assert Repository.open(tmp_path / "clone").verify().ok


def test_an_object_corrupted_on_every_attempt_fails_the_clone_naming_it_and_leaves_no_directory(
    ia_pushed: Pushed, tmp_path: Path
) -> None:
    emu, ia = ia_pushed.backend.emu, ia_pushed.backend
    partition = ia_pushed.repo.manifest(ia_pushed.v1).partitions[1]
    key = object_key(partition.object, PARQUET)
    for _ in range(20):
        emu.inject("corrupt", match=f"GET archive.org/download/{ia.identifier}/{key}")
    with pytest.raises(CorruptObject) as raised, ia.anonymous():
        Repository.clone(ia.url, tmp_path / "clone")
    assert_message(raised.value, short(partition.object), "hash")
    assert len([r for r in emu.requests if r.path.endswith(key)]) >= 2, "a bad download is retried before giving up"
    assert not (tmp_path / "clone").exists()
    code, line = cli_error(tmp_path, "clone", ia.url, "clone")
    assert code == 1 and short(partition.object) in line
    assert not (tmp_path / "clone").exists()


def test_a_manifest_corrupted_on_every_attempt_fails_the_clone_naming_it(ia_pushed: Pushed, tmp_path: Path) -> None:
    emu, ia = ia_pushed.backend.emu, ia_pushed.backend
    for _ in range(20):
        emu.inject("corrupt", match=download(ia, "manifest"))
    with pytest.raises(CorruptObject) as raised, ia.anonymous():
        Repository.clone(ia.url, tmp_path / "clone")
    assert_message(raised.value, short(ia_pushed.v1), advice=False)
    assert not (tmp_path / "clone").exists()


@pytest.mark.parametrize("what", ["any", "manifest", "object"])
def test_a_503_on_a_download_is_retried_and_the_clone_succeeds(ia_pushed: Pushed, tmp_path: Path, what: str) -> None:
    emu = ia_pushed.backend.emu
    emu.inject("503", match=download(ia_pushed.backend, what))
    ia_pushed.clone(tmp_path / "clone")
    assert [r.fault for r in emu.faults_fired] == ["503"]
    assert_same_cache(tmp_path / "clone" / "cache" / "rag", ia_pushed.repo.cache_path)


def test_a_503_on_the_metadata_request_is_retried_and_the_push_succeeds(ia: RemoteBackend, filled_repo: Repository) -> None:
    filled_repo.remote_add("origin", ia.url)
    ia.emu.inject("503", match=f"GET archive.org/metadata/{ia.identifier}")
    result = filled_repo.push("origin")
    assert [r.fault for r in ia.emu.faults_fired] == ["503"]
    assert result.ref_updated
    assert ia.remote().get(REF_KEY, ANY_SIZE) == f"{filled_repo.head()}\n".encode()


def test_a_download_503_on_every_attempt_fails_the_clone_with_a_one_line_error(ia_pushed: Pushed, tmp_path: Path) -> None:
    emu, ia = ia_pushed.backend.emu, ia_pushed.backend
    key = object_key(ia_pushed.repo.manifest(ia_pushed.v1).partitions[4].object, PARQUET)
    for _ in range(20):  # every attempt of the API clone and of the CLI clone below
        emu.inject("503", match=f"GET archive.org/download/{ia.identifier}/{key}")
    with pytest.raises(RemoteError) as raised, ia.anonymous():
        Repository.clone(ia.url, tmp_path / "clone")
    assert_message(raised.value, ia.url, "503", "try again later")
    assert not (tmp_path / "clone").exists()
    code, _ = cli_error(tmp_path, "clone", ia.url, "clone")
    assert code == 1 and not (tmp_path / "clone").exists()


def test_an_interrupted_push_under_metadata_lag_never_uploads_a_key_twice(ia: RemoteBackend, filled_repo: Repository) -> None:
    emu = ia.emu
    emu.metadata_lag = 3600  # the listing shows nothing pushed during this test
    filled_repo.remote_add("origin", ia.url)
    manifest = filled_repo.manifest(filled_repo.head())  # type: ignore[arg-type]
    failing = object_key(manifest.partitions[3].object, PARQUET)
    broken = [True]
    for _ in range(20):  # more than the retries: this upload fails for good while `broken`
        emu.inject("500", match=lambda method, host, path: broken[0] and method == "PUT" and path.endswith(failing))
    with pytest.raises(RemoteError) as raised:
        filled_repo.push("origin")
    assert_message(raised.value, failing, "try again later")
    assert ia.remote().get(REF_KEY, ANY_SIZE) is None, "an interrupted push must not move the ref"
    uploaded_first = {r.path for r in emu.requests if r.method == "PUT" and r.status == 200}
    assert uploaded_first, "the other objects went up before the failure"

    broken[0] = False
    with pytest.raises(ListingPending):  # the listing still shows none of it: the ref waits
        filled_repo.push("origin", wait=0)
    emu.settle()
    again = filled_repo.push("origin", wait=0)
    assert again.objects_uploaded == 0 and again.ref_updated
    stored_puts = collections.Counter(r.path for r in emu.requests if r.method == "PUT" and r.status == 200)
    twice = {path: n for path, n in stored_puts.items() if n > 1}
    assert twice == {}, f"uploaded more than once: {twice}"
    prefix = f"/{ia.identifier}/"
    assert {p.removeprefix(prefix) for p in stored_puts} >= {object_key(i, s) for i, s in [
        (p.object, PARQUET) for p in manifest.partitions]}
    assert ia.remote().get(REF_KEY, ANY_SIZE) == f"{filled_repo.head()}\n".encode()


# ---- clone targets and empty remotes ------------------------------------------------------------


def test_a_clone_into_a_non_empty_directory_is_refused_and_leaves_it_untouched(pushed: Pushed, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    (target / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = tree(target)
    with pytest.raises(UsageError) as raised, pushed.backend.anonymous():
        Repository.clone(pushed.backend.url, target)
    assert_message(raised.value, str(target), "not an empty directory", "choose another DIR")
    assert tree(target) == before
    code, _ = cli_error(tmp_path, "clone", pushed.backend.url, "busy")
    assert code == 2
    assert tree(target) == before


def test_a_clone_onto_an_existing_file_is_refused_and_leaves_it_untouched(pushed: Pushed, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="not an empty directory"), pushed.backend.anonymous():
        Repository.clone(pushed.backend.url, target)
    assert target.read_bytes() == b"keep me"


def test_a_clone_of_a_remote_without_egds_data_says_so_and_creates_nothing(
    remote_backend: RemoteBackend, tmp_path: Path
) -> None:
    remote_backend.put_raw("README.md", b"# some other dataset\n")  # not empty, but not egds either
    with pytest.raises(UsageError) as raised, remote_backend.anonymous():
        Repository.clone(remote_backend.url, tmp_path / "clone")
    assert_message(raised.value, remote_backend.url, "no egds data", REF_KEY, "check the URL")
    assert not (tmp_path / "clone").exists()
    code, _ = cli_error(tmp_path, "clone", remote_backend.url, "clone")
    assert code == 2 and not (tmp_path / "clone").exists()


def test_a_clone_of_a_directory_that_does_not_exist_says_there_is_no_egds_data(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no egds data"):
        Repository.clone(str(tmp_path / "nowhere"), tmp_path / "clone")
    assert not (tmp_path / "clone").exists() and not (tmp_path / "nowhere").exists()


def test_a_push_to_a_directory_remote_that_is_a_file_is_refused_and_the_file_untouched(
    filled_repo: Repository, tmp_path: Path
) -> None:
    target = tmp_path / "not-a-dir"
    target.write_bytes(b"a file")
    filled_repo.remote_add("usb", str(target))
    before = repo_tree(filled_repo.root)
    with pytest.raises(RemoteError) as raised:
        filled_repo.push("usb")
    assert_message(raised.value, str(target), "not a directory", "use a directory path")
    assert target.read_bytes() == b"a file" and repo_tree(filled_repo.root) == before
    code, _ = cli_error(filled_repo.root, "push", "usb")
    assert code == 1


def test_a_push_to_a_directory_remote_several_levels_below_an_existing_one_creates_them(
    filled_repo: Repository, tmp_path: Path
) -> None:
    target = tmp_path / "disk" / "backups" / "egds" / "remote"
    filled_repo.remote_add("usb", str(target))
    result = filled_repo.push("usb")
    assert result.ref_updated and (target / "egds" / "refs" / "main").is_file()
    cloned = Repository.clone(str(target), tmp_path / "clone")
    assert cloned.id == filled_repo.head()


def test_a_push_to_a_directory_remote_below_a_file_is_refused_naming_the_file(
    filled_repo: Repository, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file")
    filled_repo.remote_add("usb", str(blocker / "sub" / "remote"))
    before = repo_tree(filled_repo.root)
    with pytest.raises(RemoteError) as raised:
        filled_repo.push("usb")
    assert_message(raised.value, str(blocker), "is a file, not a directory", "use another path")
    assert blocker.read_bytes() == b"a file" and repo_tree(filled_repo.root) == before


def test_pull_from_a_remote_without_versions_says_push_first(filled_repo: Repository, tmp_path: Path) -> None:
    filled_repo.remote_add("empty", str(tmp_path / "empty-remote"))
    before = repo_tree(filled_repo.root)
    with pytest.raises(UsageError) as raised:
        filled_repo.pull("empty")
    assert_message(raised.value, "no versions", "push")
    assert repo_tree(filled_repo.root) == before
    code, _ = cli_error(filled_repo.root, "pull", "empty")
    assert code == 2 and repo_tree(filled_repo.root) == before


# ---- conflicting histories ----------------------------------------------------------------------


def test_a_push_behind_the_remote_is_refused_with_pull_first_and_the_ref_unchanged(pushed: Pushed, tmp_path: Path) -> None:
    first, second = pushed.clone(tmp_path / "first"), pushed.clone(tmp_path / "second")
    first_v2 = edit_and_snapshot(first, "first writer")
    first.push("origin")
    pushed.backend.settle()
    remote_before, local_before = pushed.backend.stored(), repo_tree(second.root)
    mark = pushed.backend.mark()
    with pytest.raises(NonFastForward) as raised:
        second.push("origin")  # second has nothing new: pulling makes it the remote's
    assert_message(raised.value, "pull first", short(first_v2), "`egds pull origin`")
    assert pushed.backend.writes_since(mark) == []
    assert repo_tree(second.root) == local_before
    with pushed.backend.anonymous():
        second.pull("origin")  # the advice works as written
    assert second.head() == first_v2


def test_a_push_that_diverged_from_the_remote_is_refused_saying_what_works_and_the_ref_unchanged(
    pushed: Pushed, tmp_path: Path
) -> None:
    first, second = pushed.clone(tmp_path / "first"), pushed.clone(tmp_path / "second")
    first_v2 = edit_and_snapshot(first, "first writer")
    first.push("origin")
    second_v2 = edit_and_snapshot(second, "second writer")
    pushed.backend.settle()
    remote_before, local_before = pushed.backend.stored(), repo_tree(second.root)
    mark = pushed.backend.mark()
    with pytest.raises(NonFastForward) as raised:
        second.push("origin")
    # Not "pull first": pull refuses diverged histories, which would send the user in a circle.
    message = assert_message(raised.value, "diverged", short(first_v2), "after v1", "egds remote add", "egds clone")
    assert "pull first" not in message
    assert pushed.backend.writes_since(mark) == [], "nothing is uploaded once the push is known to be refused"
    assert pushed.backend.stored() == remote_before
    assert pushed.backend.remote().get(REF_KEY, ANY_SIZE) == f"{first_v2}\n".encode()
    assert manifest_key(second_v2) not in remote_before
    assert repo_tree(second.root) == local_before
    code, line = cli_error(second.root, "push")
    assert code == 1 and "diverged" in line
    assert pushed.backend.stored() == remote_before
    # The clone it suggests runs as written (from anywhere: the target is absolute) and holds the remote's v2.
    clone_command = shlex.split(re.search(r"`egds clone ([^`]+)`", message).group(1))
    with pushed.backend.anonymous():
        result = CliRunner().invoke(app, ["clone", *clone_command])
    assert result.exit_code == 0, result.output
    assert Repository.open(clone_command[1]).head() == first_v2


def diverge(pushed: Pushed, tmp_path: Path) -> tuple[Repository, str, str]:
    """Two clones both record a v2; the first pushes. Returns (second clone, its v2, the remote's v2)."""
    first, second = pushed.clone(tmp_path / "first"), pushed.clone(tmp_path / "second")
    remote_v2 = edit_and_snapshot(first, "first writer")
    first.push("origin")
    pushed.backend.settle()
    local_v2 = edit_and_snapshot(second, "second writer")
    return second, local_v2, remote_v2


def test_a_pull_into_a_diverged_repository_is_refused_and_keeps_its_ref_and_cache(pushed: Pushed, tmp_path: Path) -> None:
    second, local_v2, _ = diverge(pushed, tmp_path)
    cache_before, log_before = dir_tree(second.cache_path), second.log()
    with pytest.raises(Diverged) as raised, pushed.backend.anonymous():
        second.pull("origin")
    message = assert_message(raised.value, "diverged", "origin", "`egds clone ")
    assert second.head() == local_v2 and second.log() == log_before
    assert second.store.read_ref("remotes/origin/main") == pushed.v1
    assert dir_tree(second.cache_path) == cache_before
    assert second.status().clean
    code, line = cli_error(second.root, "pull")
    assert code == 1 and "diverged" in line
    assert second.head() == local_v2 and dir_tree(second.cache_path) == cache_before
    # The advice runs as written: the suggested clone holds the remote's history beside this one.
    suggested = re.search(r"`egds clone (\S+) (\S+)`", message)
    assert suggested is not None, message
    with pushed.backend.anonymous():
        ran = CliRunner().invoke(app, ["clone", suggested.group(1), suggested.group(2)])
    assert ran.exit_code == 0, ran.output
    assert Repository.open(suggested.group(2)).head() == pushed.backend.remote().get(REF_KEY, 128).decode().strip()


@pytest.mark.parametrize("remote_backend", ["directory"], indirect=True)
def test_a_diverged_pull_leaves_the_repository_byte_identical(pushed: Pushed, tmp_path: Path) -> None:
    second, _, _ = diverge(pushed, tmp_path)
    before = repo_tree(second.root)
    with pytest.raises(Diverged):
        second.pull("origin")
    assert repo_tree(second.root) == before


def test_a_pull_over_unsaved_cache_changes_is_refused_and_moves_nothing(pushed: Pushed, tmp_path: Path) -> None:
    clone = pushed.clone(tmp_path / "clone")
    edit_and_snapshot(pushed.repo, "upstream change")
    pushed.repo.push("origin")
    pushed.backend.settle()
    chunks, vectors = make_chunks(ROWS), make_embeddings(ROWS, dim=DIM)
    chunks[0]["text"] = "local work not yet recorded"
    write_cache(clone.cache_path, chunks, vectors, index={"newsletters": 6})
    before, cache_before = repo_tree(clone.root), dir_tree(clone.cache_path)
    with pytest.raises(UnsavedWork) as raised, pushed.backend.anonymous():
        clone.pull("origin")
    assert_message(raised.value, str(clone.cache_path), "egds snapshot")
    assert clone.store.read_ref("main") == pushed.v1
    assert repo_tree(clone.root) == before and dir_tree(clone.cache_path) == cache_before
    code, _ = cli_error(clone.root, "pull")
    assert code == 1
    assert repo_tree(clone.root) == before and dir_tree(clone.cache_path) == cache_before
