"""Promotion: the same digest moves dev → staging → prod, registry to registry, behind gates.

Order of work in :func:`promote` (and why):

1. resolve REF in the source environment to (image, build tag, digest);
2. refuse if the target already has the build tag on a different digest (immutable tags);
   a target already holding the digest under the build tag and every alias is a no-op;
3. evaluate every gate of the target environment (previous environment, scan, soak, approver) and record
   the decision in the ledger; any failure stops here with nothing copied;
4. copy manifests and blobs BY DIGEST (no tag is written; blobs the target has are skipped, same-host
   blobs are mounted): an interruption leaves no new tag and a rerun completes it;
5. only then write the build tag and the environment's alias tags, optionally an annotated git tag,
   and record the promotion.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from bakery import integrity
from bakery import ledger as ledger_mod
from bakery.errors import AuthenticationFailed, EnvironmentFailure, ImmutableTagError, InputError, RegistryError, RegistryUnavailable, StepFailed
from bakery import tags as tags_mod
from bakery.tags import build_tag_pattern, is_valid_tag, template_fields
from bakery.model import (LABEL_BUILD_TAG, LABEL_NAME, LABEL_VARIANT, LABEL_VERSION, ImageKey,
                          Published)

if TYPE_CHECKING:
    from bakery.config import Project
    from bakery.registry import CopyStats, Manifest

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


# ------------------------------------------------------------------------------------------------------------
# Registries: the plain OCI client and ECR look the same to promotion.


class Registry(Protocol):
    host: str

    def head_manifest(self, repo: str, reference: str) -> str | None: ...

    def get_manifest(self, repo: str, reference: str) -> Manifest: ...

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str: ...

    def list_tags(self, repo: str) -> list[str]: ...

    def labels(self, repo: str, reference: str) -> dict[str, str]: ...

    def copy_image(self, src: Any, src_repo: str, digest: str, dst_repo: str) -> CopyStats: ...


def registry_for(project: Project, env_name: str) -> Registry:
    """The client for an environment: :class:`bakery.registry.RegistryClient` or the ECR adapter."""
    env = project.config.env(env_name)
    if env.kind == "ecr":
        from bakery.ecr import EcrRegistry

        return EcrRegistry.for_env(project, env_name)
    from bakery.registry import RegistryClient

    return RegistryClient.for_env(project, env_name)


# ------------------------------------------------------------------------------------------------------------
# The build tag scheme, read backwards.

def build_tag_order(match: re.Match[str]) -> tuple[int, ...]:
    """Sort key of a parsed build tag: date, then the day's counter."""
    g = match.groupdict()
    date = g.get("yyyymmdd") or ((g.get("yyyy") or "") + (g.get("mm") or "") + (g.get("dd") or ""))
    return (int(date) if date else 0, int(g["n"]) if g.get("n") else 0)


def newest_build_tag(scheme: str, tags: list[str], *, name: str, tag_version: str) -> str | None:
    pattern = build_tag_pattern(scheme, name=name, tag_version=tag_version)
    found = [(build_tag_order(m), t) for t in tags if (m := pattern.match(t))]
    return max(found)[1] if found else None


# ------------------------------------------------------------------------------------------------------------
# References


@dataclass(frozen=True)
class Ref:
    """What the user named: an image (NAME[:VERSION]), and maybe a build tag or a digest."""

    name: str
    tag: str | None = None  # NAME:TAG as written (a version or a build tag)
    digest: str | None = None


def parse_ref(text: str) -> Ref:
    """``NAME:VERSION``, ``NAME:BUILD_TAG``, ``[REGISTRY/NS/]NAME[:TAG]@sha256:…``."""
    raw = text.strip()
    digest = None
    if "@" in raw:
        raw, _, digest = raw.partition("@")
        if not _DIGEST_RE.match(digest):
            raise InputError(f"{text}: not a sha256 digest: {digest!r}")
    last = raw.rsplit("/", 1)[-1]
    name, _, tag = last.partition(":")
    if not name or not re.match(r"^[a-z0-9][a-z0-9._-]*$", name):
        raise InputError(f"{text}: not an image reference (use NAME:VERSION, NAME:BUILD_TAG or NAME@sha256:…)")
    if not digest and not tag:
        raise InputError(f"{text}: name a version, a build tag or a digest (e.g. {name}:VERSION)")
    if tag and not is_valid_tag(tag):
        raise InputError(f"{text}: {tag!r} is not a version or tag (letters, digits, '.', '_', '-')")
    return Ref(name=name, tag=tag or None, digest=digest)


def _key_from(labels: dict[str, str], name: str, tag_version: str | None) -> ImageKey:
    if labels.get(LABEL_NAME) and labels.get(LABEL_VERSION):
        return ImageKey(labels[LABEL_NAME], labels[LABEL_VERSION], labels.get(LABEL_VARIANT) or None)
    if tag_version:
        return ImageKey(name, tag_version)
    raise InputError(f"{name}: cannot tell the version of this image (no {LABEL_VERSION} label); "
                     f"name it as NAME:VERSION or NAME:BUILD_TAG")


def _version_of_build_tag(scheme: str, tag: str, name: str) -> str | None:
    m = build_tag_pattern(scheme, name=name).match(tag)
    if not m:
        return None
    v = m.groupdict().get("version")
    return v if v else None


def resolve(project: Project, ref: str, env: str, *, registry: Registry | None = None) -> Published:
    """Find REF in ``env``'s registry: NAME:VERSION → newest build tag of that version (by the scheme);
    NAME:BUILD_TAG → that tag; IMAGE@DIGEST → that digest and its build tag (label, else a tag search)."""
    environment = project.config.env(env)
    reg = registry or registry_for(project, env)
    if ":" not in ref and "@" not in ref and "/" not in ref:
        ref = _name_for_bare_build_tag(project, ref, env, reg)
    r = parse_ref(ref)
    repo = environment.repository(r.name)
    scheme = project.config.tags.build
    where = f"{environment.registry}/{r.name}"

    if r.digest:
        if reg.head_manifest(repo, r.digest) is None:
            raise StepFailed(f"{where}@{r.digest}: not found in {env}")
        labels = _safe_labels(reg, repo, r.digest)
        build_tag = labels.get(LABEL_BUILD_TAG) or ""
        if not build_tag or reg.head_manifest(repo, build_tag) != r.digest:
            build_tag = _find_build_tag(reg, repo, r.digest, scheme, r.name) or build_tag
        if not build_tag:
            raise StepFailed(f"{where}@{r.digest}: no build tag in {env} points at this digest")
        version = r.tag if r.tag and not build_tag_pattern(scheme, name=r.name).match(r.tag) else None
        key = _key_from(labels, r.name, version or _version_of_build_tag(scheme, build_tag, r.name))
        wanted = (_version_of_build_tag(scheme, r.tag, r.name) or r.tag) if r.tag else None
        if wanted and key.tag_version != wanted:
            raise InputError(f"{ref}: that digest is {key}, not {r.name}:{wanted}")
        return Published(key=key, env=env, repository=environment.image(r.name), build_tag=build_tag,
                         digest=r.digest)

    assert r.tag is not None
    tag_version = _version_of_build_tag(scheme, r.tag, r.name)
    if tag_version is not None:
        digest = reg.head_manifest(repo, r.tag)
        if digest is not None:
            labels = _safe_labels(reg, repo, digest)
            return Published(key=_key_from(labels, r.name, tag_version), env=env,
                             repository=environment.image(r.name), build_tag=r.tag, digest=digest)
    tags = reg.list_tags(repo)
    build_tag = newest_build_tag(scheme, tags, name=r.name, tag_version=r.tag)
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
    labels = _safe_labels(reg, repo, digest)
    return Published(key=_key_from(labels, r.name, r.tag), env=env, repository=environment.image(r.name),
                     build_tag=build_tag, digest=digest)


def _name_for_bare_build_tag(project: Project, tag: str, env: str, reg: Registry) -> str:
    """A bare BUILD_TAG: the fleet's images whose version it names, the one that has it in ``env``."""
    scheme = project.config.tags.build
    m = build_tag_pattern(scheme).match(tag)
    if not m or not m.groupdict().get("version"):
        raise InputError(f"{tag}: name a version, a build tag or a digest (e.g. NAME:VERSION)")
    version = m.group("version")
    try:
        from bakery.definitions import load_fleet

        fleet = load_fleet(project)
    except Exception as exc:  # noqa: BLE001 - no definitions here
        raise InputError(f"{tag}: a bare build tag needs the definitions to find its image; use NAME:{tag}"
                         f" ({exc})") from None
    names = sorted({k.name for k in fleet.specs if k.tag_version == version})
    environment = project.config.env(env)
    found = [n for n in names if reg.head_manifest(environment.repository(n), tag) is not None]
    if len(found) == 1:
        return f"{found[0]}:{tag}"
    if not found:
        raise StepFailed(f"{tag}: no image of the fleet has this build tag in {env}")
    raise InputError(f"{tag}: ambiguous build tag ({', '.join(found)} have it in {env}); use NAME:{tag}")


def _safe_labels(reg: Registry, repo: str, digest: str) -> dict[str, str]:
    try:
        return reg.labels(repo, digest)
    except RegistryError:
        return {}


def _find_build_tag(reg: Registry, repo: str, digest: str, scheme: str, name: str) -> str | None:
    pattern = build_tag_pattern(scheme, name=name)
    candidates = sorted(((build_tag_order(m), t) for t in reg.list_tags(repo) if (m := pattern.match(t))),
                        reverse=True)
    for _order, tag in candidates:
        if reg.head_manifest(repo, tag) == digest:
            return tag
    return None


def _key_of(image: str) -> ImageKey:
    name, _, tag_version = image.partition(":")
    return ImageKey(name, tag_version)


def alias_tags(project: Project, env_name: str, key: ImageKey, today: dt.date) -> list[str]:
    """The environment's alias tags for one image (templates rendered, duplicates dropped)."""
    return _env_aliases(project.config.env(env_name).aliases, key, today)


def identifying_aliases(project: Project, env_name: str, key: ImageKey, today: dt.date) -> list[str]:
    """The aliases that name this version only: a template without ``{version}`` (``staging``, ``{variant}``)
    renders the same for every version in the repository, so it cannot tell which one a version runs."""
    return _env_aliases([t for t in project.config.env(env_name).aliases if "version" in template_fields(t)],
                        key, today)


def _env_aliases(templates: list[str], key: ImageKey, today: dt.date) -> list[str]:
    return [tag for tag, _ in tags_mod.alias_tags(templates, (), name=key.name, version=key.version,
                                                  variant=key.variant, today=today)]


# ------------------------------------------------------------------------------------------------------------
# Gates


@dataclass
class GateResult:
    name: str  # previous | scan | soak | approval | immutable-tag
    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "reason": self.reason, **({"details": self.details}
                                                                                   if self.details else {})}


ScanFn = Callable[..., tuple[GateResult, "dict[str, Any] | None"]]


def gate_previous(project: Project, pub: Published, to_env: str, *, prev_registry: Registry | None,
                  events: list[ledger_mod.Event] | None = None) -> GateResult:
    """The digest must already be in the environment before ``to_env`` in the configured order, and not have
    been rolled back there (a build pulled out of staging does not go on to prod)."""
    prev = project.config.previous_env(to_env)
    if prev is None:
        return GateResult("previous", True, f"{to_env} is the first environment")
    reg = prev_registry or registry_for(project, prev)
    repo = project.config.env(prev).repository(pub.key.name)
    if reg.head_manifest(repo, pub.digest) != pub.digest:
        return GateResult("previous", False, f"digest is not in {prev}: promote to {prev} first", {"env": prev})
    if pub.digest in _arrivals_and_rollbacks(events or [], str(pub.key), prev)[1]:
        return GateResult("previous", False, f"digest was rolled back in {prev}: promote it to {prev} again "
                                             f"before it goes on", {"env": prev})
    return GateResult("previous", True, f"digest is in {prev}", {"env": prev})


def gate_soak(project: Project, pub: Published, to_env: str, events: list[ledger_mod.Event],
              now: dt.datetime) -> GateResult:
    """The digest must have spent ``soak`` in the previous environment (ledger arrival time)."""
    gates = project.config.env(to_env).gates
    need = gates.soak_delta
    prev = project.config.previous_env(to_env)
    if need <= dt.timedelta(0):
        return GateResult("soak", True, "no soak time required")
    if prev is None:
        return GateResult("soak", True, f"{to_env} is the first environment")
    since = ledger_mod.first_seen(events, pub.digest, prev)
    if since is None:
        return GateResult("soak", False, f"no ledger record of this digest arriving in {prev}",
                          {"required": gates.soak})
    spent = now - since
    details = {"required": gates.soak, "since": since.isoformat().replace("+00:00", "Z"),
               "spent_seconds": int(spent.total_seconds())}
    if spent >= need:
        return GateResult("soak", True, f"{_human(spent)} in {prev} (need {gates.soak})", details)
    return GateResult("soak", False, f"only {_human(spent)} in {prev}, need {gates.soak} "
                                     f"(ready at {(since + need).strftime('%Y-%m-%d %H:%M')} UTC)", details)


def gate_approval(project: Project, to_env: str, approved_by: str | None) -> GateResult:
    approvers = project.config.env(to_env).gates.approvers
    if not approvers:
        return GateResult("approval", True, "no approver required" + (f" (approved by {approved_by})"
                                                                      if approved_by else ""),
                          {"approved_by": approved_by} if approved_by else {})
    if not approved_by:
        return GateResult("approval", False, f"needs --approved-by one of: {', '.join(approvers)}",
                          {"approvers": approvers})
    if approved_by not in approvers:
        return GateResult("approval", False, f"{approved_by} is not an approver for {to_env} "
                                             f"(approvers: {', '.join(approvers)})", {"approved_by": approved_by})
    return GateResult("approval", True, f"approved by {approved_by}", {"approved_by": approved_by})


def gate_scan(project: Project, pub: Published, to_env: str, now: dt.datetime) -> tuple[GateResult, dict | None]:
    """The scan gate on the digest in the source registry; a stored scan older than ``max_scan_age`` (or made
    with another DB) is redone, by digest, from the source registry."""
    gates = project.config.env(to_env).gates
    if not gates.scan:
        return GateResult("scan", True, "scan gate disabled"), None
    from bakery import scan as scan_mod

    spec = None
    try:  # the definition's own policy override, when the definitions are here
        from bakery.definitions import load_fleet

        spec = load_fleet(project).specs.get(pub.key)
    except Exception:  # noqa: BLE001 - no definitions: the global policy applies
        spec = None
    result, decision = scan_mod.gate(project, pub.pinned, remote=True, spec=spec,
                                     max_age=gates.max_scan_age_delta, now=now)
    summary = scan_summary(result)
    if hasattr(decision, "summary"):
        summary = {**summary, **{k: v for k, v in decision.summary().items()
                                 if k in ("passed", "failing", "failing_ids", "ignored", "unfixed", "severity")}}
    reason = decision.reason() if hasattr(decision, "reason") else ("passed" if decision.passed else "failed")
    age = now - result.scanned_at if getattr(result, "scanned_at", None) else None
    how = "re-scanned (stale)" if getattr(result, "rescanned", False) else (
        "stored scan" if getattr(result, "cached", False) else "scanned")
    reason = f"{reason}; {how}" + (f", {_human(age)} old" if age is not None and age.total_seconds() >= 1 else "") \
        + f", max {gates.max_scan_age}"
    details = {k: summary[k] for k in ("scanned_at", "db_time", "rescanned", "cached") if summary.get(k) is not None}
    details["max_scan_age"] = gates.max_scan_age
    return GateResult("scan", bool(decision.passed), reason, details), summary


def scan_summary(result: Any) -> dict[str, Any]:
    """What the ledger keeps of a scan: counts, times and the scanner DB time (never the whole report)."""
    if result is None:
        return {}
    if hasattr(result, "summary") and callable(result.summary):
        data = result.summary()
        if isinstance(data, dict):
            return data
    out: dict[str, Any] = {}
    for attr in ("counts", "scanned_at", "db_time", "db_updated_at", "trivy_version", "rescanned", "digest",
                 "cached"):
        if hasattr(result, attr):
            v = getattr(result, attr)
            out[attr] = v.isoformat().replace("+00:00", "Z") if isinstance(v, dt.datetime) else v
    return out


def _human(delta: dt.timedelta) -> str:
    s = int(delta.total_seconds())
    neg = s < 0
    s = abs(s)
    if s >= 86400:
        text = f"{s // 86400}d{(s % 86400) // 3600}h"
    elif s >= 3600:
        text = f"{s // 3600}h{(s % 3600) // 60}m"
    elif s >= 60:
        text = f"{s // 60}m{s % 60}s"
    else:
        text = f"{s}s"
    return ("-" if neg else "") + text



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

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image, "digest": self.digest, "build_tag": self.build_tag, "from": self.from_env,
            "to": self.to_env, "source": self.source, "target": self.target, "tags": self.tags,
            "action": self.action, "ok": self.ok, "gates": [g.to_json() for g in self.gates], "scan": self.scan,
            "copy": self.copy, "git_tag": self.git_tag, "approved_by": self.approved_by,
            "seconds": round(self.seconds, 3), "event": self.event_id, "message": self.message or None,
        }


def promote(project: Project, ref: str, to_env: str, *, from_env: str | None = None, dry_run: bool = False,
            approved_by: str | None = None, git_tag: bool | None = None, now: dt.datetime | None = None,
            ledger: ledger_mod.Ledger | None = None, scan_fn: ScanFn | None = None) -> Promotion:
    """Promote REF into ``to_env``. Returns the outcome; ``.ok`` is False when a gate or the immutable-tag
    check refused (nothing was copied then). Registry failures raise (exit 3 unavailable, 1 refused)."""
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

    src = registry_for(project, from_env)
    dst = registry_for(project, to_env)
    pub = resolve(project, ref, from_env, registry=src)
    name = pub.key.name
    src_repo = cfg.env(from_env).repository(name)
    recovered = integrity.recover(project, led, image=str(pub.key))  # earlier promotions that moved tags unrecorded
    dst_repo = target_env.repository(name)
    tags = [pub.build_tag, *[a for a in alias_tags(project, to_env, pub.key, now.date()) if a != pub.build_tag]]
    from bakery.publish import refuse_build_tag_aliases

    refuse_build_tag_aliases(project, name, target_env.image(name), tags[1:])
    result = Promotion(image=str(pub.key), digest=pub.digest, build_tag=pub.build_tag, from_env=from_env,
                       to_env=to_env, source=pub.pinned, target=target_env.image(name), tags=tags,
                       approved_by=approved_by)

    # Immutable build tag (the source agrees with the ledger and its labels; the target), and the no-op.
    existing = dst.head_manifest(dst_repo, pub.build_tag)
    disagreement = integrity.verify_source(project, led, pub, src)
    if disagreement or (existing is not None and existing != pub.digest):
        result.gates = [GateResult("immutable-tag", False, disagreement or (
            f"{result.target}:{pub.build_tag} already points at {existing}, refusing to move an immutable tag to "
            f"{pub.digest}"), {"existing": existing})]
        result.action = "would-refuse" if dry_run else "refused"
        result.message = result.gates[0].reason
        if not dry_run:
            result.event_id = _record(led, "gate", result, stamp())
        result.seconds = time.monotonic() - started
        return result
    if existing == pub.digest and all(dst.head_manifest(dst_repo, t) == pub.digest for t in tags[1:]):
        result.action = "up-to-date"
        result.message = f"{result.target}:{pub.build_tag} already holds {pub.digest[:19]}…; nothing to do"
        mine = [e for e in recovered if e.digest == pub.digest and e.to_env == to_env]
        if mine:
            result.event_id = mine[0].id
            result.message = (f"{result.target}:{pub.build_tag} already holds {pub.digest[:19]}…; recorded the "
                              f"earlier promotion by {mine[0].actor} at {mine[0].time:%Y-%m-%d %H:%M:%S} UTC "
                              f"(recovered)")
        if (target_env.git_tag if git_tag is None else git_tag) and not dry_run:
            result.git_tag = _git_tag(project, to_env, pub, src, src_repo)  # idempotent
        result.seconds = time.monotonic() - started
        return result

    # Gates: all of them, all reported.
    events = led.events(image=str(pub.key))
    prev_reg = src if cfg.previous_env(to_env) == from_env else None
    gates = target_env.gates
    results: list[GateResult] = []
    if gates.require_previous:
        results.append(gate_previous(project, pub, to_env, prev_registry=prev_reg, events=events))
    if gates.scan:
        scan_gate, summary = (scan_fn or gate_scan)(project, pub, to_env, now)
        results.append(scan_gate)
        result.scan = summary
    results.append(gate_soak(project, pub, to_env, events, now))
    results.append(gate_approval(project, to_env, approved_by))
    result.gates = results
    passed = all(g.passed for g in results)

    if dry_run:
        result.action = "would-promote" if passed else "would-refuse"
        result.seconds = time.monotonic() - started
        return result
    result.event_id = _record(led, "gate", result, stamp(), passed=passed)
    if not passed:
        result.action = "refused"
        failed = [g.name for g in results if not g.passed]
        result.message = f"gate{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)}; nothing copied"
        result.seconds = time.monotonic() - started
        return result

    # Reserve the build tag in the target for this digest (a lost race is refused), then record the intent.
    holder, _won = integrity.reserve(led, image=result.image, env=to_env, repository=result.target,
                                     build_tag=pub.build_tag, digest=pub.digest, when=stamp())
    if not integrity.holds(holder, digest=pub.digest):
        result.gates.append(GateResult("immutable-tag", False, f"{result.target}:{pub.build_tag} is reserved in "
                                       f"the ledger for {integrity.identity(holder)}; refusing {pub.digest}",
                                       {"existing": holder.digest}))
        result.action = "refused"
        result.message = result.gates[-1].reason
        result.event_id = _record(led, "gate", result, stamp(), passed=False)
        result.seconds = time.monotonic() - started
        return result
    intent = integrity.record_intent(
        led, image=result.image, digest=pub.digest, build_tag=pub.build_tag, from_env=from_env, to_env=to_env,
        source=result.source, target=result.target, tags=tags, gates=[g.to_json() for g in results],
        after=integrity.epoch(events, result.image, to_env, pub.digest), when=stamp(), approved_by=approved_by)

    # Copy by digest, then the tags.
    if hasattr(dst, "ensure_repository"):
        dst.ensure_repository(dst_repo, aliases=tags[1:])  # type: ignore[attr-defined]
    written: list[str] = []
    try:
        stats = dst.copy_image(src, src_repo, pub.digest, dst_repo)
        manifest = src.get_manifest(src_repo, pub.digest)  # byte-identical by definition of the digest
        write_tags(dst, dst_repo, manifest, pub.build_tag, tags[1:], target=result.target, written=written,
                   confirm=lambda: integrity.confirm_tag(led, dst, dst_repo, target=result.target, image=result.image,
                                                         env=to_env, build_tag=pub.build_tag, digest=pub.digest,
                                                         from_env=from_env, when=stamp()))
    except RegistryUnavailable as exc:
        state = integrity.target_state(written, pub.build_tag, tags[1:])
        raise RegistryUnavailable(f"promotion of {result.image} {pub.build_tag} to {to_env} interrupted ({state}); "
                                  f"run the same command again to complete it: {exc}") from None
    result.copy = stats.as_dict()

    want_git = target_env.git_tag if git_tag is None else git_tag
    git_error: StepFailed | None = None
    if want_git:
        try:
            result.git_tag = _git_tag(project, to_env, pub, src, src_repo)
        except StepFailed as exc:  # the images moved: record that first, then report the git problem
            git_error = exc
            result.message = f"git tag not created: {exc}"
    result.action = "promoted"
    result.seconds = time.monotonic() - started
    result.event_id = _record(led, "promote", result, stamp(), intent=intent)
    if git_error is not None:
        raise StepFailed(f"{result.image} {pub.build_tag} promoted to {to_env} (recorded), but the git tag was "
                         f"not created: {git_error}")
    return result


def write_tags(dst: Registry, repo: str, manifest: Manifest, build_tag: str, aliases: list[str], *,
               target: str, written: list[str] | None = None, confirm: Callable[[], None] | None = None) -> None:
    """The immutable build tag first (re-checked right before writing, read back by ``confirm`` after), then
    the moving aliases. ``written`` collects the tags that hold the digest so far."""
    written = [] if written is None else written
    current = dst.head_manifest(repo, build_tag)
    if current is not None and current != manifest.digest:
        raise ImmutableTagError(f"{target}:{build_tag} already points at {current}, refusing to move an "
                                f"immutable tag to {manifest.digest}")
    if current is None:
        dst.put_manifest(repo, build_tag, manifest.body, manifest.media_type)
    if confirm is not None:
        confirm()
    written.append(build_tag)
    for alias in aliases:
        if dst.head_manifest(repo, alias) != manifest.digest:
            dst.put_manifest(repo, alias, manifest.body, manifest.media_type)
        written.append(alias)


def _git_tag(project: Project, env: str, pub: Published, reg: Registry, repo: str) -> str:
    from bakery.gitrefs import tag_promotion

    return tag_promotion(project, env, pub, _safe_labels(reg, repo, pub.digest))


def _record(led: ledger_mod.Ledger, kind: str, p: Promotion, now: dt.datetime, passed: bool | None = None,
            intent: ledger_mod.Event | None = None) -> str:
    details: dict[str, Any] = {"source": p.source, "target": p.target, "tags": p.tags}
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

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "env": self.env, "target": self.target, "digest": self.digest,
                "build_tag": self.build_tag, "previous_digest": self.previous_digest, "tags": self.tags,
                "left_alone": self.left, "action": self.action, "event": self.event_id}


def _arrivals_and_rollbacks(events: list[ledger_mod.Event], image: str, env: str) -> tuple[list[str], set[str]]:
    """(digests promoted to ``env``, oldest first; those a rollback moved away from and nobody promoted since)."""
    seen: list[str] = []
    rejected: set[str] = set()
    for e in events:
        if e.image != image or e.to_env != env:
            continue
        if e.kind in ("promote", "publish"):
            if e.digest in seen:
                seen.remove(e.digest)
            seen.append(e.digest)
            rejected.discard(e.digest)
        elif e.kind == "rollback":
            previous = (e.details or {}).get("previous_digest")
            if previous and previous != e.digest:
                rejected.add(previous)
            rejected.discard(e.digest)
    return seen, rejected


def rollback_candidates(events: list[ledger_mod.Event], image: str, env: str, current: str | None) -> list[str]:
    """Digests a plain rollback may go back to, newest first: what was promoted to ``env`` before, minus what
    is live now and what an earlier rollback left (rolling back twice goes further back, never forth)."""
    seen, rejected = _arrivals_and_rollbacks(events, image, env)
    return [d for d in reversed(seen) if d != current and d not in rejected]


def rollback(project: Project, ref: str, env: str, *, to: str | None = None, now: dt.datetime | None = None,
             ledger: ledger_mod.Ledger | None = None) -> Rollback:
    """Point ``env``'s alias tags back at the previously promoted digest (or ``to``: a digest or build tag of
    the same version). Nothing is deleted; the rollback is recorded.

    REF is NAME:VERSION or NAME:BUILD_TAG (its version). An alias shared by every version (``staging``) moves
    only when it pointed at this version's current build: rolling back python:3.11 leaves a ``staging`` that
    python:3.12 was promoted to alone.
    """
    cfg = project.config
    environment = cfg.env(env)
    now = now or ledger_mod.now()
    led = ledger or ledger_mod.open_ledger(project)
    r = parse_ref(ref)
    if r.digest or not r.tag:
        raise InputError(f"{ref}: name the image as NAME:VERSION or NAME:BUILD_TAG (--to takes a digest)")
    scheme = cfg.tags.build
    image = f"{r.name}:{_version_of_build_tag(scheme, r.tag, r.name) or r.tag}"
    events = led.events(image=r.name)
    if not any(e.image == image for e in events) and not known_to_fleet(project, image):
        raise InputError(unknown_image_message(ref))
    key = _key_of(image)
    aliases = alias_tags(project, env, key, now.date())
    if not aliases:
        raise InputError(f"{env} has no alias tags configured: nothing to roll back")
    own = identifying_aliases(project, env, key, now.date())
    reg = registry_for(project, env)
    repo = environment.repository(r.name)
    where = environment.image(r.name)
    if own:
        current = reg.head_manifest(repo, own[0])
    else:  # only shared aliases: the ledger says what this version runs
        live = ledger_mod.current(events, image, env)
        current = live.digest if live else None

    if to:
        digest, build_tag = _rollback_target(reg, repo, where, env, image, key, to, events, scheme)
    else:
        candidates = rollback_candidates(events, image, env, current)
        if not candidates:
            raise StepFailed(f"{image}: no earlier promotion to {env} in the ledger to roll back to "
                             f"(name one with --to DIGEST|BUILD_TAG)")
        digest = candidates[0]
        build_tag = next(e.build_tag for e in reversed(events) if e.digest == digest and e.image == image)
        if reg.head_manifest(repo, digest) is None:
            raise StepFailed(f"{where}@{digest}: recorded in the ledger but missing from the registry (the "
                             f"registry is the truth)")

    moving: list[str] = []
    left: list[str] = []
    for alias in aliases:
        at = reg.head_manifest(repo, alias)
        if at == digest:
            continue
        if alias not in own and at is not None and at != current:
            left.append(alias)  # another version's: promoted there after this one
        else:
            moving.append(alias)
    out = Rollback(image=image, env=env, target=where, digest=digest, build_tag=build_tag,
                   previous_digest=current, tags=moving, left=left)
    if current == digest and not moving:
        out.action = "up-to-date"
        out.tags = [a for a in aliases if a not in left]
        return out
    manifest = reg.get_manifest(repo, digest)
    for alias in moving:
        reg.put_manifest(repo, alias, manifest.body, manifest.media_type)
    ev = ledger_mod.Event(kind="rollback", image=image, digest=digest, build_tag=build_tag, from_env=env,
                          to_env=env, time=now,
                          details={"previous_digest": current, "tags": moving, "left_alone": left,
                                   "target": out.target, "requested": to})
    led.record(ev)
    out.event_id = ev.id
    return out


def _rollback_target(reg: Registry, repo: str, where: str, env: str, image: str, key: ImageKey, to: str,
                     events: list[ledger_mod.Event], scheme: str) -> tuple[str, str]:
    """``--to``: a digest or build tag that is a build of this very version, present in ``env``."""
    if to.startswith("sha256:") or "@" in to:
        digest = to.split("@", 1)[-1]
        if not _DIGEST_RE.match(digest):
            raise InputError(f"--to {to}: not a sha256 digest (sha256: and 64 hex digits)")
        if reg.head_manifest(repo, digest) is None:
            raise StepFailed(f"{where}@{digest}: not in {env}; can only roll back to something promoted there")
        recorded = {e.image for e in events if e.digest == digest}
        if recorded and image not in recorded:
            raise InputError(f"--to {to}: that digest is {', '.join(sorted(recorded))}, not {image}")
        build_tag = next((e.build_tag for e in reversed(events) if e.digest == digest and e.image == image), "")
        if not build_tag:
            labels = _safe_labels(reg, repo, digest)
            if labels.get(LABEL_VERSION):
                other = _key_from(labels, key.name, None)
                if other.tag_version != key.tag_version:
                    raise InputError(f"--to {to}: that digest is {other}, not {image}")
            build_tag = _find_build_tag(reg, repo, digest, scheme, key.name) or ""
            tag_version = _version_of_build_tag(scheme, build_tag, key.name) if build_tag else None
            if tag_version is not None and tag_version != key.tag_version:
                raise InputError(f"--to {to}: that digest is {key.name}:{tag_version}, not {image}")
        return digest, build_tag
    build_tag = to.split(":", 1)[-1]
    tag_version = _version_of_build_tag(scheme, build_tag, key.name)
    if tag_version is None:
        raise InputError(f"--to {to}: not a build tag ({scheme}) nor a digest")
    if tag_version != key.tag_version:
        raise InputError(f"--to {to}: a build of {key.name}:{tag_version}, not of {image}")
    found = reg.head_manifest(repo, build_tag)
    if found is None:
        raise StepFailed(f"{where}:{build_tag}: not in {env}")
    return found, build_tag


# ------------------------------------------------------------------------------------------------------------
# Status


@dataclass
class StatusRow:
    image: str
    env: str
    build_tag: str
    digest: str | None  # from the registry (the truth)
    age: str
    since: dt.datetime | None
    vulnerabilities: dict[str, int] | None
    gate: str  # passed | failed | - ; from the last gate decision for this digest into env
    ledger_digest: str | None
    note: str = ""
    failure: str | None = None  # "unreachable" | "authentication": the registry could not be read (exit 3)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "env": self.env, "build_tag": self.build_tag, "digest": self.digest,
                "age": self.age, "since": self.since.isoformat().replace("+00:00", "Z") if self.since else None,
                "vulnerabilities": self.vulnerabilities, "gate": self.gate, "ledger_digest": self.ledger_digest,
                "note": self.note or None, "failure": self.failure}


def unknown_image_message(ref: str) -> str:
    return f"{ref}: unknown image: not in the fleet and no event in the ledger (`bakery list` shows the fleet)"


def known_to_fleet(project: Project, ref: str) -> bool:
    """Whether REF names an image of the fleet (False too when there are no definitions here)."""
    from bakery.definitions import load_fleet
    from bakery.errors import BakeryError

    try:
        load_fleet(project).select([ref.split("@", 1)[0]])
    except BakeryError:
        return False
    return True


def status(project: Project, ref: str | None = None, env: str | None = None, *, now: dt.datetime | None = None,
           ledger: ledger_mod.Ledger | None = None) -> list[StatusRow]:
    """Per image and environment: what the registry says is live, with the ledger's story next to it."""
    cfg = project.config
    now = now or ledger_mod.now()
    led = ledger or ledger_mod.open_ledger(project)
    envs = [env] if env else cfg.env_order
    for e in envs:
        cfg.env(e)
    name_filter = None
    selected: str | None = None
    if ref:
        r = parse_ref(ref) if (":" in ref or "@" in ref) else Ref(name=ref)
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
    try:  # images defined but never published appear too
        from bakery.definitions import load_fleet

        for spec in load_fleet(project).select([ref] if ref and ":" in ref else ([name_filter] if name_filter
                                                                                 else [])):
            if str(spec.key) not in images:
                images.append(str(spec.key))
    except Exception:  # noqa: BLE001 - no definitions here: the ledger is enough
        pass
    images.sort()
    if ref and not images:
        raise InputError(unknown_image_message(ref))
    rows: list[StatusRow] = []
    clients: dict[str, Registry] = {}
    down: dict[str, EnvironmentFailure] = {}
    for image in images:
        key = _key_of(image)
        name, tag_version = key.name, key.tag_version
        for e in envs:
            reg = clients.get(e) or clients.setdefault(e, registry_for(project, e))
            environment = cfg.env(e)
            repo = environment.repository(name)
            aliases = identifying_aliases(project, e, key, now.date())
            live = None
            mine = [x for x in events if x.image == image and x.to_env == e]
            ledger_now = ledger_mod.current(mine, image, e)
            try:
                if e in down:
                    raise down[e]
                for pointer in aliases or []:
                    live = reg.head_manifest(repo, pointer)
                    if live:
                        break
                if live is None and not aliases:
                    tags = reg.list_tags(repo)
                    bt = newest_build_tag(cfg.tags.build, tags, name=name, tag_version=tag_version)
                    live = reg.head_manifest(repo, bt) if bt else None
            except EnvironmentFailure as exc:  # one registry down: say so, keep the ledger's view of it
                down[e] = exc
                failure = "authentication" if isinstance(exc, AuthenticationFailed) else "unreachable"
                rows.append(StatusRow(image=image, env=e, build_tag=ledger_now.build_tag if ledger_now else "",
                                      digest=None, age="-", since=None, vulnerabilities=None, gate="-",
                                      ledger_digest=ledger_now.digest if ledger_now else None,
                                      note=f"{'authentication failed' if failure == 'authentication' else 'registry unreachable'}: {exc}",
                                      failure=failure))
                continue
            note = ""
            if ledger_now and live and ledger_now.digest != live:
                note = f"ledger says {ledger_now.digest[7:19]}, registry has {live[7:19]} (registry wins)"
            elif ledger_now and not live:
                note = "in the ledger but not in the registry"
            build_tag = ""
            if live:
                build_tag = next((x.build_tag for x in reversed(events) if x.digest == live and x.build_tag), "")
                if not build_tag:
                    build_tag = _safe_labels(reg, repo, live).get(LABEL_BUILD_TAG, "")
            since = ledger_mod.first_seen(mine, live, e) if live else None
            scans = [x.scan for x in events if x.digest == live and x.scan]
            vulns = (scans[-1].get("counts") if scans else None) if live else None
            decisions = [x for x in events if x.kind == "gate" and x.digest == live and x.to_env == e]
            gate = "-" if not decisions else ("passed" if decisions[-1].passed else "failed")
            if live is None and not ledger_now:
                continue
            rows.append(StatusRow(image=image, env=e, build_tag=build_tag, digest=live,
                                  age=_human(now - since) if since else "-", since=since, vulnerabilities=vulns,
                                  gate=gate, ledger_digest=ledger_now.digest if ledger_now else None, note=note))
    return rows
