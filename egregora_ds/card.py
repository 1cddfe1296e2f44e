"""What a remote shows people who do not have egds: a README.md dataset card and a plain
`manifest.json` of the latest version (SPEC.md, "Remote layout")."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from .ids import JSON, PARQUET, fanout_path
from .model import Manifest

PREFIX = "egds"


def object_key(object_id: str, suffix: str) -> str:
    return f"{PREFIX}/objects/{fanout_path(object_id, suffix)}"


def manifest_key(manifest_id: str) -> str:
    return f"{PREFIX}/manifests/{manifest_id}.json"


REF_KEY = f"{PREFIX}/refs/main"
CARD_KEY = "README.md"
LATEST_KEY = "manifest.json"


def latest_json(manifest_id: str, manifest: Manifest) -> bytes:
    """The latest manifest plus the file of each partition, for readers without egds."""
    document = {
        "egds_format": manifest.format,
        "id": manifest_id,
        "manifest": manifest,
        "files": {p.key: object_key(p.object, PARQUET) for p in manifest.partitions},
        "index": object_key(manifest.index, JSON) if manifest.index else None,
    }
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"


def dataset_card(
    chain: Sequence[tuple[str, Manifest]],
    *,
    title: str,
    description: str,
    license: str,
    base_url: str,
    clone_url: str,
) -> bytes:
    """README.md for the remote. `chain` is newest first; `base_url` prefixes file paths in examples."""
    head_id, head = chain[0]
    lines = [
        f"# {title}",
        "",
        description or "Text-chunk embeddings of newsletters, versioned with egds.",
        "",
        f"- **Model:** `{head.model}`, dimension {head.dim}, dtype `{head.dtype}`",
        f"- **Rows:** {head.rows:,} chunks in {len(head.partitions)} {head.partitioning} partitions",
        f"- **License:** {license or 'not specified'}",
        f"- **Latest version:** v{head.version} (`{head_id}`), {head.created_at:%Y-%m-%d %H:%M} UTC",
        "",
        "Every file under `egds/` is named by the blake3 hash of its bytes; `manifest.json` describes the latest",
        "version and `egds/manifests/` every version. Columns: `chunk_id`, `newsletter_date` (date),",
        "`newsletter_path`, `section_title`, `text`, `char_count`, `chunk_index_in_newsletter`, `extra` (JSON of any",
        "other fields) and `embedding` (fixed-size list of floats).",
        "",
        "## Versions",
        "",
        "| version | created (UTC) | rows | message | manifest |",
        "|---|---|---|---|---|",
    ]
    for manifest_id, m in chain:
        message = m.message.replace("|", "\\|").replace("\n", " ") or "-"
        lines.append(f"| v{m.version} | {m.created_at:%Y-%m-%d %H:%M} | {m.rows:,} | {message} | `{manifest_id[:12]}` |")
    lines += ["", f"## Files of v{head.version}", "", "| partition | rows | bytes | file |", "|---|---|---|---|"]
    for p in head.partitions:
        lines.append(f"| {p.key} | {p.rows:,} | {p.bytes:,} | `{object_key(p.object, PARQUET)}` |")
    files = [f"{base_url}/{object_key(p.object, PARQUET)}" for p in head.partitions]
    example = files[-1] if files else f"{base_url}/egds/objects/…parquet"
    quoted = ", ".join(f"'{f}'" for f in files[:3]) + (", …" if len(files) > 3 else "")
    lines += [
        "",
        "## Loading",
        "",
        "The files are plain Parquet: polars, DuckDB, pandas or pyarrow read them as they are, no other tool",
        "needed (`pip install polars` for the first example, `pip install duckdb` for the second).",
        "",
        "With polars:",
        "",
        "```python",
        "import polars as pl",
        f"df = pl.read_parquet('{example}')",
        "vectors = df['embedding'].to_numpy()  # (rows, dim)",
        "```",
        "",
        "With DuckDB:",
        "",
        "```sql",
        f"SELECT chunk_id, newsletter_date, text FROM read_parquet([{quoted}]);",
        "```",
        "",
        "With egds, which rebuilds the pipeline's pickle cache (`embeddings.pkl`, `metadata.json`, `index.json`)",
        "of any version, every byte verified. egds is not published on the Python package index: install it",
        "from a copy of its source code (`pip install PATH-TO-EGDS-SOURCE`), then:",
        "",
        "```bash",
        f"egds clone {clone_url} my-copy",
        "```",
        "",
    ]
    return "\n".join(lines).encode("utf-8")
