"""Keeping secrets out of output: a process-wide set of values that are masked wherever text is shown."""

from __future__ import annotations

import threading

MASK = "********"
_lock = threading.Lock()
_secrets: set[str] = set()


def register(value: str | None) -> None:
    """Remember a secret value so that :func:`mask` hides it everywhere."""
    if value and len(value) >= 3:
        with _lock:
            _secrets.add(value)


def mask(text: str) -> str:
    """Replace every registered secret in ``text`` with ``********``."""
    if not text:
        return text
    with _lock:
        values = sorted(_secrets, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text
