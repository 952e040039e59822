"""Fixtures for the foundation's unit tests: a tiny bakery project in a temp dir and the CLI run in-process."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\nRUN echo {{ user }}\n"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error: ")]


def write_project(root: Path, files: dict[str, str], *, config: str = "{}\n") -> Path:
    """A minimal project: bakery.yaml, templates/t/Dockerfile.j2, base-images/, plus ``files`` (dedented)."""
    (root / "bakery.yaml").write_text(config)
    (root / "templates" / "t").mkdir(parents=True, exist_ok=True)
    (root / "templates" / "t" / "Dockerfile.j2").write_text(TEMPLATE)
    (root / "base-images").mkdir(exist_ok=True)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """``make_project(files, config=...)`` → a project in tmp_path (see write_project)."""

    def make(files: dict[str, str], *, config: str = "{}\n", name: str = "project") -> Path:
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        return write_project(root, files, config=config)

    return make


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """bakery's user caches (validated configurations, blob locations) in a directory of each test's own."""
    monkeypatch.setenv("BAKERY_CACHE_DIR", str(tmp_path_factory.mktemp("bakery-cache")))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("BAKERY_") and key != "BAKERY_CACHE_DIR":
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
def bakery(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``bakery ARGS`` in-process in directory ``cwd`` and return exit code, stdout and stderr."""
    from bakery.cli import main

    def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
        capsys.readouterr()
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(cwd)
            for k, v in (env or {}).items():
                mp.setenv(k, v)
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the repository's example fleet (bakery.yaml, base-images/, templates/)."""
    dest = tmp_path / "example"
    dest.mkdir()
    shutil.copy(REPO / "bakery.yaml", dest / "bakery.yaml")
    shutil.copytree(REPO / "base-images", dest / "base-images")
    shutil.copytree(REPO / "templates", dest / "templates")
    return dest
