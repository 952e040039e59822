"""`bakery init DIR` scaffolds a repository that `bakery build` builds at once, on the real stack."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from bakery.trivydb import build_db

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fleets" / "tree"


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_init_then_build(stack, tmp_path: Path, monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("BAKERY_") and k != "BAKERY_CACHE_DIR"]:
        monkeypatch.delenv(key)
    target = tmp_path / "images"
    ns = f"init{uuid.uuid4().hex[:8]}"
    out = run("bakery", "init", str(target), "--dev-registry", f"{stack.registry('dev')}/{ns}",
              "--mirror", stack.registry("mirror"), cwd=tmp_path)
    assert "created bakery.yaml" in out.stdout
    for rel in ("bakery.yaml", "base-images/hello.yaml", "templates/hello/Dockerfile.j2",
                ".github/workflows/ci.yml", ".github/workflows/nightly.yml", ".github/workflows/promote.yml"):
        assert (target / rel).is_file(), rel
    # A second init into the same directory refuses (exit 2) instead of overwriting.
    again = run("bakery", "init", str(target), cwd=tmp_path, check=False)
    assert again.returncode == 2 and "not empty" in again.stderr

    build_db(FIXTURES / "advisories-none.yaml", target / ".bakery" / "trivy")
    assert "hello:1" in run("bakery", "list", cwd=target).stdout
    run("bakery", "build", "--all", cwd=target)
    motd = run("docker", "run", "--rm", f"{stack.registry('dev')}/{ns}/hello:1", cwd=target)
    assert motd.stdout.strip() == "hello from bakery (hello:1)"
    plan = run("bakery", "plan", cwd=target)
    assert "0 of 1 images to rebuild" in plan.stderr
