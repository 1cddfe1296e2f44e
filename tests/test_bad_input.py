"""Bad input: every mistake a user (or an attacker) can put in front of egds is refused with an
`EgdsError` whose one-line message names the file/field/row and says what to do, and nothing is
written to the repository. The same holds through the CLI: non-zero exit, one line on stderr,
no traceback.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgspec
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import dir_tree, flip_byte, load_cache, make_chunks, make_embeddings, repo_tree, write_cache
from egregora_ds import Repository
from egregora_ds.cli import app
from egregora_ds.errors import (
    CacheError,
    CorruptObject,
    EgdsError,
    FormatTooNew,
    ModelChanged,
    NonFiniteEmbeddings,
    RepositoryExists,
    RevisionError,
    UnsafePickle,
)

EGDS = Path(sys.executable).with_name("egds")

#: A message "says what to do" when it contains an instruction or states the requirement.
ACTION = re.compile(
    r"\b(run|pass|fix|re-?create|re-run|remove|convert|use|check|delete|restore|upgrade|wait|write|give|"
    r"reshape|must|needs?|expected|snapshot with)\b",
    re.IGNORECASE,
)


# ---- helpers --------------------------------------------------------------------------------------


def assert_good_message(message: str, *needles: str) -> None:
    assert "\n" not in message, f"message is not one line: {message!r}"
    assert message.strip(), "empty message"
    for needle in needles:
        assert needle in message, f"{needle!r} not in message {message!r}"
    assert ACTION.search(message), f"message does not say what to do: {message!r}"


def refused(root: Path, exc_type: type[EgdsError], call: Callable[[], Any], *needles: str, cache: Path | None = None) -> str:
    """`call()` raises `exc_type` with a good message and writes nothing to `.egds` (nor to `cache`)."""
    before, cache_before = repo_tree(root), dir_tree(cache) if cache else None
    with pytest.raises(exc_type) as info:
        call()
    assert isinstance(info.value, EgdsError)
    assert_good_message(str(info.value), *needles)
    assert repo_tree(root) == before, "the repository changed although the command was refused"
    if cache is not None:
        assert dir_tree(cache) == cache_before, "the cache changed although the command was refused"
    return str(info.value)


def cli_refused(root: Path, args: list[str], *needles: str, cache: Path | None = None) -> str:
    """`egds -C root ARGS` exits non-zero with exactly one `egds: error:` line and writes nothing."""
    before, cache_before = repo_tree(root), dir_tree(cache) if cache else None
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    assert result.exit_code != 0, result.stdout
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("egds: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert repo_tree(root) == before, "the repository changed although the command was refused"
    if cache is not None:
        assert dir_tree(cache) == cache_before
    return lines[0]


def chunks_with_ids_1000() -> list[dict[str, Any]]:
    """The filled repo's 60 chunks, with chunk_id = 1000 + row so messages must tell row and id apart."""
    chunks = make_chunks(60)
    for chunk in chunks:
        chunk["chunk_id"] += 1000
    return chunks


def write_pickle(cache: Path, obj: Any, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    (cache / "embeddings.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))


def write_metadata(cache: Path, text: str) -> None:
    (cache / "metadata.json").write_text(text, encoding="utf-8")


def with_chunks(edit: Callable[[list[dict[str, Any]]], Any], embeddings: np.ndarray | None = None) -> Callable[[Path], None]:
    def setup(cache: Path) -> None:
        chunks = chunks_with_ids_1000()
        edit(chunks)
        write_cache(cache, chunks, make_embeddings(60) if embeddings is None else embeddings)

    return setup


def with_array(array: Any, **pickle_extra: Any) -> Callable[[Path], None]:
    def setup(cache: Path) -> None:
        write_cache(cache, chunks_with_ids_1000(), array, pickle_extra=pickle_extra)

    return setup


def _set(chunks: list, row: int, key: str, value: Any) -> None:
    chunks[row][key] = value


def _nonfinite() -> np.ndarray:
    array = make_embeddings(60)
    array[4, 0] = np.nan
    array[20, 3] = np.inf
    array[21, 1] = -np.inf
    return array


@dataclass
class Case:
    setup: Callable[[Path], None]
    error: type[EgdsError]
    needles: list[str] = field(default_factory=list)
    """Substrings of the message; `{cache}` stands for the cache directory."""


E = make_embeddings(60)
CASES = {
    "missing-cache-dir": Case(lambda c: shutil.rmtree(c), CacheError, ["{cache}", "does not exist"]),
    "missing-embeddings-pkl": Case(lambda c: (c / "embeddings.pkl").unlink(), CacheError, ["embeddings.pkl", "missing"]),
    "missing-metadata-json": Case(lambda c: (c / "metadata.json").unlink(), CacheError, ["metadata.json", "missing"]),
    "pickle-is-a-list": Case(lambda c: write_pickle(c, [E]), CacheError, ["embeddings.pkl", "list"]),
    "pickle-dict-without-embeddings": Case(lambda c: write_pickle(c, {"vectors": E}), CacheError, ["embeddings.pkl", "'embeddings'"]),
    "pickle-is-garbage": Case(lambda c: (c / "embeddings.pkl").write_bytes(b"not a pickle at all"), CacheError, ["embeddings.pkl"]),
    "pickle-is-truncated": Case(lambda c: write_pickle(c, {"embeddings": E}) or (c / "embeddings.pkl").write_bytes((c / "embeddings.pkl").read_bytes()[:500]),
                                CacheError, ["embeddings.pkl"]),
    "array-1d": Case(with_array(E.reshape(-1)), CacheError, ["embeddings.pkl", "(960,)"]),
    "array-3d": Case(with_array(E.reshape(60, 4, 4)), CacheError, ["embeddings.pkl", "(60, 4, 4)"]),
    "array-of-integers": Case(with_array(E.astype(np.int64)), CacheError, ["embeddings.pkl", "int64"]),
    "array-of-objects": Case(with_array(E.astype(object)), CacheError, ["embeddings.pkl", "object"]),
    "list-of-lists": Case(with_array(E.tolist()), CacheError, ["embeddings.pkl", "list"]),
    "dimension-zero": Case(with_array(np.zeros((60, 0), np.float32)), CacheError, ["embeddings.pkl", "dimension 0"]),
    "rows-differ-from-chunks": Case(with_array(E[:59]), CacheError, ["embeddings.pkl", "59 rows", "metadata.json", "60 chunks"]),
    "metadata-not-json": Case(lambda c: write_metadata(c, '{"chunks": [ {"chunk_id": 1,'), CacheError, ["metadata.json", "JSON"]),
    "metadata-not-utf8": Case(lambda c: (c / "metadata.json").write_bytes(b'{"chunks": "\xff\xfe"}'), CacheError, ["metadata.json"]),
    "metadata-without-chunks": Case(lambda c: write_metadata(c, '{"items": []}'), CacheError, ["metadata.json", "'chunks'"]),
    "metadata-is-a-list": Case(lambda c: write_metadata(c, "[]"), CacheError, ["metadata.json", "'chunks'"]),
    "chunk-not-a-dict": Case(with_chunks(lambda ch: ch.__setitem__(3, "just text")), CacheError, ["metadata.json", "chunks[3]"]),
    "chunk-without-date": Case(with_chunks(lambda ch: ch[7].pop("newsletter_date")), CacheError,
                               ["chunks[7]", "chunk_id 1007", "newsletter_date"]),
    "date-2025-13-45": Case(with_chunks(lambda ch: _set(ch, 5, "newsletter_date", "2025-13-45")), CacheError,
                            ["chunks[5]", "chunk_id 1005", "2025-13-45"]),
    "date-yesterday": Case(with_chunks(lambda ch: _set(ch, 44, "newsletter_date", "yesterday")), CacheError,
                           ["chunks[44]", "chunk_id 1044", "yesterday"]),
    "date-a-number": Case(with_chunks(lambda ch: _set(ch, 8, "newsletter_date", 20250101)), CacheError,
                          ["chunks[8]", "chunk_id 1008", "newsletter_date"]),
    "chunk-without-chunk-id": Case(with_chunks(lambda ch: ch[9].pop("chunk_id")), CacheError, ["chunks[9]", "chunk_id is missing"]),
    "chunk-id-a-string": Case(with_chunks(lambda ch: _set(ch, 9, "chunk_id", "1009")), CacheError, ["chunks[9]", "'1009'"]),
    "chunk-id-a-float": Case(with_chunks(lambda ch: _set(ch, 9, "chunk_id", 1009.0)), CacheError, ["chunks[9]", "1009.0"]),
    "chunk-id-a-bool": Case(with_chunks(lambda ch: _set(ch, 0, "chunk_id", True)), CacheError, ["chunks[0]", "True"]),
    "duplicate-chunk-id": Case(with_chunks(lambda ch: _set(ch, 12, "chunk_id", 1003)), CacheError,
                               ["chunk_id 1003", "chunks[3, 12]", "unique"]),
    "nan-and-inf-embeddings": Case(with_chunks(lambda ch: None, _nonfinite()), NonFiniteEmbeddings,
                                   ["embeddings.pkl", "3 rows", "row 4", "chunk_id 1004", "--allow-nonfinite"]),
    "dimension-differs-from-parent": Case(with_chunks(lambda ch: None, make_embeddings(60, dim=8)), ModelChanged,
                                          ["dimension 8", "16", "--new-model"]),
    "extra-pickle-key-a-set": Case(with_array(E, seen={1, 2, 3}), CacheError, ["embeddings.pkl", "'seen'", "set"]),
    "extra-pickle-key-a-numpy-float": Case(with_array(E, scale=np.float64(0.5)), CacheError, ["embeddings.pkl", "'scale'", "float64"]),
    "extra-pickle-key-a-tuple": Case(with_array(E, shape=(60, 16)), CacheError, ["embeddings.pkl", "'shape'", "tuple"]),
}


def _needles(case: Case, cache: Path) -> list[str]:
    return [n.replace("{cache}", str(cache)) for n in case.needles]


# ---- malformed caches -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_snapshot_of_a_bad_cache_raises_a_one_line_error_naming_the_problem_and_writes_nothing(filled_repo, name):
    case = CASES[name]
    cache = filled_repo.cache_path
    case.setup(cache)
    message = refused(filled_repo.root, case.error, lambda: filled_repo.snapshot("bad"), *_needles(case, cache))
    assert [e.version for e in Repository.open(filled_repo.root).log()] == [1], message


@pytest.mark.parametrize("name", list(CASES))
def test_the_cli_refuses_a_bad_cache_with_one_error_line_on_stderr_and_no_traceback(filled_repo, name):
    case = CASES[name]
    cache = filled_repo.cache_path
    case.setup(cache)
    cli_refused(filled_repo.root, ["snapshot", "-m", "bad"], *_needles(case, cache))


def test_the_real_console_script_prints_one_error_line_and_no_traceback_for_a_bad_cache(filled_repo):
    CASES["date-yesterday"].setup(filled_repo.cache_path)
    before = repo_tree(filled_repo.root)
    proc = subprocess.run([str(EGDS), "-C", str(filled_repo.root), "snapshot"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("egds: error: "), proc.stderr
    assert "chunks[44]" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert repo_tree(filled_repo.root) == before


def test_nonfinite_embeddings_are_accepted_with_allow_nonfinite_and_come_back_bit_for_bit(filled_repo, tmp_path):
    CASES["nan-and-inf-embeddings"].setup(filled_repo.cache_path)
    result = filled_repo.snapshot("nan", allow_nonfinite=True)
    assert result.created and result.version == 2
    filled_repo.checkout("v2", tmp_path / "out")
    restored = load_cache(tmp_path / "out")[0]["embeddings"]
    np.testing.assert_array_equal(restored.view(np.uint32), _nonfinite().view(np.uint32))


def test_the_cli_accepts_nonfinite_embeddings_with_allow_nonfinite(filled_repo):
    CASES["nan-and-inf-embeddings"].setup(filled_repo.cache_path)
    result = CliRunner().invoke(app, ["-C", str(filled_repo.root), "snapshot", "--allow-nonfinite", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 2


def test_a_model_different_from_the_parents_is_refused_unless_new_model_is_given(filled_repo):
    needles = ["'other-model'", "'test-model'", "--new-model"]
    refused(filled_repo.root, ModelChanged, lambda: filled_repo.snapshot("m", model="other-model"), *needles)
    cli_refused(filled_repo.root, ["snapshot", "--model", "other-model"], *needles)
    write_cache(filled_repo.cache_path, make_chunks(61), make_embeddings(61), index={"newsletters": 6})
    refused(filled_repo.root, ModelChanged, lambda: filled_repo.snapshot("m", model="other-model"), *needles)
    result = CliRunner().invoke(app, ["-C", str(filled_repo.root), "snapshot", "--new-model", "--model", "other-model", "--json"])
    assert result.exit_code == 0, result.stderr
    assert Repository.open(filled_repo.root).show("latest")[1].model == "other-model"


def test_a_dimension_different_from_the_parents_is_accepted_with_new_model(filled_repo):
    CASES["dimension-differs-from-parent"].setup(filled_repo.cache_path)
    result = filled_repo.snapshot("dim 8", new_model=True, model="small-model")
    assert result.created
    manifest = filled_repo.show("latest")[1]
    assert (manifest.dim, manifest.model) == (8, "small-model")


# ---- bad revisions, damaged repositories ----------------------------------------------------------


#: rev -> what its error message must mention
UNKNOWN_REVS = {
    "v9": "no version 9",
    "9": "no version 9",
    "nosuchtag": "'nosuchtag'",
    "abcd": "'abcd'",
    "latest~5": "'latest~5'",
    "@1999-01-01": "1999-01-01",
    "@2025-99-99": "2025-99-99",
}


@pytest.mark.parametrize("rev", list(UNKNOWN_REVS))
def test_an_unknown_revision_is_a_revision_error_for_show_checkout_and_diff(filled_repo, tmp_path, rev):
    root, other, needle = filled_repo.root, tmp_path / "other-cache", UNKNOWN_REVS[rev]
    refused(root, RevisionError, lambda: filled_repo.show(rev), needle)
    refused(root, RevisionError, lambda: filled_repo.checkout(rev, other), needle, cache=other)
    refused(root, RevisionError, lambda: filled_repo.checkout(rev), needle, cache=filled_repo.cache_path)
    refused(root, RevisionError, lambda: filled_repo.diff(rev, "v1"), needle)
    refused(root, RevisionError, lambda: filled_repo.diff("v1", rev), needle)
    for args in (["show", rev], ["checkout", rev, "--cache", str(other)], ["diff", rev], ["diff", "v1", rev]):
        cli_refused(root, args, needle, cache=other)
    assert not other.exists()





def _two_versions(repo: Repository) -> None:
    write_cache(repo.cache_path, make_chunks(60), make_embeddings(60), index={"newsletters": 6})
    repo.snapshot("v1")
    write_cache(repo.cache_path, make_chunks(70), make_embeddings(70), index={"newsletters": 7})
    repo.snapshot("v2")


def test_a_damaged_manifest_gives_a_clear_error_on_log_and_checkout_and_writes_nothing(repo, tmp_path):
    _two_versions(repo)
    v1 = repo.show("v1")[0]
    flip_byte(repo.store.manifest_path(v1))
    fresh = Repository.open(repo.root)  # no manifests cached in memory
    other = tmp_path / "other"
    refused(repo.root, CorruptObject, fresh.log, v1[:12], "egds verify")
    refused(repo.root, CorruptObject, lambda: fresh.checkout("v2", other), v1[:12], cache=other)
    cli_refused(repo.root, ["log"], v1[:12])
    cli_refused(repo.root, ["checkout", "v1", "--cache", str(other)], v1[:12], cache=other)
    cli_refused(repo.root, ["checkout", "v1", "--force"], v1[:12], cache=repo.cache_path)


@pytest.mark.parametrize("garbage", [b"garbage\n", b"", b"\xff\xfe\x00", b"../../etc/passwd\n", b"A" * 64 + b"\n"])
def test_a_damaged_ref_gives_a_clear_error_naming_the_ref_on_log_and_checkout(filled_repo, tmp_path, garbage):
    (filled_repo.store.refs_dir / "main").write_bytes(garbage)
    other = tmp_path / "other"
    refused(filled_repo.root, CorruptObject, filled_repo.log, "refs/main")
    refused(filled_repo.root, CorruptObject, lambda: filled_repo.checkout("latest", other), "refs/main", cache=other)
    refused(filled_repo.root, CorruptObject, lambda: filled_repo.snapshot("x"), "refs/main")
    cli_refused(filled_repo.root, ["log"], "refs/main")
    cli_refused(filled_repo.root, ["checkout", "--cache", str(other)], "refs/main", cache=other)


def test_a_repository_whose_config_has_format_99_is_refused_with_format_too_new_mentioning_upgrading(filled_repo):
    config = filled_repo.store.root / "config.json"
    document = json.loads(config.read_bytes())
    document["format"] = 99
    config.write_text(json.dumps(document))
    refused(filled_repo.root, FormatTooNew, lambda: Repository.open(filled_repo.root), "format 99", "upgrade")
    for args in (["log"], ["snapshot"], ["checkout", "--force"], ["verify"], ["gc"]):
        cli_refused(filled_repo.root, args, "format 99", "upgrade")


@pytest.mark.parametrize("damage", ["not-json", "missing-field", "missing-file"])
def test_a_damaged_config_json_gives_a_clear_error_that_says_to_restore_it(filled_repo, damage):
    config = filled_repo.store.root / "config.json"
    if damage == "missing-file":
        config.unlink()
    else:
        config.write_text("{ oops" if damage == "not-json" else '{"format": 1}')
    message = refused(filled_repo.root, EgdsError, lambda: Repository.open(filled_repo.root), "config.json", "restore")
    assert "egds verify" not in message  # verify cannot run without the config either
    cli_refused(filled_repo.root, ["log"], "config.json", "restore")


def test_a_manifest_with_format_99_is_refused_with_format_too_new(filled_repo, tmp_path):
    head = filled_repo.head()
    newer = json.loads(filled_repo.store.read_manifest_bytes(head))
    newer["format"] = 99
    newer["parent"] = head
    newer["version"] = 2
    newer_id = filled_repo.store.put_manifest(json.dumps(newer, indent=2).encode())
    filled_repo.store.write_ref("main", newer_id)
    fresh = Repository.open(filled_repo.root)
    refused(filled_repo.root, FormatTooNew, fresh.log, "format 99", "upgrade")
    refused(filled_repo.root, FormatTooNew, lambda: fresh.checkout("latest", tmp_path / "o"), "format 99", cache=tmp_path / "o")
    cli_refused(filled_repo.root, ["log"], "format 99", "upgrade")
    cli_refused(filled_repo.root, ["show"], "format 99", "upgrade")


def test_init_in_an_existing_repository_is_refused_and_changes_nothing(filled_repo):
    refused(filled_repo.root, RepositoryExists, lambda: Repository.init(filled_repo.root, model="another"), ".egds")
    cli_refused(filled_repo.root, ["init", "--model", "another"], ".egds", "already")


def test_egds_init_twice_through_the_cli_fails_the_second_time(tmp_path):
    first = CliRunner().invoke(app, ["-C", str(tmp_path), "init"])
    assert first.exit_code == 0, first.stderr
    cli_refused(tmp_path, ["init"], "already an egds repository")


def test_commands_outside_a_repository_say_to_run_init(tmp_path):
    result = CliRunner().invoke(app, ["-C", str(tmp_path), "log"])
    assert result.exit_code != 0
    assert result.stderr.startswith("egds: error: ") and "egds init" in result.stderr


# ---- malicious pickles ----------------------------------------------------------------------------


class Exploit:
    """An object whose unpickling calls `func(*args)`: the classic pickle code-execution payload."""

    def __init__(self, func: Any, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, Exploit]:
    return {
        "os.system": Exploit(os.system, (f"touch {marker}",)),
        "builtins.eval": Exploit(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.Popen": Exploit(subprocess.Popen, (["touch", str(marker)],)),
    }


def _check_payload_is_real(data: bytes, marker: Path) -> None:
    """Plain pickle.loads really runs the payload (else the tests below would prove nothing)."""
    stack = [pickle.loads(data)]
    while stack:  # a Popen payload runs `touch` in a child process: wait for it
        item = stack.pop()
        if isinstance(item, subprocess.Popen):
            item.wait(timeout=10)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    assert marker.exists(), "the payload did not run under plain pickle"
    marker.unlink()


@pytest.mark.parametrize("where", ["as-embeddings", "as-extra-key", "nested-in-extra"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_a_malicious_pickle_is_refused_as_unsafe_and_its_code_never_runs(filled_repo, tmp_path, payload, where):
    marker = tmp_path / "pwned"
    exploit = _payloads(marker)[payload]
    obj = {
        "as-embeddings": {"embeddings": exploit},
        "as-extra-key": {"embeddings": make_embeddings(60), "evil": exploit},
        "nested-in-extra": {"embeddings": make_embeddings(60), "meta": {"list": [1, exploit]}},
    }[where]
    data = pickle.dumps(obj, protocol=2)
    _check_payload_is_real(data, marker)
    (filled_repo.cache_path / "embeddings.pkl").write_bytes(data)
    module = payload.split(".")[0]  # the message names what the pickle tried to import
    refused(filled_repo.root, UnsafePickle, lambda: filled_repo.snapshot("evil"), "embeddings.pkl", module)
    assert not marker.exists(), "the pickle's payload ran"
    refused(filled_repo.root, UnsafePickle, filled_repo.status, "embeddings.pkl")
    assert not marker.exists()
    cli_refused(filled_repo.root, ["snapshot"], "embeddings.pkl", module)
    cli_refused(filled_repo.root, ["status"], "embeddings.pkl", module)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_malicious_pickle_is_refused_under_every_pickle_protocol(filled_repo, tmp_path, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"embeddings": make_embeddings(60), "x": _payloads(marker)["os.system"]}, protocol=protocol)
    _check_payload_is_real(data, marker)
    (filled_repo.cache_path / "embeddings.pkl").write_bytes(data)
    refused(filled_repo.root, UnsafePickle, lambda: filled_repo.snapshot("evil"), "embeddings.pkl")
    assert not marker.exists()


def test_the_real_console_script_refuses_a_malicious_pickle_without_running_it(filled_repo, tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"embeddings": _payloads(marker)["os.system"]}, protocol=2)
    (filled_repo.cache_path / "embeddings.pkl").write_bytes(data)
    proc = subprocess.run([str(EGDS), "-C", str(filled_repo.root), "snapshot"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("egds: error: ") and "Traceback" not in proc.stderr
    assert "system" in proc.stderr
    assert not marker.exists()


def test_a_pickle_that_calls_bytes_with_a_huge_size_is_refused_without_allocating(filled_repo):
    # bytes() is allowed because protocol 0-2 pickle empty bytes that way; bytes(N) is not.
    data = pickle.dumps({"embeddings": make_embeddings(60), "x": Exploit(bytes, (10**12,))}, protocol=2)
    (filled_repo.cache_path / "embeddings.pkl").write_bytes(data)
    refused(filled_repo.root, UnsafePickle, lambda: filled_repo.snapshot("evil"), "embeddings.pkl", "bytes")


@pytest.mark.parametrize("protocol", [0, 2])
def test_an_empty_array_pickled_with_protocol_0_or_2_loads(repo, tmp_path, protocol):
    write_cache(repo.cache_path, [], np.zeros((0, 4), np.float32))
    (repo.cache_path / "embeddings.pkl").write_bytes(pickle.dumps({"embeddings": np.zeros((0, 4), np.float32)}, protocol=protocol))
    status = repo.status()
    assert status.rows == 0


@pytest.mark.parametrize("protocol", [0, 2])
def test_a_pickle_written_by_numpy_1_with_numpy_core_module_names_still_loads(repo, tmp_path, protocol):
    chunks, array = make_chunks(40), make_embeddings(40)
    write_cache(repo.cache_path, chunks, array)
    data = pickle.dumps({"embeddings": array, "model": "x"}, protocol=protocol)
    assert b"numpy._core.multiarray" in data
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy._core" not in old and b"numpy.core.multiarray\n_reconstruct" in old
    (repo.cache_path / "embeddings.pkl").write_bytes(old)
    result = repo.snapshot("numpy 1.x pickle")
    assert result.created and result.rows == 40
    repo.checkout("v1", tmp_path / "out")
    pickled, metadata, _ = load_cache(tmp_path / "out")
    np.testing.assert_array_equal(pickled["embeddings"], array)
    assert pickled["model"] == "x" and metadata["chunks"] == chunks


def test_a_manifest_naming_a_path_instead_of_an_object_id_is_refused(filled_repo, tmp_path):
    head = filled_repo.head()
    doc = json.loads(filled_repo.store.read_manifest_bytes(head))
    doc["partitions"][0]["object"] = "../../../../etc/passwd"
    doc.update(parent=head, version=2)
    evil = filled_repo.store.put_manifest(msgspec.json.encode(doc))
    filled_repo.store.write_ref("main", evil)
    fresh = Repository.open(filled_repo.root)
    refused(filled_repo.root, CorruptObject, lambda: fresh.checkout("latest", tmp_path / "o"), evil[:12], cache=tmp_path / "o")
