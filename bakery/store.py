"""Artifact stores: where an environment keeps its builds. One protocol, one implementation per artifact kind.

* :class:`RegistryStore` — container images in an OCI registry (or ECR): a build is a manifest digest under an
  immutable build tag; the environment's alias tags point at what it runs.
* :class:`bakery.ami.AmiStore` — machine images: a build is identified by its origin ``ami:REGION:AMI-ID``;
  the environment's copies (one AMI per region) are recorded in the ledger, which says what it runs.

Promotion (:func:`bakery.promote.promote`), rollback, the gates (:mod:`bakery.gates`), status
(:mod:`bakery.status`), retention (:mod:`bakery.gc`: ``stored``/``kept_anyway``/``delete``) and the rebuild plan
(:mod:`bakery.plan`: ``held``/``upstream_ref``/``judge``) are written once against :class:`ArtifactStore`;
:func:`store_for` picks the kind, :func:`stores_of` gives one store of each kind. Nothing outside this layer
branches on the kind of an artifact. Adding an artifact kind: implement the protocol (see ``AmiStore``), teach
:func:`artifact_kind` and :func:`spec_kind` to recognise it (docs/architecture.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from bakery import ami as ami_mod
from bakery import integrity
from bakery import ledger as ledger_mod
from bakery.configview import Project
from bakery.errors import BakeryError, ImmutableTagError, InputError, RegistryError, RegistryUnavailable, StepFailed
from bakery.model import LABEL_BUILD_TAG, LABEL_NAME, LABEL_VARIANT, LABEL_VERSION, Held, ImageKey, ImageSpec, Published, \
    StoredBuild
from bakery.ref import FleetRef, is_digest, split_image
from bakery.registries import Registry, registry_for
from bakery.registry import Manifest
from bakery.tags import Scheme, env_alias_tags

if TYPE_CHECKING:
    from bakery import evidence
    from bakery.plan import Judging, PlanItem

Progress = Callable[[str, str, str], None]  # (where, what, state)

log = logging.getLogger("bakery.store")


class ArtifactStore(Protocol):
    """One environment's store of builds of one artifact kind."""

    kind: str  # registry | ami
    env: str
    noun: str  # what one build is called in messages ("promotion", "AMI")
    scannable: bool  # whether the scan gate applies (a container filesystem trivy can read)
    uses_aliases: bool  # whether the environment points at builds with alias tags (else: the ledger record)
    write_ahead: bool  # build tags reserved in the ledger and promotions recorded write-ahead (bakery.integrity)

    def where(self, name: str) -> str:
        """Where an image family lives in this store, for messages and reports."""
        ...

    def resolve(self, ref: str) -> Published:
        """REF (NAME:VERSION → the newest build; NAME:BUILD_TAG; NAME@DIGEST) as a build in this store."""
        ...

    def holds(self, pub: Published, aliases: list[str] | None = None) -> bool:
        """Whether this store has the build (and every alias in ``aliases`` points at it)."""
        ...

    def conflict(self, pub: Published) -> tuple[str, dict[str, Any]] | None:
        """Why the build cannot come here (an immutable build tag on another build) and the details for the
        record, else None."""
        ...

    def aliases(self, key: ImageKey, today: dt.date, *, identifying_only: bool = False) -> list[str]:
        """The moving pointers this environment keeps for an image."""
        ...

    def copy(self, pub: Published, source: ArtifactStore, aliases: list[str], *,
             on_progress: Progress | None = None, confirm: Callable[[], None] | None = None,
             promotion: Any = None) -> dict[str, Any]:
        """Bring the build here from ``source`` (never a rebuild), aliases last; what was done, for the ledger."""
        ...

    def point_aliases(self, pub: Published, key: ImageKey, *, current: str | None,
                      today: dt.date) -> tuple[list[str], list[str], dict[str, Any]]:
        """Point the environment back at ``pub`` (a rollback): (moved, left alone, details for the ledger)."""
        ...

    def current(self, key: ImageKey, events: list[ledger_mod.Event], today: dt.date) -> str | None:
        """The build this environment runs for ``key`` now (its digest or origin), None when none: what a
        rollback moves away from."""
        ...

    def live(self, key: ImageKey, events: list[ledger_mod.Event], today: dt.date) -> str | None:
        """What the store itself says runs (status reads this; the ledger's view is shown beside it)."""
        ...

    def build_tag_of(self, key: ImageKey, digest: str, events: list[ledger_mod.Event]) -> str:
        """The build tag of a build held here."""
        ...

    def missing_message(self, pub: Published) -> str:
        """Why a recorded build cannot be gone back to: it is gone from the store."""
        ...

    def history(self, key: ImageKey, events: list[ledger_mod.Event]) -> list[Published]:
        """Every arrival of a build of ``key`` here, oldest first."""
        ...

    def build(self, key: ImageKey, digest: str, events: list[ledger_mod.Event], to: str | None = None) -> Published:
        """The build ``digest`` (or ``to``: a digest or build tag the user named) of ``key`` in this store."""
        ...

    def labels(self, pub: Published) -> dict[str, str]:
        """The build's labels (empty when the kind has none)."""
        ...

    def evidence_gate(self, pub: Published, to_env: str, *, now: dt.datetime,
                      fresh_scan: tuple[Any, Any] | None = None) -> tuple[bool, str, dict[str, Any]]:
        """The ``attestations`` gate on this build's signed evidence here (bakery.evidence)."""
        ...

    def verify_evidence(self, pub: Published, keys: list[Any], required: list[str], *, promoted_to: str | None,
                        max_scan_age: dt.timedelta | None, now: dt.datetime) -> evidence.Report:
        """`bakery verify`: this build's signed evidence checked offline with ``keys``."""
        ...

    def list_evidence(self, pub: Published) -> tuple[list[dict[str, Any]], str]:
        """`bakery attestations`: what this build carries (unverified) and where the list came from."""
        ...

    def describe(self, pub: Published | None, key: ImageKey, events: list[ledger_mod.Event]) -> dict[str, Any]:
        """Kind-specific fields for JSON reports (``kind`` at least)."""
        ...

    # planning (bakery plan)

    requests: int  # registry requests ``held`` made (plan reports the total)

    def held(self, key: ImageKey) -> Held | None:
        """What this environment currently holds for an image (its newest build), None when nothing."""
        ...

    def upstream_ref(self, spec: ImageSpec) -> str | None:
        """The upstream reference plan resolves (in bulk, in parallel) before judging this image, if any."""
        ...

    def judge(self, item: PlanItem, recipe: Any, judging: Judging) -> None:
        """Whether the image must be rebuilt and why: fill ``item`` (reasons, notes, error, what it is built on)."""
        ...

    # retention (bakery gc)

    def stored(self, events: list[ledger_mod.Event], only: str | None = None) -> list[StoredBuild]:
        """The builds of this kind the environment keeps (``events``: the ledger's events into it), per image
        oldest first; ``only``: one image (NAME or NAME:VERSION). Empty when the environment keeps none."""
        ...

    def kept_anyway(self, build: StoredBuild, doomed: list[StoredBuild]) -> str | None:
        """Why ``build`` cannot go although retention would delete it (with ``doomed``), else None."""
        ...

    def delete(self, build: StoredBuild) -> None:
        """Remove one build from the environment (and what goes with it)."""
        ...


# ------------------------------------------------------------------------------------------------------------
# Choosing the store


def artifact_kind(project: Project, ref: str, *, specs: dict[ImageKey, Any] | None = None,
                  events: list[ledger_mod.Event] | None = None) -> str:
    """``ami`` when REF (NAME:VERSION[-VARIANT]) names a machine image (an amazon-ebs definition, or AMI records in
    the ledger), else ``registry``. ``specs``/``events`` when the caller has them loaded already."""
    return "ami" if ami_mod.ami_key(project, ref, specs=specs, events=events) is not None else "registry"


def stores_of(project: Project, env: str) -> list[ArtifactStore]:
    """A store of every artifact kind for ``env`` (what retention walks)."""
    return [ami_mod.AmiStore(project, env), RegistryStore(project, env)]


def spec_kind(spec: ImageSpec) -> str:
    """The artifact kind a definition builds."""
    return "ami" if ami_mod.is_ami_spec(spec) else "registry"


def store_for(project: Project, env: str, ref: str | None = None, *, kind: str | None = None,
              spec: ImageSpec | None = None, registry: Registry | None = None,
              client_options: dict[str, Any] | None = None, tag_lists: TagLists | None = None,
              events: list[ledger_mod.Event] | None = None) -> ArtifactStore:
    """The store of ``env`` for the artifact REF (or the definition ``spec``) names (its kind decided here, once).
    ``client_options``: for the registry client the store makes (timeout, retries, backoff); ``tag_lists``: the
    tag lists one plan shares between its stores (:class:`TagLists`); ``events``: the ledger's events of REF's
    image (tags.ref_image) when the caller read them already."""
    kind = kind or (spec_kind(spec) if spec is not None else artifact_kind(project, ref, events=events) if ref
                    else "registry")
    if kind == "ami":
        return ami_mod.AmiStore(project, env)
    return RegistryStore(project, env, registry=registry, client_options=client_options, tag_lists=tag_lists)


class TagLists:
    """The tag list of each repository, read once for one plan and shared by its threads' stores: the versions and
    variants of a family live in one repository, so a plan makes one tags request per repository, not per image
    (and judges them on the same list). A failed read is not shared: each image then asks on its own, as before."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lists: dict[tuple[str, str], Future[list[str]]] = {}

    def get(self, registry: Registry, host: str, repo: str) -> tuple[list[str], bool]:
        """(the tags of ``repo``, whether this call asked the registry)."""
        with self._lock:
            fut = self._lists.get((host, repo))
            mine = fut is None
            if fut is None:
                fut = self._lists[(host, repo)] = Future()
        if mine:
            try:
                fut.set_result(registry.list_tags(repo))
            except BaseException as exc:
                fut.set_exception(exc)
                raise
        elif fut.exception() is not None:
            return registry.list_tags(repo), True
        return list(fut.result()), mine


def unknown_image_message(ref: str) -> str:
    return f"{ref}: unknown image: not in the fleet and no event in the ledger (`bakery list` shows the fleet)"


def known_to_fleet(project: Project, ref: str) -> bool:
    """Whether REF names an image of the fleet (False too when there are no definitions here)."""
    from bakery.definitions import load_fleet  # start-up: promote/status load definitions only when asked

    try:
        load_fleet(project).select([ref.split("@", 1)[0]])
    except BakeryError:
        return False
    return True


# ------------------------------------------------------------------------------------------------------------
# Container images in a registry


class RegistryStore:
    """An environment's registry: builds are digests under immutable build tags, aliases move."""

    kind = "registry"
    noun = "promotion"
    scannable = True
    uses_aliases = True
    write_ahead = True  # build tags reserved in the ledger, promotions recorded write-ahead (bakery.integrity)

    def __init__(self, project: Project, env: str, *, registry: Registry | None = None,
                 client_options: dict[str, Any] | None = None, tag_lists: TagLists | None = None):
        self.project = project
        self.env = env
        self.environment = project.config.env(env)
        self.registry = registry or registry_for(project, env, **(client_options or {}))
        self.scheme = project.config.tags.build
        self.requests = 0
        self.tag_lists = tag_lists
        # What this store's registry answered a moment ago, so the next question about the same thing is not asked
        # twice in one promotion: (repository, digest) the last resolve found here (``holds`` of that build), and
        # (repository, build tag, what it named) from ``conflict`` (the ``holds`` that follows it; used once).
        self._resolved: tuple[str, str] | None = None
        self._build_tag_seen: tuple[str, str, str | None] | None = None

    def repo(self, name: str) -> str:
        return self.environment.repository(name)

    def where(self, name: str) -> str:
        return self.environment.image(name)

    # -- reading -----------------------------------------------------------------------------------------------

    def resolve(self, ref: str) -> Published:
        """NAME:VERSION → newest build tag of that version (by the scheme); NAME:BUILD_TAG → that tag;
        IMAGE@DIGEST → that digest and its build tag (label, else a tag search)."""
        project, env, reg, scheme = self.project, self.env, self.registry, self.scheme
        environment = self.environment
        if ":" not in ref and "@" not in ref and "/" not in ref:
            ref = self._name_for_bare_build_tag(ref)
        r = FleetRef.parse(ref)
        repo = environment.repository(r.name)
        where = f"{environment.registry}/{r.name}"

        if r.digest:
            if reg.head_manifest(repo, r.digest) is None:
                raise StepFailed(f"{where}@{r.digest}: not found in {env}")
            labels = self._safe_labels(repo, r.digest)
            build_tag = labels.get(LABEL_BUILD_TAG) or ""
            if not build_tag or reg.head_manifest(repo, build_tag) != r.digest:
                build_tag = self._find_build_tag(repo, r.digest, r.name) or build_tag
            if not build_tag:
                raise StepFailed(f"{where}@{r.digest}: no build tag in {env} points at this digest")
            version = r.tag if r.tag and not Scheme(scheme).is_build_tag(r.tag, name=r.name) else None
            key = key_from_labels(labels, r.name, version or Scheme(scheme).version_of(build_tag, name=r.name))
            wanted = (Scheme(scheme).version_of(r.tag, name=r.name) or r.tag) if r.tag else None
            if wanted and key.tag_version != wanted:
                raise InputError(f"{ref}: that digest is {key}, not {r.name}:{wanted}")
            self._resolved = (repo, r.digest)
            return Published(key=key, env=env, repository=environment.image(r.name), build_tag=build_tag,
                             digest=r.digest)

        assert r.tag is not None
        tag_version = Scheme(scheme).version_of(r.tag, name=r.name)
        if tag_version is not None:
            digest = reg.head_manifest(repo, r.tag)
            if digest is not None:
                labels = self._safe_labels(repo, digest)
                self._resolved = (repo, digest)
                return Published(key=key_from_labels(labels, r.name, tag_version), env=env,
                                 repository=environment.image(r.name), build_tag=r.tag, digest=digest)
        tags = reg.list_tags(repo)
        build_tag = Scheme(scheme).newest(tags, name=r.name, tag_version=r.tag)
        if build_tag is None:
            if tag_version is not None:
                raise StepFailed(f"{where}:{r.tag}: build tag not found in {env}")
            if not known_to_fleet(project, f"{r.name}:{r.tag}") and \
                    not ledger_mod.open_ledger(project).events(image=f"{r.name}:{r.tag}"):
                raise InputError(unknown_image_message(f"{r.name}:{r.tag}"))
            raise StepFailed(f"{where}: no build of version {r.tag!r} in {env}"
                             + (" (the repository is empty or missing)" if not tags else ""))
        digest = reg.head_manifest(repo, build_tag)
        if digest is None:  # deleted between list and head
            raise StepFailed(f"{where}:{build_tag}: vanished from {env}")
        labels = self._safe_labels(repo, digest)
        self._resolved = (repo, digest)
        return Published(key=key_from_labels(labels, r.name, r.tag), env=env, repository=environment.image(r.name),
                         build_tag=build_tag, digest=digest)

    def _name_for_bare_build_tag(self, tag: str) -> str:
        """A bare BUILD_TAG: the fleet's images whose version it names, the one that has it in this env."""
        version = Scheme(self.scheme).version_of(tag)
        if not version:
            raise InputError(f"{tag}: name a version, a build tag or a digest (e.g. NAME:VERSION)")
        from bakery.definitions import load_fleet  # start-up: see known_to_fleet

        try:
            fleet = load_fleet(self.project)
        except BakeryError as exc:  # no definitions here
            raise InputError(f"{tag}: a bare build tag needs the definitions to find its image; use NAME:{tag}"
                             f" ({exc})") from None
        names = sorted({k.name for k in fleet.specs if k.tag_version == version})
        found = [n for n in names if self.registry.head_manifest(self.repo(n), tag) is not None]
        if len(found) == 1:
            return f"{found[0]}:{tag}"
        if not found:
            raise StepFailed(f"{tag}: no image of the fleet has this build tag in {self.env}")
        raise InputError(f"{tag}: ambiguous build tag ({', '.join(found)} have it in {self.env}); use NAME:{tag}")

    def _safe_labels(self, repo: str, digest: str) -> dict[str, str]:
        try:
            return self.registry.labels(repo, digest)
        except RegistryError:
            return {}

    def _find_build_tag(self, repo: str, digest: str, name: str) -> str | None:
        for tag in reversed(Scheme(self.scheme).sorted(self.registry.list_tags(repo), name=name)):
            if self.registry.head_manifest(repo, tag) == digest:
                return tag
        return None

    def labels(self, pub: Published) -> dict[str, str]:
        return self._safe_labels(self.repo(pub.key.name), pub.digest)

    def holds(self, pub: Published, aliases: list[str] | None = None) -> bool:
        repo = self.repo(pub.key.name)
        if aliases is None:
            if self._resolved == (repo, pub.digest):  # this store's registry just named it (resolve)
                return True
            return self.registry.head_manifest(repo, pub.digest) == pub.digest
        seen, self._build_tag_seen = self._build_tag_seen, None
        build_tag = seen[2] if seen is not None and seen[:2] == (repo, pub.build_tag) else \
            self.registry.head_manifest(repo, pub.build_tag)  # (conflict just asked)
        return build_tag == pub.digest and all(self.registry.head_manifest(repo, t) == pub.digest for t in aliases)

    def conflict(self, pub: Published) -> tuple[str, dict[str, Any]] | None:
        repo = self.repo(pub.key.name)
        existing = self.registry.head_manifest(repo, pub.build_tag)
        self._build_tag_seen = (repo, pub.build_tag, existing)
        if existing is not None and existing != pub.digest:
            return (f"{self.where(pub.key.name)}:{pub.build_tag} already points at {existing[:19]}…, refusing to "
                    f"move an immutable tag", {"existing": existing})
        return None

    def aliases(self, key: ImageKey, today: dt.date, *, identifying_only: bool = False) -> list[str]:
        return env_alias_tags(self.project, self.env, key, today, identifying_only=identifying_only)

    def _own(self, key: ImageKey, today: dt.date) -> tuple[list[str], str | None]:
        """(the identifying aliases, what the first of them that exists points at)."""
        repo = self.repo(key.name)
        own = self.aliases(key, today, identifying_only=True)
        for pointer in own:
            live = self.registry.head_manifest(repo, pointer)
            if live:
                return own, live
        return own, None

    def current(self, key: ImageKey, events: list[ledger_mod.Event], today: dt.date) -> str | None:
        """What the identifying aliases point at; with only shared aliases, what the ledger says."""
        own, live = self._own(key, today)
        if own:
            return live
        live_event = ledger_mod.current(events, str(key), self.env)
        return live_event.digest if live_event else None

    def live(self, key: ImageKey, events: list[ledger_mod.Event], today: dt.date) -> str | None:
        """What the registry says runs: the identifying aliases, else the newest build tag of the version."""
        own, live = self._own(key, today)
        if own:
            return live
        repo = self.repo(key.name)
        bt = Scheme(self.scheme).newest(self.registry.list_tags(repo), name=key.name, tag_version=key.tag_version)
        return self.registry.head_manifest(repo, bt) if bt else None

    def history(self, key: ImageKey, events: list[ledger_mod.Event]) -> list[Published]:
        out = []
        for e in events:
            if e.image == str(key) and e.to_env == self.env and e.kind in ("publish", "promote", "rollback"):
                out.append(Published(key=key, env=self.env, repository=self.where(key.name), build_tag=e.build_tag,
                                     digest=e.digest, created=e.time))
        return out

    def build(self, key: ImageKey, digest: str, events: list[ledger_mod.Event], to: str | None = None) -> Published:
        if to:
            digest, build_tag = self._rollback_target(key, to, events)
        else:
            image = str(key)
            build_tag = next(e.build_tag for e in reversed(events) if e.digest == digest and e.image == image)
        return Published(key=key, env=self.env, repository=self.where(key.name), build_tag=build_tag, digest=digest)

    def missing_message(self, pub: Published) -> str:
        return (f"{pub.repository}@{pub.digest}: recorded in the ledger but missing from the registry (the "
                f"registry is the truth)")

    def _rollback_target(self, key: ImageKey, to: str, events: list[ledger_mod.Event]) -> tuple[str, str]:
        """``--to``: a digest or build tag that is a build of this very version, present in this env."""
        reg, env, scheme = self.registry, self.env, self.scheme
        repo, where, image = self.repo(key.name), self.where(key.name), str(key)
        if to.startswith("sha256:") or "@" in to:
            digest = to.split("@", 1)[-1]
            if not is_digest(digest):
                raise InputError(f"--to {to}: not a sha256 digest (sha256: and 64 hex digits)")
            if reg.head_manifest(repo, digest) is None:
                raise StepFailed(f"{where}@{digest}: not in {env}; can only roll back to something promoted there")
            recorded = {e.image for e in events if e.digest == digest}
            if recorded and image not in recorded:
                raise InputError(f"--to {to}: that digest is {', '.join(sorted(recorded))}, not {image}")
            build_tag = next((e.build_tag for e in reversed(events) if e.digest == digest and e.image == image), "")
            if not build_tag:
                labels = self._safe_labels(repo, digest)
                if labels.get(LABEL_VERSION):
                    other = key_from_labels(labels, key.name, None)
                    if other.tag_version != key.tag_version:
                        raise InputError(f"--to {to}: that digest is {other}, not {image}")
                build_tag = self._find_build_tag(repo, digest, key.name) or ""
                tag_version = Scheme(scheme).version_of(build_tag, name=key.name) if build_tag else None
                if tag_version is not None and tag_version != key.tag_version:
                    raise InputError(f"--to {to}: that digest is {key.name}:{tag_version}, not {image}")
            return digest, build_tag
        build_tag = to.split(":", 1)[-1]
        tag_version = Scheme(scheme).version_of(build_tag, name=key.name)
        if tag_version is None:
            raise InputError(f"--to {to}: not a build tag ({scheme}) nor a digest")
        if tag_version != key.tag_version:
            raise InputError(f"--to {to}: a build of {key.name}:{tag_version}, not of {image}")
        found = reg.head_manifest(repo, build_tag)
        if found is None:
            raise StepFailed(f"{where}:{build_tag}: not in {env}")
        return found, build_tag

    def describe(self, pub: Published | None, key: ImageKey, events: list[ledger_mod.Event]) -> dict[str, Any]:
        return {"kind": self.kind}

    def build_tag_of(self, key: ImageKey, digest: str, events: list[ledger_mod.Event]) -> str:
        """The build tag of a live digest: the ledger's, else the image's label."""
        found = next((x.build_tag for x in reversed(events) if x.digest == digest and x.build_tag), "")
        return found or self._safe_labels(self.repo(key.name), digest).get(LABEL_BUILD_TAG, "")

    # -- writing -----------------------------------------------------------------------------------------------

    def copy(self, pub: Published, source: ArtifactStore, aliases: list[str], *,
             on_progress: Progress | None = None, confirm: Callable[[], None] | None = None,
             promotion: Any = None) -> dict[str, Any]:
        """Manifests and blobs BY DIGEST (no tag written; blobs the target has are skipped, same-host blobs
        mounted), then the build tag (read back by ``confirm``), then the aliases: an interruption leaves no new
        tag, a rerun completes it; the error says which tags were written."""
        assert isinstance(source, RegistryStore)
        name = pub.key.name
        src_repo, dst_repo = source.repo(name), self.repo(name)
        self.registry.ensure_repository(dst_repo, aliases=aliases)
        written: list[str] = []
        try:
            # The source's attestations are looked up (a read; the evidence module loads meanwhile) while the
            # image is copied; they are copied after it, before any tag.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bakery-evidence") as pool:
                found = pool.submit(_attestations, source.registry, src_repo, pub.digest)
                stats = self.registry.copy_image(source.registry, src_repo, pub.digest, dst_repo)
                attestations = found.result()
            manifest = source.registry.get_manifest(src_repo, pub.digest)  # byte-identical by its digest
            from bakery import evidence

            carried = evidence.carry(self.project, source.registry, src_repo, self.registry, dst_repo, pub.digest,
                                     promotion, found=attestations)  # byte for byte, + the promotion's, before tags
            write_tags(self.registry, dst_repo, manifest, pub.build_tag, aliases, target=self.where(name),
                       written=written, confirm=confirm)
        except RegistryUnavailable as exc:
            state = integrity.target_state(written, pub.build_tag, aliases)
            raise RegistryUnavailable(f"promotion of {pub.key} {pub.build_tag} to {self.env} interrupted ({state}); "
                                      f"run the same command again to complete it: {exc}") from None
        return {"copy": {**stats.as_dict(), **carried}}

    def evidence_gate(self, pub: Published, to_env: str, *, now: dt.datetime,
                      fresh_scan: tuple[Any, Any] | None = None) -> tuple[bool, str, dict[str, Any]]:
        from bakery import evidence

        return evidence.gate(self.project, self.registry, self.repo(pub.key.name), pub, to_env, now=now,
                             fresh_scan=fresh_scan)

    def verify_evidence(self, pub: Published, keys: list[Any], required: list[str], *, promoted_to: str | None,
                        max_scan_age: dt.timedelta | None, now: dt.datetime) -> evidence.Report:
        from bakery import evidence

        return evidence.verify(self.registry, self.repo(pub.key.name), pub.digest, keys, required,
                               max_scan_age=max_scan_age, now=now, promoted_to=promoted_to, image=pub.pinned)

    def list_evidence(self, pub: Published) -> tuple[list[dict[str, Any]], str]:
        from bakery import evidence

        return evidence.list_rows(self.registry, self.repo(pub.key.name), pub.digest)

    def pinned(self, ref: str) -> Published:
        """IMAGE@DIGEST as it is here, build tag or not (a digest copied by hand must still be checkable)."""
        r = FleetRef.parse(ref)
        if not r.digest:
            return self.resolve(ref)
        if self.registry.head_manifest(self.repo(r.name), r.digest) is None:
            raise StepFailed(f"{self.where(r.name)}@{r.digest}: not found in {self.env}")
        return Published(key=ImageKey(r.name, r.tag or "?"), env=self.env, repository=self.where(r.name),
                         build_tag="", digest=r.digest)

    def point_aliases(self, pub: Published, key: ImageKey, *, current: str | None,
                      today: dt.date) -> tuple[list[str], list[str], dict[str, Any]]:
        """Move the aliases back to ``pub``. An alias shared by every version (``staging``) moves only when it
        pointed at this version's current build."""
        repo = self.repo(key.name)
        aliases = self.aliases(key, today)
        own = self.aliases(key, today, identifying_only=True)
        moving: list[str] = []
        left: list[str] = []
        for alias in aliases:
            at = self.registry.head_manifest(repo, alias)
            if at == pub.digest:
                continue
            if alias not in own and at is not None and at != current:
                left.append(alias)  # another version's: promoted there after this one
            else:
                moving.append(alias)
        if moving:
            manifest = self.registry.get_manifest(repo, pub.digest)
            for alias in moving:
                self.registry.put_manifest(repo, alias, manifest.body, manifest.media_type)
        return moving, left, {}


    # -- planning (bakery plan) --------------------------------------------------------------------------------

    def held(self, key: ImageKey) -> Held | None:
        """The newest build tag of ``key`` (by the scheme), its digest and its config's labels: the tag list, the
        manifest (and the platform's, for an index) and the config blob, unless its labels are cached; the tag list
        once per repository when the plan shares ``tag_lists``."""
        repo = self.repo(key.name)
        if self.tag_lists is None:
            listed, asked = self.registry.list_tags(repo), True
        else:
            listed, asked = self.tag_lists.get(self.registry, self.environment.host, repo)
        self.requests += asked
        tags = Scheme(self.scheme).sorted(listed, name=key.name, tag_version=key.tag_version)
        if not tags:
            return None
        tag = tags[-1]
        host = self.environment.host
        known = _cached_build_tag(self.project, host, repo, tag)
        if known is not None:  # a build tag is immutable: what it named once, it names for good
            digest, image_id = known
        else:
            top = self.registry.get_manifest(repo, tag)
            manifest = self.registry.resolve_image_manifest(repo, top.digest) if top.is_index else top
            self.requests += 1 if manifest is top else 3
            config = manifest.json().get("config") or {}
            digest, image_id = top.digest, str(config.get("digest") or "")
            if image_id:
                _cache_build_tag(self.project, host, repo, tag, digest, image_id)
        labels: dict[str, str] = {}
        if image_id:
            cached = _cached_labels(self.project, image_id)
            if cached is None:
                blob = json.loads(self.registry.get_blob(repo, image_id))
                self.requests += 1
                cached = dict((blob.get("config") or {}).get("Labels") or {})
                _cache_labels(self.project, image_id, cached)
            labels = cached
        return Held(repository=f"{host}/{repo}", build_tag=tag, digest=digest, image_id=image_id, labels=labels)

    def upstream_ref(self, spec: ImageSpec) -> str | None:
        return spec.parent.reference if spec.parent.kind == "upstream" else None

    def judge(self, item: PlanItem, recipe: Any, judging: Judging) -> None:
        """A container image carries its fingerprint and its parent's digest as labels: plan's label decision."""
        judging.from_labels(item, recipe)

    # -- retention (bakery gc) ---------------------------------------------------------------------------------

    def stored(self, events: list[ledger_mod.Event], only: str | None = None) -> list[StoredBuild]:
        """The build tags the ledger recorded arriving here that the registry still has, per image in order of
        first arrival. Tags the ledger never saw are not listed (never touched)."""
        moves = [e for e in events if e.kind in ("publish", "promote", "rollback") and is_digest(e.digest)]
        build_tags: dict[str, list[tuple[str, str]]] = {}  # image -> (build tag, digest) by first arrival
        for ev in moves:
            if not ev.build_tag:
                continue
            lst = build_tags.setdefault(ev.image, [])
            if all(t != ev.build_tag for t, _ in lst):
                lst.append((ev.build_tag, ev.digest))
        by_repo: dict[str, list[str]] = {}
        for image in sorted({e.image for e in moves}):
            by_repo.setdefault(self.repo(split_image(image)[0]), []).append(image)
        out: list[StoredBuild] = []
        for repo, images in sorted(by_repo.items()):
            existing = set(self.registry.list_tags(repo))
            if not existing:
                continue
            digests = {t: self.registry.head_manifest(repo, t) for t in sorted(existing)}
            for image in images:
                for tag, recorded in build_tags.get(image, []):
                    if tag not in existing:
                        continue
                    digest = digests.get(tag) or recorded
                    out.append(StoredBuild(kind="tag", image=image, ref=tag, where=repo, build_tag=tag,
                                           identity=digest or "", build=tag,
                                           also_named=sorted(t for t, d in digests.items() if d == digest
                                                             and t != tag)))
        return out

    def kept_anyway(self, build: StoredBuild, doomed: list[StoredBuild]) -> str | None:
        """The registry deletes by digest only: a build tag goes only when every tag on its digest goes too."""
        going = {d.ref for d in doomed if d.where == build.where}
        sharing = [t for t in build.also_named if t not in going]
        if sharing:
            return f"its digest is also tagged {', '.join(sharing)} (the registry deletes by digest only)"
        return None

    def delete(self, build: StoredBuild) -> None:
        """Delete the build's manifest by digest (every tag on it goes; a digest already gone is no error), then its
        attestations and their ``sha256-HEX`` index (bakery.evidence): never those of a build that stays."""
        if self.registry.delete_manifest(build.where, build.identity):
            log.info("deleted %s@%s (%s)", build.where, build.identity, build.ref)
        from bakery import evidence

        gone = evidence.delete(self.registry, build.where, build.identity)
        if gone:
            log.info("deleted the %d attestation manifests of %s@%s", len(gone), build.where, build.identity)


def _attestations(src: Registry, src_repo: str, digest: str) -> Any:
    """The artifacts that refer to ``src_repo@digest`` in the source (bakery.evidence.list_artifacts), None where
    none are carried (ECR)."""
    from bakery import evidence

    return evidence.lookup(src, src_repo, digest)


def _build_tag_path(project: Project, host: str, repo: str, tag: str) -> Path:
    return project.state_dir / "build-tags" / host.replace(":", "_") / repo / f"{tag}.json"


def _cached_build_tag(project: Project, host: str, repo: str, tag: str) -> tuple[str, str] | None:
    """(manifest digest, config digest) of a build tag read before. bakery never moves a build tag (it refuses
    to), so a no-op plan needs one request per image (the tag list) instead of two."""
    try:
        data = json.loads(_build_tag_path(project, host, repo, tag).read_text())
        digest, image_id = data["digest"], data["image_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (digest, image_id) if isinstance(digest, str) and isinstance(image_id, str) else None


def _cache_build_tag(project: Project, host: str, repo: str, tag: str, digest: str, image_id: str) -> None:
    path = _build_tag_path(project, host, repo, tag)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"digest": digest, "image_id": image_id}))
        tmp.replace(path)
    except OSError:
        pass  # a cache only


def _labels_path(project: Project, image_id: str) -> Path:
    return project.state_dir / "labels" / f"{image_id.replace(':', '-')}.json"


def _cached_labels(project: Project, image_id: str) -> dict[str, str] | None:
    """Labels of a config blob read before: the blob is content-addressed, so they never change."""
    try:
        data = json.loads(_labels_path(project, image_id).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _cache_labels(project: Project, image_id: str, labels: dict[str, str]) -> None:
    path = _labels_path(project, image_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(labels, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a cache only


def key_from_labels(labels: dict[str, str], name: str, tag_version: str | None) -> ImageKey:
    if labels.get(LABEL_NAME) and labels.get(LABEL_VERSION):
        return ImageKey(labels[LABEL_NAME], labels[LABEL_VERSION], labels.get(LABEL_VARIANT) or None)
    if tag_version:
        return ImageKey(name, tag_version)
    raise InputError(f"{name}: cannot tell the version of this image (no {LABEL_VERSION} label); "
                     f"name it as NAME:VERSION or NAME:BUILD_TAG")


def key_of(image: str) -> ImageKey:
    """The ledger's ``NAME:VERSION[-VARIANT]`` as a key (the variant stays in the version)."""
    name, tag_version = split_image(image)
    return ImageKey(name, tag_version)


def write_tags(dst: Registry, repo: str, manifest: Manifest, build_tag: str, aliases: list[str], *,
               target: str, written: list[str] | None = None, confirm: Callable[[], None] | None = None) -> None:
    """The immutable build tag first (re-checked right before writing, read back by ``confirm`` after), then
    the moving aliases, all at once (each independent of the others). What each alias names is read alongside the
    build tag's check, and every read is answered before anything is written: Distribution's filesystem driver
    rewrites a manifest's revision link on each PUT of it, and a read racing that write is answered 500 (seen: a
    repeat promotion's alias HEAD during its build tag's PUT, one in ~30). No alias is written before the
    read-back. ``written`` collects the tags that hold the digest so far: when an alias fails, the others are
    still written and the first error is raised."""
    written = [] if written is None else written
    with ThreadPoolExecutor(max_workers=max(1, min(len(aliases), 4)), thread_name_prefix="bakery-tags") as pool:
        named = [pool.submit(dst.head_manifest, repo, alias) for alias in aliases]
        current = dst.head_manifest(repo, build_tag)
        wait(named)  # (an alias's failed read is that alias's failure, below)
        if current is not None and current != manifest.digest:
            raise ImmutableTagError(f"{target}:{build_tag} already points at {current}, refusing to move an "
                                    f"immutable tag to {manifest.digest}")
        if current is None:
            dst.put_manifest(repo, build_tag, manifest.body, manifest.media_type)
        if confirm is not None:
            confirm()
        written.append(build_tag)

        def point(alias: str, now: Future[str | None]) -> None:
            if now.result() != manifest.digest:
                dst.put_manifest(repo, alias, manifest.body, manifest.media_type)

        moves = [pool.submit(point, alias, now) for alias, now in zip(aliases, named)]
    failed = [f.exception() for f in moves if f.exception() is not None]
    written.extend(alias for alias, f in zip(aliases, moves) if f.exception() is None)
    if failed:
        raise failed[0]
