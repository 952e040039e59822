"""Bake images with the Docker engine (Docker SDK) or Packer, parents before children, in parallel.

Each image: resolve the parent to an exact digest → render → fingerprint → build with OCI labels →
scan gate → push to the first environment under an immutable build tag. A failure stops that image's
descendants only; everything else goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from bakery import ami, packer, render, scan
from bakery.config import Project
from bakery.definitions import Fleet, mirrored
from bakery.errors import BakeryError, DaemonUnavailable, EnvironmentFailure, GateFailed, ImmutableTagError, StepFailed
from bakery.model import (
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
from bakery.progress import Progress
from bakery.publish import latest, push_image, record_publish
from bakery.ref import Ref
from bakery.registries import registry_for_host

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
        self._git = git_info(project)

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
        self.progress.start(name, "resolving parent")
        try:
            parent_ref, parent_digest, symbolic = self.resolve_parent(spec)
            result.parent_reference, result.parent_digest = parent_ref, parent_digest
            recipe = render.render(self.project, spec)
            render.write(recipe)
            result.fingerprint = render.fingerprint(recipe, parent_digest)
            result.labels = self.labels(spec, symbolic, parent_digest, result.fingerprint)
            tail: list[str] = []
            result.log_tail = tail
            if spec.builder == "packer":
                result.image_id = self._packer(spec, recipe, parent_ref, result, tail)
            else:
                result.image_id = self._docker_build(spec, recipe, parent_ref, result.labels, tail)
            result.status = Status.BUILT
            if result.digest:  # the builder stored the artifact itself (packer amazon-ebs): no scan, no push
                result.seconds = time.monotonic() - started
                self.progress.done(name, "built", result.image_id)
                return result
            if self.options.scan:
                self.progress.step(name, "scanning")
                self._scan(spec, result)
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
        self.progress.done(name, result.status.value, detail)
        if result.status == Status.FAILED and result.log_tail:
            self.progress.block(f"--- {name}: last {len(result.log_tail)} lines of the build log ---",
                                result.log_tail)
        return result

    def labels(self, spec: ImageSpec, symbolic: str, parent_digest: str, fingerprint: str) -> dict[str, str]:
        revision, source = self._git
        return {
            OCI + "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
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
                      tail: list[str]) -> str:
        name = str(spec.key)
        self.progress.step(name, f"building FROM {parent_ref}")
        buffer = ""
        image_id = ""
        error = ""
        try:
            stream = self.docker.api.build(
                path=str(recipe.directory), tag=local_tag(self.project, spec.key),
                buildargs={"BASE_IMAGE": parent_ref}, labels=labels, rm=True, forcerm=True, pull=False,
                decode=True, nocache=self.options.no_cache)
            for item in stream:
                if "stream" in item:
                    buffer += item["stream"]
                    *lines, buffer = buffer.split("\n")
                    for ln in lines:
                        self._log(name, tail, ln)
                if "aux" in item and isinstance(item["aux"], dict) and item["aux"].get("ID"):
                    image_id = item["aux"]["ID"]
                if "error" in item:
                    error = (item.get("errorDetail") or {}).get("message") or item["error"]
        except Exception as exc:
            from docker.errors import DockerException

            # The SDK's own refusals (an invalid reference format, an API error answer) are DockerExceptions:
            # the daemon answered. Only a transport failure (requests/socket) means the daemon is gone.
            if isinstance(exc, DockerException):
                raise StepFailed(f"{name}: docker build failed: {_short(exc)}") from None
            raise DaemonUnavailable(f"{name}: lost the Docker daemon during the build: {_short(exc)}") from None
        if buffer:
            self._log(name, tail, buffer)
        if error:
            raise StepFailed(f"{name}: build failed: {error.strip()}")
        if not image_id:
            raise StepFailed(f"{name}: the daemon reported no image id")
        return image_id

    def _log(self, name: str, tail: list[str], line: str) -> None:
        line = ANSI.sub("", line).rstrip()
        if not line:
            return
        tail.append(line)
        del tail[:-LOG_TAIL]
        self.progress.line(name, line)

    def _packer(self, spec: ImageSpec, recipe: Recipe, parent_ref: str, result: BuildResult,
                tail: list[str]) -> str:
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
            return result.digest
        raise StepFailed(f"{name}: packer produced no artifact")

    def _scan(self, spec: ImageSpec, result: BuildResult) -> None:
        _, decision = scan.gate(self.project, result.image_id, remote=False, spec=spec,
                                rescan=self.options.rescan)
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
        published = push_image(self.project, self.docker, spec, result.image_id, fingerprint=result.fingerprint,
                               today=self.today, on_line=lambda ln: self.progress.line(str(spec.key), ln))
        result.repository, result.build_tag, result.digest = published.repository, published.build_tag, \
            published.digest
        result.tags = [published.build_tag, *published.aliases]
        result.status = Status.PUSHED
        record_publish(self.project, spec, published, fingerprint=result.fingerprint, scan=result.scan,
                       parent=result.parent_reference)

    # -- the DAG -------------------------------------------------------------------------------------------
    def run(self, specs: list[ImageSpec]) -> list[BuildResult]:
        """Build ``specs`` in dependency order, independent images in parallel up to ``jobs``."""
        wanted = {s.key: s for s in specs}
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
