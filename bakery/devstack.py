"""The local dev stack: one registry per environment plus an upstream "mirror" registry, on 127.0.0.1.

Each registry is ``docker-registry serve CONFIG.yml`` running detached (own session, log file, state file)
under ``dev_stack.data_dir/NAME/``; without the binary the ``registry:2`` image is run through docker.
The mirror gets the upstream base image (``dev_stack.base_image``) made from Debian packages
(debootstrap minbase → ``docker import`` → push), the debootstrap result cached as a tarball in
``$BAKERY_CACHE_DIR`` (default ``~/.cache/bakery``) so later stacks skip the ~22 s bootstrap.

``up`` is idempotent, ``down`` stops only what ``up`` started (per-registry state files), ``status``
reports each registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import yaml

from bakery import cachedir, secrets, tools
from bakery.errors import DaemonUnavailable, EnvironmentFailure, InputError, StepFailed
from bakery.ref import Ref
from bakery.registries import client_for_host
from bakery.registry import Manifest, RegistryClient, sha256_digest
from bakery.signing import generate_key

if TYPE_CHECKING:
    from bakery.config import Credentials, Project

log = logging.getLogger("bakery.devstack")

Progress = Callable[[str], None]
MIRROR = "mirror"
STATE_FILE = "state.json"
REGISTRY_IMAGE = "registry:2"
LOCAL_BASE_REPO = "bakery-dev/debootstrap"
MARKER_LABEL = "dev.bakery.upstream-marker"
_children: dict[int, subprocess.Popen[bytes]] = {}  # registries this process started (reaped on down)


# --------------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class RegistryState:
    """One registry of the stack as seen now."""

    name: str
    port: int
    address: str  # 127.0.0.1:PORT
    running: bool
    pid: int | None
    mode: str | None  # "process", "docker" or None when never started
    container: str | None  # docker mode: the container id (short)
    auth: bool
    repositories: int | None  # None when it could not be listed (down, or no credentials)
    data_dir: str


@dataclass(frozen=True)
class StackStatus:
    registries: list[RegistryState]
    base_image: str | None  # host:port/library/debian@sha256:… when the mirror has it

    def registry(self, name: str) -> RegistryState:
        for r in self.registries:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def all_running(self) -> bool:
        return all(r.running for r in self.registries)

    def as_dict(self) -> dict[str, Any]:
        return {"registries": [asdict(r) for r in self.registries], "base_image": self.base_image}


@dataclass(frozen=True)
class _Member:
    name: str
    port: int
    directory: Path
    credentials: Credentials | None  # basic auth configured for it

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE


# --------------------------------------------------------------------------------------------------------------
# Layout


def data_dir(project: Project) -> Path:
    return project.path(project.config.dev_stack.data_dir)


def cache_dir() -> Path:
    """Where the debootstrap tarball is cached ($BAKERY_CACHE_DIR, default ~/.cache/bakery)."""
    return cachedir.cache_dir()


def _members(project: Project) -> list[_Member]:
    ds = project.config.dev_stack
    names = [MIRROR, *project.config.env_order]
    unknown = sorted(set(ds.auth) - set(names))
    if unknown:
        raise InputError(f"bakery.yaml: dev_stack.auth.{unknown[0]}: not an environment or 'mirror' "
                         f"(known: {', '.join(names)})")
    out: list[_Member] = []
    seen: dict[int, str] = {}
    for name in names:
        port = ds.ports.get(name)
        if port is None and name != MIRROR:
            host = project.config.environments[name].host
            if ":" in host and host.split(":")[0] in ("127.0.0.1", "localhost"):
                port = int(host.rsplit(":", 1)[1])
        if port is None:
            raise InputError(f"bakery.yaml: dev_stack.ports.{name}: no port configured for this registry")
        if port in seen:
            raise InputError(f"bakery.yaml: dev_stack.ports.{name}: port {port} already used by {seen[port]}")
        seen[port] = name
        out.append(_Member(name, port, data_dir(project) / name, ds.auth.get(name)))
    return out


def mirror_address(project: Project) -> str:
    return f"127.0.0.1:{_port_of(project, MIRROR)}"


def _port_of(project: Project, name: str) -> int:
    for m in _members(project):
        if m.name == name:
            return m.port
    raise InputError(f"unknown dev stack registry {name!r}")


def _split_image(ref: str) -> tuple[str, str]:
    """``library/debian:bookworm-slim`` → (repository path in the mirror, tag) via bakery.ref."""
    r = Ref.parse(ref)
    return r.repository, r.tag or "latest"


# --------------------------------------------------------------------------------------------------------------
# Processes, ports and state


def _read_state(member: _Member) -> dict[str, Any] | None:
    try:
        return json.loads(member.state_file.read_text())
    except (OSError, ValueError):
        return None


def _write_state(member: _Member, state: dict[str, Any]) -> None:
    """The state file, owner-only (0600) from its creation: it names the registry's process and configuration."""
    tmp = member.state_file.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(state, indent=2))
    tmp.replace(member.state_file)
    member.state_file.chmod(0o600)
    (member.directory / "registry.pid").write_text(f"{state.get('pid') or ''}\n")


def _clear_state(member: _Member) -> None:
    for f in (member.state_file, member.directory / "registry.pid"):
        f.unlink(missing_ok=True)


def _pid_is_registry(pid: int | None, config: str | None = None) -> bool:
    """True when ``pid`` is a live registry process (serving ``config`` when given): never kill a stranger."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    if "\nState:\tZ" in status:
        return False
    if config is not None and config.encode() not in cmdline:
        return False
    return b"registry" in os.path.basename(cmdline[0]) and b"serve" in cmdline


def _port_open(port: int, timeout: float = 0.3) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _answers_v2(port: int) -> bool:
    import requests

    try:
        with requests.Session() as session:
            session.trust_env = False  # loopback: never through a proxy
            resp = session.get(f"http://127.0.0.1:{port}/v2/", timeout=2)
    except requests.RequestException:
        return False
    return resp.status_code in (200, 401)


def port_owner(port: int) -> str | None:
    """``NAME (pid N)`` of the process listening on 127.0.0.1/0.0.0.0:port, best effort (from /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    name = (proc / "comm").read_text().strip()
                    return f"{name} (pid {proc.name})"
        except OSError:
            continue
    return None


def _running(member: _Member, state: dict[str, Any] | None) -> bool:
    if not state:
        return False
    if state.get("mode") == "docker":
        return _container_running(state.get("container")) and _answers_v2(member.port)
    return _pid_is_registry(state.get("pid"), state.get("config")) and _answers_v2(member.port)


def _stop_pid(pid: int, timeout: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _pid_is_registry(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            _children.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --------------------------------------------------------------------------------------------------------------
# Registry configuration


def _htpasswd(member: _Member) -> tuple[str, str] | None:
    """Resolve the configured basic-auth user and password from the environment (None without auth)."""
    if member.credentials is None:
        return None
    c = member.credentials
    missing = [v for v in (c.username_env, c.password_env) if not v or not os.environ.get(v)]
    if missing:
        raise InputError(f"bakery.yaml: dev_stack.auth.{member.name}: environment variable "
                         f"{missing[0] or '(username_env/password_env)'} is not set")
    user, password = os.environ[c.username_env or ""], os.environ[c.password_env or ""]
    secrets.register(password)
    return user, password


def _htpasswd_matches(path: Path, creds: tuple[str, str]) -> bool:
    """Whether the htpasswd file already accepts these credentials (``htpasswd -v``: the file's own salted bcrypt
    is the only password-derived value kept anywhere)."""
    if not path.exists():
        return False
    result = tools.run("htpasswd", ["-vi", str(path), creds[0]], timeout=60, input_text=creds[1] + "\n",
                       check=False, hint=" (install apache2-utils)")
    return result.returncode == 0


def _registry_config(member: _Member, *, root: str, addr: str, htpasswd_path: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": root}, "delete": {"enabled": True},
                    "cache": {"blobdescriptor": "inmemory"}},
        "http": {"addr": addr, "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if htpasswd_path:
        config["auth"] = {"htpasswd": {"realm": f"bakery-{member.name}", "path": htpasswd_path}}
    return config


def _prepare(member: _Member, *, docker_mode: bool) -> str:
    """Write config.yml (and htpasswd); return a fingerprint of what the registry should run with."""
    member.directory.mkdir(parents=True, exist_ok=True)
    (member.directory / "data").mkdir(exist_ok=True)
    creds = _htpasswd(member)
    hpath = member.directory / "htpasswd"
    fp = hashlib.sha256()
    if creds:
        user, password = creds
        if not _htpasswd_matches(hpath, creds):
            result = tools.run("htpasswd", ["-niB", user], timeout=60, input_text=password + "\n",
                               hint=" (install apache2-utils)")
            hpath.unlink(missing_ok=True)
            fd = os.open(hpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(result.stdout.strip() + "\n")
        hpath.chmod(0o600)
        fp.update(f"{user}\0{hpath.stat().st_mtime_ns}\0".encode())  # a new htpasswd file restarts the registry
    else:
        hpath.unlink(missing_ok=True)
    if docker_mode:
        config = _registry_config(member, root="/var/lib/registry", addr=":5000",
                                  htpasswd_path="/etc/docker/registry/htpasswd" if creds else None)
    else:
        config = _registry_config(member, root=str((member.directory / "data").resolve()),
                                  addr=member.address, htpasswd_path=str(hpath.resolve()) if creds else None)
    text = yaml.safe_dump(config, sort_keys=False)
    (member.directory / "config.yml").write_text(text)
    fp.update(text.encode())
    return fp.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Docker


def docker_client():
    """A docker SDK client that answers, or DaemonUnavailable (exit 3)."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure here means: no daemon
        raise DaemonUnavailable(f"docker daemon unreachable ({os.environ.get('DOCKER_HOST') or 'unix:///var/run/docker.sock'}): "
                                f"{type(exc).__name__}; start dockerd (scripts/setup-host.sh)") from None
    return client


def _container_running(container_id: str | None) -> bool:
    if not container_id:
        return False
    try:
        c = docker_client().containers.get(container_id)
    except Exception:  # noqa: BLE001
        return False
    return c.status == "running"


def _start_docker(member: _Member, progress: Progress, image: str = REGISTRY_IMAGE) -> dict[str, Any]:
    client = docker_client()
    import docker.errors

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        progress(f"pulling {image} (registry runtime: docker)")
        try:
            client.images.pull(image)
        except docker.errors.APIError as exc:
            raise EnvironmentFailure(
                f"cannot start the {member.name} registry: the docker-registry binary is not on PATH and the "
                f"{image} image cannot be pulled ({exc.explanation or exc}); install the "
                f"docker-registry package (scripts/setup-host.sh) or set dev_stack.registry_image") from None
    name = f"bakery-dev-{member.name}-{member.port}"
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(name).remove(force=True)
    volumes = {str((member.directory / "data").resolve()): {"bind": "/var/lib/registry", "mode": "rw"},
               str((member.directory / "config.yml").resolve()): {"bind": "/etc/docker/registry/config.yml",
                                                                   "mode": "ro"}}
    if (member.directory / "htpasswd").exists():
        volumes[str((member.directory / "htpasswd").resolve())] = {"bind": "/etc/docker/registry/htpasswd",
                                                                    "mode": "ro"}
    container = client.containers.run(image, detach=True, name=name, volumes=volumes,
                                      ports={"5000/tcp": ("127.0.0.1", member.port)},
                                      labels={"dev.bakery.stack": str(member.directory.resolve())})
    return {"mode": "docker", "container": container.id, "pid": None}


# --------------------------------------------------------------------------------------------------------------
# up / down / status


def _start_process(member: _Member) -> dict[str, Any]:
    binary = tools.resolve("docker-registry", hint=" (install the docker-registry package)")
    log_path = member.directory / "registry.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    config = str((member.directory / "config.yml").resolve())
    logf = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen([binary, "serve", config],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, cwd=str(member.directory))
    finally:
        logf.close()
    _children[proc.pid] = proc
    return {"mode": "process", "pid": proc.pid, "container": None, "log_offset": offset, "config": config}


def _wait_ready(member: _Member, state: dict[str, Any], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers_v2(member.port):
            return
        child = _children.get(state.get("pid") or -1)
        if child is not None and child.poll() is not None:
            break  # exited (its log says why)
        time.sleep(0.1)
    lines: list[str] = []
    where = f"log: {member.directory / 'registry.log'}"
    if state.get("mode") == "docker":
        where = f"container {str(state.get('container'))[:12]}"
        with contextlib.suppress(Exception):
            c = docker_client().containers.get(state["container"])
            lines = c.logs(tail=20).decode(errors="replace").strip().splitlines()
            c.remove(force=True)
    else:
        with contextlib.suppress(OSError):
            with open(member.directory / "registry.log", "rb") as fh:
                fh.seek(int(state.get("log_offset") or 0))
                lines = fh.read().decode(errors="replace").strip().splitlines()
        if state.get("pid"):
            _stop_pid(state["pid"])
    _clear_state(member)
    serious = [line for line in lines if "level=fatal" in line or "level=error" in line or "panic" in line]
    last = (serious or lines or [""])[-1][:300]
    raise EnvironmentFailure(f"{member.name} registry on {member.address} did not start"
                             f"{': ' + last if last else ''} ({where})")


def _port_in_use(member: _Member) -> None:
    owner = port_owner(member.port)
    raise EnvironmentFailure(f"port {member.port} (the {member.name} registry) is in use by "
                             f"{owner or 'another process'}; stop it or change dev_stack.ports.{member.name}")


def _ensure_running(member: _Member, docker_mode: bool, progress: Progress, image: str = REGISTRY_IMAGE) -> bool:
    """Start one registry unless it already runs with the same configuration. True if (re)started."""
    state = _read_state(member)
    fingerprint = _prepare(member, docker_mode=docker_mode)
    if _running(member, state):
        assert state is not None
        if state.get("fingerprint") == fingerprint:
            return False
        if state.get("port") != member.port and _port_open(member.port):
            _port_in_use(member)
        progress(f"{member.name}: configuration changed, restarting")
        _stop(member, state)
    elif state:
        _clear_state(member)
    if _port_open(member.port):
        _port_in_use(member)
    new = _start_docker(member, progress, image) if docker_mode else _start_process(member)
    new.update({"name": member.name, "port": member.port, "fingerprint": fingerprint,
                "auth": member.credentials is not None, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                time.gmtime())})
    _write_state(member, new)
    _wait_ready(member, new)
    return True


def _stop(member: _Member, state: dict[str, Any]) -> None:
    if state.get("mode") == "docker":
        with contextlib.suppress(Exception):
            docker_client().containers.get(state["container"]).remove(force=True)
    elif _pid_is_registry(state.get("pid"), state.get("config")):
        _stop_pid(int(state["pid"]))
        deadline = time.monotonic() + 10
        while _port_open(member.port) and time.monotonic() < deadline:  # the socket closes a moment later
            time.sleep(0.05)
    _clear_state(member)


def up(project: Project, *, progress: Progress | None = None, base: bool = True) -> StackStatus:
    """Start every registry that is not running, then make sure the mirror holds the base image."""
    say = progress or (lambda _m: None)
    members = _members(project)
    runtime = project.config.dev_stack.runtime
    docker_mode = runtime == "docker" or (runtime == "auto" and shutil.which("docker-registry") is None)
    for member in members:
        _htpasswd(member)  # every auth variable is set (exit 2) before anything starts
    if docker_mode or base:
        docker_client()  # fail early (exit 3) when the daemon is down
    for member in members:  # a port taken by something else is found before anything starts
        if not _running(member, _read_state(member)) and _port_open(member.port):
            _port_in_use(member)
    started: list[_Member] = []
    try:
        for member in members:
            if _ensure_running(member, docker_mode, say, project.config.dev_stack.registry_image):
                started.append(member)
                say(f"{member.name}: registry started on {member.address}")
            else:
                say(f"{member.name}: already running on {member.address}")
    except BaseException:  # all or nothing: what this call started goes again (nothing half up)
        for member in started:
            with contextlib.suppress(Exception):
                _stop(member, _read_state(member) or {})
        raise
    if base:
        ensure_base(project, progress=say)
    ensure_dev_key(project, progress=say)
    return status(project)


def ensure_dev_key(project: Project, *, progress: Progress | None = None) -> Path | None:
    """A development signing key (ECDSA P-256, with its ``.pub``) where ``signing.key`` names a missing file
    under the state directory (``.bakery/``): the local stack can then sign and verify attestations. A key named
    anywhere else, in an environment variable or in KMS is never created here."""
    spec = project.config.signing.key
    if not spec or spec.startswith(("env:", "awskms://")):
        return None
    path = project.path(spec[5:] if spec.startswith("file:") else spec).resolve()
    if path.exists() or not path.is_relative_to(project.state_dir.resolve()):
        return None
    generate_key(path)
    if progress:
        progress(f"created a development signing key {project.rel(path)} (public key {project.rel(path.with_suffix('.pub'))})")
    return path


def down(project: Project, *, purge: bool = False) -> list[str]:
    """Stop the registries this stack started (from their state files); ``purge`` deletes their data too."""
    stopped: list[str] = []
    for member in _members(project):
        state = _read_state(member)
        if state:
            was_running = _running(member, state)
            _stop(member, state)
            if was_running:
                stopped.append(member.name)
        if purge and member.directory.exists():
            shutil.rmtree(member.directory)
    return stopped


def status(project: Project) -> StackStatus:
    out: list[RegistryState] = []
    base_ref: str | None = None
    for member in _members(project):
        state = _read_state(member)
        running = _running(member, state)
        repos: int | None = None
        if running:
            creds = None
            if member.credentials is not None:
                with contextlib.suppress(InputError):
                    creds = _htpasswd(member)
            if member.credentials is None or creds is not None:
                with contextlib.suppress(Exception):
                    repos = len(_client(member.address, creds).catalog())
            if member.name == MIRROR:
                with contextlib.suppress(Exception):
                    base_ref = _pinned_base(project, _client(member.address, creds))
        out.append(RegistryState(name=member.name, port=member.port, address=member.address, running=running,
                                 pid=(state or {}).get("pid") if running else None,
                                 mode=(state or {}).get("mode"),
                                 container=((state or {}).get("container") or "")[:12] or None if running else None,
                                 auth=member.credentials is not None,
                                 repositories=repos, data_dir=project.rel(member.directory)))
    return StackStatus(registries=out, base_image=base_ref)


def _client(address: str, creds: tuple[str, str] | None = None) -> RegistryClient:
    """The stack's own registries: loopback, plain HTTP, the stack's htpasswd credentials (not the config's)."""
    return client_for_host(None, address, insecure=True, credentials=creds, timeout=10, retries=1, backoff=0.2)


def _mirror_client(project: Project):
    member = next(m for m in _members(project) if m.name == MIRROR)
    return _client(member.address, _htpasswd(member))


def _pinned_base(project: Project, client) -> str | None:
    repo, tag = _split_image(project.config.dev_stack.base_image)
    digest = client.head_manifest(repo, tag)
    return f"{client.host}/{repo}@{digest}" if digest else None


# --------------------------------------------------------------------------------------------------------------
# The upstream base image


def apt_mirror(suite: str = "bookworm") -> str:
    """The Debian mirror this machine's apt uses for ``suite`` (read at run time, never stored)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    with contextlib.suppress(OSError):
        for stanza in sources.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.strip().startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if suite in fields.get("suites", "").split() and fields.get("uris"):
                return fields["uris"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    with contextlib.suppress(OSError):
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                rest = [p for p in parts[1:] if not p.startswith("[")]
                if len(rest) >= 2 and rest[1] == suite:
                    return rest[0]
    raise EnvironmentFailure(f"no Debian mirror for {suite} in {sources} or {legacy}; cannot debootstrap the base")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(path):
        yield


def _unmount_under(root: Path) -> None:
    with contextlib.suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mnt in sorted((m for m in mounts if m.startswith(str(root))), key=len, reverse=True):
            with contextlib.suppress(Exception):
                tools.run("umount", ["-l", mnt], timeout=30, check=False)


def rootfs_tarball(suite: str, *, progress: Progress | None = None) -> Path:
    """The cached ``debootstrap --variant=minbase SUITE`` root filesystem as a tarball (made once)."""
    say = progress or (lambda _m: None)
    arch = os.uname().machine
    target = cache_dir() / f"debootstrap-{suite}-minbase-{arch}.tar"
    if target.is_file():
        return target
    with _locked(cache_dir() / ".debootstrap.lock"):
        if target.is_file():  # another process made it while we waited
            return target
        mirror = apt_mirror(suite)
        work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=cache_dir()))
        rootfs = work / "rootfs"
        try:
            say(f"debootstrap --variant=minbase {suite} (about 20-30 s, cached in {cache_dir()})")
            started = time.monotonic()
            tools.run("debootstrap", ["--variant=minbase", suite, str(rootfs), mirror], timeout=1200,
                      hint=" (install the debootstrap package)")
            tools.run("rm", ["-rf", str(rootfs / "var/cache/apt/archives"), str(rootfs / "var/lib/apt/lists")],
                      timeout=120)
            (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
            (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
            tmp_tar = work / "rootfs.tar"
            tools.run("tar", ["--numeric-owner", "-C", str(rootfs), "-cf", str(tmp_tar), "."], timeout=600)
            tmp_tar.replace(target)
            say(f"debootstrap done in {time.monotonic() - started:.0f}s: {target}")
        except tools.ToolFailed as exc:
            raise StepFailed(f"debootstrap of {suite} failed: {exc}") from None
        finally:
            _unmount_under(rootfs)
            shutil.rmtree(work, ignore_errors=True)
    return target


def local_base_image(client, suite: str, progress: Progress | None = None) -> str:
    """The pristine imported rootfs as a local image ``bakery-dev/debootstrap:SUITE`` (imported once)."""
    import docker.errors

    progress = progress or (lambda _m: None)
    name = f"{LOCAL_BASE_REPO}:{suite}"
    try:
        client.images.get(name)
        return name
    except docker.errors.ImageNotFound:
        pass
    tarball = rootfs_tarball(suite, progress=progress)
    progress(f"docker import {tarball.name} → {name}")
    client.api.import_image_from_file(str(tarball), repository=LOCAL_BASE_REPO, tag=suite,
                                      changes=['CMD ["bash"]'])
    return name


def _push(client, repository: str, tag: str) -> str:
    digest = None
    for item in client.api.push(repository, tag, stream=True, decode=True):
        if "error" in item:
            raise StepFailed(f"push {repository}:{tag} failed: {item['error']}")
        aux = item.get("aux") or {}
        if aux.get("Digest"):
            digest = aux["Digest"]
    if not digest:
        raise StepFailed(f"push {repository}:{tag}: the daemon reported no digest")
    return digest


def ensure_base(project: Project, *, progress: Progress | None = None) -> str:
    """Make sure the mirror holds ``dev_stack.base_image``; return ``host:port/REPO@sha256:…``."""
    say = progress or (lambda _m: None)
    mirror = _mirror_client(project)
    pinned = _pinned_base(project, mirror)
    if pinned:
        return pinned
    repo, tag = _split_image(project.config.dev_stack.base_image)
    suite = project.config.dev_stack.suite
    target = f"{mirror.host}/{repo}"
    cached = _load_base_blobs(suite)
    if cached is not None:  # the same bytes as every earlier stack: same digest, no docker push
        manifest, media_type, blobs = cached
        say(f"uploading the cached base to {target}:{tag}")
        for digest, path in blobs:
            mirror.push_blob_file(repo, digest, path)
        digest = mirror.put_manifest(repo, tag, manifest, media_type)
        return f"{target}@{digest}"
    client = docker_client()
    local = local_base_image(client, suite, say)
    client.images.get(local).tag(target, tag)
    say(f"pushing {target}:{tag}")
    digest = _push(client, target, tag)
    with contextlib.suppress(Exception):  # a cache, best effort
        _save_base_blobs(suite, mirror, repo, digest)
    return f"{target}@{digest}"


def _base_blobs_dir(suite: str) -> Path:
    return cache_dir() / f"base-{suite}-minbase-{os.uname().machine}"


def _tarball_stamp(suite: str) -> str | None:
    tarball = cache_dir() / f"debootstrap-{suite}-minbase-{os.uname().machine}.tar"
    with contextlib.suppress(OSError):
        st = tarball.stat()
        return f"{st.st_size}:{int(st.st_mtime)}"
    return None


def _load_base_blobs(suite: str) -> tuple[bytes, str, list[tuple[str, Path]]] | None:
    """The base image as pushed once (manifest + blobs), if cached for the current tarball."""
    d = _base_blobs_dir(suite)
    try:
        meta = json.loads((d / "meta.json").read_text())
        body = (d / "manifest.json").read_bytes()
    except (OSError, ValueError):
        return None
    if meta.get("tarball") != _tarball_stamp(suite) or sha256_digest(body) != meta.get("digest"):
        return None
    blobs = [(b.digest, d / "blobs" / b.digest.replace(":", "-"))
             for b in Manifest(body, meta["media_type"], meta["digest"]).blobs()]
    if not all(p.is_file() and p.stat().st_size == b.size for (_, p), b in
               zip(blobs, Manifest(body, meta["media_type"], meta["digest"]).blobs())):
        return None
    return body, meta["media_type"], blobs


def _save_base_blobs(suite: str, mirror, repo: str, digest: str) -> None:
    """Keep the pushed base (manifest and blobs, exactly as in the registry) next to the tarball."""
    stamp = _tarball_stamp(suite)
    if stamp is None:
        return
    manifest = mirror.get_manifest(repo, digest)
    final = _base_blobs_dir(suite)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=cache_dir()))
    try:
        (work / "blobs").mkdir()
        for blob in manifest.blobs():
            mirror.download_blob(repo, blob.digest, work / "blobs" / blob.digest.replace(":", "-"))
        (work / "manifest.json").write_bytes(manifest.body)
        (work / "meta.json").write_text(json.dumps({"digest": digest, "media_type": manifest.media_type,
                                                    "tarball": stamp}))
        with _locked(cache_dir() / ".debootstrap.lock"):
            shutil.rmtree(final, ignore_errors=True)
            work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def push_new_base(project: Project, *, marker: str, progress: Progress | None = None) -> str:
    """Publish a NEW upstream base under the same tag (an extra file and label): the upstream digest moves.

    Returns the new pinned reference ``host:port/REPO@sha256:…``.
    """
    say = progress or (lambda _m: None)
    ensure_base(project, progress=say)
    mirror = _mirror_client(project)
    repo, tag = _split_image(project.config.dev_stack.base_image)
    client = docker_client()
    local = local_base_image(client, project.config.dev_stack.suite, say)
    target = f"{mirror.host}/{repo}"
    with tempfile.TemporaryDirectory(prefix="bakery-newbase-") as ctx:
        Path(ctx, "marker").write_text(marker + "\n")
        Path(ctx, "Dockerfile").write_text(
            f"FROM {local}\nCOPY marker /etc/bakery-upstream-marker\nLABEL {MARKER_LABEL}={json.dumps(marker)}\n")
        image_id = None
        for item in client.api.build(path=ctx, tag=f"{target}:{tag}", rm=True, forcerm=True, pull=False,
                                     decode=True):
            if "error" in item:
                raise StepFailed(f"building the new base failed: {item['error']}")
            aux = item.get("aux") or {}
            image_id = aux.get("ID", image_id)
        if not image_id:
            raise StepFailed("building the new base failed: no image id")
    say(f"pushing new {target}:{tag} (marker {marker})")
    digest = _push(client, target, tag)
    return f"{target}@{digest}"
