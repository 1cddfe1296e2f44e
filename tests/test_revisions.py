"""Revisions: which version `v3`, `latest~2`, `@2025-10-01`, a tag or an id prefix names."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_chunks, make_embeddings, write_cache
from egregora_ds import Repository
from egregora_ds.errors import RevisionError
from egregora_ds.model import Manifest
from egregora_ds.revisions import check_tag_name, history, resolve_version

UTC = timezone.utc
T0 = datetime(2025, 10, 1, 12, 0, 0, tzinfo=UTC)


def fake_id(seed: str, prefix: str = "") -> str:
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return prefix + digest[len(prefix) :]


def manifest(version: int, parent: str | None, created_at: datetime) -> Manifest:
    return Manifest(
        format=1, version=version, parent=parent, created_at=created_at, message=f"v{version}", model="m",
        dim=4, dtype="<f4", partitioning="month", rows=0, partitions=(), row_order=(), extras=None, index=None,
    )


def build_chain(k: int, ids: list[str] | None = None, times: list[datetime] | None = None):
    """(chain newest first, manifests by id, ids oldest first) of k versions."""
    ids = ids or [fake_id(f"version {v}") for v in range(1, k + 1)]
    times = times or [T0 + timedelta(days=v - 1) for v in range(1, k + 1)]
    manifests = {}
    parent = None
    for v, (manifest_id, created) in enumerate(zip(ids, times), start=1):
        manifests[manifest_id] = manifest(v, parent, created)
        parent = manifest_id
    chain = history(ids[-1] if ids else None, manifests)
    return chain, manifests, ids


@pytest.fixture
def five():
    chain, manifests, ids = build_chain(5)
    tags = {"release": ids[2], "first": ids[0]}

    def resolve(rev: str, known: list[str] | None = None) -> str:
        return resolve_version(rev, chain, tags, known if known is not None else sorted(manifests))

    resolve.ids = ids  # type: ignore[attr-defined]
    return resolve


# ---- history ---------------------------------------------------------------------------------------


def test_history_runs_from_head_back_to_version_one() -> None:
    chain, _, ids = build_chain(4)
    assert [m.version for _, m in chain] == [4, 3, 2, 1]
    assert [i for i, _ in chain] == ids[::-1]
    assert history(None, {}) == []


def test_history_names_a_missing_parent() -> None:
    _, manifests, ids = build_chain(3)
    del manifests[ids[0]]
    with pytest.raises(RevisionError, match=f"manifest {ids[0][:12]} is missing"):
        history(ids[2], manifests)


def test_history_refuses_a_cycle() -> None:
    a, b = fake_id("a"), fake_id("b")
    manifests = {a: manifest(2, b, T0), b: manifest(1, a, T0)}
    with pytest.raises(RevisionError, match="appears twice"):
        history(a, manifests)


# ---- the forms of a revision ----------------------------------------------------------------------


def test_latest_names_the_head(five) -> None:
    assert five("latest") == five.ids[4]
    assert five("  latest ") == five.ids[4]


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_vN_and_a_bare_N_name_version_N(five, version: int) -> None:
    assert five(f"v{version}") == five(str(version)) == five.ids[version - 1]


@pytest.mark.parametrize("rev", ["v0", "v6", "0", "6", "99", "v1234"])
def test_a_version_number_out_of_range_says_which_versions_exist(five, rev: str) -> None:
    with pytest.raises(RevisionError, match="versions run from 1 to 5"):
        five(rev)


def test_an_id_prefix_of_four_or_more_hex_digits_names_that_manifest(five) -> None:
    target = five.ids[1]
    for length in (4, 7, 12, 64):
        assert five(target[:length]) == target


def test_an_id_prefix_may_name_a_manifest_outside_the_history(five) -> None:
    stray = fake_id("left behind by an interrupted snapshot")
    assert five(stray[:8], known=[*five.ids, stray]) == stray


def test_three_hex_digits_are_not_an_id_prefix(five) -> None:
    with pytest.raises(RevisionError, match="unknown revision"):
        five(five.ids[1][:3])


def test_an_ambiguous_id_prefix_is_an_error_listing_the_candidates() -> None:
    ids = [fake_id("x", "abcd1"), fake_id("y", "abcd2"), fake_id("z", "ffff")]
    chain, manifests, _ = build_chain(3, ids=ids)
    with pytest.raises(RevisionError, match="ambiguous") as error:
        resolve_version("abcd", chain, {}, sorted(manifests))
    assert ids[0][:12] in str(error.value) and ids[1][:12] in str(error.value)
    assert ids[2][:12] not in str(error.value)
    assert resolve_version("abcd2", chain, {}, sorted(manifests)) == ids[1]


def test_an_ambiguous_long_prefix_lists_candidates_that_can_be_told_apart() -> None:
    shared = "0123456789abcdef01"  # 18 digits: longer than the 12-character short form
    ids = [fake_id("x", shared + "a"), fake_id("y", shared + "b")]
    chain, manifests, _ = build_chain(2, ids=ids)
    with pytest.raises(RevisionError) as error:
        resolve_version(shared, chain, {}, ids)
    assert shared + "a" in str(error.value) and shared + "b" in str(error.value)


def test_a_bare_number_that_names_no_version_falls_through_to_an_id_prefix() -> None:
    ids = [fake_id("1"), fake_id("2", "1234"), fake_id("3")]
    chain, manifests, _ = build_chain(3, ids=ids)
    known = sorted(manifests)
    assert resolve_version("1234", chain, {}, known) == ids[1]
    assert resolve_version("2", chain, {}, known) == ids[1]  # a version number wins...
    with pytest.raises(RevisionError, match="no version 1234"):
        resolve_version("v1234", chain, {}, known)  # ...and `vN` is never a prefix


def test_a_tag_names_its_version(five) -> None:
    assert five("release") == five.ids[2]
    assert five("first") == five.ids[0]


@pytest.mark.parametrize(
    ("rev", "version"),
    [("latest~0", 5), ("latest~1", 4), ("latest~4", 1), ("v3~2", 1), ("3~1", 2), ("release~1", 2), ("latest~1~2", 2)],
)
def test_tilde_k_goes_k_versions_back(five, rev: str, version: int) -> None:
    assert five(rev) == five.ids[version - 1]


def test_tilde_k_from_an_id_prefix(five) -> None:
    assert five(five.ids[3][:6] + "~3") == five.ids[0]


@pytest.mark.parametrize("rev", ["latest~5", "v1~1", "first~1", "v3~3", "latest~99"])
def test_going_back_past_version_one_is_an_error(five, rev: str) -> None:
    with pytest.raises(RevisionError, match="past version 1") as error:
        five(rev)
    assert repr(rev) in str(error.value)


def test_tilde_from_a_manifest_outside_the_history_is_an_error(five) -> None:
    stray = fake_id("stray")
    with pytest.raises(RevisionError, match="not in the history"):
        five(stray[:8] + "~1", known=[*five.ids, stray])


@pytest.mark.parametrize(
    ("rev", "version"),
    [
        ("@2025-10-01", 1),  # v1 at 12:00 on 10-01; a bare date means the end of that day
        ("@2025-10-03", 3),
        ("@2025-10-03T11:59", 2),
        ("@2025-10-03T12:00", 3),
        ("@2025-10-03 12:00", 3),
        ("@2025-10-03T12:00:00", 3),
        ("@2025-10-03T12:00:00Z", 3),
        ("@2025-10-03T11:59:59", 2),
        ("@2030-01-01", 5),
        ("@2025-10-04~2", 2),
    ],
)
def test_at_a_time_names_the_latest_version_created_by_then(five, rev: str, version: int) -> None:
    assert five(rev) == five.ids[version - 1]


def test_at_a_time_with_seconds_includes_that_whole_second() -> None:
    # `egds log` prints whole seconds; the time it shows must find that version.
    times = [T0, T0 + timedelta(seconds=30, microseconds=500_000)]
    chain, manifests, ids = build_chain(2, times=times)
    assert resolve_version("@2025-10-01T12:00:30", chain, {}, ids) == ids[1]
    assert resolve_version("@2025-10-01T12:00:29", chain, {}, ids) == ids[0]
    assert resolve_version("@2025-10-01T12:00", chain, {}, ids) == ids[1]  # the whole minute


@pytest.mark.parametrize("rev", ["@2025-09-30", "@2025-10-01T11:59", "@1970-01-01"])
def test_a_time_before_the_first_version_is_an_error(five, rev: str) -> None:
    with pytest.raises(RevisionError, match="no version existed at .* the first was created 2025-10-01T12:00"):
        five(rev)


@pytest.mark.parametrize("rev", ["@2025-13-01", "@2025-10-32", "@yesterday", "@2025-10-01T25:00", "@2025/10/01", "@"])
def test_a_malformed_time_is_an_error_showing_the_accepted_forms(five, rev: str) -> None:
    with pytest.raises(RevisionError, match="bad time .* use @YYYY-MM-DD or @YYYY-MM-DDTHH:MM"):
        five(rev)


@pytest.mark.parametrize("rev", ["nope", "main", "v1.0", "latest~", "~1", "release2", "-1"])
def test_an_unknown_revision_is_an_error_naming_it_and_the_accepted_forms(five, rev: str) -> None:
    with pytest.raises(RevisionError) as error:
        five(rev)
    assert repr(rev) in str(error.value)
    assert "latest, vN, a tag, an id prefix" in str(error.value)


def test_an_empty_revision_is_an_error(five) -> None:
    with pytest.raises(RevisionError, match="empty revision"):
        five("  ")


@pytest.mark.parametrize("rev", ["latest", "v1", "1", "@2025-10-01", "latest~1"])
def test_every_revision_of_an_empty_repository_says_there_are_no_versions(rev: str) -> None:
    with pytest.raises(RevisionError, match="no versions yet"):
        resolve_version(rev, [], {}, [])


@given(k=st.integers(min_value=1, max_value=15), data=st.data())
@settings(max_examples=60, deadline=None)
def test_vN_tilde_K_is_version_N_minus_K(k: int, data: st.DataObject) -> None:
    chain, manifests, ids = build_chain(k)
    known = sorted(manifests)
    n = data.draw(st.integers(min_value=1, max_value=k), label="N")
    back = data.draw(st.integers(min_value=0, max_value=n + 3), label="K")
    for rev in (f"v{n}~{back}", f"{n}~{back}", f"{ids[n - 1][:10]}~{back}", f"latest~{k - n + back}"):
        if back < n:
            assert manifests[resolve_version(rev, chain, {}, known)].version == n - back, rev
        else:
            with pytest.raises(RevisionError, match="past version 1"):
                resolve_version(rev, chain, {}, known)


# ---- the grammar is ASCII and strict (SPEC.md §9) ----------------------------------------------------


@pytest.mark.parametrize("rev", ["v\u0661", "\u0661", "v\uff13", "latest~\u0661", "v3~\u0661", "\u0663~1"])
def test_unicode_digits_are_not_version_numbers_or_steps(five, rev: str) -> None:
    # Python's \d matches them (`v١` used to name version 1); the grammar's digits are ASCII 0-9.
    with pytest.raises(RevisionError):
        five(rev)


@pytest.mark.parametrize("rev", ["@\u0662\u0660\u0662\u0665-10-01", "@2025-10-01T\u0661\u0662:00", "@\uff12\uff10\uff12\uff15-10-01"])
def test_unicode_digits_in_a_time_are_a_bad_time(five, rev: str) -> None:
    with pytest.raises(RevisionError, match="bad time"):
        five(rev)


@pytest.mark.parametrize(("rev", "advice"), [("v005", "v5"), ("v00", "v0"), ("v01~1", "v1")])
def test_a_version_number_with_leading_zeros_is_refused_saying_how_to_write_it(five, rev: str, advice: str) -> None:
    with pytest.raises(RevisionError, match=f"without leading zeros \\({advice}\\)"):
        five(rev)


@pytest.mark.parametrize("rev", ["005", "00", "05~1"])
def test_a_bare_number_with_leading_zeros_is_no_version(five, rev: str) -> None:
    with pytest.raises(RevisionError, match="no leading zeros"):
        five(rev)


def test_a_bare_number_with_a_leading_zero_is_still_an_id_prefix() -> None:
    ids = [fake_id("1", "0123"), fake_id("2"), fake_id("3")]
    chain, manifests, _ = build_chain(3, ids=ids)
    assert resolve_version("0123", chain, {}, sorted(manifests)) == ids[0]


@pytest.mark.parametrize("rev", ["latest~01", "latest~00", "v3~+1", "v3~-1", "latest~1~", "latest~~1", "v3~1.0"])
def test_a_step_count_is_a_plain_number(five, rev: str) -> None:
    with pytest.raises(RevisionError, match="unknown revision"):
        five(rev)


@pytest.mark.parametrize(("rev", "version"), [("v3~1~1", 1), ("latest~1~0~2", 2), ("release~0~1", 2), ("latest~0~0", 5)])
def test_chained_steps_add_up(five, rev: str, version: int) -> None:
    assert five(rev) == five.ids[version - 1]


@pytest.mark.parametrize("rev", ["latest ~1", "latest~ 1", "v 3", "@ 2025-10-03", "@2025-10-03  12:00", "@2025-10-03T12:00 Z"])
def test_whitespace_inside_a_revision_is_refused(five, rev: str) -> None:
    with pytest.raises(RevisionError):
        five(rev)


@pytest.mark.parametrize("rev", ["\tlatest\n", "v3\r\n", " @2025-10-03 "])
def test_whitespace_around_a_revision_is_ignored(five, rev: str) -> None:
    assert five(rev) in five.ids


@pytest.mark.parametrize("rev", ["\u00a0latest", "latest\u3000"])
def test_only_ascii_whitespace_around_a_revision_is_ignored(five, rev: str) -> None:
    with pytest.raises(RevisionError):
        five(rev)


@pytest.mark.parametrize("rev", ["@2025-10-03Z", "@2025-10-03t12:00", "@2025-10-03T12:00z", "@2025-10-03T12", "@2025-10-03T12:00:00.5"])
def test_z_follows_only_a_time_and_t_is_uppercase(five, rev: str) -> None:
    with pytest.raises(RevisionError, match="bad time"):
        five(rev)


@pytest.mark.parametrize("rev", ["v" + "9" * 5000, "9" * 5000, "latest~" + "9" * 5000, "v" + "1" * 19])
def test_an_absurdly_long_number_is_a_clear_error(five, rev: str) -> None:
    # int() refuses more than 4300 digits with a ValueError: it must not escape as an internal error.
    with pytest.raises(RevisionError) as error:
        five(rev)
    assert len(str(error.value)) < 300


def test_nineteen_digits_are_no_version_but_may_be_an_id_prefix() -> None:
    digits = "1234567890123456789"
    ids = [fake_id("1"), fake_id("2", digits), fake_id("3")]
    chain, manifests, _ = build_chain(3, ids=ids)
    assert resolve_version(digits, chain, {}, sorted(manifests)) == ids[1]
    with pytest.raises(RevisionError, match="no version"):
        resolve_version("v" + digits, chain, {}, sorted(manifests))


def test_an_uppercase_id_prefix_is_not_folded_but_the_error_says_ids_are_lowercase(five) -> None:
    upper = five.ids[1][:8].upper()
    if upper == upper.lower():  # all digits: make it a word that has letters
        upper = "ABCD"
    with pytest.raises(RevisionError, match=f"id prefixes are lowercase \\(try '{upper.lower()}'\\)"):
        five(upper)


def test_an_uppercase_hex_word_can_be_a_tag() -> None:
    chain, manifests, ids = build_chain(2)
    check_tag_name("BEEF")
    assert resolve_version("BEEF", chain, {"BEEF": ids[0]}, sorted(manifests)) == ids[0]


def test_version_numbers_and_times_walk_mains_history_only() -> None:
    # A manifest outside main's history (a diverged pull, an interrupted snapshot) with version 2
    # and the newest time is never what `v2` or `@time` means; its id prefix still names it.
    chain, manifests, ids = build_chain(3)
    stray = fake_id("stray", "fee1")
    manifests[stray] = manifest(2, ids[0], T0 + timedelta(days=30))
    known = sorted(manifests)
    assert resolve_version("v2", chain, {}, known) == ids[1]
    assert resolve_version("2", chain, {}, known) == ids[1]
    assert resolve_version("@2030-01-01", chain, {}, known) == ids[2]
    assert resolve_version("fee1", chain, {}, known) == stray
    with pytest.raises(RevisionError, match="not in the history"):
        resolve_version("fee1~1", chain, {}, known)


@pytest.mark.parametrize("name", ["v\u0661", "v0", "v007", "v" + "1" * 30])
def test_a_tag_name_shaped_like_a_version_is_refused_whatever_its_digits(name: str) -> None:
    with pytest.raises(RevisionError, match="invalid tag name"):
        check_tag_name(name)


_REVISION_ALPHABET = st.sampled_from(list("v0123456789abcdefl~@-:TZ .") + ["latest", "release", "\u0661", "\uff13", "\u00a0"])


@given(rev=st.one_of(st.text(max_size=30), st.lists(_REVISION_ALPHABET, max_size=12).map("".join)))
@settings(max_examples=300, deadline=None)
def test_any_string_resolves_to_a_known_manifest_or_is_a_revision_error(rev: str) -> None:
    chain, manifests, ids = build_chain(5)
    try:
        assert resolve_version(rev, chain, {"release": ids[2]}, sorted(manifests)) in manifests
    except RevisionError as error:
        assert "\n" not in str(error) and len(str(error)) < 400


# ---- tag names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["release", "v1.0", "V1", "beta_2", "Q4-2025", "abc", "x" * 100, "a.b-c_d", "fade-out", "latest2"])
def test_a_tag_name_may_be_a_letter_then_letters_digits_dot_dash_underscore(name: str) -> None:
    check_tag_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "latest", "v1", "v12", "12", "1abc", "beef", "cafe1234", "deadbeef", "a b", "a~1", "@x", "-a", ".a", "_a", "x" * 101, "tag/x", "é"],
)
def test_a_tag_name_that_could_mean_something_else_is_refused(name: str) -> None:
    with pytest.raises(RevisionError, match="invalid tag name"):
        check_tag_name(name)


# ---- through a real repository ----------------------------------------------------------------------


@pytest.fixture
def three(filled_repo: Repository) -> Repository:
    for n in (61, 62):
        write_cache(filled_repo.cache_path, make_chunks(n), make_embeddings(n), index={"newsletters": 6})
        filled_repo.snapshot(f"{n} chunks")
    return filled_repo


def test_a_real_repository_resolves_every_form(three: Repository) -> None:
    ids = {entry.version: entry.id for entry in three.log()}
    assert [entry.version for entry in three.log()] == [3, 2, 1]
    assert three.show()[0] == three.show("latest")[0] == ids[3]
    assert three.show("v1")[0] == three.show("1")[0] == three.show("latest~2")[0] == ids[1]
    assert three.show(ids[2][:4])[1].version == 2
    assert three.show(ids[2][:5] + "~1")[1].version == 1
    assert three.show("@2999-01-01")[1].version == 3
    with pytest.raises(RevisionError, match="no version existed at 2000-01-01"):
        three.show("@2000-01-01")
    with pytest.raises(RevisionError, match="past version 1"):
        three.show("v2~2")
    with pytest.raises(RevisionError, match="versions run from 1 to 3"):
        three.show("v4")
    with pytest.raises(RevisionError, match="unknown revision 'nightly'"):
        three.show("nightly")


def test_a_tag_names_a_version_and_moves_only_with_force(three: Repository) -> None:
    result = three.tag("stable", "v2")
    assert (result.tag, result.version) == ("stable", 2)
    assert three.show("stable")[1].version == 2
    assert three.show("stable~1")[1].version == 1
    assert three.tag("stable", "v2").version == 2  # re-tagging the same version is fine
    with pytest.raises(RevisionError, match="already names version 2; pass --force"):
        three.tag("stable", "latest")
    assert three.tag("stable", "latest", force=True).version == 3
    assert {e.version: e.tags for e in three.log()} == {3: ["stable"], 2: [], 1: []}


def test_a_tag_name_that_is_a_revision_is_refused_by_the_repository(three: Repository) -> None:
    for name in ("latest", "v2", three.head()[:6]):
        with pytest.raises(RevisionError, match="invalid tag name"):
            three.tag(name)
    assert three.tags() == {}


def test_an_empty_repository_has_no_latest(repo: Repository) -> None:
    assert repo.log() == []
    with pytest.raises(RevisionError, match="no versions yet"):
        repo.show()
    with pytest.raises(RevisionError, match="no versions yet"):
        repo.show("v1")
