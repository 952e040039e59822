"""bakery's per-user cache directory: one rule for every cache that lives outside the repository."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    """``$BAKERY_CACHE_DIR`` (default ``~/.cache/bakery``), joined with ``parts``: the validated configuration
    (``config/``), definitions (``definitions/``) and fleet (``fleet/``), the blob-location hints, the debootstrap
    tarball, what the Docker CLI supports. Raises RuntimeError when there is no home directory to default to."""
    value = os.environ.get("BAKERY_CACHE_DIR")
    return (Path(value).expanduser() if value else Path.home() / ".cache" / "bakery").joinpath(*parts)


def sha256(data: bytes = b"") -> Any:
    """A SHA-256 hash object (``update``, ``digest``, ``hexdigest``) for a cache key: the same digest as
    ``hashlib.sha256``, from CPython's built-in implementation when it has one (``_sha2`` from 3.12, ``_sha256``
    before), hashlib's otherwise. Start-up: hashlib loads OpenSSL (~3 ms), which a repeat scan otherwise needs for
    nothing but the configuration's cache key (issue 14). tests/unit/test_startup.py compares the digests."""
    global _SHA256
    if _SHA256 is None:
        try:
            from _sha2 import sha256 as impl  # type: ignore[import-not-found]
        except ImportError:
            try:
                from _sha256 import sha256 as impl  # type: ignore[import-not-found,no-redef]
            except ImportError:  # a Python built without its own hashes: OpenSSL's
                from hashlib import sha256 as impl
        _SHA256 = impl
    return _SHA256(data)


_SHA256: Any = None
