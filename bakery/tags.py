"""The build tag scheme — its one owner: validate, render, parse and **order** build tags.

The scheme (``tags.build``, default ``{version}-{yyyymmdd}.{n}``) is a ``str.format`` template over
:data:`FIELDS`. Every reader of build tags goes through :class:`Scheme`: publish (the next tag, the newest
build), promote (resolve, rollback), status, plan and gc. Build tags are ordered by the scheme's own fields,
whatever their layout: the date fields (``yyyymmdd``, or ``yyyy``/``mm``/``dd`` anywhere in the tag) compare
as a date, ``n`` compares as a number, so ``{version}-{dd}{mm}{yyyy}.{n}`` ranks ``01012026.1`` after
``31122025.9``. A scheme without a date or ``{n}`` (``{version}-{fp}``) has no build order: its tags tie and
fall back to the tag text.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from bakery.ref import TAG_RE, is_valid_tag, split_image
from bakery.validation import tag_template_problems

if TYPE_CHECKING:
    from bakery.config import Project
    from bakery.model import ImageKey, ImageSpec

__all__ = ["FIELDS", "BuildTag", "Scheme", "alias_tags", "build_tag_order", "build_tag_pattern", "image_aliases",
           "is_valid_tag", "newest_build_tag", "next_build_tag", "render_alias", "template_fields",
           "validate_scheme"]

FIELDS = {"name", "version", "variant", "yyyymmdd", "yyyy", "mm", "dd", "n", "fingerprint", "fp"}
DATE_FIELDS = ("yyyymmdd", "yyyy", "mm", "dd")
_TAG_CHARS = TAG_RE  # the tag grammar lives in bakery.ref

_FIELD_RE = {
    "yyyymmdd": r"\d{8}", "yyyy": r"\d{4}", "mm": r"\d{2}", "dd": r"\d{2}", "n": r"\d+",
    "fingerprint": r"[0-9a-f]+", "fp": r"[0-9a-f]+",
}


def _base(field: str) -> str:
    return field.split(".")[0].split("[")[0]


def validate_scheme(scheme: str) -> None:
    """ValueError naming every problem of a build tag scheme (the restricted language of
    bakery.validation.tag_template_problems)."""
    problems = tag_template_problems(scheme, kind="build")
    if problems:
        raise ValueError("; ".join(problems))


def template_fields(template: str) -> set[str]:
    """The fields a tag template uses (``{version}-{yyyymmdd}`` → {version, yyyymmdd})."""
    return {_base(f) for _, f, _, _ in string.Formatter().parse(template) if f}


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


# ------------------------------------------------------------------------------------------------------------
# The scheme, read both ways.


@dataclass(frozen=True, order=False)
class BuildTag:
    """A tag the scheme produced, read back: its version (``3.11-slim``), date and counter when the scheme has
    them. ``order`` sorts builds chronologically: (date, n, tag)."""

    tag: str
    version: str | None
    date: tuple[int, int, int] | None  # (year, month, day); a field the scheme lacks is 0
    n: int | None

    @property
    def order(self) -> tuple[tuple[int, int, int], int, str]:
        return (self.date or (0, 0, 0), self.n if self.n is not None else 0, self.tag)


@dataclass(frozen=True)
class Scheme:
    """One build tag scheme (``tags.build``)."""

    template: str

    def __post_init__(self) -> None:
        validate_scheme(self.template)

    @property
    def fields(self) -> set[str]:
        return template_fields(self.template)

    @property
    def ordered(self) -> bool:
        """Whether tags of this scheme carry a build order (a date field or ``{n}``)."""
        return bool(self.fields & {*DATE_FIELDS, "n"})

    # -- render --------------------------------------------------------------------------------------------

    def render(self, *, name: str, version: str, variant: str | None, today: dt.date, n: int | None = None,
               fingerprint: str = "") -> str:
        return self.template.format(n="" if n is None else n,
                                    **_fields(name, version, variant, today, fingerprint))

    def next_tag(self, *, name: str, version: str, variant: str | None, today: dt.date, existing: Iterable[str],
                 fingerprint: str = "") -> str:
        """The tag of the next build: ``n`` one past the highest ``n`` of this version's builds with the same
        date (1 for the first), so that it sorts after every earlier build — also when the scheme carries the
        fingerprint (two builds of a day differ in ``{fp}`` but never share ``n``) and when an earlier build tag
        was deleted (a gap is never refilled). Without ``{n}`` the one tag."""
        if "n" not in self.fields:
            return self.render(name=name, version=version, variant=variant, today=today, fingerprint=fingerprint)
        taken = set(existing)
        tag_version = f"{version}-{variant}" if variant else version
        first = self.render(name=name, version=version, variant=variant, today=today, n=1, fingerprint=fingerprint)
        parsed = self.parse(first, name=name, tag_version=tag_version)
        day = parsed.date if parsed is not None else None
        same_day = [b.n or 0 for b in self.builds(taken, name=name, tag_version=tag_version) if b.date == day]
        n = max(same_day, default=0) + 1
        while True:
            tag = self.render(name=name, version=version, variant=variant, today=today, n=n,
                              fingerprint=fingerprint)
            if tag not in taken:
                return tag
            n += 1

    # -- parse ---------------------------------------------------------------------------------------------

    def pattern(self, *, name: str | None = None, tag_version: str | None = None) -> re.Pattern[str]:
        """A regex matching the build tags of the scheme (for one image/version when given)."""
        return _pattern(self.template, name, tag_version)

    def parse(self, tag: str, *, name: str | None = None, tag_version: str | None = None) -> BuildTag | None:
        """``tag`` read as a build tag of this scheme (of ``name``/``tag_version`` when given), else None."""
        m = self.pattern(name=name, tag_version=tag_version).match(tag)
        if not m:
            return None
        g = m.groupdict()
        date: tuple[int, int, int] | None = None
        if g.get("yyyymmdd"):
            d = g["yyyymmdd"]
            date = (int(d[:4]), int(d[4:6]), int(d[6:]))
        elif any(g.get(f) for f in ("yyyy", "mm", "dd")):
            date = (int(g.get("yyyy") or 0), int(g.get("mm") or 0), int(g.get("dd") or 0))
        n = int(g["n"]) if g.get("n") else None
        return BuildTag(tag=tag, version=g.get("version") or tag_version, date=date, n=n)

    def version_of(self, tag: str, *, name: str | None = None) -> str | None:
        """The version (``3.11`` or ``3.11-slim``) a build tag names, None when it is no build tag."""
        parsed = self.parse(tag, name=name)
        return parsed.version if parsed is not None and parsed.version else None

    def is_build_tag(self, tag: str, *, name: str | None = None) -> bool:
        return self.parse(tag, name=name) is not None

    # -- order ---------------------------------------------------------------------------------------------

    def builds(self, tags: Iterable[str], *, name: str | None = None, tag_version: str | None = None,
               ) -> list[BuildTag]:
        """The build tags among ``tags``, oldest first (by the scheme's date, then ``n``)."""
        found = [b for t in tags if (b := self.parse(t, name=name, tag_version=tag_version)) is not None]
        return sorted(found, key=lambda b: b.order)

    def sorted(self, tags: Iterable[str], *, name: str | None = None, tag_version: str | None = None) -> list[str]:
        return [b.tag for b in self.builds(tags, name=name, tag_version=tag_version)]

    def newest(self, tags: Iterable[str], *, name: str | None = None, tag_version: str | None = None) -> str | None:
        found = self.builds(tags, name=name, tag_version=tag_version)
        return found[-1].tag if found else None


@lru_cache(maxsize=256)
def _pattern(scheme: str, name: str | None, tag_version: str | None) -> re.Pattern[str]:
    out = []
    seen: set[str] = set()
    for literal, fld, _spec, _conv in string.Formatter().parse(scheme):
        out.append(re.escape(literal))
        if fld is None:
            continue
        base = _base(fld)
        if base == "version":
            rx = re.escape(tag_version) if tag_version is not None else r"[A-Za-z0-9_.-]+?"
        elif base == "name":
            rx = re.escape(name) if name is not None else r"[A-Za-z0-9_.-]+?"
        elif base == "variant":
            rx = r"[A-Za-z0-9_.-]*?"
        else:
            rx = _FIELD_RE.get(base, r"[A-Za-z0-9_.-]+?")
        if base in seen:
            out.append(rf"(?P={base})")
        else:
            seen.add(base)
            out.append(f"(?P<{base}>{rx})")
    return re.compile("^" + "".join(out) + "$")


def scheme_of(project: Project) -> Scheme:
    return Scheme(project.config.tags.build)


# ------------------------------------------------------------------------------------------------------------
# Function forms (stable names used across the code base).


def next_build_tag(scheme: str, *, name: str, version: str, variant: str | None, today: dt.date,
                   existing: Iterable[str], fingerprint: str = "") -> str:
    """The first tag of the scheme not in ``existing`` (``n`` from 1); without ``{n}`` the one tag."""
    return Scheme(scheme).next_tag(name=name, version=version, variant=variant, today=today, existing=existing,
                                   fingerprint=fingerprint)


def build_tag_pattern(scheme: str, *, name: str | None = None, tag_version: str | None = None) -> re.Pattern[str]:
    """A regex matching the build tags of ``scheme`` (for one version when ``tag_version`` is given)."""
    return _pattern(scheme, name, tag_version)


def build_tag_order(scheme: str, tag: str) -> tuple[tuple[int, int, int], int, str] | None:
    """Sort key of a build tag under ``scheme`` (None when it is not one)."""
    parsed = Scheme(scheme).parse(tag)
    return parsed.order if parsed else None


def newest_build_tag(scheme: str, tags: Iterable[str], *, name: str, tag_version: str) -> str | None:
    return Scheme(scheme).newest(tags, name=name, tag_version=tag_version)


def sorted_build_tags(scheme: str, key: ImageKey, tags: Iterable[str]) -> list[str]:
    """The build tags of ``key`` among ``tags``, oldest first."""
    return Scheme(scheme).sorted(tags, name=key.name, tag_version=key.tag_version)


# ------------------------------------------------------------------------------------------------------------
# Alias tags.


def alias_tags(env_templates: Iterable[str], definition_tags: Iterable[str], *, name: str, version: str,
               variant: str | None, today: dt.date, fingerprint: str = "") -> list[tuple[str, str]]:
    """The alias tags written beside a build tag, each with the template it came from: the environment's
    templates (``{version}`` → ``3.11-slim``), then the definition's tags, a variant's suffixed with
    ``-VARIANT`` (``latest`` → ``latest-slim``). Duplicates dropped, first wins. `build` pushes exactly
    these and `list` shows them."""
    definition = list(definition_tags)
    out: list[tuple[str, str]] = []
    for t in [*env_templates, *definition]:
        tag = render_alias(t, name=name, version=version, variant=variant, today=today, fingerprint=fingerprint)
        if variant and t in definition:
            tag = f"{tag}-{variant}" if not tag.endswith(variant) else tag
        if tag and tag not in (o for o, _ in out):
            out.append((tag, t))
    return out


def env_alias_tags(project: Project, env_name: str, key: ImageKey, today: dt.date, *,
                   identifying_only: bool = False) -> list[str]:
    """An environment's alias tags for one image (templates rendered, duplicates dropped). With
    ``identifying_only``, the aliases that name this version only: a template without ``{version}``
    (``staging``) renders the same for every version, so it cannot tell which one a version runs."""
    templates = list(project.config.env(env_name).aliases)
    if identifying_only:
        templates = [t for t in templates if "version" in template_fields(t)]
    return [tag for tag, _ in alias_tags(templates, (), name=key.name, version=key.version, variant=key.variant,
                                         today=today)]


def image_aliases(project: Project, spec: ImageSpec, env: str, today: dt.date, fingerprint: str = "") -> list[str]:
    """The alias tags `build` pushes beside the build tag in ``env``: the environment's (or the global)
    templates, plus the definition's tags in the first environment. `list` shows exactly these."""
    e = project.config.env(env)
    templates = list(e.aliases) if e.aliases else list(project.config.tags.aliases)
    definition = list(spec.tags) if env == project.config.first_env else []
    return [tag for tag, _ in alias_tags(templates, definition, name=spec.key.name, version=spec.key.version,
                                         variant=spec.key.variant, today=today, fingerprint=fingerprint)]


def ref_image(scheme: str, ref: str) -> str | None:
    """The ledger's image name (NAME:VERSION[-VARIANT]) of a NAME:VERSION or NAME:BUILD_TAG reference; None for
    a digest or a reference without a tag (what the ledger's events of the reference are filed under)."""
    name, version = split_image(ref)
    if not version or "@" in ref:
        return None
    return f"{name}:{Scheme(scheme).version_of(version, name=name) or version}"
