"""`bakery audit`: every disagreement between the registries and the ledger, for CI.

Per image of the ledger (and of the fleet) and per environment, the registry's build tags and version aliases are
compared with what the ledger recorded:

* ``moved``: a build tag names another digest than the ledger recorded (or reserved) for it;
* ``unrecorded``: a build tag the ledger has no record of (pushed or copied outside bakery);
* ``unrecorded-promotion``: a promotion that moved the tags but was not recorded (a rerun of promote, `status` or
  `nightly` records it; see :mod:`bakery.integrity`);
* ``conflict``: the ledger holds two digests for one build tag;
* ``missing``: the build the ledger says an environment runs is not in its registry;
* ``alias``: a version alias points at another digest than the ledger's current build.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bakery import integrity
from bakery import ledger as ledger_mod
from bakery.ref import FleetRef
from bakery.registries import registry_for
from bakery.store import key_of
from bakery.tags import build_tag_pattern, env_alias_tags

if TYPE_CHECKING:
    from bakery.config import Project


@dataclass
class Disagreement:
    kind: str  # moved | unrecorded | unrecorded-promotion | conflict | missing | alias
    image: str
    env: str
    tag: str
    registry: str | None  # what the registry's tag names
    ledger: str | None  # what the ledger recorded
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _is_container(digest: str) -> bool:
    return digest.startswith("sha256:")


def audit(project: Project, ref: str | None = None, env: str | None = None,
          ledger: ledger_mod.Ledger | None = None) -> list[Disagreement]:
    """The disagreements (see the module doc); a registry that cannot be reached raises (exit 3). Only images the
    ledger knows are compared (a repository bakery never recorded has nothing to disagree with)."""
    cfg = project.config
    led = ledger or ledger_mod.open_ledger(project)
    envs = [env] if env else cfg.env_order
    for e in envs:
        cfg.env(e)
    r = FleetRef.parse(ref, require_tag_or_digest=False) if ref else None
    events = led.events(image=(f"{r.name}:{r.tag}" if r and r.tag else (r.name if r else None)))
    images = sorted({e.image for e in events if _is_container(e.digest) or e.kind in ("reserve", "intent")})
    now = ledger_mod.now()
    out: list[Disagreement] = []
    clients: dict[str, Any] = {}
    for image in images:
        key = key_of(image)
        mine = [e for e in events if e.image == image]
        pending = {(i.to_env, i.build_tag, i.digest) for i in integrity.pending(mine)}
        for e in envs:
            environment = cfg.env(e)
            repo = environment.repository(key.name)
            repository = environment.image(key.name)
            here = [x for x in mine if x.to_env == e]
            recorded: dict[str, set[str]] = {}
            for x in here:
                if x.kind in ("publish", "promote") and _is_container(x.digest):
                    recorded.setdefault(x.build_tag, set()).add(x.digest)
            reserved = {x.build_tag: x for x in here if x.kind == "reserve"
                        and x.details.get("repository") == repository}
            if not recorded and not reserved and not any(p[0] == e for p in pending):
                continue
            reg = clients.get(e) or clients.setdefault(e, registry_for(project, e))
            for tag, digests in sorted(recorded.items()):
                if len(digests) > 1:
                    out.append(Disagreement("conflict", image, e, tag, None, " ".join(sorted(digests)),
                                            f"the ledger holds {len(digests)} digests for {tag}"))
            pattern = build_tag_pattern(cfg.tags.build, name=key.name, tag_version=key.tag_version)
            for tag in sorted(t for t in reg.list_tags(repo) if pattern.match(t)):
                found = reg.head_manifest(repo, tag)
                if found is None:
                    continue
                ledger_digest = sorted(recorded[tag])[0] if tag in recorded else None
                if ledger_digest is None:  # no publish or promote record: a reservation at most
                    held = reserved.get(tag)
                    if held is not None and not integrity.holds(
                            held, digest=found, config=integrity.config_of(reg, repo, found)):
                        out.append(Disagreement("moved", image, e, tag, found, held.digest,
                                                f"{repository}:{tag} names {found}; the ledger reserved it for "
                                                f"{integrity.identity(held)}"))
                    elif (e, tag, found) in pending:
                        out.append(Disagreement("unrecorded-promotion", image, e, tag, found, None,
                                                f"{repository}:{tag} was promoted but not recorded; `bakery promote` "
                                                f"or `bakery status` records it"))
                    else:
                        out.append(Disagreement("unrecorded", image, e, tag, found, None,
                                                f"{repository}:{tag} ({found}) has no publish or promote record in "
                                                f"the ledger" + (" (only its reservation)" if held else "")))
                elif found not in recorded[tag]:
                    out.append(Disagreement("moved", image, e, tag, found, ledger_digest,
                                            f"{repository}:{tag} names {found}; the ledger recorded {ledger_digest}"))
            live = ledger_mod.current(here, image, e)
            if live is None or not _is_container(live.digest):
                continue
            if reg.head_manifest(repo, live.digest) is None:
                out.append(Disagreement("missing", image, e, live.build_tag, None, live.digest,
                                        f"the ledger says {e} runs {live.digest}; {repository} does not have it"))
                continue
            for alias in env_alias_tags(project, e, key, now.date(), identifying_only=True):
                at = reg.head_manifest(repo, alias)
                if at is not None and at != live.digest:
                    out.append(Disagreement("alias", image, e, alias, at, live.digest,
                                            f"{repository}:{alias} names {at}; the ledger's current build is "
                                            f"{live.digest} ({live.build_tag})"))
    return out
