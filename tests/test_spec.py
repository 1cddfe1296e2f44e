"""SPEC.md and the code cannot drift: its field tables are checked against the msgspec Structs."""

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
