"""References — the one vocabulary for naming images. A string is parsed here, once, at the edge.

Two levels, one module:

* :class:`Ref` — an OCI/Docker image reference ``[REGISTRY/]REPOSITORY[:TAG][@sha256:…]``: registry host
  (``127.0.0.1:5001``, ``docker.io``), repository path inside that registry (``bakery/python``), tag and
  digest. ``str(Ref.parse(s))`` round-trips; a reference without a registry is Docker Hub's.
* :class:`FleetRef` — what a user names on bakery's command line: ``NAME``, ``NAME:VERSION[-VARIANT]``,
  ``NAME:BUILD_TAG``, ``NAME@sha256:…`` (a full ``HOST/NS/NAME…`` reference is accepted and reduced to its
  name). Whether the tag is a version or a build tag is the build-tag scheme's business (bakery.tags).

The grammar (tag, digest, family name) and the loopback rule live here and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from bakery.errors import InputError

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # an image family of the fleet
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                     r"|\[[0-9A-Fa-f:]+\])(?::\d+)?$")
DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def is_digest(text: str) -> bool:
    return bool(DIGEST_RE.match(text))


def is_valid_tag(tag: str) -> bool:
    return bool(TAG_RE.match(tag))


def is_valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name))


def looks_like_host(component: str) -> bool:
    """Docker's rule: the first path component is a registry when it has a '.' or ':' or is localhost."""
    return "." in component or ":" in component or component == "localhost" or component.startswith("[")


def hostname(host: str) -> str:
    """``127.0.0.1:5001`` → ``127.0.0.1``; ``[::1]:5000`` → ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """Whether a registry host is on this machine (plain HTTP by default, never through a proxy)."""
    h = hostname(host.lower())
    return h in ("localhost", "::1") or h.startswith("127.")


def normalise_host(host: str) -> str:
    """Lower-case, without a scheme or path; Docker Hub's aliases become ``docker.io``."""
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


@dataclass(frozen=True)
class Ref:
    """``REGISTRY/REPOSITORY[:TAG][@DIGEST]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, *, require_registry: bool = False) -> Ref:
        """Parse an image reference; :class:`InputError` (exit 2) names what is wrong.

        ``require_registry``: refuse ``library/debian`` (definitions name upstream images in full).
        """
        raw = text.strip()
        if not raw:
            raise InputError("empty image reference")
        digest = None
        if "@" in raw:
            raw, _, digest = raw.partition("@")
            if not is_digest(digest):
                raise InputError(f"{text}: not a sha256 digest: {digest!r}")
        first, sep, rest = raw.partition("/")
        if sep and looks_like_host(first):
            registry, path = first, rest
        elif require_registry:
            raise InputError(f"{text}: not a full image reference (REGISTRY/PATH[:TAG][@sha256:…])")
        else:
            registry, path = DOCKER_HUB, raw
        tag = None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, _, tag = path.rpartition(":")
            if not is_valid_tag(tag):
                raise InputError(f"{text}: {tag!r} is not a valid tag (letters, digits, '.', '_', '-'; at most 128)")
        if not HOST_RE.match(registry):
            raise InputError(f"{text}: {registry!r} is not a registry host[:port]")
        if not REPOSITORY_RE.match(path):
            raise InputError(f"{text}: {path!r} is not a repository path (lower-case letters, digits, '.', '_', "
                             f"'-', separated by '/')")
        return cls(registry=registry, repository=path, tag=tag, digest=digest)

    @classmethod
    def try_parse(cls, text: str, *, require_registry: bool = False) -> Ref | None:
        try:
            return cls.parse(text, require_registry=require_registry)
        except InputError:
            return None

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def name(self) -> str:
        """``REGISTRY/REPOSITORY`` — what `docker push` and ``FROM`` use before the tag."""
        return f"{self.registry}/{self.repository}"

    @property
    def family(self) -> str:
        """The last path component (``python`` for ``127.0.0.1:5001/team/python``)."""
        return self.repository.rsplit("/", 1)[-1]

    @property
    def reference(self) -> str:
        """What the registry API takes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def pinned(self) -> str:
        """``REGISTRY/REPOSITORY@DIGEST`` (requires a digest)."""
        if not self.digest:
            raise ValueError(f"{self} is not pinned by digest")
        return f"{self.name}@{self.digest}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.registry)

    def with_tag(self, tag: str | None) -> Ref:
        return replace(self, tag=tag)

    def with_digest(self, digest: str | None) -> Ref:
        return replace(self, digest=digest)

    def with_registry(self, registry: str) -> Ref:
        return replace(self, registry=registry)


@dataclass(frozen=True)
class FleetRef:
    """What the user named on the command line: ``NAME[:TAG][@DIGEST]`` (TAG a version or a build tag)."""

    name: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, *, require_tag_or_digest: bool = True) -> FleetRef:
        """``NAME:VERSION``, ``NAME:BUILD_TAG``, ``[REGISTRY/NS/]NAME[:TAG]@sha256:…`` (and ``NAME`` alone
        unless ``require_tag_or_digest``)."""
        raw = text.strip()
        digest = None
        if "@" in raw:
            raw, _, digest = raw.partition("@")
            if not is_digest(digest):
                raise InputError(f"{text}: not a sha256 digest: {digest!r}")
        last = raw.rsplit("/", 1)[-1]
        name, _, tag = last.partition(":")
        if not name or not is_valid_name(name):
            raise InputError(f"{text}: not an image reference (use NAME:VERSION, NAME:BUILD_TAG or NAME@sha256:…)")
        if require_tag_or_digest and not digest and not tag:
            raise InputError(f"{text}: name a version, a build tag or a digest (e.g. {name}:VERSION)")
        if tag and not is_valid_tag(tag):
            raise InputError(f"{text}: {tag!r} is not a version or tag (letters, digits, '.', '_', '-')")
        return cls(name=name, tag=tag or None, digest=digest)

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def image(self) -> str:
        """``NAME:TAG`` (or ``NAME``) — how the ledger names an image."""
        return f"{self.name}:{self.tag}" if self.tag else self.name


def mirrored(reference: str, mirrors: dict[str, str]) -> str:
    """Rewrite an upstream reference through the configured mirrors (``docker.io/x`` → ``127.0.0.1:5000/x``)."""
    host, sep, rest = reference.partition("/")
    mirror = mirrors.get(normalise_host(host))
    return f"{mirror.rstrip('/')}/{rest}" if mirror and sep else reference


def split_image(image: str) -> tuple[str, str]:
    """``NAME:VERSION[-VARIANT]`` (the ledger's image string) → (name, tag version)."""
    name, _, tag_version = image.partition(":")
    return name, tag_version
