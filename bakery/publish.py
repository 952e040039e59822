"""Publishing to a registry under immutable build tags, and finding what was published.

The build tag (default ``{version}-{yyyymmdd}.{n}``) is immutable: bakery never points an existing build
tag at a different digest. Alias tags (``{version}``, ``latest``, …) move with each publish.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from bakery import integrity
from bakery.configview import Project
from bakery.errors import DaemonUnavailable, ImmutableTagError, RegistryUnavailable, StepFailed
from bakery.ledger import Event, Ledger, open_ledger
from bakery.model import ImageKey, ImageSpec, Published
from bakery.registries import Registry, registry_for
from bakery.tags import Scheme, image_aliases


def env_repository(project: Project, env: str, name: str) -> tuple[str, str]:
    """(registry host, repository path) of an image family in an environment."""
    e = project.config.env(env)
    return e.host, e.repository(name)


def image_name(project: Project, env: str, name: str) -> str:
    """host[:port]/namespace/name — what `docker push` and `FROM` use."""
    return project.config.env(env).image(name)


def scheme_regex(scheme: str, key: ImageKey) -> re.Pattern[str]:
    """A regex matching the build tags of ``key`` under ``scheme`` (bakery.tags owns the scheme)."""
    return Scheme(scheme).pattern(name=key.name, tag_version=key.tag_version)


def build_tags(project: Project, key: ImageKey, tags: list[str]) -> list[str]:
    """The build tags of ``key`` among ``tags``, oldest first (bakery.tags orders them: date, then n)."""
    return Scheme(project.config.tags.build).sorted(tags, name=key.name, tag_version=key.tag_version)


def latest(project: Project, key: ImageKey, env: str | None = None,
           client: Registry | None = None) -> Published | None:
    """The newest published build of ``key`` in ``env`` (the first environment by default), or None."""
    env = env or project.config.first_env
    host, repo = env_repository(project, env, key.name)
    client = client or registry_for(project, env)
    tags = build_tags(project, key, client.list_tags(repo))
    if not tags:
        return None
    tag = tags[-1]
    digest = client.head_manifest(repo, tag)
    if digest is None:
        return None
    return Published(key=key, env=env, repository=f"{host}/{repo}", build_tag=tag, digest=digest)


def aliases(project: Project, spec: ImageSpec, env: str, today: dt.date, fingerprint: str = "") -> list[str]:
    """Alias tags written beside the build tag (bakery.tags.image_aliases: `list` shows the same)."""
    return image_aliases(project, spec, env, today, fingerprint)


def push_image(project: Project, docker_client: Any, spec: ImageSpec, image_id: str, *, fingerprint: str,
               today: dt.date, build_tag: str | None = None, on_line: Callable[[str], None] | None = None,
               ledger: Ledger | None = None) -> Published:
    """Push a local image to the first environment under a new immutable build tag plus alias tags.

    An existing build tag holding a different digest is refused (ImmutableTagError, registry unchanged);
    the same digest again is a no-op.
    """
    env = project.config.first_env
    host, repo = env_repository(project, env, spec.key.name)
    client = registry_for(project, env)
    led = ledger or open_ledger(project)
    existing = client.list_tags(repo)
    target = f"{host}/{repo}"
    if build_tag is None:
        same = identical_newest(project, client, led, spec, repo, target, existing, image_id)
        if same is not None:  # this exact image is the newest build already: point the aliases, publish nothing
            return _point_aliases(project, client, spec, repo, same, today, fingerprint)
    # Reserve before writing: the build tag is claimed in the ledger for this image id before anything is pushed.
    if build_tag is None:
        build_tag, holder, _won = integrity.reserve_next_build_tag(
            project, led, image=str(spec.key), name=spec.key.name, version=spec.key.version,
            variant=spec.key.variant, env=env, repository=target, config=image_id, existing=existing, today=today,
            fingerprint=fingerprint)
    else:
        holder, _won = integrity.reserve(led, image=str(spec.key), env=env, repository=target, build_tag=build_tag,
                                         config=image_id)
    alias_tags = aliases(project, spec, env, today, fingerprint)
    refuse_build_tag_aliases(project, spec.key.name, target, [t for t in alias_tags if t != build_tag])
    held = client.head_manifest(repo, build_tag) if build_tag in existing or not _won else None
    same = held is not None and integrity.config_of(client, repo, held) == image_id
    if not integrity.holds(holder, config=image_id) or (held is not None and not same):
        raise ImmutableTagError(f"{target}:{build_tag} already holds {held or 'nothing yet'} (reserved in the ledger "
                                f"for {integrity.identity(holder)}); refusing to overwrite an immutable tag with a "
                                f"different image (registry unchanged)")
    if same:
        return Published(spec.key, env, target, build_tag, held, ())
    digest = ""
    try:
        image = docker_client.images.get(image_id)
        image.tag(target, build_tag)
        for item in docker_client.api.push(target, build_tag, stream=True, decode=True):
            if "error" in item:
                detail = item.get("errorDetail", {}).get("message") or item["error"]
                raise StepFailed(f"push {target}:{build_tag} failed: {detail.strip()}")
            aux = item.get("aux")
            if aux and aux.get("Digest"):
                digest = aux["Digest"]
            if on_line and item.get("status"):
                on_line(f"{item.get('status')} {item.get('id', '')}".strip())
    except StepFailed:
        raise
    except Exception as exc:
        from docker.errors import DockerException

        if isinstance(exc, DockerException):  # the daemon answered: a refusal (e.g. invalid reference format)
            raise StepFailed(f"push {target}:{build_tag}: {exc}") from exc
        raise DaemonUnavailable(f"push {target}:{build_tag}: {exc}") from exc  # the transport failed mid-push
    finally:
        try:
            docker_client.api.remove_image(f"{target}:{build_tag}", noprune=True)
        except Exception:
            pass
    if not digest:
        raise StepFailed(f"push {target}:{build_tag}: the daemon reported no digest")
    integrity.confirm_tag(led, client, repo, target=target, image=str(spec.key), env=env, build_tag=build_tag,
                          digest=digest)  # read back before any alias moves
    _write_aliases(client, spec, repo, target, build_tag, digest, alias_tags, [build_tag])
    return Published(spec.key, env, target, build_tag, digest, tuple(alias_tags))


def _write_aliases(client: Registry, spec: ImageSpec, repo: str, target: str, build_tag: str, digest: str,
                   alias_tags: list[str], written: list[str]) -> None:
    try:
        manifest = client.get_manifest(repo, digest)
        for tag in alias_tags:
            client.put_manifest(repo, tag, manifest.body, manifest.media_type)
            written.append(tag)
    except RegistryUnavailable as exc:
        state = integrity.target_state(written, build_tag, alias_tags)
        raise RegistryUnavailable(f"push of {spec.key} to {target} interrupted ({state}; not recorded): `bakery build` again "
                                  f"publishes a complete new build tag: {exc}") from None


def identical_newest(project: Project, client: Registry, led: Ledger, spec: ImageSpec, repo: str, target: str,
                     existing: list[str], image_id: str) -> Published | None:
    """The newest build of ``spec`` in the first environment when it is exactly image ``image_id`` (same config
    digest: same layers, same labels) and the ledger agrees — its reservation holds that image and its publish
    was recorded under that digest. Else None: the image is new and gets a new build tag.

    A rebuild with unchanged inputs and a warm cache gives the same image (it is built with the newest build's
    ``created`` label, see ``build.Builder._docker_build_reproducibly``): publishing it again under another build
    tag would only add a tag, a ledger record and attestations for what is already there, attested by the build
    that made it."""
    tags = build_tags(project, spec.key, existing)
    if not tags:
        return None
    newest = tags[-1]
    holder = integrity.reservation(led, str(spec.key), target, newest)
    if holder is None or not integrity.holds(holder, config=image_id):
        return None  # the ledger reserved that tag for another image (or never): not ours to reuse
    env = project.config.first_env
    recorded = integrity.recorded_digest(led.events(image=str(spec.key), env=env), str(spec.key), env, newest)
    if recorded is None:
        return None  # reserved, maybe pushed, never recorded (an interrupted publish): publish a new build tag
    # Read back what the tag names now. The ledger recorded that manifest (read back when it was published) for
    # image ``image_id``; a manifest digest fixes its config, so the same digest is the same image.
    if client.head_manifest(repo, newest) != recorded:
        return None
    return Published(spec.key, env, target, newest, recorded, (), reused=True)


def _point_aliases(project: Project, client: Registry, spec: ImageSpec, repo: str, same: Published, today: dt.date,
                   fingerprint: str) -> Published:
    """The aliases a publish of ``same`` writes, written again where they name another digest (they may have
    moved since): nothing else."""
    alias_tags = aliases(project, spec, same.env, today, fingerprint)
    refuse_build_tag_aliases(project, spec.key.name, same.repository, [t for t in alias_tags if t != same.build_tag])
    moved = [t for t in alias_tags if client.head_manifest(repo, t) != same.digest]
    if moved:
        _write_aliases(client, spec, repo, same.repository, same.build_tag, same.digest, moved, [same.build_tag])
    return Published(spec.key, same.env, same.repository, same.build_tag, same.digest, tuple(alias_tags), reused=True)


def refuse_build_tag_aliases(project: Project, name: str, target: str, alias_tags: list[str]) -> None:
    """An alias (a definition's `tags:` or an environment's `aliases:`) that has the form of a build tag would
    move an immutable tag: refused before anything is written."""
    scheme = project.config.tags.build
    clash = [t for t in alias_tags if Scheme(scheme).is_build_tag(t, name=name)]
    if clash:
        raise ImmutableTagError(f"{target}:{clash[0]}: an alias with the form of a build tag ({scheme}) would move "
                                f"an immutable tag; refused (registry unchanged) — rename the alias")


def local_repo_digests(docker_client: Any, image_id: str, repository: str) -> set[str]:
    try:
        attrs = docker_client.api.inspect_image(image_id)
    except Exception:
        return set()
    out = set()
    for rd in attrs.get("RepoDigests") or []:
        repo, _, digest = rd.partition("@")
        if repo == repository:
            out.add(digest)
    return out


def record_publish(project: Project, spec: ImageSpec, published: Published, *, fingerprint: str,
                   scan: dict[str, Any] | None, parent: str, ledger: Ledger | None = None) -> None:
    (ledger or open_ledger(project)).record(Event(
        kind="publish", image=str(spec.key), digest=published.digest, build_tag=published.build_tag,
        from_env=None, to_env=published.env, scan=scan,
        details={"repository": published.repository, "aliases": list(published.aliases),
                 "fingerprint": fingerprint, "parent": parent}))
