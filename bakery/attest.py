"""in-toto Statement v1 builders: what bakery attests about one image digest.

Each function returns a plain Statement (``_type``, ``subject``, ``predicateType``, ``predicate``) whose one
subject is the image: ``{"name": REPOSITORY, "digest": {"sha256": HEX}}``. Signing and storing are elsewhere
(bakery.signing, bakery.evidence). Nothing secret goes in: no credentials, no environment dump — only the
named GITHUB_* variables that identify a CI run.

Predicate types, as their authors define them:

* provenance — SLSA provenance v1 (https://slsa.dev/provenance/v1)
* sbom       — CycloneDX, as made by trivy (https://cyclonedx.org/bom)
* scan       — in-toto vulnerabilities v0.1 (https://in-toto.io/attestation/vulns/v0.1), plus bakery's gate
               decision under ``predicate.gate``
* vex        — OpenVEX v0.2.0 (https://openvex.dev/ns/v0.2.0)
* promotion  — bakery's own (https://bakery.dev/attestation/promotion/v1)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bakery import __version__

if TYPE_CHECKING:
    from bakery.policy import GateDecision
    from bakery.scan import ScanResult

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATES = {
    "provenance": "https://slsa.dev/provenance/v1",
    "sbom": "https://cyclonedx.org/bom",
    "scan": "https://in-toto.io/attestation/vulns/v0.1",
    "vex": "https://openvex.dev/ns/v0.2.0",
    "promotion": "https://bakery.dev/attestation/promotion/v1",
}
KIND_OF = {v: k for k, v in PREDICATES.items()}
BUILD_TYPE = "https://bakery.dev/buildtypes/image/v1"
LOCAL_BUILDER = "https://bakery.dev/builders/local"
# OpenVEX's machine-readable justifications for not_affected
VEX_JUSTIFICATIONS = ("component_not_present", "vulnerable_code_not_present", "vulnerable_code_not_in_execute_path",
                      "vulnerable_code_cannot_be_controlled_by_adversary", "inline_mitigations_already_exist")
# The CI variables that identify a GitHub Actions run: named one by one, never the whole environment.
GITHUB_VARS = ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_WORKFLOW",
               "GITHUB_WORKFLOW_REF", "GITHUB_SHA", "GITHUB_REF", "GITHUB_EVENT_NAME", "GITHUB_ACTOR",
               "GITHUB_TRIGGERING_ACTOR", "GITHUB_JOB")


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.timezone.utc)


def hexdigest(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexpart


def statement(kind: str, repository: str, digest: str, predicate: dict[str, Any]) -> dict[str, Any]:
    return {"_type": STATEMENT_TYPE, "subject": [{"name": repository, "digest": {"sha256": hexdigest(digest)}}],
            "predicateType": PREDICATES[kind], "predicate": predicate}


def ci_identity(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The GitHub Actions run (only the named GITHUB_* variables), or None outside CI."""
    environ = os.environ if environ is None else environ
    if environ.get("GITHUB_ACTIONS") != "true" or not environ.get("GITHUB_RUN_ID"):
        return None
    return {k: environ[k] for k in GITHUB_VARS if environ.get(k)}


def _run_url(ci: Mapping[str, str]) -> str:
    server = ci.get("GITHUB_SERVER_URL", "https://github.com")
    url = f"{server}/{ci.get('GITHUB_REPOSITORY', '')}/actions/runs/{ci.get('GITHUB_RUN_ID', '')}"
    return url + (f"/attempts/{ci['GITHUB_RUN_ATTEMPT']}" if ci.get("GITHUB_RUN_ATTEMPT") else "")


def _source_uri(source: str) -> str:
    """A git remote URL without credentials (``https://user:token@host/x`` → ``https://host/x``)."""
    return re.sub(r"^(\w+://)[^/@]+@", r"\1", source)


# ------------------------------------------------------------------------------------------------------------
# provenance


def provenance(*, repository: str, digest: str, image: str, definition_file: str, revision: str, source: str,
               recipe_digest: str, parent_reference: str, parent_digest: str, fingerprint: str, builder: str,
               builder_version: str, started: dt.datetime, finished: dt.datetime,
               environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """SLSA provenance v1 of one built image."""
    ci = ci_identity(environ)
    dirty = revision.endswith("-dirty")
    commit = revision[:-len("-dirty")] if dirty else revision
    deps: list[dict[str, Any]] = []
    if re.fullmatch(r"[0-9a-f]{40}", commit):
        deps.append({"uri": f"git+{_source_uri(source)}", "digest": {"gitCommit": commit},
                     "annotations": {"dirty": dirty}})
    if recipe_digest.startswith("sha256:"):
        deps.append({"name": "recipe", "digest": {"sha256": recipe_digest[7:]}})
    if parent_digest.startswith("sha256:"):
        deps.append({"name": "parent", "uri": parent_reference, "digest": {"sha256": parent_digest[7:]}})
    builder_id = LOCAL_BUILDER
    if ci and ci.get("GITHUB_WORKFLOW_REF"):
        builder_id = f"{ci.get('GITHUB_SERVER_URL', 'https://github.com')}/{ci['GITHUB_WORKFLOW_REF']}"
    metadata: dict[str, Any] = {"startedOn": iso(started), "finishedOn": iso(finished)}
    if ci:
        metadata["invocationId"] = _run_url(ci)
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"image": image, "definition": definition_file,
                                   "source": {"uri": _source_uri(source), "revision": revision, "dirty": dirty}},
            "internalParameters": {"fingerprint": fingerprint, **({"github": ci} if ci else {})},
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": {"id": builder_id, "version": {"bakery": __version__, builder: builder_version}},
            "metadata": metadata,
        },
    }
    return statement("provenance", repository, digest, predicate)


# ------------------------------------------------------------------------------------------------------------
# SBOM


def sbom(*, repository: str, digest: str, bom: dict[str, Any]) -> dict[str, Any]:
    if bom.get("bomFormat") != "CycloneDX":
        raise ValueError("not a CycloneDX document")
    return statement("sbom", repository, digest, bom)


# ------------------------------------------------------------------------------------------------------------
# scan


def scan(*, repository: str, digest: str, result: ScanResult, decision: GateDecision) -> dict[str, Any]:
    """The findings, the gate decision, trivy's version and the DB's identity and age."""
    finished = result.scanned_at + dt.timedelta(seconds=result.trivy_seconds or 0)
    findings = []
    for f in result.findings:
        ann: dict[str, Any] = {"package": f.package, "installed": f.installed, "fixed": f.fixed or None}
        if f.pkg_source:
            ann["source_package"] = f.pkg_source
        entry: dict[str, Any] = {"id": f.id, "severity": [{"method": "trivy", "score": f.severity}],
                                 "annotations": [ann]}
        if f.score is not None:
            entry["severity"].append({"method": "cvss_score", "score": str(f.score)})
        findings.append(entry)
    db_age = result.scanned_at - result.db_updated_at
    predicate = {
        "scanner": {
            "uri": "pkg:github/aquasecurity/trivy",
            "version": result.trivy_version,
            "db": {"uri": "trivy-db", "version": result.db_sha256 or "unknown",
                   "lastUpdate": iso(result.db_updated_at)},
            "result": findings,
        },
        "metadata": {"scanStartedOn": iso(result.scanned_at), "scanFinishedOn": iso(finished)},
        "gate": {
            "passed": bool(decision.passed), "reason": decision.reason(), "severity": decision.severity,
            "fixable_only": decision.fixable_only, "counts": dict(decision.counts),
            "failing": sorted({f.id for f, _ in decision.failing}),
            "ignored": sorted({f.id for f, _ in decision.ignored}),
            "db_age_seconds": int(db_age.total_seconds()), "os": result.os or None,
        },
    }
    return statement("scan", repository, digest, predicate)


# ------------------------------------------------------------------------------------------------------------
# VEX


def product_purl(repository: str, digest: str) -> str:
    """purl of an OCI image: ``pkg:oci/NAME@sha256%3AHEX?repository_url=HOST/PATH``."""
    name = repository.rsplit("/", 1)[-1]
    return f"pkg:oci/{name}@{quote(digest, safe='')}?repository_url={quote(repository, safe='/:')}"


def vex(*, repository: str, digest: str, decision: GateDecision, author: str,
        now: dt.datetime) -> dict[str, Any] | None:
    """OpenVEX v0.2.0 from the policy's ignore entries that the gate applied to this digest: one ``not_affected``
    statement per ignored vulnerability. OpenVEX wants exactly one of ``justification`` (its fixed labels) and
    ``impact_statement`` (free text): an entry whose reason starts with a label (``vulnerable_code_not_in_execute_path:
    …``) gives that label, any other reason is the impact statement. OpenVEX has no field for an end of validity:
    the entry's ``until`` and where it was written go to ``status_notes``. Expired entries apply to nothing and give
    no statement; with no statement at all there is no document (OpenVEX requires one): None."""
    by_id: dict[str, tuple[Any, list[Any]]] = {}
    today = now.date()
    for finding, rule in decision.ignored:
        if rule.expired(today):
            continue
        by_id.setdefault(finding.id, (rule, []))[1].append(finding)
    if not by_id:
        return None
    statements = []
    hexd = hexdigest(digest)
    purl = product_purl(repository, digest)
    for vuln_id in sorted(by_id):
        rule, found = by_id[vuln_id]
        reason = rule.reason or "accepted by policy"
        st: dict[str, Any] = {
            "vulnerability": {"name": vuln_id},
            "timestamp": iso(now),
            "products": [{"@id": purl, "identifiers": {"purl": purl}, "hashes": {"sha-256": hexd},
                          "subcomponents": sorted(({"@id": p} for p in {_pkg_purl(f) for f in found}),
                                                  key=lambda x: x["@id"])}],
            "status": "not_affected",
        }
        label, _, rest = reason.partition(":")
        notes = [f"ignore entry in {rule.source}"]
        if label.strip() in VEX_JUSTIFICATIONS:
            st["justification"] = label.strip()
            if rest.strip():
                notes.append(f"reason: {rest.strip()}")
        else:
            st["impact_statement"] = reason
        if rule.until is not None:
            notes.append(f"valid until {rule.until.isoformat()} (end of that day, UTC)")
        st["status_notes"] = "; ".join(notes)
        statements.append(st)
    doc_id = hashlib.sha256(f"{digest}|{iso(now)}".encode()).hexdigest()
    predicate = {"@context": "https://openvex.dev/ns/v0.2.0", "@id": f"https://bakery.dev/vex/{doc_id}",
                 "author": author, "timestamp": iso(now), "version": 1, "tooling": f"bakery {__version__}",
                 "statements": statements}
    return statement("vex", repository, digest, predicate)


def _pkg_purl(finding: Any) -> str:
    kind = finding.pkg_type or "generic"
    return f"pkg:{'deb/debian' if kind == 'debian' else kind}/{quote(finding.package)}@{quote(finding.installed)}"


# ------------------------------------------------------------------------------------------------------------
# promotion


def approver(approved_by: str | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Who approved: the CI run's actor and environment when there is a CI run (``source: github-actions``, the
    run's URL: GitHub's required reviewers of that environment gated the job), else the ``--approved-by`` text,
    recorded as self-asserted."""
    ci = ci_identity(environ)
    environ = os.environ if environ is None else environ
    if ci and ci.get("GITHUB_ACTOR"):
        out: dict[str, Any] = {"actor": ci.get("GITHUB_TRIGGERING_ACTOR") or ci["GITHUB_ACTOR"],
                               "source": "github-actions", "run": _run_url(ci), "self_asserted": False}
        # the GitHub environment whose protection rules gated the job: GitHub exports no variable for it, so the
        # workflow passes it (promote.yml: BAKERY_CI_ENVIRONMENT: ${{ inputs.environment }}, the job's environment)
        deployed = environ.get("BAKERY_CI_ENVIRONMENT") or environ.get("GITHUB_ENVIRONMENT")
        if deployed:
            out["environment"] = deployed
        if approved_by:
            out["claimed"] = approved_by
        return out
    return {"actor": approved_by, "source": "command line (--approved-by)" if approved_by else "none",
            "self_asserted": True}


def promotion(*, repository: str, digest: str, image: str, build_tag: str, from_env: str, to_env: str,
              source: str, target: str, gates: list[dict[str, Any]], approved_by: str | None, now: dt.datetime,
              environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    predicate = {"image": image, "buildTag": build_tag, "from": from_env, "to": to_env, "source": source,
                 "target": target, "time": iso(now), "gates": gates, "approver": approver(approved_by, environ),
                 "bakeryVersion": __version__}
    return statement("promotion", repository, digest, predicate)
