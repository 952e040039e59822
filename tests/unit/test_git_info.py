"""The revision label says which commit an image was built from, and says so honestly when it was not one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bakery.build import git_info
from bakery.config import load_project


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_revision_is_head_when_clean_and_marked_dirty_when_the_definitions_are_not(make_project) -> None:
    root = make_project({"base-images/a.yaml": (Path(__file__).resolve().parents[1] / "fixtures" /
                                                "minimal-definition.yaml").read_text()})
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "defs")
    head = _git(root, "rev-parse", "HEAD")
    project = load_project(root / "bakery.yaml", cwd=root, environ={})
    assert git_info(project)[0] == head

    (root / "notes.txt").write_text("not a build input\n")
    assert git_info(project)[0] == head
    (root / "templates" / "t" / "Dockerfile.j2").write_text("FROM {{ parent }}\nRUN echo {{ user }} edited\n")
    assert git_info(project)[0] == f"{head}-dirty"
