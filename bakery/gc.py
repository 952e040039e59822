"""Retention: `bakery gc --env ENV --keep N [--dry-run]`.

Per image version (NAME:VERSION[-VARIANT]) it keeps the N newest builds that arrived in ENV and removes
the older ones:

* AMIs (found by their ``bakery:env`` tag in every region of the environment): deregistered, then
  their snapshots deleted;
* container build tags (the ones the ledger recorded arriving in ENV): distribution deletes manifests
  by digest only, so a build tag goes by deleting its digest, and only when no tag that stays (another
  build tag, or an alias like ``12``/``staging``) points to the same digest; otherwise it is kept and
  the report says why. Tags the ledger never saw are not touched.

gc itself knows no artifact kind: every store of the environment (:func:`bakery.store.stores_of`) lists the
builds it keeps (``stored``), may keep one that cannot go alone (``kept_anyway``) and deletes one build
(``delete``, called from :func:`_delete` only). The rules above live in those stores.

Never removed, whatever N: a build that any environment currently runs (the ledger's current record,
which also covers a later environment promoted from this one: promotion keeps the build's identity)
and, for AMIs, the origin of any build a later environment currently runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bakery.errors import InputError
from bakery.ledger import current, open_ledger
from bakery.model import StoredBuild
from bakery.store import stores_of

if TYPE_CHECKING:
    from bakery.config import Project
    from bakery.ledger import Event
    from bakery.store import ArtifactStore



@dataclass
class GcItem:
    kind: str  # ami | tag
    image: str  # NAME:VERSION
    ref: str  # ami id | tag
    where: str  # region | repository
    build_tag: str
    action: str  # delete | keep
    reason: str
    identity: str = ""  # ami origin or manifest digest
    snapshots: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "image": self.image, "ref": self.ref, "where": self.where,
                "build_tag": self.build_tag, "action": self.action, "reason": self.reason,
                "identity": self.identity, "snapshots": list(self.snapshots)}


@dataclass
class GcReport:
    env: str
    keep: int
    dry_run: bool
    items: list[GcItem] = field(default_factory=list)

    @property
    def deleted(self) -> list[GcItem]:
        return [i for i in self.items if i.action == "delete"]

    @property
    def kept(self) -> list[GcItem]:
        return [i for i in self.items if i.action == "keep"]

    def to_json(self) -> dict[str, Any]:
        return {"env": self.env, "keep": self.keep, "dry_run": self.dry_run,
                "deleted": [i.to_json() for i in self.deleted], "kept": [i.to_json() for i in self.kept]}


def protected(project: Project, events: list[Event]) -> dict[str, dict[str, str]]:
    """image -> {identity: why} for every build some environment currently runs."""
    out: dict[str, dict[str, str]] = {}
    images = sorted({e.image for e in events})
    for image in images:
        for env in project.config.env_order:
            cur = current(events, image, env)
            if cur is not None:
                out.setdefault(image, {}).setdefault(cur.digest, f"current in {env}")
    return out


def gc(project: Project, env: str, keep: int, dry_run: bool = False, *, image: str | None = None) -> GcReport:
    """Remove builds beyond the ``keep`` newest per version in ``env`` (see the module docstring)."""
    project.config.env(env)
    if keep < 1:
        raise InputError(f"--keep: must be at least 1 (got {keep})")
    all_events = open_ledger(project).events()
    if image:
        all_events = [e for e in all_events if e.image == image or e.name == image]
    guard = protected(project, all_events)
    env_events = [e for e in all_events if e.to_env == env]
    report = GcReport(env=env, keep=keep, dry_run=dry_run)
    for store in stores_of(project, env):
        _collect(store.stored(env_events, image), keep, guard, report, store, dry_run)
    return report


def _collect(builds: list[StoredBuild], keep: int, guard: dict[str, dict[str, str]], report: GcReport,
             store: ArtifactStore, dry_run: bool) -> None:
    """Decide on one store's builds (the ``keep`` newest units per image stay, and what an environment uses),
    then let the store keep what it cannot delete alone, then delete (unless ``dry_run``) through the store."""
    by_image: dict[str, list[StoredBuild]] = {}
    for b in builds:
        by_image.setdefault(b.image, []).append(b)
    decided: list[tuple[GcItem, StoredBuild]] = []
    for image, entries in by_image.items():
        units: list[str] = []
        for b in entries:
            if b.build not in units:
                units.append(b.build)
        newest = set(units[-keep:])
        guarded = guard.get(image, {})
        for b in entries:
            item = GcItem(kind=b.kind, image=image, ref=b.ref, where=b.where, build_tag=b.build_tag, action="keep",
                          reason="", identity=b.identity, snapshots=list(b.snapshots))
            _decide(item, guarded.get(b.identity) if b.identity else None, b.build in newest, keep)
            decided.append((item, b))
    doomed = [b for item, b in decided if item.action == "delete"]
    for item, b in decided:
        if item.action == "delete":
            why = store.kept_anyway(b, doomed)
            if why:
                item.action, item.reason = "keep", why
    report.items += [item for item, _ in decided]
    if not dry_run:
        for item, b in decided:
            if item.action == "delete":
                _delete(store, b)


def _delete(store: ArtifactStore, build: StoredBuild) -> None:
    """The one place retention removes a build."""
    store.delete(build)


def _decide(item: GcItem, guarded_by: str | None, among_newest: bool, keep: int) -> None:
    """Keep what an environment uses (or was promoted from) and the ``keep`` newest; delete the rest."""
    if guarded_by:
        item.reason = guarded_by
    elif among_newest:
        item.reason = f"among the {keep} newest"
    else:
        item.action = "delete"
        item.reason = f"older than the {keep} newest"
