"""Status: what runs where — per image and environment, what the store says is live (the truth), with the
ledger's story next to it (since when, vulnerabilities of the last scan, the last gate decision). One function
over every artifact kind (:mod:`bakery.store`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from bakery import ledger as ledger_mod
from bakery.configview import Project
from bakery.definitions import load_fleet
from bakery import integrity
from bakery.errors import AuthenticationFailed, BakeryError, EnvironmentFailure, InputError
from bakery.gates import human
from bakery.ref import FleetRef
from bakery.store import ArtifactStore, artifact_kind, key_of, store_for, unknown_image_message


@dataclass
class StatusRow:
    image: str
    env: str
    build_tag: str
    digest: str | None  # from the store (the truth): a manifest digest, or an AMI build's origin
    age: str
    since: dt.datetime | None
    vulnerabilities: dict[str, int] | None
    gate: str  # passed | failed | - ; from the last gate decision for this digest into env
    ledger_digest: str | None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # the store's own fields (kind; AMI: origin, amis)
    unreachable: bool = False  # the store could not be read: the row shows the ledger's view only
    failure: str | None = None  # why not: "unreachable" or "authentication" (credentials refused)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "env": self.env, "build_tag": self.build_tag, "digest": self.digest,
                "age": self.age, "since": self.since.isoformat().replace("+00:00", "Z") if self.since else None,
                "vulnerabilities": self.vulnerabilities, "gate": self.gate, "ledger_digest": self.ledger_digest,
                "note": self.note or None, "failure": self.failure, **self.extra}


def status(project: Project, ref: str | None = None, env: str | None = None, *, now: dt.datetime | None = None,
           ledger: ledger_mod.Ledger | None = None) -> list[StatusRow]:
    """Per image and environment: what the store says is live, with the ledger's story next to it."""
    cfg = project.config
    now = now or ledger_mod.now()
    led = ledger or ledger_mod.open_ledger(project)
    envs = [env] if env else cfg.env_order
    for e in envs:
        cfg.env(e)
    name_filter = None
    selected: str | None = None
    if ref:
        r = FleetRef.parse(ref, require_tag_or_digest=False)
        name_filter = r.name
        selected = f"{r.name}:{r.tag}" if r.tag else r.name
    events = led.events(image=selected)
    try:  # promotions that moved tags unrecorded: recorded first (a read-only ledger only skips this)
        if integrity.recover(project, led, events=events):
            events = led.events(image=selected)
    except EnvironmentFailure:
        pass
    images: list[str] = []
    for e in events:
        if e.image not in images:
            images.append(e.image)
    specs: dict[Any, Any] = {}
    try:  # images defined but never published appear too
        fleet = load_fleet(project)
        specs = fleet.specs
        for spec in fleet.select([ref] if ref and ":" in ref else ([name_filter] if name_filter else [])):
            if str(spec.key) not in images:
                images.append(str(spec.key))
    except BakeryError:  # no definitions here: the ledger is enough
        pass
    images.sort()
    if ref and not images:
        raise InputError(unknown_image_message(ref))
    rows: list[StatusRow] = []
    stores: dict[tuple[str, str], ArtifactStore] = {}
    down: dict[tuple[str, str], EnvironmentFailure] = {}
    for image in images:
        key = key_of(image)
        kind = artifact_kind(project, image, specs=specs, events=events)
        for e in envs:
            store = stores.get((kind, e)) or stores.setdefault((kind, e), store_for(project, e, kind=kind))
            mine = [x for x in events if x.image == image and x.to_env == e]
            ledger_now = ledger_mod.current(mine, image, e)
            try:
                if (kind, e) in down:
                    raise down[(kind, e)]
                live = store.live(key, events, now.date())
            except EnvironmentFailure as exc:  # one registry down: say so, keep the ledger's view of it
                down[(kind, e)] = exc
                failure = "authentication" if isinstance(exc, AuthenticationFailed) else "unreachable"
                note = "authentication failed" if failure == "authentication" else "registry unreachable"
                rows.append(StatusRow(image=image, env=e, build_tag=ledger_now.build_tag if ledger_now else "",
                                      digest=None, age="-", since=None, vulnerabilities=None, gate="-",
                                      ledger_digest=ledger_now.digest if ledger_now else None,
                                      note=f"{note}: {exc}", extra={"kind": kind}, unreachable=True,
                                      failure=failure))
                continue
            if live is None and not ledger_now:
                continue
            note = ""
            if ledger_now and live and ledger_now.digest != live:
                note = f"ledger says {ledger_now.digest[7:19]}, registry has {live[7:19]} (registry wins)"
            elif ledger_now and not live:
                note = "in the ledger but not in the registry"
            build_tag = store.build_tag_of(key, live, events) if live else ""
            since = ledger_mod.first_seen(mine, live, e) if live else None
            scans = [x.scan for x in events if x.digest == live and x.scan]
            vulns = (scans[-1].get("counts") if scans else None) if live else None
            decisions = [x for x in events if x.kind == "gate" and x.digest == live and x.to_env == e]
            gate = "-" if not decisions else ("passed" if decisions[-1].passed else "failed")
            rows.append(StatusRow(image=image, env=e, build_tag=build_tag, digest=live,
                                  age=human(now - since) if since else "-", since=since, vulnerabilities=vulns,
                                  gate=gate, ledger_digest=ledger_now.digest if ledger_now else None, note=note,
                                  extra=store.describe(None, key, mine)))
    return rows
