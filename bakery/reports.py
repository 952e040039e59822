"""Scan reports: a table for people, JSON for machines, SARIF 2.1.0 for code scanning, Markdown for
``$GITHUB_STEP_SUMMARY``. Pure functions of (ScanResult, GateDecision)."""

from __future__ import annotations

import io
import re
from typing import Any

from bakery import __version__
from bakery.policy import GateDecision
from bakery.ref import Ref
from bakery.scan import SEVERITY_ORDER, Finding, ScanResult, _iso

FORMATS = ("table", "json", "sarif", "markdown")
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
BELOW_SHOWN = 25  # findings under the threshold listed in the table (all are in JSON and SARIF)
_SECURITY_SEVERITY = {"CRITICAL": "9.5", "HIGH": "8.0", "MEDIUM": "5.5", "LOW": "2.0", "UNKNOWN": "0.0"}


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in reversed(SEVERITY_ORDER))


def _verdict(d: GateDecision) -> str:
    return "PASSED" if d.passed else "FAILED"


# ---------------------------------------------------------------------------------------------- JSON
def to_json(result: ScanResult, decision: GateDecision) -> dict[str, Any]:
    return {"image": result.image, "scan": result.to_json(), "gate": decision.to_json()}


# ---------------------------------------------------------------------------------------------- table
def table(result: ScanResult, decision: GateDecision, *, width: int | None = None) -> str:
    """The report for people, as text (rich renders it; plain when not on a terminal)."""
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    import shutil

    width = width or max(100, shutil.get_terminal_size((120, 24)).columns)
    # markup and emoji off: image names, packages and ignore reasons are printed as written (a `[/x]` in a
    # definition's reason would otherwise fail the report, and `:smile:` or `[bold]` change it)
    console = Console(file=buf, width=width, highlight=False, soft_wrap=False, no_color=True, markup=False,
                      emoji=False)
    where = f"{result.image}" + (f" ({result.image_id[:19]})" if result.image_id else "")
    src = "from the result store" if result.cached else f"scanned in {result.trivy_seconds:.1f}s"
    console.print(f"{where}: {result.os or 'no OS detected'}; trivy {result.trivy_version}, DB updated "
                  f"{_iso(result.db_updated_at)}; {src}")
    console.print(f"Vulnerabilities: {_counts_line(result.counts)} (total {len(result.findings)})")
    console.print(f"Gate ({decision.severity}+{', fixable only' if decision.fixable_only else ''}): "
                  f"{_verdict(decision)}" + (f" - {len(decision.failing)} failing finding(s)" if decision.failing
                                             else ""))

    def section(title: str, cols: list[str], rows: list[list[str]]) -> None:
        if not rows:
            return
        t = Table(title=title, title_justify="left", show_edge=False, box=None, pad_edge=False,
                  header_style="bold")
        for c in cols:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*r)
        console.print()
        console.print(t)

    section("Failing", ["ID", "SEVERITY", "PACKAGE", "INSTALLED", "FIXED", "WHY"],
            [[f.id, f.severity, f.package, f.installed, f.fixed or "-", why] for f, why in decision.failing])
    section("Expired ignore entries (no longer applied)", ["ID", "UNTIL", "SOURCE", "FINDINGS"],
            [[r.id, r.until.isoformat() if r.until else "-", r.source, str(len(fs))] for r, fs in decision.expired])
    section("Ignored", ["ID", "PACKAGE", "INSTALLED", "FIXED", "UNTIL", "REASON"],
            [[f.id, f.package, f.installed, f.fixed or "-", r.until.isoformat() if r.until else "-", r.reason]
             for f, r in decision.ignored])
    section("No fix available (reported, not failing)", ["ID", "SEVERITY", "PACKAGE", "INSTALLED"],
            [[f.id, f.severity, f.package, f.installed] for f in decision.unfixed])
    below = decision.below[:BELOW_SHOWN]
    section(f"Below {decision.severity}", ["ID", "SEVERITY", "PACKAGE", "INSTALLED", "FIXED"],
            [[f.id, f.severity, f.package, f.installed, f.fixed or "-"] for f in below])
    if len(decision.below) > len(below):
        console.print(f"... and {len(decision.below) - len(below)} more below {decision.severity} "
                      f"(--format json lists every finding)")
    section("Stale ignore entries (match no finding)", ["ID", "SOURCE", "REASON"],
            [[r.id, r.source, r.reason] for r in decision.stale])
    for note in decision.notes:
        console.print(f"note: {note}")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- Markdown
def _md(text: str) -> str:
    return re.sub(r"([|\\`<])", r"\\\1", str(text)).replace("\n", " ")


def markdown(result: ScanResult, decision: GateDecision) -> str:
    icon = "✅" if decision.passed else "❌"
    lines = [
        f"### {icon} bakery scan: `{result.image}` {_verdict(decision).lower()}",
        "",
        f"Image ID `{result.image_id}`" + (f", digest `{result.digest}`" if result.digest else "") +
        f". Trivy {_md(result.trivy_version)}, DB updated {_iso(result.db_updated_at)}, scanned "
        f"{_iso(result.scanned_at)}{' (from the result store)' if result.cached else ''}.",
        f"Gate: fail on {decision.severity} and above" + (", fixable findings only." if decision.fixable_only
                                                          else "."),
        "",
        "| " + " | ".join(reversed(SEVERITY_ORDER)) + " |",
        "|" + "---:|" * len(SEVERITY_ORDER),
        "| " + " | ".join(str(result.counts.get(s, 0)) for s in reversed(SEVERITY_ORDER)) + " |",
    ]

    def section(title: str, head: list[str], rows: list[list[str]]) -> None:
        if not rows:
            return
        lines.extend(["", f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)])
        lines.extend("| " + " | ".join(_md(c) for c in r) + " |" for r in rows)

    section(f"Failing ({len(decision.failing)})", ["ID", "Severity", "Package", "Installed", "Fixed", "Why"],
            [[f.id, f.severity, f.package, f.installed, f.fixed or "-", why] for f, why in decision.failing])
    section("Expired ignore entries", ["ID", "Until", "Source", "Findings"],
            [[r.id, r.until.isoformat() if r.until else "-", r.source, str(len(fs))] for r, fs in decision.expired])
    section(f"Ignored ({len(decision.ignored)})", ["ID", "Package", "Until", "Reason"],
            [[f.id, f.package, r.until.isoformat() if r.until else "-", r.reason] for f, r in decision.ignored])
    section(f"No fix available ({len(decision.unfixed)})", ["ID", "Severity", "Package", "Installed"],
            [[f.id, f.severity, f.package, f.installed] for f in decision.unfixed])
    section("Stale ignore entries", ["ID", "Source", "Reason"], [[r.id, r.source, r.reason] for r in decision.stale])
    for note in decision.notes:
        lines.extend(["", f"> {_md(note)}"])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- SARIF
def _artifact_uri(image: str) -> str:
    """``127.0.0.1:5001/team/python:3.12@sha256:…`` → ``team/python`` (a relative URI code scanning accepts)."""
    ref = Ref.try_parse(image)
    repo = ref.repository if ref is not None else image.split("@", 1)[0]
    return re.sub(r"[^A-Za-z0-9._/-]", "-", repo) or "image"


def _location(result: ScanResult, f: Finding) -> dict[str, Any]:
    return {
        "physicalLocation": {"artifactLocation": {"uri": _artifact_uri(result.image), "uriBaseId": "ROOTPATH"},
                             "region": {"startLine": 1, "startColumn": 1, "endLine": 1, "endColumn": 1}},
        "message": {"text": f"{result.image}: {f.package}@{f.installed}"},
    }


def sarif(result: ScanResult, decision: GateDecision) -> dict[str, Any]:
    """A SARIF 2.1.0 log: one rule per vulnerability ID, one result per finding; ignored findings carry a
    suppression, failing ones are errors."""
    failing = {(f.id, f.package, f.pkg_path): why for f, why in decision.failing}
    ignored = {(f.id, f.package, f.pkg_path): r for f, r in decision.ignored}
    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    results: list[dict[str, Any]] = []
    for f in result.findings:
        if f.id not in index:
            index[f.id] = len(rules)
            rule: dict[str, Any] = {
                "id": f.id, "name": "OsPackageVulnerability",
                "shortDescription": {"text": f.title or f.id},
                "fullDescription": {"text": f.title or f.id},
                "defaultConfiguration": {"level": _level(f, decision)},
                "help": {"text": f"Vulnerability {f.id}\nSeverity: {f.severity}\nPackage: {f.package}\n"
                                 f"Fixed Version: {f.fixed or 'none'}",
                         "markdown": f"**Vulnerability {f.id}**\n\n| Severity | Package | Fixed Version |\n"
                                     f"|---|---|---|\n| {f.severity} | {f.package} | {f.fixed or 'none'} |"},
                "properties": {"precision": "very-high", "security-severity": _score(f),
                               "tags": ["vulnerability", "security", f.severity]},
            }
            if f.url:
                rule["helpUri"] = f.url
            rules.append(rule)
        key = (f.id, f.package, f.pkg_path)
        text = (f"Package: {f.package}\nInstalled Version: {f.installed}\nVulnerability {f.id}\n"
                f"Severity: {f.severity}\nFixed Version: {f.fixed or 'none'}\nImage: {result.image}")
        if key in failing:
            text += f"\nGate: fails ({failing[key]})"
        item: dict[str, Any] = {
            "ruleId": f.id, "ruleIndex": index[f.id], "level": "error" if key in failing else _level(f, decision),
            "message": {"text": text}, "locations": [_location(result, f)],
            "partialFingerprints": {"bakeryFinding/v1": f"{result.image_id}:{f.id}:{f.package}"},
        }
        if key in ignored:
            r = ignored[key]
            item["suppressions"] = [{"kind": "external", "status": "accepted",
                                     "justification": f"{r.reason} (until {r.until}; {r.source})" if r.until
                                     else f"{r.reason} ({r.source})"}]
        results.append(item)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "bakery", "fullName": f"bakery scan (Trivy {result.trivy_version})",
                                "version": __version__, "informationUri": "https://github.com/aquasecurity/trivy",
                                "rules": rules}},
            "results": results,
            "columnKind": "utf16CodeUnits",
            "originalUriBaseIds": {"ROOTPATH": {"uri": "file:///"}},
            "invocations": [{"executionSuccessful": True,
                             "endTimeUtc": _iso(result.scanned_at)}],
            "properties": {"imageName": result.image, "imageID": result.image_id, "repoDigest": result.digest,
                           "dbUpdatedAt": _iso(result.db_updated_at), "gatePassed": decision.passed,
                           "gateSeverity": decision.severity},
        }],
    }


def _level(f: Finding, d: GateDecision) -> str:
    if f.rank >= SEVERITY_ORDER.index(d.severity):
        return "warning"
    return "note"


def _score(f: Finding) -> str:
    return f"{f.score:.1f}" if f.score is not None else _SECURITY_SEVERITY.get(f.severity, "0.0")


def render(fmt: str, result: ScanResult, decision: GateDecision) -> str:
    import json

    if fmt == "json":
        return json.dumps(to_json(result, decision), indent=2) + "\n"
    if fmt == "sarif":
        return json.dumps(sarif(result, decision), indent=2) + "\n"
    if fmt == "markdown":
        return markdown(result, decision)
    if fmt == "table":
        return table(result, decision)
    raise ValueError(f"unknown format {fmt!r}")
