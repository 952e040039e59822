"""Versioned base definitions (`base-images/*.yaml`): loading, validation and the dependency graph.

One YAML file per image family::

    name: python
    template: python              # templates/python/ holds Dockerfile.j2 (or *.pkr.hcl.j2)
    variables: {user: app}        # defaults for every version
    versions:
      "3.11":
        parent: base:12           # another bakery image, or an upstream image (docker.io/library/debian:bookworm-slim[@sha256:…])
        variables: {python_package: python3.11}
        tags: [latest]
        variants:
          slim: {}
          full: {variables: {extras: python3-pip}}

Every problem is reported as ``FILE: FIELD: what is wrong`` (all of them at once) and exits 2.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from bakery import __version__, cachedir, contain
from bakery.configview import Project
from bakery.errors import InputError, ValidationError
from bakery.model import IgnoreSpec, ImageKey, ImageSpec, Parent
from bakery.ref import TAG_RE, Ref, split_image
from bakery.ref import mirrored as ref_mirrored
from bakery.tags import alias_tags, build_tag_pattern, next_build_tag, template_fields
from bakery.text import show
from bakery.validation import MAX_REPOSITORY, component_problem, host_problem
from bakery.yamlsafe import MAX_BYTES, decode, read_bytes

VARIANT_RE = re.compile(r"^[a-z][a-z0-9]*$")
VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A plain value may hold these characters and nothing else: no newline, no shell or recipe syntax.
SAFE_VALUE_RE = re.compile(r"^[A-Za-z0-9 ._+:/=@,~%-]*$")
MAX_TEMPLATE_BYTES = 1024 * 1024
RESERVED_VARIABLES = ("name", "version", "variant", "parent", "image", "tags", "labels")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a definition file (`bakery schema`)."""
    from bakery.defschema import json_schema as schema  # pydantic: see _Outcomes

    return schema()


# ------------------------------------------------------------------------------------------------ definitions
# A validated definition file as plain data (bakery.defschema.DefinitionFile.model_dump()): the models' fields as
# attributes, read the same whether the file was validated now or its outcome was kept (_Outcomes).
class _Variant:
    __slots__ = ("variables", "tags", "description")

    def __init__(self, data: dict[str, Any]):
        self.variables: dict[str, Any] = data["variables"]
        self.tags: list[str] = data["tags"]
        self.description: str = data["description"]


NO_VARIANT = _Variant({"variables": {}, "tags": [], "description": ""})  # a version's own image (no variant)


class _Version:
    __slots__ = ("parent", "template", "variables", "tags", "variants", "packer", "description")

    def __init__(self, data: dict[str, Any]):
        self.parent: str = data["parent"]
        self.template: str | None = data["template"]
        self.variables: dict[str, Any] = data["variables"]
        self.tags: list[str] = data["tags"]
        self.variants: dict[str, _Variant | None] = {
            k: None if v is None else _Variant(v) for k, v in data["variants"].items()}
        self.packer: dict[str, Any] | None = data["packer"]
        self.description: str = data["description"]


class _Policy:
    __slots__ = ("_data", "severity", "fixable_only", "ignore")

    def __init__(self, data: dict[str, Any]):
        self._data = data
        self.severity: str | None = data["severity"]
        self.fixable_only: bool | None = data["fixable_only"]
        self.ignore: list[dict[str, Any]] = data["ignore"]

    def dump(self) -> dict[str, Any]:
        """``model_dump(exclude_none=True)`` of the model: the fields that are set."""
        return {k: v for k, v in self._data.items() if v is not None}


class _Definition:
    __slots__ = ("name", "description", "template", "variables", "policy", "packer", "versions", "validated_ignore")

    def __init__(self, data: dict[str, Any]):
        self.name: str = data["name"]
        self.description: str = data["description"]
        self.template: str = data["template"]
        self.variables: dict[str, Any] = data["variables"]
        self.policy: _Policy | None = None if data["policy"] is None else _Policy(data["policy"])
        ignores = data["validated_ignore"]  # bakery.defschema.validated_ignores
        self.validated_ignore: tuple[IgnoreSpec, ...] | None = None if ignores is None else tuple(
            IgnoreSpec(id=e["id"], reason=e["reason"], until=dt.date.fromisoformat(e["until"]) if e["until"] else None,
                       image=e["image"], package=e["package"]) for e in ignores)
        self.packer: dict[str, Any] | None = data["packer"]
        self.versions: dict[str, _Version] = {k: _Version(v) for k, v in data["versions"].items()}


_OUTCOMES_FORMAT = 1
_OUTCOMES_REPOSITORIES = 50  # repositories whose outcomes are kept


class _Outcomes:
    """What :func:`bakery.defschema.check` said of each definition file, by the file's bytes and name.

    A file read before with no problem is neither parsed nor validated again (the YAML parse and pydantic, with
    its import, are most of loading a large fleet): its validated data is kept in ``$BAKERY_CACHE_DIR/
    definitions/`` (default ``~/.cache/bakery``; outside the repository, so a pull request cannot ship a
    "validated" entry), one file per repository, keyed by a hash of the name shown and the bytes, salted with
    bakery's version and the sources and libraries the check depends on. Any changed byte is a new key and is
    checked again; a file with problems is never kept, so its errors always come from the check itself. Only the
    per-file check is kept: everything that depends on other files, templates or the configuration runs every
    time. Kept: the data of the files of the last load (a repository's fleet, not its history)."""

    def __init__(self, project: Project):
        import hashlib

        self._sha = hashlib.sha256
        self.kept: dict[str, Any] = {}
        self.used: dict[str, Any] = {}
        self.changed = False
        try:
            root = cachedir.cache_dir("definitions")
            self.path = root / f"{self._sha(str(project.root.resolve()).encode()).hexdigest()[:32]}.json"
        except (OSError, RuntimeError):  # no home directory: nothing is kept, every file is checked
            self.salt: str | None = None
            return
        self.salt = _outcomes_salt()
        if self.salt is None:
            return
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(stored, dict) and stored.get("format") == _OUTCOMES_FORMAT and \
                    stored.get("salt") == self.salt and isinstance(stored.get("entries"), dict):
                self.kept = stored["entries"]
        except (OSError, ValueError):
            pass

    def check(self, raw: bytes, display: str) -> tuple[list[str], dict[str, Any] | None, list[str]]:
        key = self._sha(display.encode("utf-8", "surrogateescape") + b"\0" + raw).hexdigest()
        data = self.kept.get(key)
        if isinstance(data, dict):
            self.used[key] = data
            return [], data, []
        from bakery.defschema import check  # pydantic and the models: only for a file not seen before

        read_problems, data, checks = check(raw, display)
        if data is not None and not read_problems and not checks and self.salt is not None:
            try:
                same = json.loads(json.dumps(data)) == data  # kept only when JSON gives it back exactly
            except (TypeError, ValueError):
                same = False
            if same:
                self.used[key] = data
                self.changed = True
        return read_problems, data, checks

    def save(self) -> None:
        if self.salt is None or (not self.changed and len(self.used) == len(self.kept)):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"format": _OUTCOMES_FORMAT, "salt": self.salt, "entries": self.used}),
                           encoding="utf-8")
            os.replace(tmp, self.path)
            kept = sorted(self.path.parent.glob("*.json"), key=lambda f: f.stat().st_mtime)
            for old in kept[:-_OUTCOMES_REPOSITORIES]:  # the repositories used last, not every one ever loaded
                old.unlink(missing_ok=True)
        except OSError:
            pass  # a cache only: the next load checks again


def _outcomes_salt() -> str | None:
    """What a file's check depends on besides its bytes: bakery's version, the modules of the check and the
    versions of pydantic and PyYAML (their files' size and time); None when any of it cannot be read."""
    import importlib.util

    parts: list[Any] = [__version__]
    here = Path(__file__).resolve().parent
    try:
        for module in ("defschema.py", "config.py", "validation.py", "yamlsafe.py", "contain.py", "text.py",
                       "model.py", "ref.py", "tags.py"):
            st = (here / module).stat()
            parts.append([module, st.st_size, st.st_mtime_ns])
        for library in ("pydantic", "pydantic_core", "yaml"):
            spec = importlib.util.find_spec(library)
            origin = spec.origin if spec is not None else None
            if origin is None:
                return None
            st = os.stat(origin)
            parts.append([library, origin, st.st_size, st.st_mtime_ns])
    except (OSError, ImportError, ValueError):
        return None
    return json.dumps(parts)


@dataclass
class Fleet:
    """Every buildable image of the repository and the parent → child graph between them."""

    project: Project
    specs: dict[ImageKey, ImageSpec]
    families: dict[str, list[ImageKey]] = field(default_factory=dict)  # name -> keys, versions ascending

    def get(self, key: ImageKey) -> ImageSpec:
        return self.specs[key]

    def parent_key(self, spec: ImageSpec) -> ImageKey | None:
        return spec.parent.key if spec.parent.kind == "bakery" else None

    def children(self, key: ImageKey) -> list[ImageKey]:
        return list(self._children().get(key, ()))

    def _children(self) -> dict[ImageKey, list[ImageKey]]:
        """parent -> its children, sorted; built once (the fleet's specs do not change after loading): asking
        each image for its children by scanning every spec made a 1,000-image plan quadratic."""
        index = self.__dict__.get("_children_index")
        if index is None or index[0] != len(self.specs):
            children: dict[ImageKey, list[ImageKey]] = {}
            for k, s in self.specs.items():
                p = self.parent_key(s)
                if p is not None:
                    children.setdefault(p, []).append(k)
            index = (len(self.specs), {p: sorted(c) for p, c in children.items()})
            self.__dict__["_children_index"] = index
        return index[1]

    def descendants(self, key: ImageKey) -> list[ImageKey]:
        index = self._children()
        out: set[ImageKey] = set()
        stack = [key]
        while stack:
            for child in index.get(stack.pop(), ()):
                if child not in out:
                    out.add(child)
                    stack.append(child)
        return sorted(out)

    def ancestors(self, key: ImageKey) -> list[ImageKey]:
        out = []
        cur = self.parent_key(self.specs[key])
        while cur is not None:
            out.append(cur)
            cur = self.parent_key(self.specs[cur])
        return out

    def resolve_ref(self, ref: str) -> list[ImageKey]:
        """``NAME`` (every version and variant), ``NAME:VERSION`` (that version without variant) or
        ``NAME:VERSION-VARIANT``. Unknown → InputError with the closest match."""
        name, rest = split_image(ref)
        if name not in self.families:
            close = difflib.get_close_matches(name, list(self.families), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"unknown image {ref!r}{hint}; `bakery list` shows the fleet")
        keys = self.families[name]
        if not rest:
            return list(keys)
        exact = [k for k in keys if k.tag_version == rest]
        if exact:
            return exact
        by_version = [k for k in keys if k.version == rest]
        if by_version:
            return by_version
        known = sorted({k.tag_version for k in keys})
        raise InputError(f"unknown version {rest!r} of {name!r} (known: {', '.join(known)})")

    def select(self, refs: Sequence[str]) -> list[ImageSpec]:
        """The specs named by REFs (all when none), sorted by name and version."""
        if not refs:
            return self.ordered(list(self.specs))
        keys: list[ImageKey] = []
        for ref in refs:
            for k in self.resolve_ref(ref):
                if k not in keys:
                    keys.append(k)
        return self.ordered(keys)

    def ordered(self, keys: Iterable[ImageKey]) -> list[ImageSpec]:
        return [self.specs[k] for k in sorted(set(keys), key=self.sort_key)]

    def sort_key(self, key: ImageKey) -> tuple:
        return (key.name, Version(key.version), key.variant or "")

    def levels(self, keys: Iterable[ImageKey] | None = None) -> list[list[ImageSpec]]:
        """Topological levels of the given images (all by default): parents in earlier levels.
        A parent outside the set does not hold its child back."""
        wanted = set(self.specs if keys is None else keys)
        depth: dict[ImageKey, int] = {}

        def level(k: ImageKey) -> int:
            if k in depth:
                return depth[k]
            p = self.parent_key(self.specs[k])
            depth[k] = 0 if p is None or p not in wanted else level(p) + 1
            return depth[k]

        for k in wanted:
            level(k)
        out: list[list[ImageSpec]] = []
        for k in sorted(wanted, key=self.sort_key):
            d = depth[k]
            while len(out) <= d:
                out.append([])
            out[d].append(self.specs[k])
        return out


def parse_upstream(reference: str) -> tuple[str, str | None, str | None] | None:
    """``registry/path:tag@sha256:…`` → (registry/path, tag, digest); None when it is not a full reference
    (bakery.ref.Ref parses it)."""
    ref = Ref.try_parse(reference, require_registry=True)
    return (ref.name, ref.tag, ref.digest) if ref is not None else None


TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")


def template_problem(project: Project, template: str) -> str | None:
    """Why ``template`` cannot name a template directory (None when it can): a relative name under templates/
    (no ``..``, not absolute), resolving to a real directory inside the repository."""
    if not isinstance(template, str) or not TEMPLATE_NAME_RE.match(template) or len(template) > 200:
        return (f"template {show(template)} must be a directory name under "
                f"{project.rel(project.templates_dir)}/ (letters, digits, '_', '.', '-', '/'; no '..', not absolute)")
    why = contain.problem(project.root, project.templates_dir, project.rel(project.templates_dir), want="dir")
    if why:
        return why
    tdir = project.templates_dir / template
    if not os.path.lexists(tdir):
        return f"template {show(template)} not found under {project.rel(project.templates_dir)}/ (no such directory)"
    return contain.problem(project.root, tdir, project.rel(tdir), want="dir")


def template_kind(template_dir: Path) -> str | None:
    if (template_dir / "Dockerfile.j2").is_file():
        return "docker"
    if any(template_dir.glob("*.pkr.hcl.j2")):
        return "packer"
    return None


_VARS_CACHE_FORMAT = "bakery-template-vars-1"


def template_variables(project: Project, template: str, known: dict[str, list[str]] | None = None) -> set[str]:
    """Variables the templates of a template directory use (undeclared in the templates themselves).

    Parsing needs jinja (its import and lexer cost ~0.1 s, most of a short command's run), so the answer is
    kept per template source digest in ``.bakery/cache/template-vars.json``: ``known`` is that cache, read once
    by the caller (which saves it when this added to it); without it the file is read and saved here. Syntax
    errors are never cached.
    """
    import hashlib

    entries = _read_vars_cache(project) if known is None else known
    size = len(entries)
    names: set[str] = set()
    for path in sorted((project.templates_dir / template).glob("*.j2")):
        display = project.rel(path)
        source = decode(contain.read_bytes(project.root, path, display, limit=MAX_TEMPLATE_BYTES), display)
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        cached = entries.get(digest)
        if isinstance(cached, list) and all(isinstance(n, str) for n in cached):
            names |= set(cached)
            continue
        found = _parse_variables(project, path, source)
        entries[digest] = sorted(found)
        names |= found
    if known is None and len(entries) != size:
        _write_vars_cache(project, entries)
    return names


def _vars_cache_file(project: Project) -> Path:
    return project.state_dir / "cache" / "template-vars.json"


def _read_vars_cache(project: Project) -> dict[str, list[str]]:
    """The cached undeclared variables by template source digest; empty when unreadable or of another format."""
    import json

    try:
        cache = json.loads(_vars_cache_file(project).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict) or cache.get("format") != _VARS_CACHE_FORMAT:
        return {}
    entries = cache.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_vars_cache(project: Project, entries: dict[str, list[str]]) -> None:
    """Replace the cache file atomically; an unwritable state dir only means parsing again next time."""
    import json

    cache_file = _vars_cache_file(project)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"format": _VARS_CACHE_FORMAT, "entries": entries}, sort_keys=True),
                       encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError:
        pass


def _parse_variables(project: Project, path: Path, source: str) -> set[str]:
    from jinja2 import TemplateSyntaxError, meta

    # Deferred (the one late import of a bakery module in core, see tests/unit/test_import_graph.py): render
    # imports jinja2, ~0.1 s of every command's start-up, needed only when the template-variables cache misses.
    from bakery.render import environment

    try:
        return set(meta.find_undeclared_variables(environment(project).parse(source)))
    except TemplateSyntaxError as exc:
        raise InputError(f"{project.rel(path)}: line {exc.lineno}: template syntax error: {exc.message}") from None


def mirrored(project: Project, reference: str) -> str:
    """Rewrite an upstream reference through the configured mirrors (``docker.io/x`` → ``127.0.0.1:5000/x``)."""
    return ref_mirrored(reference, project.config.mirrors)


def check_value(value: Any) -> str | None:
    """Why a template variable value is refused, or None when it is a plain, safe value."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, dict)):
        if value is None:
            kind = "null"
        elif isinstance(value, dict):
            kind = "a mapping"
        elif isinstance(value, bool):
            kind = f"boolean {str(value).lower()}"
        else:
            kind = f"{type(value).__name__} {value!r}"
        return f"must be a string (or a list of strings), got {kind}; quote it in YAML"
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str):
            return f"list items must be strings, got {type(item).__name__} {show(repr(item), quote=False)}"
        if "\n" in item or "\r" in item:
            return f"value {show(item)} contains a newline, which would inject an instruction into the recipe"
        if not SAFE_VALUE_RE.match(item):
            bad = next(c for c in item if not SAFE_VALUE_RE.match(c))
            return (f"value {show(item)} contains {bad!r}, which a recipe would read as syntax; plain values may hold "
                    f"letters, digits, space and . _ + : / = @ , ~ % -")
        option = next((w for w in item.split() if w.startswith("-")), None)
        if option is not None:
            return (f"value {show(item)} has the word {show(option)}, which would be read as an option by the command "
                    f"it lands in (e.g. apt-get install); a value's words may not start with '-'")
    return None


def load_fleet(project: Project) -> Fleet:
    """Load and validate every definition; raise ValidationError listing every problem."""
    ddir = project.definitions_dir
    if not ddir.is_dir() and not ddir.is_symlink():
        raise InputError(f"{project.rel(ddir)}: definitions directory not found (set `definitions:` in bakery.yaml)")
    contain.require(project.root, ddir, project.rel(ddir), want="dir")
    problems: list[str] = []
    parsed: list[tuple[str, _Definition, list[str]]] = []
    files = []
    for path in sorted(ddir.iterdir()):
        if path.suffix not in (".yaml", ".yml"):
            continue
        # a *.yaml that is a directory, FIFO, dangling symlink or a symlink out of the repository is named, not
        # skipped; it is refused before anything is read from it, so its content never reaches a message
        why = contain.problem(project.root, path, project.rel(path))
        if why:
            problems.append(why)
        else:
            files.append(path)
    outcomes = _Outcomes(project)
    for path in files:
        display = show(project.rel(path), quote=False)
        try:
            raw = read_bytes(path, display, limit=MAX_BYTES, root=project.root)
        except InputError as exc:
            problems.append(str(exc))
            continue
        read_problems, data, checks = outcomes.check(raw, display)
        problems += read_problems
        if data is not None:
            parsed.append((display, _Definition(data), checks))
    outcomes.save()
    seen: dict[str, str] = {}
    for display, d, checks in parsed:
        problems += checks  # its policy and packer settings
        name_problem = component_problem(d.name)
        if name_problem:
            problems.append(f"{display}: name: {name_problem}")
        else:
            longest = max(project.config.environments.values(), key=lambda e: len(e.registry))
            if len(longest.image(d.name)) > MAX_REPOSITORY:
                problems.append(f"{display}: name: {longest.image(d.name)[:60]!r}… is longer than Docker's "
                                f"{MAX_REPOSITORY} characters for a repository name")
        if d.name in seen:
            problems.append(f"{display}: name: duplicate image family {d.name!r} (also defined in {seen[d.name]})")
        else:
            seen[d.name] = display
    definitions = [(display, d) for display, d, _ in parsed]
    specs, more = _expand(project, definitions)
    problems += more
    problems += _check_collisions(project, definitions, specs)
    fleet = Fleet(project, {})
    if not problems:
        fleet.specs = specs
        problems += _check_graph(fleet)
    if problems:
        raise ValidationError(problems)
    fams: dict[str, list[ImageKey]] = {}
    for k in sorted(specs, key=fleet.sort_key):
        fams.setdefault(k.name, []).append(k)
    fleet.families = fams
    return fleet


def _expand(project: Project, parsed: list[tuple[str, _Definition]]) -> tuple[dict[ImageKey, ImageSpec], list[str]]:
    problems: list[str] = []
    specs: dict[ImageKey, ImageSpec] = {}
    names = {d.name for _, d in parsed}
    all_keys: set[tuple[str, str]] = set()
    for _, d in parsed:
        for v, vd in d.versions.items():
            all_keys.add((d.name, v))
            for variant in vd.variants:
                all_keys.add((d.name, f"{v}-{variant}"))
    template_cache: dict[str, set[str] | None] = {}
    tproblems: dict[str, str | None] = {}  # template -> why it cannot be used (checked once, not per version)
    context_cache: dict[str, tuple[str, ...]] = {}  # template -> its files/ (walked once, not per version)
    vars_cache = _read_vars_cache(project)  # template source digest -> its variables (read once, saved once)
    vars_cached = len(vars_cache)
    for display, d in parsed:
        for field_name, value in d.variables.items():
            problems += _check_var(display, f"variables.{field_name}", field_name, value)
        for vstr, vd in d.versions.items():
            where = f"versions.{vstr}"
            try:
                Version(vstr)
            except InvalidVersion:
                problems.append(f"{display}: {where}: {vstr!r} is not a PEP 440 version (e.g. 12, 3.11, 1.25.0)")
                continue
            tag_problem = _version_tag_problem(vstr)
            if tag_problem:
                problems.append(f"{display}: {where}: {tag_problem}")
                continue
            template = vd.template or d.template
            tfield = f"{where}.template" if vd.template else "template"
            if template not in tproblems:
                tproblems[template] = template_problem(project, template)
            tproblem = tproblems[template]
            if tproblem:
                problems.append(f"{display}: {tfield}: {tproblem}")
                kind = None
                tdir = project.templates_dir
            else:
                tdir = project.templates_dir / template
                kind = template_kind(tdir)
                if kind is None:
                    problems.append(f"{display}: {tfield}: template {show(template)} not found under "
                                    f"{project.rel(project.templates_dir)}/ (it holds no Dockerfile.j2 or "
                                    f"*.pkr.hcl.j2)")
            parent, pproblem = _parent(vd.parent, names, all_keys)
            if pproblem:
                problems.append(f"{display}: {where}.parent: {pproblem}")
            for tag in vd.tags:
                if not isinstance(tag, str) or not TAG_RE.match(tag):
                    problems.append(f"{display}: {where}.tags: {tag!r} is not a valid image tag")
            for field_name, value in vd.variables.items():
                problems += _check_var(display, f"{where}.variables.{field_name}", field_name, value)
            variants: list[tuple[str | None, _Variant]] = [(None, NO_VARIANT)]
            for vname, vardef in vd.variants.items():
                if not VARIANT_RE.match(vname):
                    problems.append(f"{display}: {where}.variants.{vname}: variant names are lowercase letters "
                                    f"and digits, starting with a letter")
                    continue
                vardef = vardef or NO_VARIANT
                if len(f"{vstr}-{vname}") > 128:
                    problems.append(f"{display}: {where}.variants.{vname}: image tag '{vstr}-{vname}' is longer "
                                    f"than Docker's 128 characters")
                    continue
                for tag in vardef.tags:
                    if not isinstance(tag, str) or not TAG_RE.match(tag):
                        problems.append(f"{display}: {where}.variants.{vname}.tags: {tag!r} is not a valid image tag")
                for field_name, value in vardef.variables.items():
                    problems += _check_var(display, f"{where}.variants.{vname}.variables.{field_name}", field_name,
                                           value)
                variants.append((vname, vardef))
            if kind is not None:
                if template not in template_cache:
                    try:
                        template_cache[template] = template_variables(project, template, vars_cache)
                    except InputError as exc:
                        problems.append(str(exc))
                        template_cache[template] = None
                    context_cache[template], cproblems = contain.context_files(project.root, tdir, project.rel)
                    problems += cproblems
                used = template_cache[template] or set()
            else:
                used = set()
            for vname, vardef in variants:
                variables = {**d.variables, **vd.variables, **vardef.variables}
                missing = sorted(used - set(variables) - set(RESERVED_VARIABLES))
                vwhere = where if vname is None else f"{where}.variants.{vname}"
                if missing:
                    problems.append(f"{display}: {vwhere}.variables: template {template!r} uses undefined "
                                    f"variable{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
                if kind is not None:
                    # a version's own variable (checked at its base entry) or a variant's that the template never
                    # reads: a typo
                    own = vd.variables if vname is None else vardef.variables
                    for unused in sorted(set(own) - used - set(RESERVED_VARIABLES)):
                        close = difflib.get_close_matches(unused, sorted(used), n=1)
                        hint = f" (did you mean {close[0]!r}?)" if close else ""
                        problems.append(f"{display}: {vwhere}.variables.{unused}: not used by template "
                                        f"{template!r}{hint}")
                if parent is None or kind is None:
                    continue
                key = ImageKey(d.name, vstr, vname)
                packer = {**(d.packer or {}), **(vd.packer or {})} or None
                policy = d.policy.dump() if d.policy else None
                specs[key] = ImageSpec(
                    key=key, source_file=display, template=template, builder=kind,  # type: ignore[arg-type]
                    parent=parent, variables=variables, tags=tuple(vd.tags) + tuple(vardef.tags),
                    context_files=context_cache[template], description=vardef.description or vd.description
                    or d.description, policy=policy or None, packer=packer,
                    ignore=d.validated_ignore if policy else None)
    if len(vars_cache) != vars_cached:
        _write_vars_cache(project, vars_cache)
    return specs, problems


DOCKER_TAG_CHARS_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _version_tag_problem(version: str) -> str | None:
    """Why a version cannot be a Docker tag (None when it can): images are tagged NAME:VERSION."""
    if not DOCKER_TAG_CHARS_RE.match(version):
        bad = next(c for c in version if not DOCKER_TAG_CHARS_RE.match(c))
        return (f"{version!r} contains {bad!r}, which a Docker tag cannot hold (letters, digits, '_', '.', '-'; "
                f"a PEP 440 local version like 1.22+local is not a valid tag)")
    if not TAG_RE.match(version):
        if len(version) > 128:
            return f"{version!r} is longer than Docker's 128 characters for a tag"
        return f"{version!r} cannot start a Docker tag ({version[0]!r}); start it with a letter, digit or '_'"
    return None


def _check_collisions(project: Project, parsed: list[tuple[str, _Definition]],
                      specs: dict[ImageKey, ImageSpec]) -> list[str]:
    """Within a family (one repository), every image needs its own reference and its own tags: two versions that
    are the same PEP 440 version, a version and a variant giving the same NAME:TAG, a definition tag claimed twice
    or equal to another image's version alias, and a definition tag shaped like a build tag are refused."""

    config = project.config
    first = config.env(config.first_env)
    identifying = [t for t in (first.aliases or config.tags.aliases) if "version" in template_fields(t)]
    scheme = config.tags.build
    looks_built = build_tag_pattern(scheme)
    today = dt.date(2000, 1, 1)  # any date: the templates checked here name the version
    problems: list[str] = []
    by_file: dict[str, list[ImageSpec]] = {}  # grouped once: a scan of every spec per file was quadratic
    for spec in specs.values():
        by_file.setdefault(spec.source_file, []).append(spec)
    for display, d in parsed:
        defs = {v: vd for v, vd in d.versions.items()}
        same: dict[Version, str] = {}
        for v in defs:
            try:
                pv = Version(v)
            except InvalidVersion:
                continue
            if pv in same:
                problems.append(f"{display}: versions.{v}: {v!r} is the same PEP 440 version as {same[pv]!r} "
                                f"(versions.{same[pv]}); keep one")
            else:
                same[pv] = v
        family = by_file.get(display, [])

        def where(spec: ImageSpec) -> str:
            k = spec.key
            return f"versions.{k.version}" + (f".variants.{k.variant}" if k.variant else "")

        def tags_where(spec: ImageSpec, template: str) -> str:
            k = spec.key
            variant = (defs[k.version].variants.get(k.variant) or NO_VARIANT) if k.variant else None
            own = variant is not None and template in variant.tags and template not in defs[k.version].tags
            return f"{where(spec) if own else f'versions.{k.version}'}.tags"

        claims: dict[str, tuple[ImageKey, str]] = {}  # tag -> (image, what the tag is there)
        for spec in family:
            k = spec.key
            if k.tag_version in claims:
                owner, what = claims[k.tag_version]
                other = specs[owner]
                what = f"defined by {where(other)}" if owner.tag_version == k.tag_version else what
                problems.append(f"{display}: {where(spec)}: image {k} is also {what}; rename one")
                continue
            claims[k.tag_version] = (k, f"the version tag of {k} ({where(spec)})")
            for tag, template in alias_tags(identifying, [], name=k.name, version=k.version, variant=k.variant,
                                            today=today):
                claims.setdefault(tag, (k, f"the {template!r} alias of {k} ({where(spec)})"))
            build_tag = next_build_tag(scheme, name=k.name, version=k.version, variant=k.variant, today=today,
                                       existing=(), fingerprint="0" * 64)
            if len(build_tag) > 128:
                problems.append(f"{display}: {where(spec)}: its build tags (tags.build {scheme!r}) are "
                                f"{len(build_tag)} characters, longer than Docker's 128 for a tag")
        for spec in family:
            k = spec.key
            for tag, template in alias_tags([], spec.tags, name=k.name, version=k.version, variant=k.variant,
                                            today=today):
                field_path = tags_where(spec, template)
                shown = repr(tag) if tag == template else f"{template!r} (pushed as {tag!r} for {k})"
                m = looks_built.match(tag)
                if m:
                    version = m.groupdict().get("version")
                    of = f" of {k.name}:{version}" if version and any(
                        s.key.tag_version == version for s in family) else ""
                    problems.append(f"{display}: {field_path}: tag {shown} looks like a build tag{of} (tags.build "
                                    f"{scheme!r}); build tags are immutable and only bakery writes them")
                    continue
                owner, what = claims.setdefault(tag, (k, f"a tag of {k} ({field_path})"))
                if owner != k:
                    problems.append(f"{display}: {field_path}: tag {shown} is also {what}; two images cannot share "
                                    f"a tag")
    return list(dict.fromkeys(problems))


def _check_var(display: str, where: str, name: str, value: Any) -> list[str]:
    out = []
    if not VAR_NAME_RE.match(name):
        out.append(f"{display}: {where}: {name!r} is not a valid variable name (letters, digits, '_')")
    elif name in RESERVED_VARIABLES:
        out.append(f"{display}: {where}: {name!r} is reserved (bakery sets it)")
    why = check_value(value)
    if why:
        out.append(f"{display}: {where}: {why}")
    return out


def _parent(ref: str, names: set[str], all_keys: set[tuple[str, str]]) -> tuple[Parent | None, str | None]:
    if not isinstance(ref, str) or not ref:
        return None, "must be a non-empty string"
    if "/" not in ref:
        name, sep, ver = ref.partition(":")
        if not sep:
            return None, f"{ref!r} needs a version: NAME:VERSION for a bakery image, or a full upstream reference"
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f" (did you mean '{close[0]}:{ver}'?)" if close else ""
            return None, (f"unknown parent {ref!r}: no image family {name!r} in the definitions{hint}; an upstream "
                          f"image needs its registry, e.g. docker.io/library/{name}:{ver}")
        if (name, ver) not in all_keys:
            known = sorted(v for n, v in all_keys if n == name)
            return None, f"unknown parent {ref!r}: {name!r} has no version {ver!r} (known: {', '.join(known)})"
        version, variant = _split_variant(ver, name, all_keys)
        return Parent("bakery", ref, key=ImageKey(name, version, variant)), None
    parsed = parse_upstream(ref)
    if parsed is None:
        return None, f"{show(ref)} is not a valid image reference (registry/path[:tag][@sha256:…])"
    repo, tag, digest = parsed
    host = repo.split("/", 1)[0]
    if ("." in host or ":" in host or host == "localhost") and host_problem(host):
        return None, f"{show(ref)}: registry {host_problem(host)}"
    if len(repo) > MAX_REPOSITORY:
        return None, f"{show(ref, limit=60)} is longer than Docker's {MAX_REPOSITORY} characters for a repository"
    if tag is None and digest is None:
        return None, f"{ref!r} names no tag or digest; pin it (e.g. {ref}:bookworm-slim)"
    return Parent("upstream", ref, pinned_digest=digest), None


def _split_variant(tag_version: str, name: str, all_keys: set[tuple[str, str]]) -> tuple[str, str | None]:
    # "3.11-slim" → ("3.11", "slim") when 3.11 is a version of name; versions never contain '-' variants.
    if "-" in tag_version:
        base, _, variant = tag_version.rpartition("-")
        if (name, base) in all_keys:
            return base, variant
    return tag_version, None


def _check_graph(fleet: Fleet) -> list[str]:
    """Cycles: name the whole cycle, once."""
    problems = []
    reported: set[frozenset[ImageKey]] = set()
    for start in sorted(fleet.specs):
        path: list[ImageKey] = []
        cur: ImageKey | None = start
        while cur is not None and cur not in path:
            path.append(cur)
            cur = fleet.parent_key(fleet.specs[cur])
        if cur is not None:
            cycle = path[path.index(cur):]
            ident = frozenset(cycle)
            if ident in reported:
                continue
            reported.add(ident)
            i = cycle.index(min(cycle))
            cycle = cycle[i:] + cycle[:i]
            chain = " -> ".join(str(k) for k in [*cycle, cycle[0]])
            spec = fleet.specs[cycle[0]]
            problems.append(f"{spec.source_file}: versions.{cycle[0].version}.parent: dependency cycle: {chain}")
    return problems
