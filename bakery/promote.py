"""Promotion and rollback: the same build moves dev → staging → prod behind gates, and back. One of each, over
every artifact kind (:mod:`bakery.store`: container images in registries, AMIs).

Order of work in :func:`promote` (and why):

1. resolve REF in the source environment's store to a build (image, build tag, digest or origin);
2. refuse if the target holds the build tag on another build (immutable tags); a target already holding the
   build under its build tag and every alias is a no-op;
3. evaluate every gate of the target environment (:mod:`bakery.gates`: previous environment, scan, soak,
   approver) and record the decision in the ledger; any failure stops here with nothing copied;
4. copy the build (registries: manifests and blobs BY DIGEST, no tag written until everything is there; AMIs:
   copy_image to every region, never a rebuild): an interruption leaves no new tag and a rerun completes it;
5. only then write the build tag and the environment's alias tags, optionally an annotated git tag, and record
   the promotion.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from bakery import integrity
from bakery import ledger as ledger_mod
from bakery.configview import Project
from bakery.errors import EnvironmentFailure, InputError, StepFailed
from bakery.gates import GateResult, ScanFn, arrivals_and_rollbacks, evaluate, gate_approval, gate_previous, \
    gate_scan, gate_soak, human, scan_summary
from bakery.model import ImageKey, Published
from bakery.publish import refuse_build_tag_aliases
from bakery.ref import FleetRef, split_image
from bakery.registries import Registry, registry_for
from bakery.store import ArtifactStore, Progress, known_to_fleet, store_for, unknown_image_message, write_tags
from bakery.tags import Scheme, env_alias_tags, ref_image

# Moved in issue 9 and kept importable from here: Registry/registry_for → bakery.registries, the gates →
# bakery.gates, status → bakery.status, resolve/write_tags/known_to_fleet → bakery.store, Ref → bakery.ref.
__all__ = ["GateResult", "Promotion", "Registry", "Rollback", "ScanFn", "alias_tags", "gate_approval",
           "gate_previous", "gate_scan", "gate_soak", "identifying_aliases", "known_to_fleet", "newest_build_tag",
           "parse_ref", "promote", "registry_for", "resolve", "rollback", "rollback_candidates", "scan_summary",
           "unknown_image_message", "write_tags"]

Ref = FleetRef
_human = human


def newest_build_tag(scheme: str, tags: list[str], *, name: str, tag_version: str) -> str | None:
    return Scheme(scheme).newest(tags, name=name, tag_version=tag_version)


def parse_ref(text: str) -> FleetRef:
    """``NAME:VERSION``, ``NAME:BUILD_TAG``, ``[REGISTRY/NS/]NAME[:TAG]@sha256:…`` (bakery.ref.FleetRef)."""
    return FleetRef.parse(text)


def resolve(project: Project, ref: str, env: str, *, registry: Registry | None = None) -> Published:
    """REF as a build in ``env``'s store (see :meth:`bakery.store.ArtifactStore.resolve`)."""
    return store_for(project, env, ref, registry=registry).resolve(ref)


def alias_tags(project: Project, env_name: str, key: ImageKey, today: dt.date) -> list[str]:
    """The environment's alias tags for one image (templates rendered, duplicates dropped)."""
    return env_alias_tags(project, env_name, key, today)


def identifying_aliases(project: Project, env_name: str, key: ImageKey, today: dt.date) -> list[str]:
    """The aliases that name this version only (a template with ``{version}``)."""
    return env_alias_tags(project, env_name, key, today, identifying_only=True)


# ------------------------------------------------------------------------------------------------------------
# Promotion


@dataclass
class Promotion:
    """The outcome of one promotion (or its dry run)."""

    image: str
    digest: str
    build_tag: str
    from_env: str
    to_env: str
    source: str  # host/ns/name@digest
    target: str  # host/ns/name
    tags: list[str]  # build tag + aliases (written, or that would be written)
    action: str = ""  # promoted | up-to-date | refused | would-promote | would-refuse
    gates: list[GateResult] = field(default_factory=list)
    scan: dict[str, Any] | None = None
    copy: dict[str, Any] | None = None
    git_tag: str | None = None
    approved_by: str | None = None
    seconds: float = 0.0
    event_id: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.action in ("promoted", "up-to-date", "would-promote")

    extra: dict[str, Any] = field(default_factory=dict)  # the store's own fields (kind; AMI: origin, amis, env)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image, "digest": self.digest, "build_tag": self.build_tag, "from": self.from_env,
            "to": self.to_env, "source": self.source, "target": self.target, "tags": self.tags,
            "action": self.action, "ok": self.ok, "already": self.action == "up-to-date",
            "gates": [g.to_json() for g in self.gates], "scan": self.scan,
            "copy": self.copy, "git_tag": self.git_tag, "approved_by": self.approved_by,
            "seconds": round(self.seconds, 3), "event": self.event_id, "message": self.message or None,
            **self.extra,
        }


def promote(project: Project, ref: str, to_env: str, *, from_env: str | None = None, dry_run: bool = False,
            approved_by: str | None = None, git_tag: bool | None = None, now: dt.datetime | None = None,
            ledger: ledger_mod.Ledger | None = None, scan_fn: ScanFn | None = None,
            on_progress: Progress | None = None) -> Promotion:
    """Promote REF into ``to_env``. Returns the outcome; ``.ok`` is False when a gate or the immutable-tag
    check refused (nothing was copied then). Store failures raise (exit 3 unavailable, 1 refused)."""
    started = time.monotonic()
    cfg = project.config
    target_env = cfg.env(to_env)
    if from_env is None:
        from_env = cfg.previous_env(to_env)
        if from_env is None:
            raise InputError(f"{to_env} is the first environment: nothing to promote from (builds are "
                             f"published there by `bakery build --push`)")
    cfg.env(from_env)
    if from_env == to_env:
        raise InputError(f"--from and --to are both {to_env}")
    order = cfg.env_order
    if order.index(from_env) > order.index(to_env):
        raise InputError(f"--from {from_env} --to {to_env}: promotion goes forward ({' → '.join(order)}); to go "
                         f"back in {to_env}, use `bakery rollback`")
    clock_given = now is not None
    now = now or ledger_mod.now()
    led = ledger or ledger_mod.open_ledger(project)

    def stamp() -> dt.datetime:  # the time of an event: the injected clock, else when it happens
        return now if clock_given else ledger_mod.now()

    # The one read of the ledger's events for this image: the store's kind, recovery, the source check and the
    # gates share it (what recovery records is merged in, as a second read would give it); reservations and
    # claims stay atomic writes. A REF whose image only the registry can tell (a digest) is read once resolved.
    named = ref_image(cfg.tags.build, ref)
    early = led.events(image=named) if named else None
    src = store_for(project, from_env, ref, events=early)
    dst = store_for(project, to_env, kind=src.kind)
    pub = src.resolve(ref)
    name = pub.key.name
    writes_ahead = src.write_ahead  # build tags reserved in the ledger, intents before copies (bakery.integrity)
    events = early if early is not None and named == str(pub.key) else led.events(image=str(pub.key))
    recovered = integrity.recover(project, led, image=str(pub.key), events=events) if writes_ahead else []
    events = ledger_mod.merged(events, recovered)
    aliases = [a for a in dst.aliases(pub.key, now.date()) if a != pub.build_tag]
    tags = [pub.build_tag, *aliases]
    target = dst.where(name)
    refuse_build_tag_aliases(project, name, target, aliases)
    result = Promotion(image=str(pub.key), digest=pub.digest, build_tag=pub.build_tag, from_env=from_env,
                       to_env=to_env, source=pub.pinned if pub.repository else pub.digest, target=target,
                       tags=tags, approved_by=approved_by)

    def finish(action: str) -> Promotion:
        result.action = action
        result.extra = dst.describe(pub, pub.key, [])
        result.seconds = time.monotonic() - started
        return result

    # Immutable build tag (the source agrees with the ledger and its labels; the target), and the no-op.
    disagreement = integrity.verify_source(project, led, pub, src.registry, events=events) if writes_ahead else None
    conflict = (disagreement, {}) if disagreement else dst.conflict(pub)
    if conflict is not None:
        result.gates = [GateResult("immutable-tag", False, conflict[0], conflict[1])]
        result.message = conflict[0]
        if not dry_run:
            result.event_id = _record(led, "gate", result, stamp())
        return finish("would-refuse" if dry_run else "refused")
    if dst.holds(pub, aliases):
        result.message = f"{target}:{pub.build_tag} already holds {pub.digest[:19]}…; nothing to do"
        mine = [e for e in recovered if e.digest == pub.digest and e.to_env == to_env]
        if mine:
            result.event_id = mine[0].id
            result.message = (f"{target}:{pub.build_tag} already holds {pub.digest[:19]}…; recorded the earlier "
                              f"promotion by {mine[0].actor} at {mine[0].time:%Y-%m-%d %H:%M:%S} UTC (recovered)")
        if (target_env.git_tag if git_tag is None else git_tag) and not dry_run:
            from bakery.gitrefs import tag_promotion  # git (subprocess) only where a promotion tags

            result.git_tag = tag_promotion(project, to_env, pub, src.labels(pub))  # idempotent
        return finish("up-to-date")

    # Gates: all of them, all reported.
    prev_store = src if cfg.previous_env(to_env) == from_env else None
    result.gates, result.scan = evaluate(project, pub, to_env, source=src, prev_store=prev_store, events=events,
                                         now=now, approved_by=approved_by, scan_fn=scan_fn, dry_run=dry_run)
    passed = all(g.passed for g in result.gates)
    if dry_run:
        return finish("would-promote" if passed else "would-refuse")
    result.event_id = _record(led, "gate", result, stamp(), passed=passed)
    if not passed:
        failed = [g.name for g in result.gates if not g.passed]
        result.message = f"gate{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)}; nothing copied"
        return finish("refused")

    # Reserve the build tag in the target for this digest (a lost race is refused), then record the intent.
    intent = None
    if writes_ahead:
        holder, _won = integrity.reserve(led, image=result.image, env=to_env, repository=target,
                                         build_tag=pub.build_tag, digest=pub.digest, when=stamp())
        if not integrity.holds(holder, digest=pub.digest):
            result.gates.append(GateResult("immutable-tag", False, f"{target}:{pub.build_tag} is reserved in the "
                                           f"ledger for {integrity.identity(holder)}; refusing {pub.digest}",
                                           {"existing": holder.digest}))
            result.message = result.gates[-1].reason
            result.event_id = _record(led, "gate", result, stamp(), passed=False)
            return finish("refused")
        intent = integrity.record_intent(
            led, image=result.image, digest=pub.digest, build_tag=pub.build_tag, from_env=from_env, to_env=to_env,
            source=result.source, target=target, tags=tags, gates=[g.to_json() for g in result.gates],
            after=integrity.epoch(events, result.image, to_env, pub.digest), when=stamp(), approved_by=approved_by)

    # Copy, then the tags (the store does both, in that order; the build tag is read back before any alias).
    def confirm() -> None:
        integrity.confirm_tag(led, dst.registry, dst.repo(name), target=target, image=result.image, env=to_env,
                              build_tag=pub.build_tag, digest=pub.digest, from_env=from_env, when=stamp())

    done = dst.copy(pub, src, aliases, on_progress=on_progress, confirm=confirm if writes_ahead else None,
                    promotion=result)  # + its signed evidence (the attestations, and the promotion's own)
    result.copy = done.pop("copy", None)
    want_git = target_env.git_tag if git_tag is None else git_tag
    git_error: StepFailed | None = None
    if want_git:
        from bakery.gitrefs import tag_promotion

        try:
            result.git_tag = tag_promotion(project, to_env, pub, src.labels(pub))
        except StepFailed as exc:  # the build moved: record that first, then report the git problem
            git_error = exc
            result.message = f"git tag not created: {exc}"
    result.seconds = time.monotonic() - started
    result.event_id = _record(led, "promote", result, stamp(), extra=done, intent=intent)
    finish("promoted")
    if git_error is not None:
        raise StepFailed(f"{result.image} {pub.build_tag} promoted to {to_env} (recorded), but the git tag was "
                         f"not created: {git_error}")
    return result


def _record(led: ledger_mod.Ledger, kind: str, p: Promotion, now: dt.datetime, passed: bool | None = None,
            extra: dict[str, Any] | None = None, intent: ledger_mod.Event | None = None) -> str:
    details: dict[str, Any] = {"source": p.source, "target": p.target, "tags": p.tags, **(extra or {})}
    if passed is not None:
        details["passed"] = passed
    if p.message:
        details["message"] = p.message
    if p.copy is not None:
        details["copy"] = p.copy
    if p.approved_by:
        details["approved_by"] = p.approved_by
    if p.git_tag:
        details["git_tag"] = p.git_tag
    ev = ledger_mod.Event(kind=kind, image=p.image, digest=p.digest, build_tag=p.build_tag, from_env=p.from_env,
                          to_env=p.to_env, time=now, gates=[g.to_json() for g in p.gates], scan=p.scan,
                          details=details)
    if intent is None:
        led.record(ev)
        return ev.id
    try:  # the completion of a write-ahead intent: one promote row per promotion, whoever records it first
        if not integrity.complete(led, intent, ev):
            held = led.claimed(intent.details["claim"], p.image)
            p.message = (p.message + "; " if p.message else "") + "already recorded by a concurrent promotion"
            return held.id if held else ev.id
    except EnvironmentFailure as exc:
        raise EnvironmentFailure(f"{p.image} {p.build_tag} is in {p.target} (build tag and aliases written) but the "
                                 f"promotion could not be recorded: {exc}; run the same command again to record "
                                 f"it") from None
    return ev.id


# ------------------------------------------------------------------------------------------------------------
# Rollback


@dataclass
class Rollback:
    image: str
    env: str
    target: str
    digest: str  # the digest the aliases point at now
    build_tag: str
    previous_digest: str | None  # what they pointed at before
    tags: list[str]  # the aliases moved (or, when up to date, the ones already there)
    action: str = "rolled-back"  # rolled-back | up-to-date
    event_id: str | None = None
    left: list[str] = field(default_factory=list)  # shared aliases that point at another version: not moved
    extra: dict[str, Any] = field(default_factory=dict)  # the store's own fields (kind; AMI: origin, amis)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "env": self.env, "target": self.target, "digest": self.digest,
                "build_tag": self.build_tag, "previous_digest": self.previous_digest, "tags": self.tags,
                "left_alone": self.left, "action": self.action, "event": self.event_id, **self.extra}


def rollback_candidates(events: list[ledger_mod.Event], image: str, env: str, current: str | None) -> list[str]:
    """Digests a plain rollback may go back to, newest first: what was promoted to ``env`` before, minus what
    is live now and what an earlier rollback left (rolling back twice goes further back, never forth)."""
    seen, rejected = arrivals_and_rollbacks(events, image, env)
    return [d for d in reversed(seen) if d != current and d not in rejected]


def rollback(project: Project, ref: str, env: str, *, to: str | None = None, now: dt.datetime | None = None,
             ledger: ledger_mod.Ledger | None = None) -> Rollback:
    """Point ``env`` back at the previously promoted build (or ``to``: a digest or build tag of the same
    version). Nothing is deleted; the rollback is recorded.

    REF is NAME:VERSION or NAME:BUILD_TAG (its version). In a registry, an alias shared by every version
    (``staging``) moves only when it pointed at this version's current build: rolling back python:3.11 leaves a
    ``staging`` that python:3.12 was promoted to alone.
    """
    cfg = project.config
    cfg.env(env)
    now = now or ledger_mod.now()
    led = ledger or ledger_mod.open_ledger(project)
    r = FleetRef.parse(ref)
    if r.digest or not r.tag:
        raise InputError(f"{ref}: name the image as NAME:VERSION or NAME:BUILD_TAG (--to takes a digest)")
    image = f"{r.name}:{Scheme(cfg.tags.build).version_of(r.tag, name=r.name) or r.tag}"
    events = led.events(image=r.name)
    if not any(e.image == image for e in events) and not known_to_fleet(project, image):
        raise InputError(unknown_image_message(ref))
    key = ImageKey(*split_image(image))
    store: ArtifactStore = store_for(project, env, image)
    if store.uses_aliases and not store.aliases(key, now.date()):
        raise InputError(f"{env} has no alias tags configured: nothing to roll back")
    current = store.current(key, events, now.date())

    if to:
        target = store.build(key, "", events, to=to)
    else:
        candidates = rollback_candidates(events, image, env, current)
        if not candidates:
            raise StepFailed(f"{image}: no earlier {store.noun} in {env} to roll back to"
                             + (" (name one with --to DIGEST|BUILD_TAG)" if store.uses_aliases else ""))
        target = store.build(key, candidates[0], events)
        if not store.holds(target):
            raise StepFailed(store.missing_message(target))

    moving, left, details = store.point_aliases(target, key, current=current, today=now.date())
    out = Rollback(image=image, env=env, target=store.where(key.name), digest=target.digest,
                   build_tag=target.build_tag, previous_digest=current, tags=moving, left=left)
    if current == target.digest and not moving:
        out.action = "up-to-date"
        out.tags = [a for a in store.aliases(key, now.date()) if a not in left]
        out.extra = store.describe(target, key, [])
        return out
    ev = ledger_mod.Event(kind="rollback", image=image, digest=target.digest, build_tag=target.build_tag,
                          from_env=env, to_env=env, time=now,
                          details={"previous_digest": current, "tags": moving, "left_alone": left,
                                   "target": out.target, "requested": to, **details})
    led.record(ev)
    out.event_id = ev.id
    out.extra = store.describe(target, key, [])
    return out
