"""The build tag scheme: `{version}-{yyyymmdd}.{n}` by default; `n` counts up within the day."""

from __future__ import annotations

import datetime as dt
import re
import string
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bakery.config import Project
    from bakery.model import ImageSpec

FIELDS = {"name", "version", "variant", "yyyymmdd", "yyyy", "mm", "dd", "n", "fingerprint", "fp"}
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def validate_scheme(scheme: str) -> None:
    """ValueError naming every problem of a build tag scheme (the restricted language of
    bakery.validation.tag_template_problems)."""
    from bakery.validation import tag_template_problems

    problems = tag_template_problems(scheme, kind="build")
    if problems:
        raise ValueError("; ".join(problems))


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


# ------------------------------------------------------------------------------------------------------------
# The build tag scheme, read backwards.

_FIELD_RE = {
    "yyyymmdd": r"\d{8}", "yyyy": r"\d{4}", "mm": r"\d{2}", "dd": r"\d{2}", "n": r"\d+",
    "fingerprint": r"[0-9a-f]+", "fp": r"[0-9a-f]+",
}


def build_tag_pattern(scheme: str, *, name: str | None = None, tag_version: str | None = None) -> re.Pattern[str]:
    """A regex matching the build tags of ``scheme`` (for one version when ``tag_version`` is given)."""
    out = []
    seen: set[str] = set()
    for literal, fld, _spec, _conv in string.Formatter().parse(scheme):
        out.append(re.escape(literal))
        if fld is None:
            continue
        base = fld.split(".")[0].split("[")[0]
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


def image_aliases(project: Project, spec: ImageSpec, env: str, today: dt.date, fingerprint: str = "") -> list[str]:
    """The alias tags `build` pushes beside the build tag in ``env``: the environment's (or the global)
    templates, plus the definition's tags in the first environment. `list` shows exactly these."""
    e = project.config.env(env)
    templates = list(e.aliases) if e.aliases else list(project.config.tags.aliases)
    definition = list(spec.tags) if env == project.config.first_env else []
    return [tag for tag, _ in alias_tags(templates, definition, name=spec.key.name, version=spec.key.version,
                                         variant=spec.key.variant, today=today, fingerprint=fingerprint)]
