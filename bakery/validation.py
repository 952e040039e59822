"""Turning pydantic validation errors into `FILE: FIELD: what is wrong` lines, with close-match hints."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from bakery.errors import InputError

if TYPE_CHECKING:
    import pydantic  # at run time only where an error is formatted: start-up of commands on a cached config


def field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
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
    for e in err.errors():
        loc = tuple(e["loc"])
        path = field_path(prefix + loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
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
            lines.append(f"{filename}: {path}: {msg}" + (
                f" (got {_show(e.get('input'))})" if kind not in ("value_error", "assertion_error") else ""))
    return lines


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_TYPES = {"int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
          "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
          "bool_type": "true or false", "date_from_datetime_parsing": "a date (YYYY-MM-DD)",
          "date_parsing": "a date (YYYY-MM-DD)", "date_type": "a date (YYYY-MM-DD)"}


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def decode_problem(data: bytes, exc: UnicodeDecodeError) -> str:
    """``line N: not valid UTF-8 (byte 0x.. at column C)`` for a file that failed to decode."""
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return f"line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})"


def read_text(path, *, display: str | None = None) -> str:
    """A UTF-8 text file; invalid UTF-8 is an InputError naming the file and line."""
    from pathlib import Path

    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{display or path}: {decode_problem(data, exc)}") from None


def load_yaml(path, *, display: str | None = None) -> Any:
    """Parse a YAML file; a syntax error is an InputError naming the file and line."""
    import yaml

    name = display or str(path)
    try:
        return yaml.safe_load(read_text(path, display=name))
    except FileNotFoundError:
        raise InputError(f"{name}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(top level)"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{name}: {where}: invalid YAML: {problem}") from None
