"""Bake images with BuildKit (the Docker CLI), the classic Docker builder (Docker SDK) or Packer, parents
before children, in parallel.

Each image: resolve the parent to an exact digest → render → fingerprint → build with OCI labels →
scan gate → push to the first environment under an immutable build tag. A failure stops that image's
descendants only; everything else goes on.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bakery import cachedir, integrity, render, scan, secrets, tools
from bakery.configview import Project
from bakery.definitions import Fleet, mirrored
from bakery.errors import (
    BakeryError,
    DaemonUnavailable,
    EnvironmentFailure,
    GateFailed,
    ImmutableTagError,
    InputError,
    StepFailed,
    ToolFailed,
)
from bakery.model import (
    LABEL_CREATED,
    LABEL_FINGERPRINT,
    LABEL_NAME,
    LABEL_VARIANT,
    LABEL_VERSION,
    OCI,
    BuildResult,
    ImageKey,
    ImageSpec,
    Recipe,
    Status,
)
from bakery.ledger import Ledger, open_ledger
from bakery.progress import Progress
from bakery.publish import build_tags, env_repository, latest, push_image, record_publish
from bakery.ref import Ref
from bakery.registries import registry_for, registry_for_host

LOG_TAIL = 40
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
log = logging.getLogger("bakery.build")


@dataclass
class BuildOptions:
    jobs: int = 2
    push: bool = True
    scan: bool = True
    rescan: bool = False
    no_cache: bool = False
    today: dt.date | None = None
    engine: str | None = None  # auto | buildkit | classic; None: build.engine of the configuration
    secrets: list[SecretSource] = field(default_factory=list)  # on top of build.secrets (same id: this wins)
    # Images whose build must carry a new `created` label even when nothing else changed (the nightly's `patches`
    # rebuilds: the label tells the next plan the image was built after the DB knew of the fixes).
    fresh: frozenset[ImageKey] = frozenset()


def docker_client(timeout: float = 1800) -> Any:
    """A Docker SDK client that answers, or DaemonUnavailable (exit 3)."""
    import docker

    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
        return client
    except Exception as exc:
        raise DaemonUnavailable(f"cannot reach the Docker daemon ({_short(exc)}); is dockerd running? "
                                f"`make demo` or scripts/setup-host.sh starts it") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def git_info(project: Project) -> tuple[str, str]:
    """(revision, source) of the definitions repository, for the OCI labels."""
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", str(project.root), *args], capture_output=True, text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""
    revision = git("rev-parse", "HEAD") or "unknown"
    if revision != "unknown":
        inputs = [str(p) for p in (project.config_file, project.definitions_dir, project.templates_dir) if p]
        if git("status", "--porcelain", "--", *inputs):
            revision += "-dirty"  # built from uncommitted definitions: the label must not claim HEAD
    source = git("remote", "get-url", "origin") or str(project.root)
    return revision, source


def local_tag(project: Project, key: ImageKey) -> str:
    """The convenience tag a build leaves in the local daemon: <first registry>/<name>:<version[-variant]>."""
    env = project.config.env(project.config.first_env)
    return f"{env.image(key.name)}:{key.tag_version}"


def resolve_upstream(project: Project, reference: str, docker_client_: Any | None = None) -> tuple[str, str]:
    """An upstream parent → (reference pinned by digest, digest), through the configured mirror."""
    ref = Ref.parse(mirrored(project, reference), require_registry=True)
    repo_full, tag, digest, host = ref.name, ref.tag, ref.digest, ref.registry
    if digest:
        return f"{repo_full}@{digest}", digest
    client = registry_for_host(project, host, retries=1)
    try:
        found = client.head_manifest(ref.repository, tag or "latest")
    except EnvironmentFailure as exc:
        found = None
        if docker_client_ is not None:  # offline: a local image of that name still pins exactly
            try:
                image = docker_client_.images.get(f"{repo_full}:{tag}")
                return image.id, image.id
            except Exception:
                pass
        raise EnvironmentFailure(f"cannot resolve upstream image {reference} at {host}: {exc}") from None
    if not found:
        raise StepFailed(f"upstream image {reference} not found at {host} (as {repo_full}:{tag}); "
                         f"`bakery dev up` fills the local mirror")
    return f"{repo_full}@{found}", found


# -- build engines --------------------------------------------------------------------------------------------
ENGINES = ("auto", "buildkit", "classic")
BUILDKIT_MIN_API = (1, 39)  # Docker 18.09: the first daemon with BuildKit built in
_RUN_MOUNT = re.compile(r"^\s*RUN\s+(?:--\S+\s+)*--mount=", re.MULTILINE | re.IGNORECASE)
_SECRET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Candidates for the BuildKit CLI, in order: Debian's docker.io CLI (BuildKit with --secret and --iidfile),
# then whatever `docker` is on PATH. A newer static CLI without buildx falls back to the legacy builder and
# rejects --secret: it is recognised by its `build --help` and skipped.
DOCKER_CLIS = ("/usr/bin/docker", "docker")


@dataclass(frozen=True)
class SecretSource:
    """A build secret: its id (``RUN --mount=type=secret,id=ID``) and where its value comes from."""

    id: str
    env: str | None = None
    file: str | None = None

    @property
    def cli_arg(self) -> str:
        return f"id={self.id},env={self.env}" if self.env else f"id={self.id},src={self.file}"

    def describe(self) -> str:
        return f"{self.id} (from ${self.env})" if self.env else f"{self.id} (from {self.file})"


def parse_secret(text: str) -> SecretSource:
    """``id=ID,env=VAR`` or ``id=ID,src=PATH`` (the Docker CLI's syntax; ``file=`` is accepted for ``src=``)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("id", "env", "src", "file", "source") or not value:
            raise InputError(f"--secret {text!r}: use id=ID,env=VARIABLE or id=ID,src=FILE")
        fields["src" if key.strip() in ("file", "source") else key.strip()] = value
    sid = fields.get("id", "")
    if not _SECRET_ID.match(sid):
        raise InputError(f"--secret {text!r}: id {sid!r} must be letters, digits, '_', '.', '-'")
    if ("env" in fields) == ("src" in fields):
        raise InputError(f"--secret {text!r}: name exactly one source, env=VARIABLE or src=FILE")
    if "env" in fields and not _ENV_NAME.match(fields["env"]):
        raise InputError(f"--secret {text!r}: env {fields['env']!r} is not an environment variable name")
    return SecretSource(id=sid, env=fields.get("env"), file=fields.get("src"))


def resolve_secrets(project: Project, extra: list[SecretSource]) -> list[SecretSource]:
    """build.secrets of the configuration plus ``extra`` (same id: ``extra`` wins), each checked to exist and its
    value registered for masking. Files are made absolute (relative to the project root)."""
    import os

    merged: dict[str, tuple[SecretSource, str]] = {}
    for sid, conf in project.config.build.secrets.items():
        merged[sid] = SecretSource(id=sid, env=conf.env, file=conf.file), f"build.secrets.{sid}"
    for src in extra:
        merged[src.id] = src, f"--secret id={src.id}"
    out = []
    for sid, (src, origin) in sorted(merged.items()):
        if src.env:
            value = os.environ.get(src.env)
            if value is None:
                raise InputError(f"{origin}: environment variable {src.env} is not set")
            secrets.register(value)
            out.append(src)
        else:
            assert src.file is not None
            path = project.path(os.path.expanduser(src.file))
            try:
                secrets.register(path.read_text(errors="replace").strip() or None)
            except OSError as exc:
                raise InputError(f"{origin}: file {src.file}: cannot read it ({exc.strerror or exc})") from None
            out.append(SecretSource(id=sid, file=str(path)))
    return out


@dataclass
class BuildJob:
    """What an engine needs to build one image."""

    name: str
    recipe: Recipe
    tag: str
    parent_ref: str
    labels: dict[str, str]
    no_cache: bool
    on_line: Callable[[str], None]


class Engine(Protocol):
    name: str

    def build(self, job: BuildJob) -> str:
        """Build ``job`` and return the image ID (``sha256:…``)."""
        ...


class ClassicEngine:
    """The Docker SDK's build API: the classic builder (no ``RUN --mount``, no secrets)."""

    name = "classic"

    def __init__(self, client: Any):
        self.client = client

    def build(self, job: BuildJob) -> str:
        if _RUN_MOUNT.search(job.recipe.files.get("Dockerfile", b"").decode(errors="replace")):
            raise StepFailed(f"{job.name}: the recipe uses RUN --mount, which the classic builder cannot build; "
                             f"use the BuildKit engine (build.engine: buildkit, or --engine buildkit)")
        buffer = ""
        image_id = ""
        error = ""
        try:
            stream = self.client.api.build(
                path=str(job.recipe.directory), tag=job.tag, buildargs={"BASE_IMAGE": job.parent_ref},
                labels=job.labels, rm=True, forcerm=True, pull=False, decode=True, nocache=job.no_cache)
            for item in stream:
                if "stream" in item:
                    buffer += item["stream"]
                    *lines, buffer = buffer.split("\n")
                    for ln in lines:
                        job.on_line(ln)
                if "aux" in item and isinstance(item["aux"], dict) and item["aux"].get("ID"):
                    image_id = item["aux"]["ID"]
                if "error" in item:
                    error = (item.get("errorDetail") or {}).get("message") or item["error"]
        except Exception as exc:
            from docker.errors import DockerException

            # The SDK's own refusals (an invalid reference format, an API error answer) are DockerExceptions:
            # the daemon answered. Only a transport failure (requests/socket) means the daemon is gone.
            if isinstance(exc, DockerException):
                raise StepFailed(f"{job.name}: docker build failed: {_short(exc)}") from None
            raise DaemonUnavailable(f"{job.name}: lost the Docker daemon during the build: {_short(exc)}") from None
        if buffer:
            job.on_line(buffer)
        if error:
            raise StepFailed(f"{job.name}: build failed: {secrets.mask(error.strip())}")
        if not image_id:
            raise StepFailed(f"{job.name}: the daemon reported no image id")
        return image_id


class BuildKitEngine:
    """BuildKit through the Docker CLI (``DOCKER_BUILDKIT=1 docker build``): ``RUN --mount=type=cache``,
    ``RUN --mount=type=secret`` and multi-stage builds that skip unused stages. The image ID comes back
    through ``--iidfile``; secrets are passed by reference (``env=VAR`` / ``src=FILE``), never by value."""

    name = "buildkit"

    def __init__(self, cli: str, client: Any, build_secrets: list[SecretSource], timeout: float):
        self.cli = cli
        self.client = client
        self.secrets = build_secrets
        self.timeout = timeout

    def _local_parent(self, ref: str) -> str:
        """BuildKit reads ``FROM sha256:<id>`` as a Docker Hub name: a local parent (a build without --push) is
        given a tag that names exactly that ID instead."""
        if not ref.startswith("sha256:"):
            return ref
        tag = f"bakery-parent:{ref.split(':', 1)[1]}"
        try:
            self.client.images.get(ref).tag(tag)
        except Exception as exc:
            raise StepFailed(f"local parent {ref[:19]} is gone from the daemon: {_short(exc)}") from None
        return tag

    def build(self, job: BuildJob) -> str:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bakery-iid-") as tmp:
            iidfile = Path(tmp) / "iid"
            args = ["build", "--progress=plain", "--iidfile", str(iidfile), "--tag", job.tag,
                    "--build-arg", f"BASE_IMAGE={self._local_parent(job.parent_ref)}"]
            for key, value in job.labels.items():
                args += ["--label", f"{key}={value}"]
            for src in self.secrets:
                args += ["--secret", src.cli_arg]
            if job.no_cache:
                args.append("--no-cache")
            args.append(str(job.recipe.directory))
            try:
                tools.run(self.cli, args, timeout=self.timeout, env={"DOCKER_BUILDKIT": "1"},
                          on_line=lambda ln: job.on_line(secrets.mask(ln)), merge_stderr=True)
            except ToolFailed as exc:
                text = exc.stdout or ""
                if "Cannot connect to the Docker daemon" in text or "Is the docker daemon running" in text:
                    raise DaemonUnavailable(f"{job.name}: lost the Docker daemon during the build") from None
                reason = _buildkit_error(text) or str(exc)
                raise StepFailed(f"{job.name}: build failed: {secrets.mask(reason)}") from None
            try:
                image_id = iidfile.read_text().strip()
            except OSError:
                image_id = ""
        if not image_id.startswith("sha256:"):
            raise StepFailed(f"{job.name}: docker build wrote no image id to --iidfile")
        return image_id


def _buildkit_error(text: str) -> str:
    """The line that says why a BuildKit build failed (``error: …``, ``failed to solve …``, ``executor failed …``)."""
    for line in reversed(text.strip().splitlines()):
        line = ANSI.sub("", line).strip()
        if line.startswith(("error:", "ERROR:", "failed to solve", "executor failed")) or "did not complete" in line:
            return line[:400]
    return ""


def find_buildkit_cli() -> str | None:
    """The first Docker CLI that builds with BuildKit and knows ``--secret`` and ``--iidfile``, or None."""
    return _find_buildkit_cli()


@functools.lru_cache(maxsize=1)
def _find_buildkit_cli() -> str | None:
    seen: set[str] = set()
    for candidate in DOCKER_CLIS:
        try:
            path = tools.resolve(candidate)
        except BakeryError:
            continue
        real = str(Path(path).resolve())
        if real in seen:
            continue
        seen.add(real)
        if _cli_has_buildkit(real):
            return path
    return None


def _cli_has_buildkit(path: str) -> bool:
    """Whether the Docker CLI at ``path`` builds with BuildKit (``--secret``, ``--iidfile``). Asking it costs a
    process start (~0.1 s); the answer is kept per binary (path, size, mtime) in $BAKERY_CACHE_DIR (default
    ~/.cache/bakery)."""
    import json
    import os

    try:
        st = os.stat(path)
    except OSError:
        return False
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    cache = cachedir.cache_dir("docker-cli.json")
    try:
        known = json.loads(cache.read_text())
        if isinstance(known, dict) and isinstance(known.get(key), bool):
            return known[key]
    except (OSError, ValueError):
        known = {}
    try:
        out = tools.run(path, ["build", "--help"], timeout=30, env={"DOCKER_BUILDKIT": "1"}, check=False)
    except BakeryError:
        return False
    text = out.stdout + out.stderr
    answer = "--secret" in text and "--iidfile" in text
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        known = {k: v for k, v in (known if isinstance(known, dict) else {}).items() if k.split(":")[0] != path}
        known[key] = answer
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(cache)
    except OSError:
        pass  # no cache: asked again next time
    return answer


def daemon_supports_buildkit(client: Any) -> bool:
    try:
        version = client.version()
    except Exception:
        return False
    api = tuple(int(p) for p in re.findall(r"\d+", str(version.get("ApiVersion", "0.0")))[:2])
    return api >= BUILDKIT_MIN_API and str(version.get("Os", "linux")).lower() == "linux"


def select_engine(project: Project, client: Any, requested: str | None = None,
                  extra_secrets: list[SecretSource] | None = None) -> Engine:
    """The engine for this build: ``requested`` (or build.engine); ``auto`` is BuildKit where the daemon and a
    Docker CLI support it, else the classic builder."""
    wanted = requested or project.config.build.engine
    if wanted not in ENGINES:
        raise InputError(f"build engine {wanted!r}: use one of {', '.join(ENGINES)}")
    build_secrets = resolve_secrets(project, list(extra_secrets or []))
    if wanted == "classic":
        if build_secrets:
            raise InputError(f"build secrets ({', '.join(s.id for s in build_secrets)}) need the BuildKit engine; "
                             f"the classic builder cannot mount them (use --engine buildkit)")
        return ClassicEngine(client)
    supported = daemon_supports_buildkit(client)
    cli = find_buildkit_cli() if supported else None
    if cli is not None:
        return BuildKitEngine(cli, client, build_secrets, project.config.build.timeout)
    why = ("the Docker daemon does not support BuildKit (API < 1.39 or not Linux)" if not supported else
           "no Docker CLI with BuildKit (--secret, --iidfile) was found; Debian's docker.io provides /usr/bin/docker")
    if wanted == "buildkit" or build_secrets:
        raise EnvironmentFailure(f"cannot build with BuildKit: {why}")
    log.info("build engine: classic (%s)", why)
    return ClassicEngine(client)


class Builder:
    """Runs one build: a fleet, a selection, options; produces BuildResults."""

    def __init__(self, project: Project, fleet: Fleet, options: BuildOptions, progress: Progress | None = None):
        self.project = project
        self.fleet = fleet
        self.options = options
        self.progress = progress or Progress(enabled=False)
        self.today = options.today or dt.datetime.now(dt.timezone.utc).date()
        self.results: dict[ImageKey, BuildResult] = {}
        self._lock = threading.Lock()
        self._docker: Any = None
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._git = git_info(project)
        self._scans: dict[ImageKey, tuple[Any, Any]] = {}  # key -> (ScanResult, GateDecision), for attestations
        self._facts: dict[ImageKey, dict[str, Any]] = {}  # key -> what the provenance records
        self._local = threading.local()  # per worker thread: its ledger (an SQLite connection stays in its thread)

    @property
    def ledger(self) -> Ledger:
        """This thread's ledger, opened once per run and thread (not per image and step: an S3 ledger makes a
        boto3 client, ~8 ms, each time)."""
        led = getattr(self._local, "ledger", None)
        if led is None:
            led = self._local.ledger = open_ledger(self.project)
        return led

    @property
    def docker(self) -> Any:
        if self._docker is None:
            self._docker = docker_client(self.project.config.build.timeout)
        return self._docker

    # -- parents -----------------------------------------------------------------------------------------
    def resolve_parent(self, spec: ImageSpec) -> tuple[str, str, str]:
        """(reference for FROM, digest, symbolic name) of the parent, exactly."""
        symbolic = render.parent_reference(self.project, spec)
        if spec.parent.kind == "upstream":
            ref, digest = resolve_upstream(self.project, spec.parent.reference, self.docker)
            return ref, digest, symbolic
        pkey = spec.parent.key
        assert pkey is not None
        done = self.results.get(pkey)
        if done is not None and done.ok:
            if done.digest and done.repository:
                return done.pinned, done.digest, symbolic
            if not self.options.push:
                return done.image_id, done.image_id, symbolic
        published = latest(self.project, pkey)
        if published is not None:
            return published.pinned, published.digest, symbolic
        if self.options.push:
            # A published child must name a published parent (base.name/base.digest labels, `plan`): a local
            # image ID is no registry digest.
            raise StepFailed(f"parent {pkey} is not published in {self.project.config.first_env}; a pushed image "
                             f"must be built on a published parent (`bakery build {pkey} --push`, or name both)")
        try:
            image = self.docker.images.get(local_tag(self.project, pkey))
            return image.id, image.id, symbolic
        except Exception:
            pass
        raise StepFailed(f"parent {pkey} is neither built nor published; build it first (`bakery build {pkey}`) "
                         f"or name it in the same build")

    # -- one image ---------------------------------------------------------------------------------------
    def build_one(self, spec: ImageSpec) -> BuildResult:
        name = str(spec.key)
        result = BuildResult(key=spec.key, status=Status.FAILED)
        started = time.monotonic()
        started_at = dt.datetime.now(dt.timezone.utc)
        self.progress.start(name, "resolving parent")
        try:
            parent_ref, parent_digest, symbolic = self.resolve_parent(spec)
            result.parent_reference, result.parent_digest = parent_ref, parent_digest
            recipe = render.render(self.project, spec)
            render.write(recipe)
            result.fingerprint = render.fingerprint(recipe, parent_digest)
            result.labels = self.labels(spec, symbolic, parent_digest, result.fingerprint)
            timings = result.timings
            timings["prepare"] = time.monotonic() - started
            self._facts[spec.key] = {"recipe_digest": recipe.recipe_digest, "started": started_at}
            tail: list[str] = []
            result.log_tail = tail
            mark = time.monotonic()
            if spec.builder == "packer":
                result.image_id = self._packer(spec, recipe, parent_ref, result, tail)
            else:
                result.image_id = self._docker_build_reproducibly(spec, recipe, parent_ref, result, tail)
            timings["build"] = time.monotonic() - mark - timings.get("probe", 0.0)
            result.status = Status.BUILT
            self._facts[spec.key]["finished"] = dt.datetime.now(dt.timezone.utc)
            if result.digest:  # the builder stored the artifact itself (packer amazon-ebs): no scan, no push
                result.seconds = time.monotonic() - started
                self.progress.done(name, "built", result.image_id)
                return result
            if self.options.scan:
                self.progress.step(name, "scanning")
                mark = time.monotonic()
                self._scan(spec, result)
                timings["scan"] = time.monotonic() - mark
            if self.options.push:
                self.progress.step(name, "pushing")
                self._push(spec, result)
        except GateFailed as exc:
            result.status, result.error = Status.REFUSED, str(exc)
        except EnvironmentFailure:
            result.seconds = time.monotonic() - started
            self.progress.done(name, "failed")
            raise
        except BakeryError as exc:
            result.status = Status.REFUSED if isinstance(exc, ImmutableTagError) else Status.FAILED
            result.error = str(exc)
        except Exception as exc:  # a bug must not take the rest of the fleet down: report it on the image
            result.status = Status.FAILED
            result.error = f"internal error: {type(exc).__name__}: {_short(exc)} (run with --debug)"
            if log.isEnabledFor(logging.DEBUG):
                log.exception("build of %s", name)
        result.seconds = time.monotonic() - started
        detail = result.error or (f"{result.repository}:{result.build_tag} {result.digest[:19]}" if result.digest
                                  else result.image_id[:19])
        if result.reused:
            detail += " (the same image as that build: nothing new to publish)"
        self.progress.done(name, result.status.value, detail)
        if result.status == Status.FAILED and result.log_tail:
            self.progress.block(f"--- {name}: last {len(result.log_tail)} lines of the build log ---",
                                result.log_tail)
        return result

    def labels(self, spec: ImageSpec, symbolic: str, parent_digest: str, fingerprint: str) -> dict[str, str]:
        """The image's labels. Only ``created`` changes from one build of the same inputs to the next; see
        ``_docker_build_reproducibly`` for when it is kept."""
        revision, source = self._git
        return {
            OCI + "created": _created_now(),
            OCI + "version": spec.key.tag_version,
            OCI + "revision": revision,
            OCI + "source": source,
            OCI + "title": spec.key.name,
            OCI + "description": spec.description,
            OCI + "base.name": symbolic,
            OCI + "base.digest": parent_digest,
            LABEL_NAME: spec.key.name,
            LABEL_VERSION: spec.key.version,
            LABEL_VARIANT: spec.key.variant or "",
            LABEL_FINGERPRINT: fingerprint,
        }

    def _docker_build(self, spec: ImageSpec, recipe: Recipe, parent_ref: str, labels: dict[str, str],
                      tail: list[str], no_cache: bool | None = None) -> str:
        name = str(spec.key)
        engine = self.engine
        self.progress.step(name, f"building FROM {parent_ref} ({engine.name})")
        return engine.build(BuildJob(name=name, recipe=recipe, tag=local_tag(self.project, spec.key),
                                     parent_ref=parent_ref, labels=labels,
                                     no_cache=self.options.no_cache if no_cache is None else no_cache,
                                     on_line=lambda ln: self._log(name, tail, ln)))

    def _docker_build_reproducibly(self, spec: ImageSpec, recipe: Recipe, parent_ref: str, result: BuildResult,
                                   tail: list[str]) -> str:
        """Build; when the newest published build came from exactly these inputs (every label but ``created``
        equal: fingerprint, parent digest, clean revision, …), first with that build's ``created`` label. A warm
        cache then gives the very same image (same config digest), which publish does not publish again. When
        the image comes out different anyway (``--no-cache``, a step that is not reproducible), it is built once
        more with ``created`` = now — from the cache just filled — so ``created`` always says when the image's
        content was made (plan's ``patches`` reason reads it)."""
        mark = time.monotonic()
        previous = self._same_inputs(spec, result.labels)
        result.timings["probe"] = time.monotonic() - mark
        if spec.key in self.options.fresh:  # a new `created` label, whatever the cache gives
            if previous is not None and previous[0] == result.labels[LABEL_CREATED]:
                # the newest build was made within this very second: the same label would give the same image
                time.sleep(1.0 - time.time() % 1.0 + 0.01)
                result.labels = {**result.labels, LABEL_CREATED: _created_now()}
            return self._docker_build(spec, recipe, parent_ref, result.labels, tail)
        if previous is None:
            return self._docker_build(spec, recipe, parent_ref, result.labels, tail)
        created, config = previous
        labels = {**result.labels, LABEL_CREATED: created}
        image_id = self._docker_build(spec, recipe, parent_ref, labels, tail)
        if image_id == config:
            result.labels = labels
            return image_id
        return self._docker_build(spec, recipe, parent_ref, result.labels, tail, no_cache=False)

    def _same_inputs(self, spec: ImageSpec, labels: dict[str, str]) -> tuple[str, str] | None:
        """(``created`` label, image id) of the newest build of ``spec`` published to the first environment when it
        carries exactly ``labels`` but ``created``; None otherwise, or when it cannot be read (the build then goes
        on as a new image). The registry names the newest build tag, the ledger the image id it was reserved for
        (one read each: not the image's whole history, which an S3 ledger reads object by object); that image's
        labels come from the local daemon (content-addressed: the id is the config's digest), else from the
        registry. Publishing checks registry and ledger again (``publish.identical_newest``)."""
        if not self.options.push or not re.fullmatch(r"[0-9a-f]{40}", labels.get(OCI + "revision", "")):
            return None  # a local build, or a dirty/unknown revision: no reproducible inputs
        env = self.project.config.first_env
        host, repo = env_repository(self.project, env, spec.key.name)
        target = f"{host}/{repo}"
        try:
            tags = build_tags(self.project, spec.key, registry_for(self.project, env).list_tags(repo))
            holder = integrity.reservation(self.ledger, str(spec.key), target, tags[-1]) if tags else None
            if holder is None or holder.details.get("identity") != "image":
                return None
            config = holder.digest
            held = self._labels_of(config, env, repo)
        except BakeryError as exc:
            log.info("%s: newest build not read (%s): built as a new image", spec.key, exc)
            return None
        created = (held or {}).get(LABEL_CREATED, "")
        if not created or any(held.get(k) != v for k, v in labels.items() if k != LABEL_CREATED):
            return None
        return created, config

    def _labels_of(self, image_id: str, env: str, repo: str) -> dict[str, str] | None:
        """The labels of image ``image_id`` (a config digest): from the daemon when it holds it, else from the
        config blob in ``env``'s registry; None when neither has it."""
        try:
            return dict((self.docker.api.inspect_image(image_id).get("Config") or {}).get("Labels") or {})
        except Exception:  # noqa: BLE001 - not in this daemon (a fresh runner): ask the registry
            pass
        try:
            client = registry_for(self.project, env)
            config = json.loads(client.get_blob(repo, image_id))
            return dict((config.get("config") or {}).get("Labels") or {})
        except (BakeryError, ValueError, AttributeError, TypeError):
            return None

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = select_engine(self.project, self.docker, self.options.engine, self.options.secrets)
            return self._engine

    def _log(self, name: str, tail: list[str], line: str) -> None:
        line = ANSI.sub("", line).rstrip()
        if not line:
            return
        tail.append(line)
        del tail[:-LOG_TAIL]
        self.progress.line(name, line)

    def _packer(self, spec: ImageSpec, recipe: Recipe, parent_ref: str, result: BuildResult,
                tail: list[str]) -> str:
        from bakery import ami, packer

        name = str(spec.key)
        self.progress.step(name, f"packer build FROM {parent_ref}")
        out = packer.build(self.project, recipe, parent_ref=parent_ref, labels=result.labels,
                           image_tag=local_tag(self.project, spec.key),
                           on_line=lambda ln: self._log(name, tail, ln))
        if out.image_id:
            return out.image_id
        amis = getattr(out, "amis", None) or {}
        if amis:
            region, ami_id = next(iter(sorted(amis.items())))
            result.digest = ami.origin(region, ami_id)
            if self.options.push:
                published = ami.publish_ami(self.project, spec.key, ami_id, region, result.fingerprint, spec=spec)
                result.build_tag = getattr(published, "build_tag", "") or ""
                result.status = Status.PUSHED
                self._attest_ami(spec, result, recipe, published.origin)
            return result.digest
        raise StepFailed(f"{name}: packer produced no artifact")

    def _scan(self, spec: ImageSpec, result: BuildResult) -> None:
        scanned, decision = scan.gate(self.project, result.image_id, remote=False, spec=spec,
                                      rescan=self.options.rescan)
        self._scans[spec.key] = (scanned, decision)
        result.timings["trivy"] = float(getattr(scanned, "trivy_seconds", 0.0) or 0.0)
        result.scan = decision.summary()
        if not decision.passed:
            reasons = "; ".join(f"{f.id} in {f.package} {f.installed} (fixed in {f.fixed or 'no fix'}): {why}"
                                for f, why in decision.failing[:5])
            more = f" (+{len(decision.failing) - 5} more)" if len(decision.failing) > 5 else ""
            if self.project.config.scanner.push_on_fail:
                self.progress.step(str(spec.key), f"scan gate failed, pushing anyway (scanner.push_on_fail): "
                                                  f"{reasons}{more}")
                return
            raise GateFailed(f"scan gate failed, not pushed: {reasons}{more}")

    def _push(self, spec: ImageSpec, result: BuildResult) -> None:
        mark = time.monotonic()
        published = push_image(self.project, self.docker, spec, result.image_id, fingerprint=result.fingerprint,
                               today=self.today, on_line=lambda ln: self.progress.line(str(spec.key), ln),
                               ledger=self.ledger)
        result.repository, result.build_tag, result.digest = published.repository, published.build_tag, \
            published.digest
        result.tags = [published.build_tag, *published.aliases]
        result.status = Status.PUSHED
        result.reused = published.reused
        result.timings["push"] = time.monotonic() - mark
        mark = time.monotonic()
        if not published.reused:  # the ledger recorded this digest under that build tag when it was published
            record_publish(self.project, spec, published, fingerprint=result.fingerprint, scan=result.scan,
                           parent=result.parent_reference, ledger=self.ledger)
        result.timings["record"] = time.monotonic() - mark
        mark = time.monotonic()
        if not published.reused or not self._attested(published):
            self._attest(spec, result, published)
        elif self._scans.get(spec.key) and not getattr(self._scans[spec.key][0], "cached", False):
            self._attest_scan(published, *self._scans[spec.key])  # scanned again (a newer DB): sign that scan
        result.timings["attest"] = time.monotonic() - mark

    def _attest_scan(self, published: Any, scanned: Any, decision: Any) -> None:
        if not self.project.config.signing.key:
            return
        from bakery import evidence

        repo = env_repository(self.project, published.env, published.key.name)[1]
        evidence.attest_scan(self.project, registry_for(self.project, published.env), repo, published.repository,
                             published.digest, scanned, decision)

    def _attested(self, published: Any) -> bool:
        """Whether the digest carries a provenance attestation (made by the build that published it), when this
        project signs; a build reusing it attests it only when it carries none (signing configured since)."""
        if not self.project.config.signing.key:
            return True
        from bakery import evidence

        repo = env_repository(self.project, published.env, published.key.name)[1]
        artifacts, _how = evidence.list_artifacts(registry_for(self.project, published.env), repo, published.digest)
        return any(a.kind == "provenance" for a in artifacts)

    def _attest(self, spec: ImageSpec, result: BuildResult, published: Any) -> None:
        """Signed provenance, SBOM, scan and VEX next to the pushed digest (bakery.evidence)."""
        if not self.project.config.signing.key:
            return
        from bakery import evidence

        self.progress.step(str(spec.key), "signing and attaching attestations")
        facts = self._facts.get(spec.key, {})
        revision, source = self._git
        now = dt.datetime.now(dt.timezone.utc)
        evidence.attest_publish(self.project, published, image_id=result.image_id, scan=self._scans.get(spec.key),
                                facts=evidence.BuildFacts(
                                    definition_file=spec.source_file, revision=revision, source=source,
                                    recipe_digest=facts.get("recipe_digest", ""),
                                    parent_reference=result.parent_reference, parent_digest=result.parent_digest,
                                    fingerprint=result.fingerprint, builder=spec.builder,
                                    builder_version=self._builder_version(spec.builder),
                                    started=facts.get("started", now), finished=facts.get("finished", now)))

    def _attest_ami(self, spec: ImageSpec, result: BuildResult, recipe: Recipe, origin: str) -> None:
        """Signed provenance of an AMI build, in S3 (bakery.ami_evidence; needs signing.ami_store)."""
        if not (self.project.config.signing.key and self.project.config.signing.ami_store):
            return
        from bakery import ami_evidence, evidence

        revision, source = self._git
        now = dt.datetime.now(dt.timezone.utc)
        started = self._facts.get(spec.key, {}).get("started", now)
        ami_evidence.attest_publish(self.project, str(spec.key), origin, evidence.BuildFacts(
            definition_file=spec.source_file, revision=revision, source=source, recipe_digest=recipe.recipe_digest,
            parent_reference=result.parent_reference, parent_digest=result.parent_digest,
            fingerprint=result.fingerprint, builder="packer", builder_version=self._builder_version("packer"),
            started=started, finished=now))

    def _builder_version(self, builder: str) -> str:
        try:
            if builder == "docker":
                return str(self.docker.version().get("Version", "unknown"))
            from bakery import packer

            return packer.packer_version(self.project)
        except Exception:  # noqa: BLE001 - a version we cannot read is recorded as such
            return "unknown"

    # -- the DAG -------------------------------------------------------------------------------------------
    def run(self, specs: list[ImageSpec]) -> list[BuildResult]:
        """Build ``specs`` in dependency order, independent images in parallel up to ``jobs``."""
        wanted = {s.key: s for s in specs}
        if any(s.builder != "packer" for s in specs):
            self.engine  # noqa: B018 - bad engine settings or secrets are input errors before anything is built
        for s in specs:
            self.progress.add(str(s.key))
        pending = dict(wanted)
        running: dict[Future[BuildResult], ImageKey] = {}
        env_error: EnvironmentFailure | None = None
        with ThreadPoolExecutor(max_workers=max(1, self.options.jobs)) as pool:
            while pending or running:
                if env_error is None:
                    for key in sorted(pending, key=self.fleet.sort_key):
                        if len(running) >= self.options.jobs:
                            break
                        spec = pending[key]
                        pkey = self.fleet.parent_key(spec)
                        if pkey in wanted:
                            presult = self.results.get(pkey)
                            if presult is None:
                                continue  # parent still building
                            if not presult.ok:
                                self._skip(spec, f"parent {pkey} {presult.status.value}")
                                del pending[key]
                                continue
                        del pending[key]
                        running[pool.submit(self.build_one, spec)] = key
                else:
                    for key in list(pending):
                        self._skip(pending.pop(key), "not started: " + str(env_error))
                if not running:
                    if pending:  # everything left waits on parents that were skipped
                        continue
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    key = running.pop(fut)
                    try:
                        self.results[key] = fut.result()
                    except EnvironmentFailure as exc:
                        env_error = env_error or exc
                        self.results[key] = BuildResult(key=key, status=Status.FAILED, error=str(exc))
        if env_error is not None:
            raise env_error
        return [self.results[s.key] for s in specs]

    def _skip(self, spec: ImageSpec, why: str) -> None:
        self.results[spec.key] = BuildResult(key=spec.key, status=Status.SKIPPED, error=why)
        self.progress.done(str(spec.key), "skipped", why)


def build(project: Project, fleet: Fleet, specs: list[ImageSpec], options: BuildOptions,
          progress: Progress | None = None) -> list[BuildResult]:
    return Builder(project, fleet, options, progress).run(specs)


def _created_now() -> str:
    """The ``org.opencontainers.image.created`` label of a build made now (to the second)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
