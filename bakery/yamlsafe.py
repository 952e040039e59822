"""The one YAML loader for every file bakery reads (definitions, bakery.yaml, ignore files, advisories, BAKERY_*).

Repository content is untrusted input, so this loader accepts only what a settings file needs and keeps
memory and messages bounded whatever the input:

- plain scalars (strings, integers, floats, booleans, null), lists and mappings; any other tag
  (``!!binary``, ``!!set``, ``!!python/...``, a local ``!tag``) is refused;
- mapping keys are strings: a number, boolean, date or collection used as a key is a problem naming where
  (``versions.3.10: keys must be strings; YAML reads 3.10 as the number 3.1; quote it: "3.10"``);
- duplicate keys are refused (YAML would silently keep the last one);
- unquoted dates (``until: 2024-05-01``, ``description: 2024-13-45``) are read as the text written: a schema
  that wants a date parses it and names the field when it is not one;
- one document per file, at most ``MAX_BYTES`` bytes, at most ``MAX_DEPTH`` levels of nesting;
- aliases are expanded against a budget of ``MAX_NODES`` nodes for the whole document, so a "billion laughs"
  document is refused in microseconds instead of taking gigabytes; merge keys (``<<: *defaults``) work within
  the same budget;
- messages name the file, line and field, never an expanded value; user text in them is escaped
  (``bakery.text.show``) so a newline or an escape sequence cannot forge a line.

It reads the event stream of libyaml (the C parser when PyYAML has it) and builds the data itself: no Python
recursion, so deep nesting cannot overflow the stack either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from bakery.contain import decode_text, read_file
from bakery.errors import InputError
from bakery.text import show

MAX_BYTES = 1024 * 1024  # one definition or configuration file
MAX_NODES = 100_000  # scalars + collections after alias expansion, per document
MAX_DEPTH = 64
MAX_SCALAR = 64 * 1024  # characters in one scalar

_T = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {f"{_T}{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_SCALAR_OK = {f"{_T}{t}" for t in ("str", "int", "float", "bool", "null")}


@dataclass
class Loaded:
    """A parsed document and the non-fatal problems found while building it (``FILE: WHERE: what``)."""

    data: Any
    problems: list[str] = field(default_factory=list)


class _Fatal(Exception):
    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def _line(event: Any) -> int | None:
    mark = getattr(event, "start_mark", None)
    return mark.line + 1 if mark is not None else None


class _Collection:
    __slots__ = ("kind", "value", "path", "line", "key", "key_line", "has_key", "anchor", "size", "seen", "merges", "is_key")

    def __init__(self, kind: str, path: str, line: int | None, anchor: str | None):
        self.kind = kind
        self.value: Any = {} if kind == "map" else []
        self.path = path
        self.line = line
        self.key: Any = None
        self.key_line: int | None = None
        self.has_key = False
        self.anchor = anchor
        self.size = 1
        self.seen: dict[str, int | None] = {}
        self.merges: list[Any] = []
        self.is_key = False


def _join(path: str, key: Any) -> str:
    part = show(key, quote=False) if isinstance(key, str) else f"[{key}]"
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]" if path else f"[{key}]"
    return f"{path}.{part}" if path else part


def _parse_or_refuse(text: str, display: str, max_nodes: int, *, multi: bool = False) -> Loaded:
    """_parse with its fatal problems and libyaml's syntax errors as one short InputError naming the line."""
    import yaml  # start-up: PyYAML (~10 ms) only when a file is parsed; cached configurations need none

    try:
        return _parse(text, display, max_nodes, multi=multi)
    except _Fatal as exc:
        where = f"line {exc.line}" if exc.line else "(top level)"
        raise InputError(f"{display}: {where}: {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(top level)"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{display}: {where}: invalid YAML: {show(problem, quote=False)}") from None


def parse_all(text: str, display: str, *, max_nodes: int = MAX_NODES) -> list[Any]:
    """Every document of a multi-document stream (Kubernetes manifests), by the same rules, the value budget
    shared by all documents; any problem (a duplicate key too) is an InputError."""
    loaded = _parse_or_refuse(text, display, max_nodes, multi=True)
    if loaded.problems:
        raise InputError(loaded.problems[0])
    return list(loaded.data)


def parse(text: str, display: str, *, max_nodes: int = MAX_NODES) -> Loaded:
    """Parse one YAML document. Fatal problems (syntax, tags, budget, several documents) raise InputError;
    the others (duplicate or non-string keys) are returned in ``Loaded.problems`` with the data built anyway."""
    return _parse_or_refuse(text, display, max_nodes)


@cache
def _yaml() -> tuple[Any, Any]:
    """(PyYAML, its fastest safe loader class)."""
    import yaml

    return yaml, getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _constructor() -> Any:
    """PyYAML's safe constructor: its scalar constructors keep no state."""
    return _yaml()[0].constructor.SafeConstructor()


def _parse(text: str, display: str, max_nodes: int, multi: bool = False) -> Loaded:
    yaml, loader_class = _yaml()
    loader = loader_class(text)
    problems: list[str] = []
    anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, expanded size)
    stack: list[_Collection] = []
    root: Any = None
    have_root = False
    documents = 0
    total = 0
    roots: list[Any] = []

    def count(n: int, line: int | None) -> None:
        nonlocal total
        total += n
        if total > max_nodes:
            raise _Fatal(line, f"more than {max_nodes} values after expanding aliases; bakery refuses documents "
                               f"this large (an alias of a list or mapping repeats all of it)")

    def place(value: Any, size: int, line: int | None, key_text: str | None = None, tag: str | None = None) -> None:
        nonlocal root, have_root
        if not stack:
            root, have_root = value, True
            return
        parent = stack[-1]
        parent.size += size
        if parent.kind == "seq":
            parent.value.append(value)
            return
        if not parent.has_key:
            parent.has_key = True
            parent.key_line = line
            if tag == f"{_T}merge":
                parent.key = _MERGE
                return
            if not isinstance(value, str):
                written = key_text if key_text is not None else str(value)
                shown = show(written, quote=False)
                problems.append(f"{display}: {_join(parent.path, written)}: keys must be strings; YAML reads "
                                f"{shown} as {_describe(value)}; quote it: \"{shown}\"")
                value = written
            if value in parent.seen:
                first = parent.seen[value]
                problems.append(f"{display}: {_join(parent.path, value)}: line {line}: duplicate key "
                                f"(first at line {first}); YAML would silently keep the last one")
                parent.key = _SKIP
                return
            parent.seen[value] = line
            parent.key = value
            return
        key = parent.key
        parent.has_key = False
        if key is _SKIP:
            return
        if key is _MERGE:
            parent.merges.append((value, line))
            return
        parent.value[key] = value

    while True:
        event = loader.get_event()
        if event is None or isinstance(event, yaml.StreamEndEvent):
            break
        if isinstance(event, (yaml.StreamStartEvent, yaml.DocumentEndEvent)):
            continue
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1 and not multi:
                raise _Fatal(_line(event), "more than one YAML document (---); a bakery file holds one")
            if multi and have_root:
                roots.append(root)
            root, have_root = None, False
            anchors.clear()  # anchors belong to their document
            continue
        line = _line(event)
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise _Fatal(line, f"alias *{show(event.anchor, quote=False)} names no anchor defined before it")
            value, size = anchors[event.anchor]
            if value is _INCOMPLETE:
                raise _Fatal(line, f"alias *{show(event.anchor, quote=False)} refers to the collection it is in")
            count(size, line)
            place(value, size, line)
            continue
        tag = getattr(event, "tag", None)
        implicit = getattr(event, "implicit", None)
        if isinstance(event, yaml.ScalarEvent):
            count(1, line)
            if len(event.value) > MAX_SCALAR:
                raise _Fatal(line, f"a value of {len(event.value)} characters (limit {MAX_SCALAR})")
            if tag == "!":
                resolved = f"{_T}str"  # the non-specific tag: a string
            elif tag is None:
                resolved = loader.resolve(yaml.ScalarNode, event.value, implicit)
            else:
                resolved = tag
            if stack and stack[-1].kind == "map" and not stack[-1].has_key and event.value == "<<" \
                    and resolved == f"{_T}merge":
                place("<<", 1, line, tag=resolved)
                continue
            value = _scalar(resolved, event.value, line)
            if event.anchor:
                anchors[event.anchor] = (value, 1)
            is_key = bool(stack) and stack[-1].kind == "map" and not stack[-1].has_key
            place(value, 1, line, key_text=event.value if is_key else None)
            continue
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            count(1, line)
            kind = "seq" if isinstance(event, yaml.SequenceStartEvent) else "map"
            if tag not in (None, "!") and tag not in _ALLOWED_TAGS:
                raise _Fatal(line, f"tag {show(tag)} is not allowed (only plain values, lists and mappings)")
            if len(stack) >= MAX_DEPTH:
                raise _Fatal(line, f"nested more than {MAX_DEPTH} levels deep")
            parent = stack[-1] if stack else None
            if parent is None:
                path = ""
            elif parent.kind == "seq":
                path = _join(parent.path, len(parent.value))
            else:
                path = _join(parent.path, parent.key) if isinstance(parent.key, str) else parent.path
            c = _Collection(kind, path, line, event.anchor)
            c.is_key = parent is not None and parent.kind == "map" and not parent.has_key
            if event.anchor:
                anchors[event.anchor] = (_INCOMPLETE, 0)
            stack.append(c)
            continue
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            c = stack.pop()
            if c.kind == "map" and c.merges:
                _merge(c, display, problems)
            if c.anchor:
                anchors[c.anchor] = (c.value, c.size)
            if c.is_key:  # a list or mapping used as a mapping key
                parent = stack[-1]
                parent.has_key, parent.key = True, _SKIP
                parent.size += c.size
                problems.append(f"{display}: {parent.path or '(top level)'}: line {c.line}: keys must be strings, "
                                f"not a list or mapping")
                continue
            place(c.value, c.size, c.line)
            continue
    if multi:
        if have_root:
            roots.append(root)
        return Loaded(roots, problems)
    if not have_root:
        return Loaded(None, problems)
    return Loaded(root, problems)


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_SKIP = _Marker("skip")
_MERGE = _Marker("merge")
_INCOMPLETE = _Marker("incomplete")


def _merge(c: _Collection, display: str, problems: list[str]) -> None:
    for value, line in c.merges:
        sources = value if isinstance(value, list) else [value]
        for source in sources:
            if not isinstance(source, dict):
                problems.append(f"{display}: {c.path or '(top level)'}: line {line}: a merge key (<<) takes a "
                                f"mapping or a list of mappings")
                continue
            for k, v in source.items():
                c.value.setdefault(k, v)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return "a non-string value"


def _scalar(tag: str, text: str, line: int | None) -> Any:
    if tag == f"{_T}timestamp":
        return text  # dates stay the text written; a schema that wants a date parses it
    if tag not in _SCALAR_OK:
        raise _Fatal(line, f"tag {show(tag)} is not allowed (only plain values, lists and mappings)")
    yaml = _yaml()[0]
    node = yaml.ScalarNode(tag, text)
    constructor = _constructor()
    try:
        if tag == f"{_T}str":
            return text
        if tag == f"{_T}null":
            return None
        if tag == f"{_T}bool":
            return constructor.construct_yaml_bool(node)
        if tag == f"{_T}int":
            if len(text) > 40:
                raise _Fatal(line, f"an integer of {len(text)} digits; bakery's numbers are shorter")
            return constructor.construct_yaml_int(node)
        value = constructor.construct_yaml_float(node)
        return value if isinstance(value, float) else float(value)
    except (ValueError, TypeError, OverflowError, yaml.YAMLError):
        raise _Fatal(line, f"{show(text[:40])} is not a valid {tag.rsplit(':', 1)[-1]}") from None


# Reading is bakery.contain's (regular files only, size-limited, checked on the open descriptor); these names stay
# here for the loader's callers.
read_bytes = read_file
decode = decode_text


def load(path: Any, display: str, *, limit: int = MAX_BYTES, root: Any = None) -> Loaded:
    """Read (a regular file, size-limited, UTF-8, inside ``root`` when given) and parse one YAML file."""
    return parse(decode(read_bytes(path, display, limit=limit, root=root), display), display)


def load_value(text: str, display: str) -> Any:
    """A small YAML value (a BAKERY_* variable): the same rules; a problem raises InputError."""
    loaded = parse(text, display, max_nodes=1000)
    if loaded.problems:
        raise InputError(loaded.problems[0])
    return loaded.data


def finite(value: Any) -> bool:
    return not (isinstance(value, float) and (math.isnan(value) or math.isinf(value)))
