"""Tags: naming, moving, and damage that stays local to the tag."""

from __future__ import annotations

import pytest

from conftest import make_chunks, make_embeddings, write_cache
from egregora_ds import Repository
from egregora_ds.errors import CorruptObject, RevisionError


def test_a_damaged_tag_does_not_block_revisions_that_do_not_name_it(filled_repo: Repository) -> None:
    filled_repo.tag("good", "v1")
    filled_repo.tag("broken", "v1")
    filled_repo.store.ref_path("tags/broken").write_text("not a manifest id\n")
    assert filled_repo.resolve("v1")[1].version == 1
    assert filled_repo.resolve("good")[1].version == 1
    with pytest.raises(CorruptObject, match="tags/broken"):
        filled_repo.resolve("broken")


def test_moving_a_tag_needs_force(filled_repo: Repository) -> None:
    write_cache(filled_repo.cache_path, make_chunks(61), make_embeddings(61))
    filled_repo.snapshot("v2")
    filled_repo.tag("release", "v1")
    with pytest.raises(RevisionError, match="--force"):
        filled_repo.tag("release", "v2")
    assert filled_repo.tag("release", "v2", force=True).version == 2


@pytest.mark.parametrize("rev", ["../../config.json", "tags/../main", "/etc/passwd"])
def test_a_revision_shaped_like_a_path_is_never_read_as_a_tag_file(filled_repo: Repository, rev: str) -> None:
    with pytest.raises(RevisionError, match="unknown revision"):
        filled_repo.resolve(rev)
