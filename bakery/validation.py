"""Turning pydantic validation errors into `FILE: FIELD: what is wrong` lines, with close-match hints."""

from __future__ import annotations

import difflib
from typing import Any

import pydantic


def field_path(loc: tuple[Any, ...]) -> str:
    from bakery.text import show

    parts = [show(p, quote=False, limit=60) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    return ".".join(parts) if parts else "(top level)"


def _inner_model(annotation: Any) -> Any:
    """For dict[str, M], list[M], M | None: return M (the model a key path descends into)."""
    import typing

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
    from bakery.text import show

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


def decode_problem(data: bytes, exc: UnicodeDecodeError) -> str:
    """``line N: not valid UTF-8 (byte 0x.. at column C)`` for a file that failed to decode."""
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return f"line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})"


def read_text(path, *, display: str | None = None) -> str:
    """A UTF-8 text file (a regular file, size-limited); invalid UTF-8 is an InputError naming the file and line."""
    from bakery.yamlsafe import decode, read_bytes

    name = display or str(path)
    return decode(read_bytes(path, name), name)


def load_yaml(path, *, display: str | None = None) -> Any:
    """Parse a YAML file with bakery's one strict loader (bakery.yamlsafe); every problem is an InputError."""
    from bakery.errors import ValidationError
    from bakery.yamlsafe import load

    loaded = load(path, display or str(path))
    if loaded.problems:
        raise ValidationError(loaded.problems)
    return loaded.data
