"""The typed model that flows between pipeline stages.

definition (ImageSpec) → recipe (Recipe) → built image (BuildResult) → scan (ScanResult, in scan.py)
→ published artifact (Published) → promotion record (ledger Event, in ledger.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

# the shared words (severity order, timestamps, label keys) live in bakery.terms, re-exported here
from bakery.terms import (  # noqa: F401
    LABEL_BUILD_TAG,
    LABEL_CREATED,
    LABEL_FINGERPRINT,
    LABEL_NAME,
    LABEL_VARIANT,
    LABEL_VERSION,
    OCI,
    SEVERITIES,
    iso_z,
)


@dataclass(frozen=True)
class ImageKey:
    """One buildable image: a family name, a version and an optional variant."""

    name: str
    version: str
    variant: str | None = None

    def __lt__(self, other: ImageKey) -> bool:
        return (self.name, self.version, self.variant or "") < (other.name, other.version, other.variant or "")

    @property
    def tag_version(self) -> str:
        """The version as it appears in tags: ``3.11`` or ``3.11-slim``."""
        return f"{self.version}-{self.variant}" if self.variant else self.version

    def __str__(self) -> str:
        return f"{self.name}:{self.tag_version}"

    @property
    def dirname(self) -> str:
        return self.tag_version


@dataclass(frozen=True)
class Parent:
    """Where an image starts from: an upstream image, or another bakery image."""

    kind: Literal["upstream", "bakery"]
    reference: str  # upstream: docker.io/library/debian:bookworm-slim[@sha256:…]; bakery: "base:12"
    key: ImageKey | None = None  # for kind == "bakery"
    pinned_digest: str | None = None  # upstream only: @sha256:… written in the definition

    def __str__(self) -> str:
        return self.reference


@dataclass(frozen=True)
class IgnoreSpec:
    """A definition's own ignore entry as validated (bakery.config.IgnoreEntry's fields), kept with its spec so a
    scan applies it without validating it again (pydantic)."""

    id: str
    reason: str
    until: dt.date | None = None
    image: str | None = None
    package: str | None = None


@dataclass(frozen=True)
class ImageSpec:
    """A fully resolved definition for one (name, version, variant)."""

    key: ImageKey
    source_file: str  # path relative to the project root, for messages
    template: str  # template directory name under templates/
    builder: Literal["docker", "packer"]
    parent: Parent
    variables: dict[str, Any]
    tags: tuple[str, ...]  # alias tags for this version (in addition to the configured ones)
    context_files: tuple[str, ...] = ()  # files copied into the build context, relative to the template dir
    description: str = ""
    policy: dict[str, Any] | None = None  # per-definition scan policy override
    ignore: tuple[IgnoreSpec, ...] | None = None  # policy.ignore as validated (None: validate policy["ignore"])
    packer: dict[str, Any] | None = None  # Packer settings (issue: packer builder)

    @property
    def ref(self) -> str:
        return str(self.key)


@dataclass(frozen=True)
class Recipe:
    """The rendered recipe of one image: files written under .bakery/rendered/NAME/VERSION[-VARIANT]/."""

    spec: ImageSpec
    directory: Path
    files: dict[str, bytes]  # relative path -> content (Dockerfile, *.pkr.hcl, context files)
    recipe_digest: str  # sha256 over the rendered files (names and bytes), independent of the parent digest

    @property
    def dockerfile(self) -> str:
        return self.files["Dockerfile"].decode()


class Status(str, Enum):
    BUILT = "built"
    CACHED = "cached"
    FAILED = "failed"
    SKIPPED = "skipped"  # a parent failed
    REFUSED = "refused"  # a gate or the immutable-tag check said no
    PUSHED = "pushed"
    UP_TO_DATE = "up-to-date"


@dataclass
class BuildResult:
    key: ImageKey
    status: Status
    fingerprint: str = ""
    image_id: str = ""
    digest: str = ""  # registry manifest digest once pushed
    repository: str = ""  # host[:port]/namespace/name in the dev registry
    build_tag: str = ""
    tags: list[str] = field(default_factory=list)
    parent_reference: str = ""  # exactly what FROM used (pinned by digest)
    parent_digest: str = ""
    seconds: float = 0.0
    error: str = ""
    log_tail: list[str] = field(default_factory=list)
    scan: dict[str, Any] | None = None  # summary of the scan gate when scanned
    labels: dict[str, str] = field(default_factory=dict)
    reused: bool = False  # the build gave exactly the newest published image: its build tag, nothing published
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: prepare, build, scan, push, …

    @property
    def ok(self) -> bool:
        return self.status in (Status.BUILT, Status.CACHED, Status.PUSHED, Status.UP_TO_DATE)

    @property
    def pinned(self) -> str:
        """repository@digest, the immutable reference of the pushed image."""
        return f"{self.repository}@{self.digest}" if self.repository and self.digest else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": str(self.key), "name": self.key.name, "version": self.key.version,
            "variant": self.key.variant, "status": self.status.value, "image_id": self.image_id,
            "digest": self.digest, "repository": self.repository, "build_tag": self.build_tag,
            "tags": list(self.tags), "fingerprint": self.fingerprint, "parent": self.parent_reference,
            "seconds": round(self.seconds, 3), "error": self.error or None, "scan": self.scan,
            "reused": self.reused, "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


@dataclass(frozen=True)
class Published:
    """An image in a registry: its repository, immutable build tag and manifest digest."""

    key: ImageKey
    env: str
    repository: str  # host[:port]/path — a bakery.ref.Ref's ``name`` ("" for an AMI build: see ``digest``)
    build_tag: str
    digest: str  # the manifest digest; for an AMI build its origin ``ami:REGION:AMI-ID``
    aliases: tuple[str, ...] = ()
    created: dt.datetime | None = None
    reused: bool = False  # a build that gave exactly this published image again: nothing new was published

    @property
    def pinned(self) -> str:
        return f"{self.repository}@{self.digest}"


@dataclass
class StoredBuild:
    """One build an environment keeps, as retention (``bakery gc``) sees it: listed by
    :meth:`bakery.store.ArtifactStore.stored`, removed by :meth:`~bakery.store.ArtifactStore.delete`."""

    kind: str  # what the report calls it: "ami" (one regional AMI) | "tag" (one build tag)
    image: str  # NAME:VERSION[-VARIANT]
    ref: str  # what goes: an AMI id, a build tag
    where: str  # a region, a repository
    build_tag: str
    identity: str  # the build's identity (AMI origin, manifest digest); "" when unknown
    build: str  # the unit ``--keep`` counts (an AMI origin: every regional copy of it; a build tag)
    snapshots: list[str] = field(default_factory=list)  # removed with it (an AMI's EBS snapshots)
    also_named: list[str] = field(default_factory=list)  # other names in ``where`` for the same identity


@dataclass
class Held:
    """What an environment currently holds for an image (its newest build), as ``bakery plan`` compares it:
    :meth:`bakery.store.ArtifactStore.held`. A registry fills it from the manifest and config blob, the AMI store
    from the ledger record (``labels``: its ``bakery:*`` fields)."""

    repository: str  # host[:port]/namespace/name (registry); where the AMIs are (AMI)
    build_tag: str
    digest: str  # the build's identity
    image_id: str  # config digest ("" when the kind has none)
    labels: dict[str, str]

    @property
    def pinned(self) -> str:
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class Reason:
    """Why ``bakery plan`` rebuilds an image."""

    kind: str  # one of bakery.plan.REASONS
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}
