"""The shared integration stack: ONE set of local registries for the whole session.

``stack`` starts (via bakery.devstack, the same code as `bakery dev up`) an upstream mirror on 5100 and
dev/staging/prod registries on 5101-5103 (staging and prod with basic auth), with the Debian base image in
the mirror (from the cached debootstrap tarball), and stops them at the end.
``make_project`` creates a bakery repository in tmp_path whose environments point at the stack under a
unique namespace per test.
"""

from __future__ import annotations

import copy
import fcntl
import os
import secrets as pysecrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bakery import devstack
from bakery.config import Project, load_project
from bakery.registry import RegistryClient

REPO = Path(__file__).resolve().parents[2]
# BAKERY_TEST_PORT_BASE moves the whole stack (default 5100..5103): lets two sessions test side by side.
_BASE = int(os.environ.get("BAKERY_TEST_PORT_BASE", "5100"))
PORTS = {"mirror": _BASE, "dev": _BASE + 1, "staging": _BASE + 2, "prod": _BASE + 3}
USER_ENV, PASSWORD_ENV = "BAKERY_TEST_USER", "BAKERY_TEST_PASSWORD"
BASE_IMAGE = "library/debian:bookworm-slim"
_KEEP_ENV = {"BAKERY_CACHE_DIR", "BAKERY_TEST_PORT_BASE", "BAKERY_SKIP_INTEGRATION", "BAKERY_TEST_STACK_DIR", USER_ENV, PASSWORD_ENV}


@dataclass
class Stack:
    root: Path  # the bakery project directory that runs the stack
    ports: dict[str, int]  # mirror/dev/staging/prod -> 5100..5103 ($BAKERY_TEST_PORT_BASE moves them)
    user: str
    password: str  # basic auth of staging and prod
    base_image: str  # 127.0.0.1:5100/library/debian:bookworm-slim
    base_ref: str  # the same, pinned: 127.0.0.1:5100/library/debian@sha256:…
    project: Project

    def registry(self, env: str) -> str:
        return f"127.0.0.1:{self.ports[env]}"

    def client(self, env: str, **kwargs: Any) -> RegistryClient:
        creds = (self.user, self.password) if env in ("staging", "prod") else None
        return RegistryClient(self.registry(env), insecure=True, credentials=creds, **kwargs)

    def push_new_base(self, marker: str) -> str:
        """Move the upstream digest: a new base under the same tag; returns the new pinned reference."""
        return devstack.push_new_base(self.project, marker=marker)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=10).ping()
        return True
    except Exception:  # noqa: BLE001
        return False


def _creds() -> dict[str, str]:
    """A fresh mapping each time (a shared dict would be written as a YAML anchor)."""
    return {"username_env": USER_ENV, "password_env": PASSWORD_ENV}


def _stack_config() -> dict[str, Any]:
    creds = _creds()
    return {
        "environments": {
            "dev": {"registry": f"127.0.0.1:{PORTS['dev']}/bakery"},
            "staging": {"registry": f"127.0.0.1:{PORTS['staging']}/bakery", "credentials": creds},
            "prod": {"registry": f"127.0.0.1:{PORTS['prod']}/bakery", "credentials": _creds()},
        },
        "mirrors": {"docker.io": f"127.0.0.1:{PORTS['mirror']}"},
        "dev_stack": {"ports": dict(PORTS), "auth": {"staging": _creds(), "prod": _creds()},
                      "base_image": BASE_IMAGE},
    }


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BAKERY_") or k in _KEEP_ENV}


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    if not _docker_answers():
        subprocess.run(["bash", str(REPO / "scripts" / "setup-host.sh")], check=True)
    root = Path(os.environ.get("BAKERY_TEST_STACK_DIR")
                or Path(tempfile.gettempdir()) / f"bakery-test-stack-{os.getuid()}-{_BASE}")
    root.mkdir(parents=True, exist_ok=True)
    lock = open(root / "session.lock", "w")  # noqa: SIM115 - held for the whole session
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"[stack] another test session uses ports {PORTS['mirror']}-{PORTS['prod']}; waiting for it "
              f"(set BAKERY_TEST_PORT_BASE to run side by side)", file=sys.stderr)
        fcntl.flock(lock, fcntl.LOCK_EX)
    (root / "bakery.yaml").write_text(yaml.safe_dump(_stack_config(), sort_keys=False))
    user, password = "bakery-ci", pysecrets.token_hex(12)
    saved = {k: os.environ.get(k) for k in (USER_ENV, PASSWORD_ENV)}
    os.environ[USER_ENV], os.environ[PASSWORD_ENV] = user, password
    project = load_project(root / "bakery.yaml", cwd=root, environ=_clean_environ())
    devstack.down(project, purge=True)  # leftovers of an interrupted session
    try:
        devstack.up(project, progress=lambda m: print(f"[stack] {m}", file=sys.stderr))
        base_ref = devstack.ensure_base(project)
        yield Stack(root=root, ports=dict(PORTS), user=user, password=password,
                    base_image=f"127.0.0.1:{PORTS['mirror']}/{BASE_IMAGE}", base_ref=base_ref, project=project)
    finally:
        devstack.down(project, purge=True)
        _untag_stack_images(PORTS.values())
        lock.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _untag_stack_images(ports) -> None:
    """Remove the local tags the session left pointing at the stack's registries (untag only, no force)."""
    prefixes = tuple(f"127.0.0.1:{p}/" for p in ports)
    try:
        import docker

        client = docker.from_env(timeout=60)
        for image in client.images.list():
            for tag in image.tags:
                if tag.startswith(prefixes):
                    try:
                        client.images.remove(tag)
                    except Exception:  # noqa: BLE001 - in use by a container, or already gone
                        pass
        for image in client.images.list():  # now untagged, known only by digests in the stack's registries
            digests = image.attrs.get("RepoDigests") or []
            if not image.tags and digests and all(d.startswith(prefixes) for d in digests):
                try:
                    client.images.remove(image.id)
                except Exception:  # noqa: BLE001 - a parent of another image, or in use
                    pass
    except Exception:  # noqa: BLE001 - cleanup is best effort
        pass


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _git(path: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bakery-test", "-c", "user.email=bakery-test@example.invalid",
                    "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
                   cwd=path, check=True, capture_output=True)


@pytest.fixture
def make_project(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``make_project(fleet="example", config=None) -> Path``: a committed bakery repository using the stack."""
    for key in list(os.environ):
        if key.startswith("BAKERY_") and key not in _KEEP_ENV:
            monkeypatch.delenv(key)
    monkeypatch.setenv(USER_ENV, stack.user)
    monkeypatch.setenv(PASSWORD_ENV, stack.password)

    def make(fleet: str | None = "example", config: dict[str, Any] | None = None) -> Path:
        path = tmp_path / "project"
        path.mkdir()
        if fleet == "example":
            shutil.copytree(REPO / "base-images", path / "base-images")
            shutil.copytree(REPO / "templates", path / "templates")
        elif fleet is not None:
            source = REPO / "tests" / "fixtures" / "fleets" / fleet
            if not source.is_dir():
                raise ValueError(f"make_project: unknown fleet {fleet!r} (no {source})")
            shutil.copytree(source / "base-images", path / "base-images")
            shutil.copytree(source / "templates" if (source / "templates").is_dir() else REPO / "templates",
                            path / "templates")
        else:
            (path / "base-images").mkdir()
            (path / "templates").mkdir()
        namespace = f"t{uuid.uuid4().hex[:10]}"
        creds = _creds()
        data: dict[str, Any] = {
            "environments": {
                "dev": {"registry": f"{stack.registry('dev')}/{namespace}"},
                "staging": {"registry": f"{stack.registry('staging')}/{namespace}", "credentials": creds},
                "prod": {"registry": f"{stack.registry('prod')}/{namespace}", "credentials": _creds()},
            },
            "mirrors": {"docker.io": stack.registry("mirror")},
            "dev_stack": {"ports": dict(stack.ports), "auth": {"staging": _creds(), "prod": _creds()}},
        }
        if config:
            data = deep_merge(data, config)
        (path / "bakery.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        (path / ".gitignore").write_text(".bakery/\n")
        _git(path, "init", "-q")
        _git(path, "add", "-A")
        _git(path, "commit", "-q", "-m", "test project")
        monkeypatch.chdir(path)
        return path

    return make


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """ONE moto server (the AWS stand-in: S3, ECR, EC2) on a free loopback port for the whole session.
    Tests that use it reset it first (``POST /moto-api/reset``)."""
    import time
    import urllib.request

    server = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = _free_port()
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto_server did not start")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
