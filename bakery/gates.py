"""Promotion gates — one set for every artifact kind, each a pure decision with its reason.

``previous`` (the build is in the environment before, and was not rolled back there), ``scan`` (the stored scan
of the digest is fresh enough and passes the policy; re-scanned by digest when stale; not applicable to
artifacts without a container filesystem), ``soak`` (time spent in the previous environment, from the ledger)
and ``approval`` (``--approved-by`` one of the environment's approvers). :func:`evaluate` runs all of them for
a promotion; every result is reported and recorded, none short-circuits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable

from bakery import ledger as ledger_mod
from bakery import speccache
from bakery.configview import Project
from bakery.model import Published
from bakery.store import ArtifactStore, store_for


@dataclass
class GateResult:
    name: str  # previous | scan | soak | approval | immutable-tag
    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    scanned: Any = field(default=None, repr=False, compare=False)  # the scan gate's (ScanResult, GateDecision)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "reason": self.reason, **({"details": self.details}
                                                                                   if self.details else {})}


ScanFn = Callable[..., tuple[GateResult, "dict[str, Any] | None"]]


def gate_previous(project: Project, pub: Published, to_env: str, *, prev_store: ArtifactStore | None = None,
                  events: list[ledger_mod.Event] | None = None) -> GateResult:
    """The build must already be in the environment before ``to_env`` in the configured order, and not have
    been rolled back there (a build pulled out of staging does not go on to prod)."""
    prev = project.config.previous_env(to_env)
    if prev is None:
        return GateResult("previous", True, f"{to_env} is the first environment")
    store = prev_store or store_for(project, prev, str(pub.key))
    if not store.holds(pub):
        return GateResult("previous", False, f"digest is not in {prev}: promote to {prev} first", {"env": prev})
    if pub.digest in arrivals_and_rollbacks(events or [], str(pub.key), prev)[1]:
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
        return GateResult("soak", True, f"{human(spent)} in {prev} (need {gates.soak})", details)
    return GateResult("soak", False, f"only {human(spent)} in {prev}, need {gates.soak} "
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
    spec = None
    ddir = project.definitions_dir
    if ddir.is_dir() or ddir.is_symlink():
        # the definition's own policy override (from the validated-fleet cache when the repository is as it was
        # at the last load: bakery.speccache). Definitions that do not load raise their problems (exit 2): the
        # image's own policy is then unknown, and the global one in its place would be a silent change of gate.
        # Without a definitions directory (promotion from a checkout of bakery.yaml alone) the global policy
        # applies.
        spec = speccache.spec_for(project, pub.key, _load_fleet)
    from bakery import scan as scan_mod  # only where the scan gate applies

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
    reason = f"{reason}; {how}" + (f", {human(age)} old" if age is not None and age.total_seconds() >= 1 else "") \
        + f", max {gates.max_scan_age}"
    details = {k: summary[k] for k in ("scanned_at", "db_time", "rescanned", "cached") if summary.get(k) is not None}
    details["max_scan_age"] = gates.max_scan_age
    return GateResult("scan", bool(decision.passed), reason, details, scanned=(result, decision)), summary


def _load_fleet(project: Project) -> Any:
    from bakery.definitions import load_fleet  # start-up: only a scan gate that misses the cache needs them

    return load_fleet(project)


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


def human(delta: dt.timedelta) -> str:
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


def arrivals_and_rollbacks(events: list[ledger_mod.Event], image: str, env: str) -> tuple[list[str], set[str]]:
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
            details = e.details or {}
            previous = details.get("previous_digest") or details.get("rolled_back_from")  # (older AMI records)
            if previous and previous != e.digest:
                rejected.add(previous)
            rejected.discard(e.digest)
    return seen, rejected


def evaluate(project: Project, pub: Published, to_env: str, *, source: ArtifactStore,
             prev_store: ArtifactStore | None, events: list[ledger_mod.Event], now: dt.datetime,
             approved_by: str | None, scan_fn: ScanFn | None = None,
             dry_run: bool = False) -> tuple[list[GateResult], dict | None]:
    """Every gate of ``to_env`` for ``pub`` (from ``source``): (results, scan summary for the ledger)."""
    gates = project.config.env(to_env).gates
    results: list[GateResult] = []
    summary: dict | None = None
    if gates.require_previous:
        results.append(gate_previous(project, pub, to_env, prev_store=prev_store, events=events))
    if gates.scan:
        if source.scannable:
            scan_gate, summary = (scan_fn or gate_scan)(project, pub, to_env, now)
        else:
            scan_gate = GateResult("scan", True, f"not applicable: {source.noun} builds have no container "
                                                 f"filesystem for Trivy")
        results.append(scan_gate)
    results.append(gate_soak(project, pub, to_env, events, now))
    results.append(gate_approval(project, to_env, approved_by))
    if gates.require_attestations:
        results.append(gate_attestations(pub, to_env, source=source, earlier=results, now=now, dry_run=dry_run))
    return results, summary


def gate_attestations(pub: Published, to_env: str, *, source: ArtifactStore, earlier: list[GateResult],
                      now: dt.datetime, dry_run: bool = False) -> GateResult:
    """Signed evidence (bakery.evidence): every kind ``to_env`` requires, signed by one of its trusted keys and about
    this build, the newest signed scan passed and younger than ``max_scan_age``. A scan the scan gate just ran
    is signed and attached first (not in a dry run), so a stale scan attestation is replaced by the fresh one."""
    scan_gate = next((g for g in earlier if g.name == "scan" and g.passed and g.scanned is not None), None)
    fresh = None if (scan_gate is None or dry_run) else scan_gate.scanned
    passed, reason, details = source.evidence_gate(pub, to_env, now=now, fresh_scan=fresh)
    return GateResult("attestations", passed, reason, details)
