"""Registry credentials from the Docker config's credential helpers (``credHelpers``/``credsStore``), against the
stack's authenticated staging registry: a fake ``docker-credential-…`` helper script on PATH answers ``get``, as
docker-credential-ecr-login, -pass, -desktop or -gcloud would on a workstation or CI image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ADVISORIES = REPO / "tests" / "fixtures" / "advisories.yaml"
BAKERY = str(Path(sys.executable).parent / "bakery")

HELPER = """#!/bin/sh
# A docker credential helper: `get` reads the server URL on stdin and prints its credentials as JSON.
read server
echo "$server" >> "{log}"
case "$server" in
  *{host}*) printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{password}"}}\\n' "$server" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def _helper(tmp_path: Path, name: str, host: str, user: str, password: str) -> tuple[Path, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    script = bindir / f"docker-credential-{name}"
    script.write_text(HELPER.format(log=log, host=host, user=user, password=password))
    script.chmod(0o755)
    return bindir, log


def _run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("BAKERY_TEST_USER", "BAKERY_TEST_PASSWORD")}
    full.update(env)
    return subprocess.run([BAKERY, *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=300)


def _project(make_project, tmp_path: Path, docker_config: dict) -> tuple[Path, Path]:
    """A project whose staging environment names no credential variables: only the Docker config can help."""
    root = make_project(fleet=None, config={"environments": {"staging": {"credentials": {
        "username_env": None, "password_env": None}}}})
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps(docker_config))
    return root, config_dir


@pytest.mark.parametrize("where", ["credHelpers", "credsStore"])
def test_scan_db_push_authenticates_through_a_credential_helper(stack, make_project, tmp_path, where):
    host = stack.registry("staging")
    bindir, log = _helper(tmp_path, "baketest", host, stack.user, stack.password)
    config = {"credHelpers": {host: "baketest"}} if where == "credHelpers" else {"credsStore": "baketest"}
    root, config_dir = _project(make_project, tmp_path, config)
    target = f"{host}/cred-{uuid.uuid4().hex[:8]}/trivy-db:2"
    env = {"DOCKER_CONFIG": str(config_dir), "PATH": f"{bindir}:{os.environ['PATH']}"}

    proc = _run("scan-db", "build", "--advisories", str(ADVISORIES), "--push", target, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"pushed to {target}" in proc.stdout
    assert stack.password not in proc.stdout + proc.stderr
    assert host in log.read_text()  # the helper was asked for this registry
    # an independent reader with the real credentials finds the artifact
    repo = target.split("/", 1)[1].rsplit(":", 1)[0]
    assert stack.client("staging").head_manifest(repo, "2") is not None


def test_helper_with_wrong_secret_is_an_environment_error(stack, make_project, tmp_path):
    host = stack.registry("staging")
    bindir, _log = _helper(tmp_path, "baketest", host, stack.user, "not-the-password")
    root, config_dir = _project(make_project, tmp_path, {"credHelpers": {host: "baketest"}})
    env = {"DOCKER_CONFIG": str(config_dir), "PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = _run("scan-db", "build", "--advisories", str(ADVISORIES), "--push", f"{host}/cred-x/trivy-db:2",
                cwd=root, env=env)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "authentication failed" in proc.stderr
    assert "not-the-password" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_helper_is_an_environment_error_naming_it(stack, make_project, tmp_path):
    host = stack.registry("staging")
    root, config_dir = _project(make_project, tmp_path, {"credHelpers": {host: "nowhere-to-be-found"}})
    proc = _run("scan-db", "build", "--advisories", str(ADVISORIES), "--push", f"{host}/cred-y/trivy-db:2",
                cwd=root, env={"DOCKER_CONFIG": str(config_dir)})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "docker-credential-nowhere-to-be-found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_loopback_registry_without_auth_never_runs_the_helper(stack, make_project, tmp_path):
    """Credentials are resolved only when a registry asks: the open dev registry never calls the helper."""
    bindir, log = _helper(tmp_path, "baketest", "nothing", "u", "p")
    root, config_dir = _project(make_project, tmp_path, {"credsStore": "baketest"})
    target = f"{stack.registry('dev')}/cred-{uuid.uuid4().hex[:8]}/trivy-db:2"
    env = {"DOCKER_CONFIG": str(config_dir), "PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = _run("scan-db", "build", "--advisories", str(ADVISORIES), "--push", target, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not log.exists()
