"""SPEC.md and the code cannot drift: its field tables, limits, constants, record formats and exit codes
are checked against the code."""

from __future__ import annotations

import re
import types
import typing
from datetime import datetime
from pathlib import Path

import msgspec
import pytest

from egregora_ds.model import FORMAT_VERSION, Config, Manifest, PartitionEntry
from egregora_ds.parquet_io import WRITER_OPTIONS
from egregora_ds.table import CONTENT_HASH_TAG, TYPED_FIELDS

SPEC = (Path(__file__).parent.parent / "SPEC.md").read_text(encoding="utf-8")
FLAT = " ".join(SPEC.split())  # line breaks do not matter to a phrase


def render_type(annotation: object) -> str:
    """How SPEC.md spells a field's type."""
    if typing.get_origin(annotation) is typing.Annotated:
        return "ObjectId"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else render_type(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f'"{a}"' for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is tuple:
        return f"array of {typing.get_args(annotation)[0].__name__}"
    return {int: "int", str: "string", datetime: "timestamp"}[annotation]  # type: ignore[index]


def render_presence(field: msgspec.structs.FieldInfo) -> str:
    """How SPEC.md says whether a field must be present: `required`, or its default."""
    if field.required:
        return "required"
    return f"default `{msgspec.json.encode(field.default).decode()}`"


def spec_table(name: str) -> list[tuple[str, str, str]]:
    block = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", SPEC, re.S)
    assert block, f"SPEC.md has no {name} table"
    rows = [line.split(" | ") for line in block.group(1).strip().splitlines()[2:]]
    return [(cells[0].strip("| `"), cells[1].strip(), cells[2].strip()) for cells in rows]


@pytest.mark.parametrize(
    ("struct", "table"), [(Manifest, "manifest-fields"), (PartitionEntry, "partition-fields"), (Config, "config-fields")]
)
def test_spec_field_tables_match_the_structs(struct: type[msgspec.Struct], table: str) -> None:
    hints = typing.get_type_hints(struct, include_extras=True)
    expected = [
        (field.name, render_type(hints[field.name]), render_presence(field)) for field in msgspec.structs.fields(struct)
    ]
    assert spec_table(table) == expected


def test_spec_states_the_format_version_and_content_hash_tag() -> None:
    assert f"Format version: **{FORMAT_VERSION}**" in SPEC
    assert CONTENT_HASH_TAG.decode().strip() in SPEC


def test_spec_names_the_writer_settings_the_code_uses() -> None:
    assert WRITER_OPTIONS["compression"] == "zstd" and "zstd, level 1" in SPEC
    assert WRITER_OPTIONS["compression_level"] == 1
    assert WRITER_OPTIONS["use_byte_stream_split"] == ["embedding.list.element"] and "`embedding.list.element`" in SPEC
    assert f"{WRITER_OPTIONS['row_group_size']:,}" in SPEC


def test_spec_lists_every_typed_column() -> None:
    for name in TYPED_FIELDS:
        assert f"| `{name}` |" in SPEC


def test_spec_states_the_limits_the_code_uses() -> None:
    from egregora_ds.revisions import MAX_REVISION_CHARS
    from egregora_ds.transfer import DOWNLOAD_ATTEMPTS, MAX_JSON_OBJECT_BYTES, MAX_MANIFEST_BYTES, MAX_REF_BYTES

    assert MAX_REF_BYTES == 128 and "a ref at 128 bytes" in FLAT
    assert MAX_MANIFEST_BYTES == 256 << 20 and "a manifest at 256 MiB" in FLAT
    assert MAX_JSON_OBJECT_BYTES == 1 << 30 and "a JSON object at 1 GiB" in FLAT
    assert DOWNLOAD_ATTEMPTS == 3 and "(3 attempts in all)" in FLAT
    assert MAX_REVISION_CHARS == 256 and "at most 256 characters long" in FLAT


def test_spec_lists_every_global_the_pickle_reader_allows() -> None:
    from egregora_ds.safe_pickle import _STAND_INS as _ALLOWED_GLOBALS

    section = SPEC[SPEC.index("### 13.2") : SPEC.index("### 13.3")]
    for module, name in _ALLOWED_GLOBALS:
        assert f"`{module}.{name}`" in section, f"{module}.{name} is allowed but SPEC.md §13.2 does not list it"


def test_spec_spells_the_name_rules_the_code_checks() -> None:
    from egregora_ds.remotes import _NAME
    from egregora_ds.revisions import _TAG
    from egregora_ds.store.ia import _IDENTIFIER

    assert f"`{_TAG.pattern}`" in SPEC
    assert f"`{_NAME.pattern}`" in SPEC
    assert f"`{_IDENTIFIER.pattern}`" in SPEC


# ---- tables and constants of §6–§15 against the code ------------------------------------------------


def table_rows(name: str) -> list[list[str]]:
    """The cells of a `<!-- name:start -->` table, header and rule lines dropped."""
    block = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", SPEC, re.S)
    assert block, f"SPEC.md has no {name} table"
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in block.group(1).strip().splitlines()[2:]]


def section(heading: str) -> str:
    """The text of a section, from its heading to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = SPEC.index(f"{heading}\n")
    end = re.search(rf"\n#{{1,{len(level)}}} ", SPEC[start + len(heading) :])
    return " ".join(SPEC[start : start + len(heading) + (end.start() if end else len(SPEC))].split())


def _egds_error_classes() -> dict[str, type]:
    import importlib
    import pkgutil

    import egregora_ds
    from egregora_ds.errors import EgdsError

    for module in pkgutil.walk_packages(egregora_ds.__path__, "egregora_ds."):
        if ".testing" not in module.name:
            importlib.import_module(module.name)
    found: dict[str, type] = {}
    pending = [EgdsError]
    while pending:
        for cls in pending.pop().__subclasses__():
            if cls.__module__.startswith("egregora_ds."):
                found[cls.__name__] = cls
            pending.append(cls)
    return found


def test_spec_gives_every_error_class_its_exit_code() -> None:
    stated: dict[str, int] = {}
    for name, code, when in table_rows("exit-codes"):
        names = [name.strip("`")]
        if "subclasses" in when:
            names += re.findall(r"`([A-Z][A-Za-z]+)`", when.split("subclasses", 1)[1])
        for n in names:
            stated[n] = int(code)
    classes = _egds_error_classes()
    assert set(stated) <= set(classes), f"SPEC.md §15 names classes the code lacks: {set(stated) - set(classes)}"
    for name, cls in classes.items():
        assert name in stated, f"{cls.__module__}.{name} (exit {cls.exit_code}) is not in SPEC.md §15's table"
        assert stated[name] == cls.exit_code, f"SPEC.md §15 gives {name} exit {stated[name]}, the code {cls.exit_code}"


def test_spec_lists_every_environment_variable_the_code_reads() -> None:
    source = "".join(p.read_text(encoding="utf-8") for p in (Path(__file__).parent.parent / "egregora_ds").rglob("*.py")
                     if "testing" not in p.parts)
    for name in sorted(set(re.findall(r"EGDS_[A-Z_]+", source))):
        assert f"| `{name}` |" in SPEC, f"the code reads {name}, which SPEC.md §15 does not list"


def test_spec_states_the_json_depth_and_manifest_bounds_the_code_checks() -> None:
    from egregora_ds.cache import MAX_JSON_DEPTH
    from egregora_ds.model import FLOAT_DTYPES, MAX_DIM, MAX_OBJECT_BYTES, MAX_ROWS

    assert f"at most **{MAX_JSON_DEPTH}** arrays and objects" in FLAT
    rules = section("### 7.1 Manifest validation (MUST)")
    assert ", ".join(f"`{d}`" for d in FLOAT_DTYPES) in rules
    assert MAX_DIM == 65536 and "1 ≤ `dim` ≤ 65536" in rules
    assert MAX_ROWS == 2**40 and "0 ≤ `rows` ≤ 2^40" in rules and "1 ≤ `rows` ≤ 2^40" in rules
    assert MAX_OBJECT_BYTES == 2**42 and "1 ≤ `bytes` ≤ 2^42" in rules


def test_spec_states_the_partition_footer_bounds_the_code_checks() -> None:
    from egregora_ds import parquet_io

    rules = section("### 5.4 Reading a partition object (MUST)")
    assert parquet_io._SLACK_BYTES == 1 << 20 and "at most 2 × rows × width + 1 MiB" in rules
    assert parquet_io._TEXT_EXPANSION == 64 and "at most 64 × the object's size + 1 MiB" in rules
    assert parquet_io._FIXED_WIDTH == {"chunk_id": 8, "newsletter_date": 4, "char_count": 8, "chunk_index_in_newsletter": 8}
    assert "`chunk_id`, `char_count`, `chunk_index_in_newsletter` 8, `newsletter_date` 4" in rules


def test_spec_states_the_pickle_readers_bounds() -> None:
    from egregora_ds import safe_pickle

    rules = section("### 13.2 A hostile or damaged pickle (`embeddings.pkl`)")
    assert f"`{safe_pickle._NUMERIC_TYPE.pattern}`" in rules
    assert safe_pickle._MAX_DIMS == 32 and "at most 32 integers" in rules
    assert safe_pickle._MAX_ARRAY_BYTES == 2**62 and "each 0 ≤ n < 2^62" in rules


def test_spec_states_the_holdings_record_format_the_code_writes(tmp_path: Path) -> None:
    from egregora_ds.push import INGEST_GRACE
    from egregora_ds.remotes import _HOLDING_LINE, ABSENT, CONFIRMED, UPLOADED, HoldingsRecord

    record = HoldingsRecord(tmp_path / "r.known")
    record.record(UPLOADED, ["egds/refs/main"], when=1700000000.7)
    header, line = (tmp_path / "r.known").read_text(encoding="utf-8").splitlines()
    assert f"`{header.split(':')[0]}: …`" in SPEC and "holdings record 2" in header
    assert "`STATE UNIX-SECONDS KEY`" in FLAT and line == "U 1700000000 egds/refs/main"  # whole seconds
    assert [row[0].strip("`") for row in table_rows("holdings-states")] == [CONFIRMED, UPLOADED, ABSENT]
    assert f"`{_HOLDING_LINE.pattern}`" in SPEC
    assert INGEST_GRACE == 3600 and "the ingest grace (3600 s; `EGDS_INGEST_GRACE`)" in FLAT


def test_spec_states_the_push_and_directory_remote_constants() -> None:
    from egregora_ds import push
    from egregora_ds.store import directory

    rules = section("### 14.2 Push")
    assert push.LISTING_WAIT == 90 and "(default 90; at least one look)" in rules
    assert push._MAX_POLL_DELAY == 15 and "pausing 1, 2, 4, 8, 15, 15 … s" in rules
    assert push.UPLOAD_THREADS == 4 and "(4 at a time" in rules
    layout = section("### 14.1 Remote layout and protocol")
    assert f"{push.CARD_SETTINGS_KEY} " in layout and f"{directory.LOCK_KEY} " in layout
    assert push.CardSettings.__struct_fields__ == ("title", "description", "license")
    assert '`{"title":…,"description":…,"license":…}`' in layout
    assert directory.LOCK_WAIT == 300 and "waits up to 300 s (`EGDS_REMOTE_LOCK_WAIT`)" in layout
    assert f"`{directory._OWN_TEMP_IN_EGDS.pattern}`" in layout and f"`{directory._OWN_TEMP_AT_ROOT.pattern}`" in layout


def test_spec_states_the_chain_walk_bounds_and_the_markers() -> None:
    from egregora_ds import clone, transfer

    rules = section("### 14.3 Fetch, pull, clone")
    assert transfer.WALK_ALONE == 32 and "The first 32 steps go one by one" in rules
    assert transfer.LISTING_LAG_ALLOWANCE == 1024 and "listed manifests + 1024" in rules
    assert transfer.PREFETCH_MAX_BYTES == 1 << 20 and "of at most 1 MiB" in rules
    assert (transfer.MANIFEST_BATCH, transfer.MANIFEST_THREADS) == (256, 8) and "in batches of 256, 8 at a time" in rules
    assert f"`.egds/{clone.PULL_MARKER}` = `{{\"remote\": NAME, \"id\": ID, \"version\": N}}`" in rules
    assert clone.PendingPull.__struct_fields__ == ("remote", "id", "version")
    assert f"`{clone.CLONE_MARKER}` = `{{\"url\": URL, \"created\": true | false}}`" in rules
    assert clone.PendingClone.__struct_fields__ == ("url", "created")
    for marker in (clone.PULL_MARKER, clone.CLONE_MARKER):
        assert f"    {marker} " in SPEC, f"SPEC.md §2's layout does not show .egds/{marker}"


def test_spec_states_the_archive_org_request_rules_the_code_uses() -> None:
    from egregora_ds.store import ia, ia_http

    rules = dict((rule, value) for rule, value in table_rows("ia-requests"))
    kib, mib = 1 << 10, 1 << 20
    assert rules["attempts per request"] == str(ia.ATTEMPTS)
    assert rules["wait after a failed attempt"].startswith(f"{ia.BACKOFF:g} s, doubling, at most {ia.MAX_BACKOFF:g} s")
    assert rules["`Retry-After` not waited for"].startswith(f"over {ia.MAX_RETRY_AFTER:g} s")
    assert rules["connect / per-read timeout"] == f"{ia.CONNECT_TIMEOUT:g} s / {ia.READ_TIMEOUT:g} s"
    assert rules["total deadline per request"] == (
        f"{ia.DEADLINE_BASE:g} s (`{ia.DEADLINE_ENV}`) + 1 s per {ia.DEADLINE_RATE // kib} KiB it may carry"
    )
    assert rules["largest file list read"] == f"{ia.MAX_INVENTORY_BYTES // mib} MiB"
    assert rules["largest other reply not streamed"] == f"{ia_http.SMALL_BODY_BYTES // mib} MiB"
    assert rules["uploads that ask `check_limit` first"] == f"{ia.LARGE_UPLOAD_BYTES // mib} MiB and more"
    requests = section("### 14.6 Requests to archive.org")
    assert all(f"`{code}`" in requests for code in ia._RETRYABLE_400)
    items = section("### 14.1 Remote layout and protocol")
    assert all(f"`{suffix}`" in items or f"`IDENTIFIER{suffix}`" in items for suffix in ia._ARCHIVE_OWN_SUFFIXES)
    assert all(f"`{source}`" in items for source in ia._ARCHIVE_OWN_SOURCES)
