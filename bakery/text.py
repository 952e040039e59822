"""Showing user text in a message: quoted, escaped and shortened, so it cannot forge a line or a colour.

A file name, key or value from the repository may hold a newline or a terminal escape sequence; printed raw,
``name\\nerror: all good`` would forge an ``error:`` line and ``\\x1b[2K`` would erase one. Every message that
quotes user text goes through ``show``; the CLI passes every printed problem through ``one_line`` too.
"""

from __future__ import annotations

import re
from typing import Any

MAX_SHOWN = 120
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def show(value: Any, *, quote: bool = True, limit: int = MAX_SHOWN) -> str:
    """``'text'`` with control characters escaped (Python's repr rules) and at most ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    text = text[:limit]
    shown = repr(text)
    if not quote:
        shown = shown[1:-1]
    return shown + ("…" if cut else "")


def one_line(text: str) -> str:
    """Escape every control, bidi-override or line-separator character: the text stays one printed line."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
