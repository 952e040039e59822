"""`bakery dev up|down|status` as a user runs it (the real CLI, real registry processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from bakery.registry import RegistryClient

pytestmark = pytest.mark.integration
BAKERY = str(Path(sys.executable).parent / "bakery")


def bakery(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BAKERY_") or k.startswith("BAKERY_TEST_")
            or k == "BAKERY_CACHE_DIR"}
    full.update(env or {})
    return subprocess.run([BAKERY, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _registry_pids(st: dict) -> dict[str, int]:
    return {r["name"]: r["pid"] for r in st["registries"]}


def test_status_json_of_the_running_stack(stack):
    result = bakery(stack.root, "dev", "status", "--format", "json")
    assert result.returncode == 0, result.stderr
    st = json.loads(result.stdout)
    by_name = {r["name"]: r for r in st["registries"]}
    assert set(by_name) == {"mirror", "dev", "staging", "prod"}
    for name, port in stack.ports.items():
        assert by_name[name]["running"] and by_name[name]["port"] == port and by_name[name]["pid"] > 0
        assert requests.get(f"http://{stack.registry(name)}/v2/", timeout=5).status_code in (200, 401)
    assert by_name["staging"]["auth"] and by_name["prod"]["auth"] and not by_name["dev"]["auth"]
    assert by_name["mirror"]["repositories"] >= 1
    # the base image is in the mirror, pinned by its digest
    mirror = stack.client("mirror")
    digest = mirror.head_manifest("library/debian", "bookworm-slim")
    assert digest and st["base_image"] == f"{stack.registry('mirror')}/library/debian@{digest}"


def test_auth_is_required_on_staging_and_prod(stack):
    for env in ("staging", "prod"):
        anonymous = requests.get(f"http://{stack.registry(env)}/v2/", timeout=5)
        assert anonymous.status_code == 401
        authed = requests.get(f"http://{stack.registry(env)}/v2/", auth=(stack.user, stack.password), timeout=5)
        assert authed.status_code == 200
    assert requests.get(f"http://{stack.registry('dev')}/v2/", timeout=5).status_code == 200


def test_up_again_is_a_no_op(stack):
    before = json.loads(bakery(stack.root, "dev", "status", "--format", "json").stdout)
    result = bakery(stack.root, "dev", "up", "--format", "json")
    assert result.returncode == 0, result.stderr
    after = json.loads(result.stdout)
    assert _registry_pids(after) == _registry_pids(before)
    assert after["base_image"] == before["base_image"]
    assert result.stderr.count("already running") == 4 and "debootstrap" not in result.stderr
    assert stack.password not in result.stdout + result.stderr


def test_port_taken_by_something_else_is_exit_3(stack, tmp_path):
    # a second stack that wants the shared stack's mirror port
    dev_port = _free_ports(1)[0]
    config = {"environments": {"dev": {"registry": f"127.0.0.1:{dev_port}/x"}},
              "dev_stack": {"ports": {"mirror": stack.ports["mirror"], "dev": dev_port}}}
    (tmp_path / "bakery.yaml").write_text(yaml.safe_dump(config))
    result = bakery(tmp_path, "dev", "up", "--no-base")
    assert result.returncode == 3
    assert f"port {stack.ports['mirror']} (the mirror registry) is in use by docker-registry (pid" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_port_starts_nothing(tmp_path):
    """The dev port is taken: up must fail before the mirror (started first) is up, leaving nothing behind."""
    mirror, dev, staging, prod = _free_ports(4)
    config = {"environments": {"dev": {"registry": f"127.0.0.1:{dev}/x"},
                               "staging": {"registry": f"127.0.0.1:{staging}/x"},
                               "prod": {"registry": f"127.0.0.1:{prod}/x"}},
              "mirrors": {"docker.io": f"127.0.0.1:{mirror}"},
              "dev_stack": {"ports": {"mirror": mirror, "dev": dev, "staging": staging, "prod": prod}}}
    (tmp_path / "bakery.yaml").write_text(yaml.safe_dump(config))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", dev))
        squatter.listen()
        result = bakery(tmp_path, "dev", "up", "--no-base")
        assert result.returncode == 3, result.stderr
        assert f"port {dev} (the dev registry) is in use by" in result.stderr
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", mirror)) != 0  # the mirror was never started
    st = json.loads(bakery(tmp_path, "dev", "status", "--format", "json").stdout)
    assert not any(r["running"] for r in st["registries"]), st


def test_missing_auth_variable_is_exit_2(stack, tmp_path):
    ports = _free_ports(2)
    config = {"environments": {"dev": {"registry": f"127.0.0.1:{ports[1]}/x"}},
              "dev_stack": {"ports": {"mirror": ports[0], "dev": ports[1]},
                            "auth": {"dev": {"username_env": "BAKERY_TEST_NOPE_U", "password_env": "BAKERY_TEST_NOPE_P"}}}}
    (tmp_path / "bakery.yaml").write_text(yaml.safe_dump(config))
    result = bakery(tmp_path, "dev", "up", "--no-base")
    assert result.returncode == 2
    assert "dev_stack.auth.dev: environment variable BAKERY_TEST_NOPE_U is not set" in result.stderr
    st = json.loads(bakery(tmp_path, "dev", "status", "--format", "json").stdout)
    assert not any(r["running"] for r in st["registries"])  # nothing was started


def test_docker_daemon_unreachable_is_exit_3(stack, tmp_path):
    ports = _free_ports(2)
    config = {"environments": {"dev": {"registry": f"127.0.0.1:{ports[1]}/x"}},
              "dev_stack": {"ports": {"mirror": ports[0], "dev": ports[1]}}}
    (tmp_path / "bakery.yaml").write_text(yaml.safe_dump(config))
    result = bakery(tmp_path, "dev", "up", env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert result.returncode == 3
    assert result.stderr.startswith("error: docker daemon unreachable") and "Traceback" not in result.stderr
    st = json.loads(bakery(tmp_path, "dev", "status", "--format", "json").stdout)
    assert not any(r["running"] for r in st["registries"])


def test_own_stack_up_new_base_down(stack, tmp_path):
    """A second, private stack: up (base from the cached tarball), move the upstream digest, down."""
    mirror_port, dev_port = _free_ports(2)
    config = {"environments": {"dev": {"registry": f"127.0.0.1:{dev_port}/team"}},
              "mirrors": {"docker.io": f"127.0.0.1:{mirror_port}"},
              "dev_stack": {"ports": {"mirror": mirror_port, "dev": dev_port}}}
    (tmp_path / "bakery.yaml").write_text(yaml.safe_dump(config))
    try:
        result = bakery(tmp_path, "dev", "up", "--format", "json")
        assert result.returncode == 0, result.stderr
        assert "debootstrap --variant" not in result.stderr  # the cached tarball was reused
        st = json.loads(result.stdout)
        assert all(r["running"] for r in st["registries"])
        mirror = RegistryClient(f"127.0.0.1:{mirror_port}", insecure=True)
        first = mirror.head_manifest("library/debian", "bookworm-slim")
        assert first and st["base_image"] == f"127.0.0.1:{mirror_port}/library/debian@{first}"
        assert first == stack.base_ref.split("@", 1)[1]  # the cached base: the same digest in every stack
        assert mirror.labels("library/debian", first) == {}
        requests.get(f"http://127.0.0.1:{dev_port}/v2/", timeout=5).raise_for_status()

        from bakery import devstack
        from bakery.config import load_project

        project = load_project(tmp_path / "bakery.yaml", cwd=tmp_path, environ={})
        moved = devstack.push_new_base(project, marker="nightly-1")
        second = mirror.head_manifest("library/debian", "bookworm-slim")
        assert second != first and moved == f"127.0.0.1:{mirror_port}/library/debian@{second}"
        assert mirror.labels("library/debian", second)[devstack.MARKER_LABEL] == "nightly-1"
        assert devstack.ensure_base(project) == moved  # ensure_base keeps what the mirror has
    finally:
        down = bakery(tmp_path, "dev", "down")
        import docker

        client = docker.from_env()
        for image in client.images.list(name=f"127.0.0.1:{mirror_port}/library/debian"):
            for tag in image.tags:
                if tag.startswith(f"127.0.0.1:{mirror_port}/"):
                    client.images.remove(tag)  # untag only: never force-remove a shared image
    assert down.returncode == 0, down.stderr
    assert "stopped: mirror, dev" in down.stderr
    for port in (mirror_port, dev_port):
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/v2/", timeout=5)
    st = json.loads(bakery(tmp_path, "dev", "status", "--format", "json").stdout)
    assert [r["running"] for r in st["registries"]] == [False, False] and st["base_image"] is None
    assert "nothing was running" in bakery(tmp_path, "dev", "down").stderr
    # the shared stack was not touched
    assert requests.get(f"http://{stack.registry('mirror')}/v2/", timeout=5).status_code == 200


def test_docker_runtime_runs_registries_as_containers(stack, tmp_path):
    """runtime: docker — the code path used without the docker-registry binary (registry:2 cannot be pulled
    here, so a stand-in image is built from the local Debian base and Debian's docker-registry binary)."""
    import shutil

    import docker

    from bakery import devstack

    client = docker.from_env()
    base = devstack.local_base_image(client, "bookworm")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy2(shutil.which("docker-registry"), ctx / "docker-registry")
    (ctx / "Dockerfile").write_text(f'FROM {base}\nCOPY docker-registry /usr/bin/docker-registry\n'
                                    'ENTRYPOINT ["/usr/bin/docker-registry", "serve"]\n'
                                    'CMD ["/etc/docker/registry/config.yml"]\n')
    image = "bakery-test/registry:local"
    for item in client.api.build(path=str(ctx), tag=image, rm=True, forcerm=True, pull=False, decode=True):
        assert "error" not in item, item
    mirror_port, dev_port = _free_ports(2)
    proj = tmp_path / "proj"
    proj.mkdir()
    config = {"environments": {"dev": {"registry": f"127.0.0.1:{dev_port}/x"}},
              "dev_stack": {"ports": {"mirror": mirror_port, "dev": dev_port}, "runtime": "docker",
                            "registry_image": image, "auth": {"dev": "BAKERY_TEST_USER:BAKERY_TEST_PASSWORD"}}}
    (proj / "bakery.yaml").write_text(yaml.safe_dump(config))
    try:
        result = bakery(proj, "dev", "up", "--no-base", "--format", "json")
        assert result.returncode == 0, result.stderr
        st = json.loads(result.stdout)
        assert [(r["mode"], r["running"]) for r in st["registries"]] == [("docker", True), ("docker", True)]
        containers = {r["container"] for r in st["registries"]}
        assert requests.get(f"http://127.0.0.1:{mirror_port}/v2/", timeout=5).status_code == 200
        assert requests.get(f"http://127.0.0.1:{dev_port}/v2/", timeout=5).status_code == 401
        dev = RegistryClient(f"127.0.0.1:{dev_port}", insecure=True, credentials=(stack.user, stack.password))
        dev.ping()
        again = json.loads(bakery(proj, "dev", "up", "--no-base", "--format", "json").stdout)
        assert {r["container"] for r in again["registries"]} == containers
    finally:
        down = bakery(proj, "dev", "down")
    assert down.returncode == 0 and "stopped: mirror, dev" in down.stderr
    assert client.containers.list(all=True, filters={"label": f"dev.bakery.stack={(proj / '.bakery/dev/dev').resolve()}"}) == []
    client.images.remove(image)


def test_state_files_are_owner_only_and_hold_no_password_hash(stack):
    """D9: the stack's state files are 0600 and no password-derived value is kept outside the htpasswd file."""
    import hashlib
    import re

    states = sorted(stack.root.rglob("state.json"))
    assert states, "no state file under the stack"
    inner = hashlib.sha256(stack.password.encode()).hexdigest()
    derived = {inner, hashlib.sha256(f"{stack.user}\0{inner}".encode()).hexdigest()}
    for path in states:
        assert path.stat().st_mode & 0o777 == 0o600, path
        text = path.read_text()
        assert stack.password not in text and not derived & set(re.findall(r"[0-9a-f]{64}", text)), path
    for ht in stack.root.rglob("htpasswd"):
        assert ht.stat().st_mode & 0o777 == 0o600, ht
