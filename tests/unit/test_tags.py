"""The build tag scheme: counting within a day, restarting the next day, variants, schemes without {n},
and finding/ordering published build tags (publish.scheme_regex / build_tags)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bakery.config import Config, Project, Tags
from bakery.model import ImageKey
from bakery.publish import build_tags, scheme_regex
from bakery.tags import is_valid_tag, next_build_tag, render_alias, validate_scheme

DEFAULT = "{version}-{yyyymmdd}.{n}"
DAY = dt.date(2026, 11, 26)


def nxt(existing: list[str], *, today: dt.date = DAY, scheme: str = DEFAULT, variant: str | None = None,
        fingerprint: str = "") -> str:
    return next_build_tag(scheme, name="python", version="3.11", variant=variant, today=today, existing=existing,
                          fingerprint=fingerprint)


def test_counts_up_within_a_day() -> None:
    existing: list[str] = []
    for expected in ("3.11-20261126.1", "3.11-20261126.2", "3.11-20261126.3"):
        tag = nxt(existing)
        assert tag == expected
        existing.append(tag)


def test_fills_from_the_first_free_number_and_goes_past_nine() -> None:
    existing = [f"3.11-20261126.{i}" for i in range(1, 10)]
    assert nxt(existing) == "3.11-20261126.10"


def test_restarts_the_next_day() -> None:
    existing = ["3.11-20261126.1", "3.11-20261126.2"]
    assert nxt(existing, today=DAY + dt.timedelta(days=1)) == "3.11-20261127.1"


def test_other_versions_and_aliases_do_not_count() -> None:
    assert nxt(["3.12-20261126.1", "3.11", "latest", "3.11-full-20261126.1"]) == "3.11-20261126.1"


def test_variant_is_part_of_the_version_field() -> None:
    assert nxt([], variant="full") == "3.11-full-20261126.1"
    assert nxt(["3.11-full-20261126.1"], variant="full") == "3.11-full-20261126.2"
    assert nxt(["3.11-full-20261126.1"]) == "3.11-20261126.1"


def test_scheme_without_n_is_one_tag() -> None:
    fp = "sha256:" + "ab" * 32
    assert nxt(["3.11-abababababab"], scheme="{version}-{fp}", fingerprint=fp) == "3.11-abababababab"
    assert nxt([], scheme="{name}-{yyyy}.{mm}.{dd}-{fp}", fingerprint=fp) == "python-2026.11.26-abababababab"
    with pytest.raises(ValueError, match="is not unique per build"):  # no {n}, no fingerprint: refused (issue 11)
        nxt([], scheme="{name}-{yyyy}.{mm}.{dd}")


def test_render_alias() -> None:
    assert render_alias("{version}", name="python", version="3.11", variant="full", today=DAY) == "3.11-full"
    assert render_alias("{name}-latest", name="python", version="3.11", variant=None, today=DAY) == "python-latest"


@pytest.mark.parametrize("scheme", [DEFAULT, "{version}-{fp}", "{name}.{yyyy}{mm}{dd}.{n}", "v{version}_{n}"])
def test_valid_schemes(scheme: str) -> None:
    validate_scheme(scheme)


@pytest.mark.parametrize(("scheme", "message"), [
    ("{version}-{date}", "unknown field {date}"),
    ("latest", "has no fields"),
])
def test_invalid_schemes(scheme: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_scheme(scheme)


@pytest.mark.parametrize(("tag", "ok"), [("3.11-20261126.1", True), ("latest", True), ("-x", False),
                                         ("a" * 128, True), ("a" * 129, False), ("a/b", False), ("", False)])
def test_is_valid_tag(tag: str, ok: bool) -> None:
    assert is_valid_tag(tag) is ok


def project(scheme: str = DEFAULT) -> Project:
    return Project(root=Path("/nonexistent"), config=Config(tags=Tags(build=scheme)), config_file=None)


def test_scheme_regex_matches_only_this_image() -> None:
    rx = scheme_regex(DEFAULT, ImageKey("python", "3.11"))
    assert rx.match("3.11-20261126.1")
    assert rx.match("3.11-20261126.12").group("yyyymmdd", "n") == ("20261126", "12")
    for other in ("3.11", "3.1-20261126.1", "3.11-full-20261126.1", "3x11-20261126.1", "3.11-20261126.1x"):
        assert not rx.match(other), other
    assert scheme_regex(DEFAULT, ImageKey("python", "3.11", "full")).match("3.11-full-20261126.1")


def test_build_tags_oldest_first_numerically() -> None:
    tags = ["3.11-20261126.10", "latest", "3.11-20261126.9", "3.11-20261125.3", "3.11", "3.12-20261127.1",
            "3.11-20261126.1", "3.11-full-20261127.1"]
    assert build_tags(project(), ImageKey("python", "3.11"), tags) == [
        "3.11-20261125.3", "3.11-20261126.1", "3.11-20261126.9", "3.11-20261126.10"]
    assert build_tags(project(), ImageKey("python", "3.11", "full"), tags) == ["3.11-full-20261127.1"]


def test_build_tags_fingerprint_scheme() -> None:
    tags = ["3.11-abababababab", "3.11", "3.11-xyz"]
    assert build_tags(project("{version}-{fp}"), ImageKey("python", "3.11"), tags) == ["3.11-abababababab"]


def test_next_tag_is_newest_by_build_tags() -> None:
    """What next_build_tag hands out sorts after everything already there."""
    existing: list[str] = []
    for day in (DAY, DAY + dt.timedelta(days=1)):
        for _ in range(11):
            existing.append(nxt(existing, today=day))
    ordered = build_tags(project(), ImageKey("python", "3.11"), list(reversed(existing)))
    assert ordered == existing


def test_day_first_scheme_readers_agree_on_the_newest_build() -> None:
    """Regression (issue 9): with ``{version}-{dd}{mm}{yyyy}.{n}`` publish ranked 31122025.1 newest while promote
    ranked 01012026.1 newest, so `build`/`plan`/`scan` and `promote` picked different "latest" builds."""
    from bakery.promote import newest_build_tag

    scheme = "{version}-{dd}{mm}{yyyy}.{n}"
    validate_scheme(scheme)
    tags = ["3.11-01012026.1", "3.11-31122025.1", "3.11-31122025.2"]
    ordered = build_tags(project(scheme), ImageKey("python", "3.11"), tags)
    assert ordered == ["3.11-31122025.1", "3.11-31122025.2", "3.11-01012026.1"]
    assert newest_build_tag(scheme, tags, name="python", tag_version="3.11") == "3.11-01012026.1"
