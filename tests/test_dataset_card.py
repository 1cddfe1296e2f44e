"""The dataset card tells a reader without egds how to load the data in a way that works (issue 9 item 9):
its polars example runs as written in the remote's directory; it names no package-index entry that does not
exist."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from conftest import make_chunks, make_embeddings, write_cache
from egregora_ds import Repository


def test_the_cards_polars_example_runs_as_written_and_no_package_index_entry_is_invented(tmp_path: Path, monkeypatch) -> None:
    repo = Repository.init(tmp_path / "proj", cache="cache/rag", model="m")
    write_cache(repo.cache_path, make_chunks(40, months=4), make_embeddings(40, dim=8), index={"n": 40})
    repo.snapshot("v1")
    remote = tmp_path / "remote"
    repo.remote_add("backup", str(remote))
    repo.push("backup")
    card = (remote / "README.md").read_text(encoding="utf-8")

    assert "pip install egregora-ds" not in card and "pypi.org" not in card
    assert "egds is not published on the Python package index" in card
    assert f"egds clone {remote}" in card

    python_blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(python_blocks) == 1
    monkeypatch.chdir(remote)  # a directory remote's card names its files relative to the remote
    namespace: dict = {}
    exec(python_blocks[0], namespace)  # noqa: S102 - the card's own example, run as a reader would
    vectors = namespace["vectors"]
    assert isinstance(vectors, np.ndarray) and vectors.shape == (10, 8)  # the last month's 10 chunks
