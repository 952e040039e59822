"""The hostile corpus (tests/fixtures/hostile.yaml) through the real CLI: each case's exit code and message, never a
traceback or an internal error. A handful run as a subprocess too, to prove nothing leaks to the real stderr."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_project

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "hostile.yaml"
CASES = yaml.safe_load(CORPUS.read_text())  # the test's own fixture (trusted), not bakery's loader
GOOD_DEF = (Path(__file__).resolve().parents[1] / "fixtures" / "minimal-definition.yaml").read_text()
REPO = Path(__file__).resolve().parents[2]


def build(case: dict, tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("TOPSECRET root:$6$hash\n")
    root = tmp_path / "repo"
    root.mkdir()
    files: dict[str, str] = {}
    if case.get("def", GOOD_DEF) is not None:
        files["base-images/a.yaml"] = case.get("def", GOOD_DEF)
    if "template" in case:
        files["templates/t/Dockerfile.j2"] = case["template"]
    files.update(case.get("files") or {})
    write_project(root, {}, config=case.get("config", "{}\n").replace("REPO/", f"{root}/"))
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)  # not dedented: the corpus gives exact bytes
    for rel, b64 in (case.get("bytes") or {}).items():
        (root / rel).write_bytes(base64.b64decode(b64))
    if case.get("big"):
        (root / case["big"]).write_bytes(b"# " + b"x" * (2_000_000 - 3) + b"\n")
    for rel, target in (case.get("links") or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_symlink():
            path.unlink()
        where, _, name = target.partition(":")
        path.symlink_to((outside if where == "OUT" else root) / name)
    for rel in case.get("fifos") or []:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(root / rel)
    for rel in case.get("dirs") or []:
        (root / rel).mkdir(parents=True)
    return root


def args_of(case: dict, tmp_path: Path) -> list[str]:
    return [a.replace("OUT:", str(tmp_path / "outside") + "/") for a in case.get("args", ["list"])]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_hostile_case(case: dict, tmp_path: Path, bakery) -> None:
    root = build(case, tmp_path)
    result = bakery(*args_of(case, tmp_path), cwd=root, env=case.get("env"))
    out = result.out + result.err
    assert "Traceback" not in out and "internal error" not in out, out
    assert "TOPSECRET" not in out and "$6$hash" not in out
    assert result.code == case["exit"], out
    assert case["message"] in result.err, result.err
    for line in result.err.splitlines():  # every line is bakery's own: no forged or raw multi-line text
        assert line.startswith(("error: ", "warning: ", "rendered ", "Usage:", "Try ", "scanner: ")) or not line.strip(), line
    assert "\x1b" not in out


def test_corpus_is_large_and_covers_every_family() -> None:
    assert len(CASES) >= 150
    assert len({c["id"] for c in CASES}) == len(CASES)
    assert sum(c["exit"] == 2 for c in CASES) >= 140


SUBPROCESS = ["rce-cycler-globals", "laughs-in-config", "files-symlink-out", "big-multiply", "forge-key-newline",
              "render-out-unwritable"]


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_hostile_case_as_a_process(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c["id"] == case_id)
    root = build(case, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAKERY_")}
    proc = subprocess.run([sys.executable, "-m", "bakery", *args_of(case, tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == case["exit"], proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert case["message"] in proc.stderr
