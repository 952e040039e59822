"""One image's validated definition without loading the fleet: start-up of `bakery scan` and the scan gate.

A scan applies the image's own ``policy`` (its definition's), which needs its :class:`~bakery.model.ImageSpec`.
Loading the fleet for it (``bakery.definitions.load_fleet``: PyYAML, pydantic, every file validated, ~0.1 s of
imports alone and ~0.3 s of CPU at 1,000 definitions) was most of a repeat scan's time. The validated fleet of
a given repository never changes, so :func:`store` keeps its specs, as JSON, in
``$BAKERY_CACHE_DIR/fleet/`` (default ``~/.cache/bakery``) under a key of everything ``load_fleet`` reads:

* the bytes of every ``*.yaml``/``*.yml`` entry of the definitions directory, and what each entry is
  (file, directory, symlink and where it resolves);
* every entry of the templates tree (kind, where a symlink resolves) and the bytes of every ``*.j2``;
* the project's root, its configuration (as validated data), bakery's version and source files and the
  libraries the validation uses (pydantic, PyYAML, Jinja, packaging: where they are, their size and time).

A symlink to a directory among them is not keyed (its content lies elsewhere): such a repository is not cached.

:func:`lookup` recomputes that key (reads, hashing; no YAML, no pydantic) and answers from the cache when it
is there. Anything else — a changed byte, a new file, an upgrade — is a miss: the caller loads the fleet as
before (the same validation, the same errors; a fleet with problems is never stored, so its errors always come
from ``load_fleet``) and stores the result. A hit is exactly what ``load_fleet(project).specs.get(key)`` gives
for the same inputs (tests/unit/test_speccache.py compares them).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery import cachedir
from bakery.configview import Project
from bakery.model import IgnoreSpec, ImageKey, ImageSpec, Parent

if TYPE_CHECKING:
    from collections.abc import Iterable

CACHE_FORMAT = 1
CACHE_ENTRIES = 50  # validated fleets kept (one per repository state and bakery version seen)
MISS = object()  # lookup(): not in the cache, load the fleet


def cache_dir() -> Path:
    return cachedir.cache_dir("fleet")


class _Unkeyable(Exception):
    """What the validation reads cannot be keyed cheaply (a symlink to a directory: its content is elsewhere)."""


def _entry(h: Any, root: Path, path: Path, *, content: bool) -> None:
    """What one directory entry is, into the hash: its name, kind, where a symlink resolves and (``content``) the
    bytes a regular file (or a symlink to one) holds. A symlink to a directory is not keyed (no cache then)."""
    name = os.fsencode(os.path.relpath(path, root))
    try:
        lst = os.lstat(path)
    except OSError as exc:
        h.update(b"E%d\0%s\0" % (exc.errno or 0, name))
        return
    h.update(b"N%d\0%s\0" % (stat.S_IFMT(lst.st_mode), name))
    if stat.S_ISLNK(lst.st_mode):
        h.update(b"L%s\0" % os.fsencode(os.path.realpath(path)))
        try:
            lst = os.stat(path)
        except OSError:
            h.update(b"dangling\0")
            return
        h.update(b"T%d\0" % stat.S_IFMT(lst.st_mode))
        if stat.S_ISDIR(lst.st_mode):
            raise _Unkeyable(path)
    if content and stat.S_ISREG(lst.st_mode):
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            h.update(b"R%d\0" % (exc.errno or 0))
            return
        h.update(b"C%d\0%s\0" % (len(data), cachedir.sha256(data).digest()))


def _tree(h: Any, root: Path, top: Path, content: Any) -> None:
    """Every entry under ``top`` (directories not followed through symlinks), sorted, into the hash."""
    _entry(h, root, top, content=False)
    if not top.is_dir():
        return
    stack = [top]
    while stack:
        here = stack.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as exc:
            h.update(b"U%d\0" % (exc.errno or 0))
            continue
        for e in entries:
            path = Path(e.path)
            _entry(h, root, path, content=content(path))
            if e.is_dir(follow_symlinks=False):
                stack.append(path)


def _code(h: Any) -> None:
    """The validation's code: bakery's modules and the libraries it validates with (found, not imported)."""
    import importlib.util
    import sys

    from bakery import __version__

    h.update(f"{CACHE_FORMAT} {__version__} {sys.version}\0".encode())
    here = Path(__file__).resolve().parent
    files = sorted(here.glob("*.py"))
    for lib in ("pydantic", "pydantic_core", "yaml", "jinja2", "packaging"):
        spec = importlib.util.find_spec(lib)
        if spec is not None and spec.origin:
            files.append(Path(spec.origin))
    for module in files:  # any change is a miss
        st = module.stat()
        h.update(f"{module} {st.st_size} {st.st_mtime_ns}\0".encode())


def fleet_key(project: Project) -> str | None:
    """The key of everything the fleet's validation reads; None when it cannot be read (nothing is cached)."""
    h = cachedir.sha256()
    try:
        _code(h)
        config = project.config.model_dump(mode="json")
        h.update(json.dumps([str(project.root.resolve()), str(project.config_file or ""), config],
                            sort_keys=True, default=str).encode())
        root = project.root
        ddir, tdir = project.definitions_dir, project.templates_dir
        h.update(b"definitions\0")
        _entry(h, root, ddir, content=False)
        if ddir.is_dir():
            for path in sorted(ddir.iterdir()):
                _entry(h, root, path, content=path.suffix in (".yaml", ".yml"))
        h.update(b"templates\0")
        _tree(h, root, tdir, lambda p: p.suffix == ".j2")
    except (OSError, TypeError, ValueError, _Unkeyable):
        return None
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- (de)serialising
def _key_json(key: ImageKey | None) -> list[Any] | None:
    return None if key is None else [key.name, key.version, key.variant]


def _key_of(data: list[Any] | None) -> ImageKey | None:
    return None if data is None else ImageKey(data[0], data[1], data[2])


def spec_json(spec: ImageSpec) -> dict[str, Any]:
    p = spec.parent
    return {"key": _key_json(spec.key), "source_file": spec.source_file, "template": spec.template,
            "builder": spec.builder,
            "parent": {"kind": p.kind, "reference": p.reference, "key": _key_json(p.key),
                       "pinned_digest": p.pinned_digest},
            "variables": spec.variables, "tags": list(spec.tags), "context_files": list(spec.context_files),
            "description": spec.description, "policy": spec.policy, "packer": spec.packer,
            "ignore": None if spec.ignore is None else [
                {"id": e.id, "reason": e.reason, "until": e.until.isoformat() if e.until else None, "image": e.image,
                 "package": e.package} for e in spec.ignore]}


def spec_of(data: dict[str, Any]) -> ImageSpec:
    p = data["parent"]
    key = _key_of(data["key"])
    assert key is not None
    return ImageSpec(key=key, source_file=data["source_file"], template=data["template"], builder=data["builder"],
                     parent=Parent(p["kind"], p["reference"], key=_key_of(p["key"]),
                                   pinned_digest=p["pinned_digest"]),
                     variables=data["variables"], tags=tuple(data["tags"]),
                     context_files=tuple(data["context_files"]), description=data["description"],
                     policy=data["policy"], packer=data["packer"],
                     ignore=None if data["ignore"] is None else tuple(
                         IgnoreSpec(id=e["id"], reason=e["reason"],
                                    until=dt.date.fromisoformat(e["until"]) if e["until"] else None,
                                    image=e["image"], package=e["package"]) for e in data["ignore"]))


# ---------------------------------------------------------------------------------------------- the cache
def lookup(project: Project, key: ImageKey | str, *, fleet_key_: str | None = None) -> Any:
    """``key``'s spec (an ImageKey, or its text NAME:VERSION[-VARIANT]) from the validated fleet stored for the
    repository as it is now (None: the fleet has no such image), or :data:`MISS` when that fleet is not stored
    (load it, then :func:`store`)."""
    fk = fleet_key(project) if fleet_key_ is None else fleet_key_
    if fk is None:
        return MISS
    try:
        stored = json.loads((cache_dir() / f"{fk}.json").read_text())
        if stored.get("format") != CACHE_FORMAT:
            return MISS
        data = stored["specs"].get(str(key))
        return None if data is None else spec_of(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return MISS


def exactly_named(project: Project, ref: str) -> ImageSpec | None:
    """The spec ``ref`` names exactly (NAME:VERSION[-VARIANT], as ``Fleet.resolve_ref`` resolves it when the
    fleet has that image), from the cache; None for anything else — not stored, not in the fleet, another form
    of reference — which the caller resolves through the full load (its answers, its errors)."""
    if ref.count(":") != 1 or "@" in ref or "/" in ref:
        return None
    found = lookup(project, ref)
    return None if found is MISS else found


def load_and_store(project: Project, load: Any) -> Any:
    """``load(project)`` (the fleet), stored when the repository did not change while it loaded."""
    fk = fleet_key(project)
    fleet = load(project)
    if fk is not None and fleet_key(project) == fk:
        store(fk, fleet.specs.values())
    return fleet


def store(fk: str | None, specs: Iterable[ImageSpec]) -> None:
    """Keep a validated fleet's specs under ``fk`` (computed BEFORE the fleet was loaded, and again after: the
    caller stores only when both agree, so a file changed during the load is never kept under the old key)."""
    if fk is None:
        return
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{fk}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "specs": {str(s.key): spec_json(s) for s in specs}}))
        tmp.replace(d / f"{fk}.json")
        entries = sorted(d.glob("*.json"), key=lambda f: f.stat().st_mtime)
        for old in entries[:-CACHE_ENTRIES]:
            old.unlink(missing_ok=True)
    except (OSError, TypeError, ValueError):
        pass  # a cache only


def spec_for(project: Project, key: ImageKey, load: Any) -> ImageSpec | None:
    """``load(project).specs.get(key)`` (``load`` is ``bakery.definitions.load_fleet``: it raises what it
    raises), answered from the cache when the repository's definitions and templates are as they were when a
    load last succeeded."""
    found = lookup(project, key)
    if found is not MISS:
        return found
    return load_and_store(project, load).specs.get(key)
