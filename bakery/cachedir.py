"""bakery's per-user cache directory: one rule for every cache that lives outside the repository."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$BAKERY_CACHE_DIR`` (default ``~/.cache/bakery``), joined with ``parts``: the validated configuration
    (``config/``), definitions (``definitions/``) and fleet (``fleet/``), the blob-location hints, the debootstrap
    tarball, what the Docker CLI supports. Raises RuntimeError when there is no home directory to default to."""
    value = os.environ.get("BAKERY_CACHE_DIR")
    return (Path(value).expanduser() if value else Path.home() / ".cache" / "bakery").joinpath(*parts)
