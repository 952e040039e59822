"""Turning pydantic validation errors into `FILE: FIELD: what is wrong` lines, with close-match hints."""

from __future__ import annotations

import re as _re
from typing import TYPE_CHECKING, Any

from bakery.contain import decode_text, read_file
from bakery.errors import InputError, ValidationError
from bakery.ref import HOST_RE, REPOSITORY_RE, TAG_RE, Ref, is_digest
from bakery.text import show
from bakery.yamlsafe import MAX_BYTES, MAX_NODES, parse

# Start-up: difflib and string load where a hint or a tag template needs them (`bakery scan IMAGE` checks the
# reference and nothing else here).


if TYPE_CHECKING:
    import pydantic  # at run time only where an error is formatted: start-up of commands on a cached config


def field_path(loc: tuple[Any, ...]) -> str:
    parts = [show(p, quote=False, limit=60) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    return ".".join(parts) if parts else "(top level)"


def _inner_model(annotation: Any) -> Any:
    """For dict[str, M], list[M], M | None: return M (the model a key path descends into)."""
    import typing

    import pydantic

    origin = typing.get_origin(annotation)
    if origin is None:
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (dict,):
        return _DictOf(args[-1]) if args else None
    if origin in (list, tuple):
        return _ListOf(args[0]) if args else None
    # Union / Optional / Annotated
    for a in args:
        inner = _inner_model(a)
        if isinstance(inner, type) and issubclass(inner, pydantic.BaseModel):
            return inner
        if isinstance(inner, (_DictOf, _ListOf)):
            return inner
    return args[0] if args else None


class _DictOf:
    def __init__(self, value: Any):
        self.value = value


class _ListOf:
    def __init__(self, value: Any):
        self.value = value


def allowed_keys(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> list[str]:
    import pydantic

    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, (_DictOf, _ListOf)):
            current = _inner_model(current.value)
            continue
        if isinstance(current, type) and issubclass(current, pydantic.BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                field = next((f for f in current.model_fields.values() if f.alias == part), None)
            if field is None:
                return []
            current = _inner_model(field.annotation)
            continue
        return []
    if isinstance(current, type) and issubclass(current, pydantic.BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def format_errors(filename: str, model: type[pydantic.BaseModel], err: pydantic.ValidationError,
                  prefix: tuple[Any, ...] = ()) -> list[str]:
    lines = []
    unknown = 0
    for e in err.errors():
        loc = tuple(e["loc"])
        path = field_path(prefix + loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            unknown += 1
            if unknown > MAX_UNKNOWN:
                continue
            options = allowed_keys(model, loc)
            import difflib

            close = difflib.get_close_matches(key, options, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else (
                f" (allowed: {', '.join(sorted(options))})" if options else "")
            lines.append(f"{filename}: {path}: unknown key{hint}")
        elif kind == "missing":
            lines.append(f"{filename}: {path}: required key is missing")
        elif kind in ("string_type",):
            lines.append(f"{filename}: {path}: must be a string, got {_show(e.get('input'))}")
        elif kind == "dict_type" or kind == "model_type":
            lines.append(f"{filename}: {path}: must be a mapping, got {_show(e.get('input'))}")
        elif kind == "list_type":
            lines.append(f"{filename}: {path}: must be a list, got {_show(e.get('input'))}")
        elif kind == "too_short" and e.get("ctx", {}).get("min_length") == 1:
            lines.append(f"{filename}: {path}: must not be empty")
        elif kind == "literal_error":
            lines.append(f"{filename}: {path}: must be one of {e['ctx']['expected']}, got {_show(e.get('input'))}")
        elif kind in _BOUNDS:
            bound = next(iter(e.get("ctx", {}).values()), "?")
            lines.append(f"{filename}: {path}: must be {_BOUNDS[kind]} {bound}, got {_show(e.get('input'))}")
        elif kind in _TYPES:
            lines.append(f"{filename}: {path}: must be {_TYPES[kind]}, got {_show(e.get('input'))}")
        else:
            msg = e["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            if msg.startswith("Assertion failed, "):
                msg = msg[len("Assertion failed, "):]
            lines.append(f"{filename}: {path}: {msg}" + (
                f" (got {_show(e.get('input'))})" if kind not in ("value_error", "assertion_error") else ""))
    if unknown > MAX_UNKNOWN:
        lines.append(f"{filename}: (top level): {unknown - MAX_UNKNOWN} more unknown keys not shown; is this a bakery "
                     f"file?")
    return lines


MAX_UNKNOWN = 10  # unknown keys named per file: a file that is not a bakery file is not echoed line by line


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_TYPES = {"int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
          "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
          "bool_type": "true or false", "date_from_datetime_parsing": "a date (YYYY-MM-DD)",
          "date_parsing": "a date (YYYY-MM-DD)", "date_type": "a date (YYYY-MM-DD)"}


def _show(value: Any) -> str:
    if isinstance(value, str):
        return show(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return f"{type(value).__name__} {show(repr(value), quote=False, limit=40)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return show(repr(value), quote=False)


def read_text(path, *, display: str | None = None) -> str:
    """A UTF-8 text file (a regular file, size-limited); invalid UTF-8 is an InputError naming the file and line."""
    name = display or str(path)
    return decode_text(read_file(path, name), name)


def load_yaml(path, *, display: str | None = None, large: bool = False) -> Any:
    """Parse a YAML file with bakery's one strict loader (bakery.yamlsafe); every problem is an InputError.
    ``large``: an operator's data file named on the command line (an advisory file), not repository content:
    64 MiB and 5,000,000 values instead of 1 MiB and 100,000."""
    name = display or str(path)
    limit, nodes = (64 * 1024 * 1024, 5_000_000) if large else (MAX_BYTES, MAX_NODES)
    loaded = parse(decode_text(read_file(path, name, limit=limit), name), name, max_nodes=nodes)
    if loaded.problems:
        raise ValidationError(loaded.problems)
    return loaded.data


# ---------------------------------------------------------------------------------------------------------------
# The Docker reference grammar (distribution/reference), as small functions returning "why not" or None, so that
# every caller reports a problem the same way. They check strings; bakery's reference type parses them.


# The grammar itself is bakery.ref's (the one reference type); these functions say *why* a string is not valid.
_COMPONENT_RE = REPOSITORY_RE  # used on one component (no '/') below
_HOST_RE = _re.compile(HOST_RE.pattern.replace(r"(?::\d+)?$", r"(?::(?P<port>[0-9]+))?$"))
_TAG_RE = TAG_RE
MAX_REPOSITORY = 255  # Docker's limit for a whole repository name


def component_problem(value: object, what: str = "image name") -> str | None:
    """Why VALUE is not one path component of a repository name (``nginx``, ``python-web``, ``a.b_c``)."""
    if not isinstance(value, str):
        return f"{what} must be a string"
    if not value:
        return f"{what} must not be empty"
    if len(value) > 128:
        return f"{what} {show(value, limit=40)} is {len(value)} characters (at most 128)"
    if "/" in value or not _COMPONENT_RE.match(value):
        return (f"{show(value)} is not a valid {what} (lowercase letters, digits, '.', '_', '-'; a separator "
                f"only between two letters or digits, and never '..')")
    return None


def host_problem(value: object) -> str | None:
    """Why VALUE is not a registry host ``name[:port]`` (``docker.io``, ``127.0.0.1:5000``, ``[::1]:5000``)."""
    if not isinstance(value, str):
        return f"must be a string host[:port], got {type(value).__name__}"
    m = _HOST_RE.match(value)
    if not m:
        return f"not a registry host[:port]: {show(value)}"
    if m.group("port") is not None and not 1 <= int(m.group("port")) <= 65535:
        return f"port {m.group('port')} is out of range (1..65535): {show(value)}"
    return None


def registry_problem(value: object) -> str | None:
    """Why VALUE is not a registry reference ``host[:port][/namespace]`` (None when it is one): the host by the
    domain grammar, every namespace component by the component grammar (no '..', '//', leading '-')."""
    if not isinstance(value, str):
        return f"must be a string host[:port][/namespace], got {type(value).__name__} {show(repr(value), quote=False)}"
    body = value[:-1] if value.endswith("/") else value
    host, _, namespace = body.partition("/")
    m = _HOST_RE.match(host)
    if m is None or "//" in body or body.endswith("/"):
        return f"not a registry reference host[:port][/namespace]: {show(value)}"
    if m.group("port") is not None and not 1 <= int(m.group("port")) <= 65535:
        return f"port {m.group('port')} is out of range (1..65535): {show(value)}"
    if namespace and not all(_COMPONENT_RE.match(c) for c in namespace.split("/")):
        return f"not a registry reference host[:port][/namespace]: {show(value)}"
    if len(value) > MAX_REPOSITORY - 2:
        return f"{show(value, limit=40)} is longer than Docker's {MAX_REPOSITORY} characters for a repository"
    return None


def tag_problem(value: object) -> str | None:
    if not isinstance(value, str) or not _TAG_RE.match(value):
        return (f"{show(value)} is not a valid image tag (letters, digits, '_', '.', '-'; at most 128; not starting "
                f"with '.' or '-')")
    return None


# ---------------------------------------------------------------------------------------------------------------
# Tag templates (``tags.build``, ``tags.aliases``, an environment's ``aliases``): a restricted language. A template
# is literal tag characters and ``{field}`` with a known field name; no format spec (``{n:05}``), conversion
# (``{n!r}``), index (``{version[0]}``) or attribute (``{version.upper}``): str.format would evaluate those.

TAG_FIELDS = ("name", "version", "variant", "yyyymmdd", "yyyy", "mm", "dd", "n", "fingerprint", "fp")
_LITERAL_RE = _re.compile(r"^[A-Za-z0-9_.-]*$")


def tag_template_problems(template: object, *, kind: str) -> list[str]:
    """Why TEMPLATE is not a valid tag template (empty when it is). ``kind`` is ``build`` (must be unique per
    build: it must contain ``{n}`` or a fingerprint) or ``alias`` (no ``{n}``)."""
    if not isinstance(template, str):
        return [f"must be a string tag template, got {type(template).__name__}"]
    if not template.strip():
        return ["an empty tag template; give a tag like '{version}' or 'stable'"]
    shown = show(template)
    import string

    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [f"tag template {shown}: {exc} (write a field as {{version}}; braces cannot be used otherwise)"]
    problems: list[str] = []
    fields: list[str] = []
    for literal, field, spec, conversion in parts:
        if literal and not _LITERAL_RE.match(literal):
            bad = next(c for c in literal if not _LITERAL_RE.match(c))
            problems.append(f"tag template {shown}: {show(bad)} cannot be in a tag (letters, digits, '_', '.', '-')")
        if field is None:
            continue
        if field not in TAG_FIELDS:
            base = _re.split(r"[.\[]", field, maxsplit=1)[0]
            if base in TAG_FIELDS:
                problems.append(f"tag template {shown}: {{{show(field, quote=False)}}}: fields take no index or "
                                f"attribute; write {{{base}}}")
            else:
                problems.append(f"tag template {shown}: unknown field {{{show(field, quote=False)}}} (fields: "
                                f"{', '.join(sorted(TAG_FIELDS))})")
            continue
        if spec or conversion:
            problems.append(f"tag template {shown}: {{{show(field, quote=False)}}} takes no format spec or "
                            f"conversion; write {{{field}}}")
            continue
        fields.append(field)
    if problems:
        return problems
    if kind == "build":
        if not fields:
            return [f"tag scheme {shown} has no fields: every build would get the same tag"]
        if not {"n", "fingerprint", "fp"} & set(fields):
            return [f"tag scheme {shown} is not unique per build: it needs {{n}} (a counter) or {{fingerprint}}/"
                    f"{{fp}}; without one a rebuild would reuse a build tag, and build tags are immutable"]
    elif "n" in fields:
        return [f"alias {shown}: {{n}} counts builds and belongs in tags.build, not in an alias"]
    sample = template.format(name="a" * 20, version="1.2.3-variant", variant="variant", yyyymmdd="20260101",
                             yyyy="2026", mm="01", dd="01", n="1", fingerprint="f" * 64, fp="f" * 12)
    if not _TAG_RE.match(sample[:128]):
        return [f"tag template {shown} renders to {show(sample)}, which is not a valid image tag (it cannot start "
                f"with '.' or '-')"]
    return []


def reference_problem(value: object) -> str | None:
    """Why VALUE is not an image reference ``[host[:port]/]path[:tag][@sha256:…]`` or an image id ``sha256:…``
    (bakery.ref.Ref parses it; a port must also be in range)."""
    if not isinstance(value, str) or not value:
        return "an image reference must be a non-empty string"
    if is_digest(value):
        return None
    rest, at, digest = value.partition("@")
    if at and not is_digest(digest):
        return f"{show(value)}: {show(digest)} is not a digest (sha256:<64 hex>)"
    try:
        ref = Ref.parse(value)
    except InputError:
        return f"{show(value)} is not a valid image reference ([registry/]path[:tag][@sha256:<64 hex>])"
    if host_problem(ref.registry) is not None:
        return f"{show(value)}: registry {host_problem(ref.registry)}"
    if len(ref.repository) > MAX_REPOSITORY:
        return f"{show(value, limit=60)} is longer than Docker's {MAX_REPOSITORY} characters for a repository"
    return None


PACKER_KINDS = ("docker", "amazon-ebs")
PACKER_KEYS = ("kind", "source_ami_filter")
_AMI_FILTER_KEYS = ("owners", "filters")


def packer_settings_problems(display: str, where: str, settings: Any) -> list[str]:
    """A definition's ``packer`` settings checked when the definition is loaded (`list`, `render`, `plan`):
    known keys only, a supported ``kind``, a well-formed ``source_ami_filter``. One line per problem."""
    if settings is None:
        return []
    if not isinstance(settings, dict):
        return [f"{display}: {where}: must be a mapping (kind, source_ami_filter)"]
    out = []
    for key in settings:
        if key not in PACKER_KEYS:
            import difflib

            close = difflib.get_close_matches(str(key), PACKER_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(PACKER_KEYS)})"
            out.append(f"{display}: {where}.{show(key, quote=False)}: unknown key{hint}")
    kind = settings.get("kind")
    if kind is not None and kind not in PACKER_KINDS:
        out.append(f"{display}: {where}.kind: {show(kind)} is not supported (one of {', '.join(PACKER_KINDS)})")
    flt = settings.get("source_ami_filter")
    if flt is not None:
        fw = f"{where}.source_ami_filter"
        if not isinstance(flt, dict):
            out.append(f"{display}: {fw}: must be a mapping {{owners: [...], filters: {{name: ...}}}}")
        else:
            for key in flt:
                if key not in _AMI_FILTER_KEYS:
                    out.append(f"{display}: {fw}.{show(key, quote=False)}: unknown key (allowed: owners, filters)")
            owners = flt.get("owners", [])
            if not (isinstance(owners, str) or (isinstance(owners, list) and all(isinstance(o, str) for o in owners))):
                out.append(f"{display}: {fw}.owners: must be a string or a list of strings")
            filters = flt.get("filters")
            if not isinstance(filters, dict) or not filters:
                out.append(f"{display}: {fw}.filters: must be a non-empty mapping name -> value")
            else:
                for k, v in filters.items():
                    items = v if isinstance(v, list) else [v]
                    if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in items):
                        out.append(f"{display}: {fw}.filters.{show(k, quote=False)}: must be a string or a list of "
                                   f"strings")
    return out
