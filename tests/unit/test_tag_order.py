"""The build-tag scheme has one owner (bakery.tags.Scheme) that orders build tags chronologically, whatever the
scheme's layout: property tests over the scheme shapes validation accepts, across month and year boundaries,
and every reader of build tags (publish, promote, gc, status) agrees with it."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bakery.config import Config, Project, Tags
from bakery.model import ImageKey
from bakery.promote import newest_build_tag
from bakery.publish import build_tags
from bakery.tags import Scheme, validate_scheme

# The date layouts a scheme can spell (every one validation accepts), the counter, and their separators.
DATE_LAYOUTS = [
    ["{yyyymmdd}"], ["{yyyy}", "{mm}", "{dd}"], ["{dd}", "{mm}", "{yyyy}"], ["{mm}", "{dd}", "{yyyy}"],
    ["{yyyy}", "{dd}", "{mm}"], ["{dd}", "{yyyy}", "{mm}"], ["{mm}", "{yyyy}", "{dd}"],
]
SEPARATORS = st.sampled_from(["", ".", "-", "_"])


@st.composite
def schemes(draw: st.DrawFn, *, with_n: bool = True) -> str:
    """``{version}``/``{name}`` in front (or behind), a date in any field order (whole or year+month only),
    ``{n}`` before or after, optionally the fingerprint too."""
    date = draw(st.sampled_from([*DATE_LAYOUTS, ["{yyyy}", "{mm}"], ["{mm}", "{yyyy}"]] if with_n else DATE_LAYOUTS))
    inner = draw(SEPARATORS)
    body = inner.join(date)
    if with_n:
        n_first = draw(st.booleans())
        sep = draw(st.sampled_from([".", "-", "_"]))
        body = f"{{n}}{sep}{body}" if n_first else f"{body}{sep}{{n}}"
    if not with_n or draw(st.booleans()):  # without {n} a scheme must hold a fingerprint (issue 11: unique per build)
        body += draw(st.sampled_from(["-{fp}", ".{fingerprint}"]))
    head = draw(st.sampled_from(["{version}-", "{name}-{version}-", "v{version}_", "{version}."]))
    scheme = head + body if draw(st.booleans()) else body + "-" + head.rstrip("-_.")
    validate_scheme(scheme)
    return scheme


# Days around month and year ends, and leap days.
DAYS = st.dates(min_value=dt.date(1999, 12, 25), max_value=dt.date(2031, 1, 10)).filter(
    lambda d: d.day <= 3 or d.day >= 27 or d.month in (1, 12))


def _project(scheme: str) -> Project:
    return Project(root=Path("/nonexistent"), config=Config(tags=Tags(build=scheme)), config_file=None)


def _history(scheme: str, days: list[dt.date], per_day: list[int], *, name: str, version: str,
             variant: str | None) -> list[str]:
    """The tags the scheme hands out, in chronological build order (each build its own fingerprint)."""
    s = Scheme(scheme)
    out: list[str] = []
    for day, count in zip(sorted(set(days)), per_day):
        for _ in range(count if "n" in s.fields else 1):
            fingerprint = "sha256:" + hashlib.sha256(f"{day}{len(out)}".encode()).hexdigest()
            out.append(s.next_tag(name=name, version=version, variant=variant, today=day, existing=out,
                                  fingerprint=fingerprint))
    return out


@settings(max_examples=300, deadline=None)
@given(scheme=st.one_of(schemes(), schemes(with_n=False)), days=st.lists(DAYS, min_size=1, max_size=6), per_day=st.lists(
    st.integers(min_value=1, max_value=12), min_size=6, max_size=6), variant=st.sampled_from([None, "slim"]),
    shuffle=st.randoms(use_true_random=False))
def test_order_equals_chronological_build_order(scheme: str, days: list[dt.date], per_day: list[int],
                                                variant: str | None, shuffle) -> None:
    key = ImageKey("python", "3.11", variant)
    built = _history(scheme, days, per_day, name=key.name, version=key.version, variant=variant)
    listed = list(built)
    shuffle.shuffle(listed)
    noise = ["latest", "3.11", "3.12", f"{key.tag_version}-x"]
    # The owner, publish's reader (build, plan, scan NAME:VERSION) and promote's reader agree, oldest first.
    assert Scheme(scheme).sorted(listed + noise, name=key.name, tag_version=key.tag_version) == built
    assert build_tags(_project(scheme), key, listed + noise) == built
    assert newest_build_tag(scheme, listed + noise, name=key.name, tag_version=key.tag_version) == built[-1]
    # Reading a tag back gives the build's version and its date.
    for tag in built:
        parsed = Scheme(scheme).parse(tag, name=key.name)
        assert parsed is not None and parsed.version == key.tag_version


@settings(max_examples=100, deadline=None)
@given(scheme=schemes(), day=DAYS)
def test_next_day_sorts_after_a_busy_day(scheme: str, day: dt.date) -> None:
    """Ten builds on one day (n=10 sorts after n=9), then one the next day (a new month or year)."""
    s = Scheme(scheme)
    tags: list[str] = []
    for i in range(10):
        tags.append(s.next_tag(name="a", version="1.0", variant=None, today=day, existing=tags,
                               fingerprint=f"sha256:{i:064x}"))
    nxt = s.next_tag(name="a", version="1.0", variant=None, today=day + dt.timedelta(days=1), existing=tags,
                     fingerprint="sha256:" + "f" * 64)
    assert s.newest([nxt, *tags], name="a", tag_version="1.0") == nxt
    assert s.sorted(reversed(tags), name="a", tag_version="1.0") == tags


def test_a_deleted_build_tag_is_never_refilled() -> None:
    """gc deleted build 2 of the day: the next build is 4, not 2 (which would sort before build 3)."""
    s = Scheme("{version}-{yyyymmdd}.{n}")
    existing = ["1.0-20260101.1", "1.0-20260101.3"]
    nxt = s.next_tag(name="a", version="1.0", variant=None, today=dt.date(2026, 1, 1), existing=existing)
    assert nxt == "1.0-20260101.4" and s.newest([*existing, nxt], name="a", tag_version="1.0") == nxt


def test_fingerprint_schemes_count_builds_of_a_day() -> None:
    """Regression: with {fp} in the scheme, two builds of one day both got n=1 (their tags differ in {fp}) and
    ranked by the fingerprint's hex instead of build order."""
    s = Scheme("{version}-{yyyymmdd}.{n}-{fp}")
    first = s.next_tag(name="a", version="1.0", variant=None, today=dt.date(2026, 1, 1), existing=[],
                       fingerprint="sha256:" + "f" * 64)
    second = s.next_tag(name="a", version="1.0", variant=None, today=dt.date(2026, 1, 1), existing=[first],
                        fingerprint="sha256:" + "0" * 64)
    assert (first, second) == ("1.0-20260101.1-ffffffffffff", "1.0-20260101.2-000000000000")
    assert s.newest([first, second], name="a", tag_version="1.0") == second


def test_scheme_without_order_fields_ties_on_the_tag_text() -> None:
    s = Scheme("{version}-{fp}")
    assert not s.ordered
    assert s.sorted(["3.11-bb", "3.11-aa", "3.11"], name="x", tag_version="3.11") == ["3.11-aa", "3.11-bb"]
