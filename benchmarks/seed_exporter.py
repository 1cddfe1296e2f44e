"""The BASELINE: the original plan's ``EmbeddingsExporter.export_all`` path, re-implemented faithfully.

Source: /work/shared/seed/original-plan.pt.md ("Módulo 1", ``src/egregora/rag/exporter.py``). The methods below
keep the seed's logic line for line -- a pandas DataFrame built row by row with ``embedding.tolist()``, pandas
periods for partitioning, ``pa.Table.from_pandas`` with a ``list<float32>`` schema and zstd level 9 -- so the
benchmarks measure the plan as written, warts included (it is not part of the egds package). Left out: the
incremental path and the Portuguese comments; the manifest is still written, as ``export_all`` does.
"""

from __future__ import annotations

import json
import pickle
from datetime import date, datetime
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# The seed's schema, verbatim (note: char_count/chunk_index are int32 and the vector is a variable-size list).
SEED_SCHEMA = pa.schema([
    ("chunk_id", pa.int64()),
    ("newsletter_date", pa.date32()),
    ("newsletter_path", pa.string()),
    ("section_title", pa.string()),
    ("text", pa.string()),
    ("char_count", pa.int32()),
    ("chunk_index", pa.int32()),
    ("embedding", pa.list_(pa.float32())),
])


class SeedExporter:
    """``EmbeddingsExporter`` from the plan, restricted to the full-export path."""

    def __init__(self, cache_dir: Path, exports_dir: Path | None = None):
        self.cache_dir = Path(cache_dir)
        self.exports_dir = Path(exports_dir) if exports_dir else self.cache_dir / "exports"
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.exports_dir / "manifest.json"

    def export_all(self, partition_by: str = "month") -> Dict[str, Any]:
        embeddings = self._load_embeddings()
        metadata = self._load_metadata()
        if embeddings is None or not metadata:
            return {"success": False, "error": "Cache vazio ou não encontrado"}
        df = self._build_dataframe(embeddings, metadata)
        partitions = self._partition_dataframe(df, partition_by)
        exported_files = []
        for partition_key, partition_df in partitions.items():
            file_path = self._export_partition(partition_key, partition_df)
            exported_files.append({
                "file": file_path.name,
                "partition": partition_key,
                "rows": len(partition_df),
                "size_mb": file_path.stat().st_size / 1024 / 1024,
            })
        manifest = self._update_manifest(exported_files)
        return {"success": True, "files_exported": len(exported_files), "total_rows": len(df), "manifest": manifest}

    def _load_embeddings(self) -> np.ndarray | None:
        embeddings_path = self.cache_dir / "embeddings.pkl"
        if not embeddings_path.exists():
            return None
        with open(embeddings_path, "rb") as f:
            data = pickle.load(f)
            return data["embeddings"]

    def _load_metadata(self) -> Dict | None:
        metadata_path = self.cache_dir / "metadata.json"
        if not metadata_path.exists():
            return None
        with open(metadata_path, "r") as f:  # (sic: no encoding=, as in the seed; UTF-8 locale assumed)
            return json.load(f)

    def _build_dataframe(self, embeddings: np.ndarray, metadata: Dict) -> pd.DataFrame:
        chunks = metadata["chunks"]
        data = []
        for i, chunk in enumerate(chunks):
            data.append({
                "chunk_id": chunk["chunk_id"],
                "newsletter_date": chunk["newsletter_date"],
                "newsletter_path": chunk["newsletter_path"],
                "section_title": chunk.get("section_title"),
                "text": chunk["text"],
                "char_count": chunk.get("char_count", len(chunk["text"])),
                "chunk_index": chunk.get("chunk_index_in_newsletter", 0),
                "embedding": embeddings[i].tolist(),  # one Python float object per dimension: the RSS hog
            })
        return pd.DataFrame(data)

    def _partition_dataframe(self, df: pd.DataFrame, partition_by: str) -> Dict[str, pd.DataFrame]:
        df["date"] = pd.to_datetime(df["newsletter_date"])
        partitions = {}
        if partition_by == "month":
            df["partition"] = df["date"].dt.to_period("M").astype(str)
        elif partition_by == "quarter":
            df["partition"] = df["date"].dt.to_period("Q").astype(str)
        elif partition_by == "year":
            df["partition"] = df["date"].dt.year.astype(str)
        else:
            raise ValueError(f"partition_by inválido: {partition_by}")
        for partition_key, group in df.groupby("partition"):
            partitions[partition_key] = group.drop(columns=["partition", "date"])
        return partitions

    def _export_partition(self, partition_key: str, df: pd.DataFrame) -> Path:
        file_path = self.exports_dir / f"{partition_key}.parquet"
        table = pa.Table.from_pandas(df, schema=SEED_SCHEMA)
        pq.write_table(table, file_path, compression="zstd", compression_level=9)
        return file_path

    def _load_manifest(self) -> Dict:
        if not self.manifest_path.exists():
            return {}
        with open(self.manifest_path, "r") as f:
            return json.load(f)

    def _update_manifest(self, exported_files: List[Dict]) -> Dict:
        manifest = self._load_manifest()
        manifest["version"] = manifest.get("version", "1.0")
        manifest["last_export_date"] = date.today().isoformat()
        manifest["last_export_timestamp"] = datetime.now().isoformat()
        manifest["embedding_model"] = "models/text-embedding-004"
        manifest.setdefault("files", {}).update({f["file"]: f for f in exported_files})
        manifest["total_files"] = len(manifest["files"])
        manifest["total_rows"] = sum(f["rows"] for f in manifest["files"].values())
        manifest["total_size_mb"] = sum(f["size_mb"] for f in manifest["files"].values())
        with open(self.manifest_path, "w") as f:
            json.dump(manifest, f, indent=2)
        return manifest


def export_like_seed(cache_dir, out_dir, partition_by: str = "month") -> dict:
    """Export ``cache_dir`` to ``out_dir`` exactly as the plan would; returns rows, files, bytes (Parquet only)."""
    report = SeedExporter(Path(cache_dir), Path(out_dir)).export_all(partition_by)
    if not report["success"]:
        raise FileNotFoundError(report["error"])
    files = sorted(Path(out_dir).glob("*.parquet"))
    return {"rows": report["total_rows"], "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def read_seed_export(out_dir) -> tuple[np.ndarray, np.ndarray]:
    """Read a seed export back as ``(chunk_ids int64 (N,), vectors float32 (N, D))``, sorted by chunk_id."""
    tables = [pq.read_table(f, columns=["chunk_id", "embedding"]) for f in sorted(Path(out_dir).glob("*.parquet"))]
    table = pa.concat_tables(tables).combine_chunks()
    ids = table.column("chunk_id").to_numpy()
    emb = table.column("embedding").chunk(0)
    # .flatten() honours slice offsets (.values does not); list<float> has no fixed width, so derive D
    flat = emb.flatten().to_numpy(zero_copy_only=False)
    vectors = flat.reshape(len(emb), -1) if len(emb) else flat.reshape(0, 0)
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order]
