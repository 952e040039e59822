"""Retention: `bakery gc --env ENV --keep N [--dry-run]`.

Per image version (NAME:VERSION[-VARIANT]) it keeps the N newest builds that arrived in ENV and removes
the older ones:

* AMIs (found by their ``bakery:env`` tag in every region of the environment): deregistered, then
  their snapshots deleted;
* container build tags (the ones the ledger recorded arriving in ENV): distribution deletes manifests
  by digest only, so a build tag goes by deleting its digest, and only when no tag that stays (another
  build tag, or an alias like ``12``/``staging``) points to the same digest; otherwise it is kept and
  the report says why. Tags the ledger never saw are not touched.

Never removed, whatever N: a build that any environment currently runs (the ledger's current record,
which also covers a later environment promoted from this one: promotion keeps the build's identity)
and, for AMIs, the origin of any build a later environment currently runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bakery import ami as amis
from bakery.errors import InputError
from bakery.ref import split_image
from bakery.ledger import current, open_ledger
from bakery.registries import registry_for

if TYPE_CHECKING:
    from bakery.config import Project
    from bakery.ledger import Event

log = logging.getLogger("bakery.gc")


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


def _arrivals(events: list[Event]) -> dict[str, list[str]]:
    """image -> identities (digest / AMI origin) in order of first arrival."""
    out: dict[str, list[str]] = {}
    for ev in events:
        if ev.kind not in ("publish", "promote", "rollback"):
            continue
        lst = out.setdefault(ev.image, [])
        if ev.digest not in lst:
            lst.append(ev.digest)
    return out


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
    order = _arrivals(env_events)
    report = GcReport(env=env, keep=keep, dry_run=dry_run)
    ami_images = {i: ids for i, ids in order.items() if any(amis.is_ami_digest(x) for x in ids)}
    tag_images = {i: [x for x in ids if not amis.is_ami_digest(x)] for i, ids in order.items()}
    tag_images = {i: ids for i, ids in tag_images.items() if ids}
    env_cfg = project.config.env(env)
    if ami_images or env_cfg.aws is not None:
        _gc_amis(project, env, keep, dry_run, order, guard, report, image)
    if tag_images:
        _gc_tags(project, env, keep, dry_run, env_events, tag_images, guard, report)
    return report


# ---------------------------------------------------------------------------------------------- AMIs

def _gc_amis(project: Project, env: str, keep: int, dry_run: bool, order: dict[str, list[str]],
             guard: dict[str, dict[str, str]], report: GcReport, only: str | None) -> None:
    _, regions = amis.aws_target(project, env)
    found: list[tuple[str, dict[str, Any]]] = []
    for region in regions:
        ec2 = amis.client(project, region)
        images = amis._call(f"list {env} AMIs in {region}", lambda ec2=ec2: ec2.describe_images(
            Owners=["self"], Filters=[{"Name": f"tag:{amis.TAG_ENV}", "Values": [env]}]).get("Images", []))
        found += [(region, i) for i in images]
    by_image: dict[str, list[tuple[str, dict[str, Any], dict[str, str]]]] = {}
    for region, img in found:
        tags = amis.tags_dict(img.get("Tags"))
        name, version = tags.get("bakery:name"), tags.get("bakery:version")
        if not name or not version:
            continue
        key = f"{name}:{version}"
        if only and key != only and name != only:
            continue
        by_image.setdefault(key, []).append((region, img, tags))
    for image, entries in sorted(by_image.items()):
        known = order.get(image, [])

        def rank(entry: tuple[str, dict[str, Any], dict[str, str]]) -> tuple[int, str, str]:
            ident = entry[2].get(amis.TAG_ORIGIN, "")
            pos = known.index(ident) if ident in known else -1
            return pos, entry[1].get("CreationDate", ""), entry[2].get("bakery:build-tag", "")

        origins: list[str] = []
        for entry in sorted(entries, key=rank):
            ident = entry[2].get(amis.TAG_ORIGIN) or amis.origin(entry[0], entry[1]["ImageId"])
            if ident not in origins:
                origins.append(ident)
        newest = set(origins[-keep:])
        guarded = guard.get(image, {})
        for region, img, tags in sorted(entries, key=rank):
            ident = tags.get(amis.TAG_ORIGIN) or amis.origin(region, img["ImageId"])
            snaps = [bd["Ebs"]["SnapshotId"] for bd in img.get("BlockDeviceMappings", [])
                     if bd.get("Ebs", {}).get("SnapshotId")]
            item = GcItem(kind="ami", image=image, ref=img["ImageId"], where=region,
                          build_tag=tags.get("bakery:build-tag", ""), action="keep", reason="", identity=ident,
                          snapshots=snaps)
            _decide(item, guarded.get(ident), ident in newest, keep)
            report.items.append(item)
            if item.action == "delete" and not dry_run:
                _deregister(project, region, img["ImageId"], snaps)


def _deregister(project: Project, region: str, ami_id: str, snapshots: list[str]) -> None:
    ec2 = amis.client(project, region)
    amis._call(f"deregister {ami_id} in {region}", lambda: ec2.deregister_image(ImageId=ami_id))
    for snap in snapshots:
        amis._call(f"delete snapshot {snap} in {region}", lambda snap=snap: ec2.delete_snapshot(SnapshotId=snap))
    log.info("deregistered %s in %s (snapshots: %s)", ami_id, region, ", ".join(snapshots) or "none")


# ---------------------------------------------------------------------------------------------- container tags


def _decide(item: GcItem, guarded_by: str | None, among_newest: bool, keep: int) -> None:
    """Keep what an environment uses (or was promoted from) and the ``keep`` newest; delete the rest."""
    if guarded_by:
        item.reason = guarded_by
    elif among_newest:
        item.reason = f"among the {keep} newest"
    else:
        item.action = "delete"
        item.reason = f"older than the {keep} newest"


def _gc_tags(project: Project, env: str, keep: int, dry_run: bool, env_events: list[Event],
             tag_images: dict[str, list[str]], guard: dict[str, dict[str, str]], report: GcReport) -> None:
    env_cfg = project.config.env(env)
    reg = registry_for(project, env)
    # image -> build tags in order of first arrival (a build tag names one build)
    build_tags: dict[str, list[tuple[str, str]]] = {}
    for ev in env_events:
        if ev.kind not in ("publish", "promote", "rollback") or amis.is_ami_digest(ev.digest) or not ev.build_tag:
            continue
        lst = build_tags.setdefault(ev.image, [])
        if all(t != ev.build_tag for t, _ in lst):
            lst.append((ev.build_tag, ev.digest))
    by_repo: dict[str, list[str]] = {}
    for image in tag_images:
        by_repo.setdefault(env_cfg.repository(split_image(image)[0]), []).append(image)
    for repo, images in sorted(by_repo.items()):
        existing = set(reg.list_tags(repo))
        if not existing:
            continue
        digests = {t: reg.head_manifest(repo, t) for t in sorted(existing)}
        doomed: dict[str, GcItem] = {}
        for image in sorted(images):
            tags = [(t, d) for t, d in build_tags.get(image, []) if t in existing]
            keep_tags = {t for t, _ in tags[-keep:]}
            guarded = guard.get(image, {})
            for tag, recorded in tags:
                digest = digests.get(tag) or recorded
                item = GcItem(kind="tag", image=image, ref=tag, where=repo, build_tag=tag, action="keep",
                              reason="", identity=digest or "")
                _decide(item, guarded.get(digest) if digest else None, tag in keep_tags, keep)
                if item.action == "delete":
                    doomed[tag] = item
                report.items.append(item)
        # A digest can go only when every tag pointing to it goes too.
        for _tag, item in sorted(doomed.items()):
            sharing = sorted(t for t, d in digests.items() if d == item.identity and t not in doomed)
            if sharing:
                item.action = "keep"
                item.reason = (f"its digest is also tagged {', '.join(sharing)} (the registry deletes by digest "
                               f"only)")
        done: set[str] = set()
        for tag, item in sorted(doomed.items()):
            if item.action != "delete" or dry_run or item.identity in done:
                continue
            reg.delete_manifest(repo, item.identity)
            done.add(item.identity)
            log.info("deleted %s@%s (%s)", repo, item.identity, tag)
