"""Registries: the one :class:`Registry` protocol and the one factory that makes clients for it.

Every registry client bakery uses is made here, from the host's settings, decided once:

* **TLS or plain HTTP** — a configured environment's ``tls_verify`` (``Environment.insecure``), else plain HTTP
  only on loopback (:func:`bakery.ref.is_loopback`);
* **proxies** — the standard ``HTTPS_PROXY``/``NO_PROXY`` variables (requests' ``trust_env``), never for loopback;
* **credentials** — environment variables named in ``bakery.yaml`` (``credentials: {username_env,
  password_env}``) first, then the Docker config (``auths``, ``credsStore``, ``credHelpers`` through
  ``docker.auth``), resolved only when the registry asks;
* **kind** — ``kind: ecr`` environments get :class:`bakery.ecr.EcrRegistry` (AWS API), the others
  :class:`bakery.registry.RegistryClient` (OCI distribution over HTTP).

Adding a registry kind: implement :class:`Registry` in its own module, add the kind to
``config.Environment.kind`` and one branch in :func:`registry_for_host`. Callers never branch on the kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bakery.ref import Ref, is_loopback, normalise_host
from bakery.registry import CopyStats, Manifest, RegistryClient, docker_config_credentials

if TYPE_CHECKING:
    from bakery.config import Credentials, Environment, Project

__all__ = ["HostSettings", "Registry", "client_for_host", "host_settings", "registry_for", "registry_for_host",
           "registry_for_ref"]


class Registry(Protocol):
    """What promotion, publish, status, plan and gc need of a registry (OCI distribution or ECR)."""

    host: str

    def head_manifest(self, repo: str, reference: str) -> str | None: ...

    def get_manifest(self, repo: str, reference: str) -> Manifest: ...

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str: ...

    def list_tags(self, repo: str) -> list[str]: ...

    def labels(self, repo: str, reference: str) -> dict[str, str]: ...

    def copy_image(self, src: Any, src_repo: str, digest: str, dst_repo: str) -> CopyStats: ...

    def ensure_repository(self, repo: str, aliases: list[str] | None = None) -> None: ...


@dataclass(frozen=True)
class HostSettings:
    """How bakery talks to one registry host."""

    host: str
    kind: str = "registry"  # registry | ecr
    insecure: bool = False  # plain HTTP
    use_proxy: bool = True
    credentials: Credentials | None = None  # from bakery.yaml (environment variables / docker config switch)
    env: str | None = None  # the configured environment this host belongs to

    def resolve_credentials(self) -> tuple[str, str] | None:
        """Environment variables named in bakery.yaml, else the Docker config (helpers included)."""
        if self.credentials is not None:
            found = self.credentials.resolve()
            if found is not None:
                return found
            if not self.credentials.docker_config:
                return None
        return docker_config_credentials(self.host)


def host_settings(project: Project | None, host: str) -> HostSettings:
    """The settings of ``host``: those of the configured environment on that host, else the defaults (plain
    HTTP and no proxy on loopback; TLS, proxies from the environment and docker-config credentials elsewhere)."""
    host = host.rstrip("/")
    if project is not None:
        wanted = normalise_host(host)
        for name in project.config.env_order:
            env: Environment = project.config.env(name)
            if normalise_host(env.host) == wanted:
                return HostSettings(host=env.host, kind=env.kind, insecure=env.insecure,
                                    use_proxy=not is_loopback(env.host), credentials=env.credentials, env=name)
    return HostSettings(host=host, insecure=is_loopback(host), use_proxy=not is_loopback(host))


def client_for_host(project: Project | None, host: str, *, insecure: bool | None = None,
                    credentials: tuple[str, str] | Callable[[], tuple[str, str] | None] | None = None,
                    **kwargs: Any) -> RegistryClient:
    """An OCI distribution client for ``host`` (``insecure``/``credentials`` override the settings)."""
    hs = host_settings(project, host)
    return RegistryClient(hs.host, insecure=hs.insecure if insecure is None else insecure,
                          credentials=credentials if credentials is not None else hs.resolve_credentials,
                          use_proxy=hs.use_proxy, **kwargs)


def registry_for_host(project: Project | None, host: str, **kwargs: Any) -> Registry:
    """The registry on ``host``: ECR when a ``kind: ecr`` environment lives there, else OCI over HTTP."""
    hs = host_settings(project, host)
    if hs.kind == "ecr" and project is not None and hs.env is not None:
        from bakery.ecr import EcrRegistry  # only where an environment is ECR

        return EcrRegistry.for_env(project, hs.env)
    return client_for_host(project, host, **kwargs)


def registry_for(project: Project, env_name: str, **kwargs: Any) -> Registry:
    """The registry of a configured environment."""
    return registry_for_host(project, project.config.env(env_name).host, **kwargs)


def registry_for_ref(project: Project | None, ref: Ref, **kwargs: Any) -> Registry:
    return registry_for_host(project, ref.registry, **kwargs)
