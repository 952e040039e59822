"""The scan gate's policy: severity threshold, fixable_only, and ignore entries with scope and expiry.

Sources of ignore entries, all applied by bakery (never passed to trivy, so that ignored findings stay visible
and stale entries can be reported): ``policy.ignore`` in bakery.yaml, the definition's ``policy.ignore``, and
``.trivyignore`` / ``.trivyignore.yaml`` at the repository root.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery import contain
from bakery.errors import InputError
from bakery.ref import Ref
from bakery.terms import SEVERITIES as SEVERITY_ORDER
from bakery.terms import iso_z as _iso
from bakery.validation import load_yaml, read_text

if TYPE_CHECKING:
    from bakery.config import Project
    from bakery.model import ImageSpec
    from bakery.scan import Finding, ScanResult


@dataclass(frozen=True)
class IgnoreRule:
    """One ignore entry, whatever file it came from."""

    id: str
    reason: str = ""
    until: dt.date | None = None
    image: str | None = None  # glob over the image reference, repository, or definition NAME[:VERSION]
    package: str | None = None  # glob over the installed or source package name
    source: str = "bakery.yaml"  # where it was written

    def expired(self, today: dt.date) -> bool:
        """Valid through its ``until`` day; from the day after, it no longer applies."""
        return self.until is not None and today > self.until

    def matches(self, finding: Finding, images: tuple[str, ...]) -> bool:
        if finding.id.upper() != self.id.upper():
            return False
        if self.package and not any(fnmatch.fnmatchcase(p, self.package)
                                    for p in (finding.package, finding.pkg_source) if p):
            return False
        if self.image and not any(fnmatch.fnmatchcase(i, self.image) for i in images if i):
            return False
        return True

    def describe(self) -> str:
        scope = "".join(f" {k}={v}" for k, v in (("image", self.image), ("package", self.package)) if v)
        until = f" until {self.until.isoformat()}" if self.until else ""
        return f"{self.id}{scope}{until} ({self.source})"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "reason": self.reason, "until": self.until.isoformat() if self.until else None,
                "image": self.image, "package": self.package, "source": self.source}


@dataclass(frozen=True)
class EffectivePolicy:
    severity: str
    fixable_only: bool
    ignore: tuple[IgnoreRule, ...]

    @property
    def threshold(self) -> int:
        return SEVERITY_ORDER.index(self.severity)


@dataclass
class GateDecision:
    """The gate's verdict on one scan result, with every finding accounted for."""

    passed: bool
    failing: list[tuple[Finding, str]]  # (finding, why it fails)
    ignored: list[tuple[Finding, IgnoreRule]]
    expired: list[tuple[IgnoreRule, list[Finding]]]  # expired entries and the findings they no longer cover
    stale: list[IgnoreRule]  # valid entries that match no finding
    unfixed: list[Finding]  # at or above the threshold but no fix: reported, not failing (fixable_only)
    below: list[Finding]  # under the threshold
    counts: dict[str, int]
    severity: str = "HIGH"
    fixable_only: bool = True
    image: str = ""
    image_id: str = ""
    digest: str = ""
    db_updated_at: dt.datetime | None = None
    scanned_at: dt.datetime | None = None
    trivy_version: str = ""
    cached: bool = False
    notes: list[str] = field(default_factory=list)

    def reason(self) -> str:
        """One line: why the gate passed or failed."""
        if self.passed:
            extra = []
            if self.unfixed:
                extra.append(f"{len(self.unfixed)} without a fix")
            if self.ignored:
                extra.append(f"{len(self.ignored)} ignored")
            return "passed" + (f" ({', '.join(extra)})" if extra else "")
        head = "; ".join(f"{f.id} in {f.package} {f.installed}: {why}" for f, why in self.failing[:3])
        more = f" (+{len(self.failing) - 3} more)" if len(self.failing) > 3 else ""
        return f"{len(self.failing)} finding(s) fail the gate: {head}{more}"

    def summary(self) -> dict[str, Any]:
        """Counts, verdict and DB time, for the ledger and build/promote JSON."""
        return {
            "passed": self.passed, "counts": dict(self.counts), "failing": len(self.failing),
            "failing_ids": sorted({f.id for f, _ in self.failing}), "ignored": len(self.ignored),
            "expired": sorted({r.id for r, _ in self.expired}), "stale": sorted({r.id for r in self.stale}),
            "unfixed": len(self.unfixed), "severity": self.severity, "fixable_only": self.fixable_only,
            "image_id": self.image_id, "digest": self.digest or None, "db_time": _iso(self.db_updated_at),
            "scanned_at": _iso(self.scanned_at), "trivy_version": self.trivy_version, "cached": self.cached,
            "reason": self.reason(),
        }

    def to_json(self) -> dict[str, Any]:
        def f(x: Finding) -> dict[str, Any]:
            return {"id": x.id, "package": x.package, "installed": x.installed, "fixed": x.fixed or None,
                    "severity": x.severity, "title": x.title}

        data = self.summary()
        data.update({
            "failing": [{**f(x), "reason": why} for x, why in self.failing],
            "ignored": [{**f(x), "ignore": r.to_json()} for x, r in self.ignored],
            "expired": [{"ignore": r.to_json(), "findings": [f(x) for x in xs]} for r, xs in self.expired],
            "stale": [r.to_json() for r in self.stale],
            "unfixed": [f(x) for x in self.unfixed],
            "below_threshold": [f(x) for x in self.below],
            "notes": list(self.notes),
        })
        return data


# ---------------------------------------------------------------------------------------------- sources
_TRIVYIGNORE_LINE = re.compile(r"^(?P<id>\S+)(?:\s+exp:(?P<exp>\d{4}-\d{2}-\d{2}))?\s*(?:#.*)?$")


def parse_trivyignore(path: Path, display: str = ".trivyignore") -> list[IgnoreRule]:
    """``.trivyignore``: one ID per line, ``#`` comments, optional ``exp:YYYY-MM-DD``."""
    rules: list[IgnoreRule] = []
    for n, raw in enumerate(read_text(path, display=display).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _TRIVYIGNORE_LINE.match(line)
        if not m:
            raise InputError(f"{display}:{n}: expected 'ID [exp:YYYY-MM-DD]', got {line!r}")
        until = None
        if m.group("exp"):
            try:
                until = dt.date.fromisoformat(m.group("exp"))
            except ValueError:
                raise InputError(f"{display}:{n}: exp: not a date: {m.group('exp')!r}") from None
        comment = raw.split("#", 1)[1].strip() if "#" in raw else ""
        rules.append(IgnoreRule(id=m.group("id"), reason=comment, until=until, source=f"{display}:{n}"))
    return rules


def _purl_name(purl: str) -> str:
    # pkg:deb/debian/zlib1g@1.2?arch=amd64 → zlib1g
    body = purl.split("?", 1)[0].split("@", 1)[0]
    return body.rsplit("/", 1)[-1]


def parse_trivyignore_yaml(path: Path, display: str = ".trivyignore.yaml") -> list[IgnoreRule]:
    """``.trivyignore.yaml``: ``vulnerabilities: [{id, statement, expired_at, purls, paths}]``."""
    data = load_yaml(path, display=display) or {}
    if not isinstance(data, dict):
        raise InputError(f"{display}: (top level): expected a mapping with 'vulnerabilities'")
    entries = data.get("vulnerabilities") or []
    if not isinstance(entries, list):
        raise InputError(f"{display}: vulnerabilities: expected a list")
    rules: list[IgnoreRule] = []
    for i, e in enumerate(entries):
        where = f"{display}: vulnerabilities[{i}]"
        if not isinstance(e, dict) or not e.get("id"):
            raise InputError(f"{where}.id: required")
        unknown = set(e) - {"id", "statement", "expired_at", "purls", "paths"}
        if unknown:
            raise InputError(f"{where}: unknown field {sorted(unknown)[0]!r} (allowed: id, statement, expired_at, "
                             f"purls, paths)")
        until = e.get("expired_at")
        if until is not None and not isinstance(until, dt.date):
            try:
                until = dt.date.fromisoformat(str(until)[:10])
            except ValueError:
                raise InputError(f"{where}.expired_at: not a date: {until!r}") from None
        if isinstance(until, dt.datetime):
            until = until.date()
        purls = e.get("purls") or [None]
        for purl in purls:
            rules.append(IgnoreRule(id=str(e["id"]), reason=str(e.get("statement") or ""), until=until,
                                    package=_purl_name(str(purl)) if purl else None,
                                    source=f"{display}: vulnerabilities[{i}]"))
    return rules


def effective_policy(project: Project, spec: ImageSpec | None = None) -> EffectivePolicy:
    """The global policy, overridden by the definition's ``policy`` (its ignore entries add to the global ones),
    plus the repository's .trivyignore files."""
    pol = project.config.policy
    severity, fixable_only = pol.severity, pol.fixable_only
    cfg = project.rel(project.config_file) if project.config_file else "bakery.yaml"
    rules = [_rule(e, cfg) for e in pol.ignore]
    override = spec.policy if spec is not None else None
    if override:
        where = f"{spec.source_file}: policy"
        if override.get("severity") is not None:
            sev = str(override["severity"]).upper()
            if sev not in SEVERITY_ORDER:
                raise InputError(f"{where}.severity: {override['severity']!r} is not one of "
                                 f"{', '.join(SEVERITY_ORDER)}")
            severity = sev
        if override.get("fixable_only") is not None:
            fixable_only = bool(override["fixable_only"])
        if spec.ignore is not None:  # validated when the definition was loaded (bakery.definitions, speccache)
            rules += [_rule(entry, spec.source_file) for entry in spec.ignore]
        for i, raw in enumerate(override.get("ignore") or [] if spec.ignore is None else []):
            # pydantic only for a definition's own ignore entries: the CLI's start-up (scan, promote) stays
            # without it (bakery.configview)
            import pydantic

            from bakery.config import IgnoreEntry

            try:
                entry = IgnoreEntry.model_validate(raw)
            except pydantic.ValidationError as err:  # one line naming the field
                first = err.errors()[0]
                loc = ".".join(str(x) for x in first.get("loc", ()))
                raise InputError(f"{where}.ignore[{i}]{'.' + loc if loc else ''}: {first.get('msg')}") from None
            rules.append(_rule(entry, spec.source_file))
    for name, parser in ((".trivyignore", parse_trivyignore), (".trivyignore.yaml", parse_trivyignore_yaml),
                         (".trivyignore.yml", parse_trivyignore_yaml)):
        path = project.root / name
        if os.path.lexists(path):
            contain.require(project.root, path, name)  # not a symlink out of the repository, not a FIFO
            rules.extend(parser(path, name))
    return EffectivePolicy(severity=severity, fixable_only=fixable_only, ignore=tuple(rules))


def _rule(entry: Any, source: str) -> IgnoreRule:
    return IgnoreRule(id=entry.id, reason=entry.reason, until=entry.until, image=entry.image,
                      package=entry.package, source=source)


def image_names(result: ScanResult, spec: ImageSpec | None = None) -> tuple[str, ...]:
    """What an ignore entry's ``image`` glob is matched against."""
    ref = result.image
    names = [ref]
    parsed = Ref.try_parse(ref)
    if parsed is not None:  # the repository as written (with its host when one was written), the family name
        names += [parsed.name if ref.startswith(parsed.registry + "/") else parsed.repository, parsed.family]
    if spec is not None:
        names += [spec.ref, spec.key.name, f"{spec.key.name}:{spec.key.version}"]
    return tuple(dict.fromkeys(n for n in names if n))


# ---------------------------------------------------------------------------------------------- decision
def decide(result: ScanResult, pol: EffectivePolicy, *, today: dt.date,
           images: tuple[str, ...] | None = None) -> GateDecision:
    """Pure: every finding ends up in exactly one of failing / ignored / unfixed / below."""
    images = images if images is not None else image_names(result)
    valid = [r for r in pol.ignore if not r.expired(today)]
    expired_rules = [r for r in pol.ignore if r.expired(today)]
    failing: list[tuple[Finding, str]] = []
    ignored: list[tuple[Finding, IgnoreRule]] = []
    unfixed: list[Finding] = []
    below: list[Finding] = []
    used: set[IgnoreRule] = set()
    expired_hits: dict[IgnoreRule, list[Finding]] = {r: [] for r in expired_rules}
    for f in result.findings:
        rule = next((r for r in valid if r.matches(f, images)), None)
        if rule is not None:
            used.add(rule)
            ignored.append((f, rule))
            continue
        gone = [r for r in expired_rules if r.matches(f, images)]
        for r in gone:
            expired_hits[r].append(f)
        if f.rank < pol.threshold:
            below.append(f)
            continue
        if pol.fixable_only and not f.fixable:
            unfixed.append(f)
            continue
        why = f"{f.severity} >= {pol.severity}, " + (f"fixed in {f.fixed}" if f.fixable else "no fix available")
        if gone:
            why += f"; ignore entry expired on {gone[0].until.isoformat()} ({gone[0].source})"  # type: ignore[union-attr]
        failing.append((f, why))
    stale = [r for r in valid if r not in used]
    return GateDecision(
        passed=not failing, failing=failing, ignored=ignored,
        expired=[(r, expired_hits[r]) for r in expired_rules], stale=stale, unfixed=unfixed, below=below,
        counts=result.counts, severity=pol.severity, fixable_only=pol.fixable_only, image=result.image,
        image_id=result.image_id, digest=result.digest, db_updated_at=result.db_updated_at,
        scanned_at=result.scanned_at, trivy_version=result.trivy_version, cached=result.cached,
        notes=[] if result.os else ["trivy detected no OS in this image: only language packages were checked"],
    )


def evaluate(project: Project, result: ScanResult, *, spec: ImageSpec | None = None,
             now: dt.date | None = None) -> GateDecision:
    """Apply the effective policy for ``spec`` (or the global one) to ``result``."""
    today = now or dt.datetime.now(dt.timezone.utc).date()
    if isinstance(today, dt.datetime):
        today = today.date()
    return decide(result, effective_policy(project, spec), today=today, images=image_names(result, spec))
