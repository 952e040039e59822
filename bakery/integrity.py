"""The ledger's side of integrity: a build tag names one image forever, and every promotion is recorded.

* **Reservations.** Before anything is pushed or copied, a build tag is reserved in the ledger for one image by an
  atomic conditional write (:meth:`bakery.ledger.Ledger.claim`: SQLite's primary key inside a transaction; S3's
  ``If-None-Match: *`` on one object per repository and build tag). Two builds racing for ``.n`` cannot both
  win: the loser takes the next ``n``. A build reserves for its image id (the config digest: the manifest digest
  is only known after the daemon pushed), a promotion for the manifest digest.
* **Write-ahead promotions.** A promotion records its *intent* (digest, source, target, gates, who) before it
  copies and its *completion* (the ``promote`` event) after the tags. The completion is claimed under one key
  per (target, digest, the target's previous move), so two identical promotions racing write one promote row.
  :func:`recover` completes an intent whose target holds the digest under the build tag but has no completion
  (a process killed, or the ledger unreachable, between the tag write and the record): the recovered event
  carries the intent's actor and time, and ``details.recovered``.
* **The soak clock** starts at the recorded arrival: the time of the ``promote`` event, i.e. when the tags were
  written; for a recovered promotion, the time of its intent (when the copy began, seconds earlier).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from bakery.errors import EnvironmentFailure, RegistryError, TagMismatch
from bakery.ledger import Event, Ledger
from bakery.model import LABEL_NAME, LABEL_VERSION
from bakery.registries import registry_for
from bakery.tags import next_build_tag

if TYPE_CHECKING:
    from bakery.config import Project


def build_tag_key(repository: str, build_tag: str) -> str:
    """The claim key of a build tag: one per repository (host/path) and tag, whatever the environment."""
    return f"build-tag {repository}:{build_tag}"


def identity(ev: Event) -> str:
    """What a reservation holds the tag for: ``manifest sha256:…`` or ``image sha256:…`` (an image id)."""
    return f"{ev.details.get('identity', 'manifest')} {ev.digest}"


def holds(ev: Event, *, digest: str | None = None, config: str | None = None) -> bool:
    """Whether reservation ``ev`` is for the image with manifest ``digest`` / config digest ``config``."""
    if ev.details.get("identity") == "image":
        return bool(config) and ev.digest == config
    return bool(digest) and ev.digest == digest


def reserve(led: Ledger, *, image: str, env: str, repository: str, build_tag: str, digest: str = "",
            config: str = "", when: dt.datetime | None = None) -> tuple[Event, bool]:
    """Reserve ``repository:build_tag`` for one image (its manifest ``digest``, else its image id ``config``).
    Returns (the reservation that holds the tag, whether it is the one just written)."""
    kind = "manifest" if digest else "image"
    ev = Event(kind="reserve", image=image, digest=digest or config, build_tag=build_tag, from_env=None, to_env=env,
               details={"repository": repository, "identity": kind}, **({"time": when} if when else {}))
    key = build_tag_key(repository, build_tag)
    if led.claim(ev, key):
        return ev, True
    holder = led.claimed(key, image)
    if holder is None:  # claimed through another image's records (another image's tag in this repository)
        holder = Event(kind="reserve", image="?", digest="", build_tag=build_tag, from_env=None, to_env=env,
                       details={"repository": repository, "identity": "manifest", "foreign": True})
    return holder, False


def reserve_next_build_tag(project: Project, led: Ledger, *, image: str, name: str, version: str,
                           variant: str | None, env: str, repository: str, config: str, existing: list[str],
                           today: dt.date, fingerprint: str = "") -> tuple[str, Event, bool]:
    """The first build tag of the scheme that is neither in the registry nor reserved, reserved for image id
    ``config``: (tag, holder, won). A lost race takes the next ``n``; a scheme without ``{n}`` has one tag per
    day, whose holder is returned for the caller to compare."""
    scheme = project.config.tags.build
    taken = set(existing) | {e.build_tag for e in led.events(image=image)
                             if e.kind == "reserve" and e.details.get("repository") == repository}
    if "{n}" not in scheme:
        taken = set()
    for _ in range(10000):
        tag = next_build_tag(scheme, name=name, version=version, variant=variant, today=today, existing=taken,
                             fingerprint=fingerprint)
        holder, won = reserve(led, image=image, env=env, repository=repository, build_tag=tag, config=config)
        if won or "{n}" not in scheme:
            return tag, holder, won
        taken.add(tag)
    raise EnvironmentFailure(f"ledger {led.url}: no free build tag for {image} in {repository}")


def reservation(led: Ledger, image: str, repository: str, build_tag: str) -> Event | None:
    return led.claimed(build_tag_key(repository, build_tag), image)


def recorded_digest(events: list[Event], image: str, env: str, build_tag: str) -> str | None:
    """The manifest digest the ledger recorded arriving in ``env`` under ``build_tag`` (first publish or promote),
    or None."""
    for e in events:
        if e.image == image and e.to_env == env and e.build_tag == build_tag and e.kind in ("publish", "promote"):
            return e.digest
    return None


# ------------------------------------------------------------------------------------------------------------
# Write-ahead promotions


def epoch(events: list[Event], image: str, env: str, digest: str) -> str:
    """The id of the last event that moved ``image``'s tags in ``env`` to another digest than ``digest`` ("-" when
    none): part of the completion key, so two identical promotions racing share one key while the same digest
    promoted again after something else moved there is a new promotion."""
    moves = [e for e in events if e.image == image and e.to_env == env and e.digest != digest
             and e.kind in ("publish", "promote", "rollback")]
    return moves[-1].id if moves else "-"


def completion_key(target: str, digest: str, after: str) -> str:
    return f"promote {target}@{digest} after {after}"


def record_intent(led: Ledger, *, image: str, digest: str, build_tag: str, from_env: str, to_env: str,
                  source: str, target: str, tags: list[str], gates: list[dict[str, Any]], after: str,
                  when: dt.datetime, approved_by: str | None = None) -> Event:
    """Write-ahead: what is about to be copied where, by whom, behind which gates. Recorded before any copy."""
    ev = Event(kind="intent", image=image, digest=digest, build_tag=build_tag, from_env=from_env, to_env=to_env,
               time=when, gates=gates,
               details={"source": source, "target": target, "tags": tags,
                        "claim": completion_key(target, digest, after),
                        **({"approved_by": approved_by} if approved_by else {})})
    led.record(ev)
    return ev


def complete(led: Ledger, intent: Event, event: Event) -> bool:
    """Record the completion of ``intent`` (a promote event); False when that promotion is already recorded
    (a concurrent identical promotion, or a recovery, got there first)."""
    event.details = {**event.details, "intent": intent.id, "claim": intent.details["claim"]}
    return led.claim(event, intent.details["claim"])


def pending(events: list[Event]) -> list[Event]:
    """Intents without a completion, oldest first."""
    done = {e.details.get("claim") for e in events if e.kind == "promote"}
    seen: set[str] = set()
    out = []
    for e in events:
        claim = e.details.get("claim")
        if e.kind == "intent" and claim not in done and claim not in seen:
            seen.add(claim)
            out.append(e)
    return out


def recover(project: Project, led: Ledger, *, image: str | None = None,
            events: list[Event] | None = None) -> list[Event]:
    """Complete every pending intent whose target holds its digest under its build tag (see the module doc).
    Registries that cannot be reached are left for the next run. Returns the recovered promote events."""
    if events is None and image is None and not led.may_have_pending_intents():
        return []  # nothing pending (the usual case): the history is not read
    events = led.events(image=image) if events is None else events
    todo = pending(events)
    recovered: list[Event] = []
    clients: dict[str, Any] = {}
    for intent in todo:
        env = intent.to_env
        try:
            environment = project.config.env(env)
        except Exception:  # noqa: BLE001 - an environment no longer configured
            continue
        repo = environment.repository(intent.name)
        try:
            reg = clients.get(env) or clients.setdefault(env, registry_for(project, env))
            if reg.head_manifest(repo, intent.build_tag) != intent.digest:
                continue  # interrupted before the build tag: nothing arrived, a rerun promotes it
            tags = [t for t in intent.details.get("tags", []) if reg.head_manifest(repo, t) == intent.digest]
        except EnvironmentFailure:
            continue
        arrived_before = any(e.kind in ("publish", "promote") and e.digest == intent.digest and e.to_env == env
                             and e.image == intent.image and e.time <= intent.time for e in events)
        if arrived_before and len(tags) < len(intent.details.get("tags", [])):
            continue  # the build tag is an earlier promotion's: this one moved nothing visible yet
        ev = Event(kind="promote", image=intent.image, digest=intent.digest, build_tag=intent.build_tag,
                   from_env=intent.from_env, to_env=env, actor=intent.actor, time=intent.time, gates=intent.gates,
                   details={"source": intent.details.get("source"), "target": intent.details.get("target"),
                            "tags": tags, "recovered": True,
                            **({"approved_by": intent.details["approved_by"]}
                               if intent.details.get("approved_by") else {})})
        if complete(led, intent, ev):
            recovered.append(ev)
    return recovered


# ------------------------------------------------------------------------------------------------------------
# Reading a tag back


def config_of(client: Any, repo: str, digest: str) -> str | None:
    """The config digest (= the engine's image id) of an image manifest, None for anything else."""
    try:
        m = client.get_manifest(repo, digest)
        config = m.json().get("config")
    except ValueError:
        return None
    return config.get("digest") if isinstance(config, dict) else None


def confirm_tag(led: Ledger, client: Any, repo: str, *, target: str, image: str, env: str, build_tag: str,
                digest: str, from_env: str | None = None, when: dt.datetime | None = None) -> None:
    """Read ``build_tag`` back after writing it: when it does not name ``digest`` (another writer moved it),
    record what was found (a failed ``immutable-tag`` gate) and stop (exit 1). Nothing else moves after that."""
    found = client.head_manifest(repo, build_tag)
    if found == digest:
        return
    reason = (f"{target}:{build_tag} names {found or 'nothing'} after writing {digest}: another writer moved it; "
              f"aliases not moved")
    led.record(Event(kind="gate", image=image, digest=digest, build_tag=build_tag, from_env=from_env, to_env=env,
                     gates=[{"name": "immutable-tag", "passed": False, "reason": reason,
                             "details": {"found": found, "expected": digest}}],
                     details={"passed": False, "target": target, "found": found},
                     **({"time": when} if when else {})))
    raise TagMismatch(reason)


def target_state(written: list[str], build_tag: str, aliases: list[str]) -> str:
    """What an interrupted promotion left in the target, for the one line the user sees."""
    if build_tag not in written:
        return "no tag was written in the target"
    missing = [a for a in aliases if a not in written]
    if not missing:
        return "build tag and aliases written"
    if len(missing) == len(aliases):
        return f"build tag {build_tag} written, aliases not"
    return f"build tag {build_tag} written, aliases {', '.join(missing)} not"


# ------------------------------------------------------------------------------------------------------------
# The source of a promotion agrees with the ledger and with the image it names


def verify_source(project: Project, led: Ledger, pub: Any, reg: Any, *,
                  events: list[Event] | None = None) -> str | None:
    """Why the source cannot be promoted, or None: its build tag is recorded (or reserved) in the ledger for
    another digest, or its labels name another image than the repository it comes from. Both digests named.
    ``events``: the image's events when the caller read them already."""
    where = f"{pub.repository}:{pub.build_tag}"
    repo = pub.repository.split("/", 1)[1]  # the repository the user named (labels may claim another)
    image = str(pub.key)
    events = led.events(image=image) if events is None else events
    recorded = recorded_digest(events, image, pub.env, pub.build_tag)
    if recorded and recorded != pub.digest:
        return (f"{where} names {pub.digest} but the ledger recorded {recorded} under that build tag; refused: a "
                f"build tag is immutable and names one digest forever")
    held = reservation(led, image, pub.repository, pub.build_tag)
    if held is not None and not holds(held, digest=pub.digest, config=config_of(reg, repo, pub.digest)
                                      if held.details.get("identity") == "image" else None):
        return (f"{where} names {pub.digest} but the ledger reserved that build tag for {identity(held)}; refused: "
                f"a build tag is immutable")
    try:
        labels = reg.labels(repo, pub.digest)
    except RegistryError:
        labels = {}
    name, version = labels.get(LABEL_NAME), labels.get(LABEL_VERSION)
    family = pub.repository.rsplit("/", 1)[-1]  # the repository the user named
    if name and name != family:
        return (f"{where} ({pub.digest}) is an image of {name}:{version or '?'}, not of {family}; refused"
                + (f" (the ledger has {recorded} for this build tag)" if recorded else ""))
    return None
