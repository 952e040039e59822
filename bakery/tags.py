"""The build tag scheme: `{version}-{yyyymmdd}.{n}` by default; `n` counts up within the day."""

from __future__ import annotations

import datetime as dt
import re
import string
from collections.abc import Iterable

FIELDS = {"name", "version", "variant", "yyyymmdd", "yyyy", "mm", "dd", "n", "fingerprint", "fp"}
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def validate_scheme(scheme: str) -> None:
    names = []
    for _, field, _, _ in string.Formatter().parse(scheme):
        if field is None:
            continue
        base = field.split(".")[0].split("[")[0]
        if base not in FIELDS:
            raise ValueError(f"unknown field {{{field}}} in tag scheme {scheme!r} (fields: {', '.join(sorted(FIELDS))})")
        names.append(base)
    if not names:
        raise ValueError(f"tag scheme {scheme!r} has no fields: every build would get the same tag")


def template_fields(template: str) -> set[str]:
    """The fields a tag template uses (``{version}-{yyyymmdd}`` → {version, yyyymmdd})."""
    return {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f}


def is_valid_tag(tag: str) -> bool:
    return bool(_TAG_RE.match(tag))


def _fields(name: str, version: str, variant: str | None, today: dt.date, fingerprint: str) -> dict[str, str]:
    fp = fingerprint.split(":")[-1]
    return {
        "name": name, "version": version if not variant else f"{version}-{variant}",
        "variant": variant or "", "yyyymmdd": today.strftime("%Y%m%d"), "yyyy": today.strftime("%Y"),
        "mm": today.strftime("%m"), "dd": today.strftime("%d"), "fingerprint": fp, "fp": fp[:12],
    }


def render_alias(template: str, *, name: str, version: str, variant: str | None, today: dt.date,
                 fingerprint: str = "") -> str:
    return template.format(n="", **_fields(name, version, variant, today, fingerprint))


def next_build_tag(scheme: str, *, name: str, version: str, variant: str | None, today: dt.date,
                   existing: Iterable[str], fingerprint: str = "") -> str:
    """The first tag of the scheme not in ``existing`` (``n`` from 1); without ``{n}`` the one tag."""
    fields = _fields(name, version, variant, today, fingerprint)
    if "{n}" not in scheme:
        return scheme.format(n="", **fields)
    taken = set(existing)
    n = 1
    while True:
        tag = scheme.format(n=n, **fields)
        if tag not in taken:
            return tag
        n += 1
