"""The scan gate's policy: threshold, fixable_only, ignore scope and expiry, stale entries, .trivyignore files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bakery.config import Config, Project
from bakery.errors import InputError
from bakery.model import ImageKey, ImageSpec, Parent
from bakery.policy import (EffectivePolicy, IgnoreRule, decide, effective_policy, evaluate, parse_trivyignore,
                           parse_trivyignore_yaml)
from bakery.scan import Finding, ScanResult

TODAY = dt.date(2026, 11, 26)


def finding(id: str, package: str = "zlib1g", severity: str = "HIGH", fixed: str = "1.1") -> Finding:
    return Finding(id=id, package=package, installed="1.0", fixed=fixed, severity=severity, title=f"{id} title",
                   pkg_source="zlib" if package == "zlib1g" else "")


def result(*findings: Finding, image: str = "127.0.0.1:5001/team/python:3.12-20261126.1") -> ScanResult:
    t = dt.datetime(2026, 11, 20, 6, tzinfo=dt.timezone.utc)
    return ScanResult(image=image, image_id="sha256:" + "a" * 64, digest="", trivy_version="0.59.1",
                      db_updated_at=t, scanned_at=t, findings=list(findings), os="debian 12.15")


def policy(severity: str = "HIGH", fixable_only: bool = True, *rules: IgnoreRule) -> EffectivePolicy:
    return EffectivePolicy(severity=severity, fixable_only=fixable_only, ignore=tuple(rules))


def project(tmp_path: Path, **config) -> Project:
    return Project(root=tmp_path, config=Config.model_validate(config), config_file=None)


def spec(policy_override: dict | None) -> ImageSpec:
    return ImageSpec(key=ImageKey("python", "3.12"), source_file="base-images/python.yaml", template="python",
                     builder="docker", parent=Parent(kind="upstream", reference="docker.io/library/debian:12"),
                     variables={}, tags=(), policy=policy_override)


def test_threshold_decides_what_fails():
    r = result(finding("C1", severity="CRITICAL"), finding("H1"), finding("M1", severity="MEDIUM"),
               finding("U1", severity="UNKNOWN"))
    d = decide(r, policy("HIGH"), today=TODAY)
    assert not d.passed
    assert [f.id for f, _ in d.failing] == ["C1", "H1"]
    assert [f.id for f in d.below] == ["M1", "U1"]
    assert "HIGH >= HIGH, fixed in 1.1" == d.failing[1][1]
    assert [f.id for f, _ in decide(r, policy("CRITICAL"), today=TODAY).failing] == ["C1"]
    assert len(decide(r, policy("LOW"), today=TODAY).failing) == 3
    assert d.counts == {"CRITICAL": 1, "HIGH": 1, "MEDIUM": 1, "LOW": 0, "UNKNOWN": 1}


def test_fixable_only_reports_but_passes_unfixed_findings():
    r = result(finding("C1", severity="CRITICAL", fixed=""))
    d = decide(r, policy("HIGH", True), today=TODAY)
    assert d.passed and [f.id for f in d.unfixed] == ["C1"] and not d.failing
    strict = decide(r, policy("HIGH", False), today=TODAY)
    assert not strict.passed and strict.failing[0][1] == "CRITICAL >= HIGH, no fix available"


def test_ignore_entry_with_package_and_image_scope():
    r = result(finding("H1", package="zlib1g"), finding("H1", package="libc6"))
    by_source = IgnoreRule(id="H1", reason="ok", package="zlib")  # the source package name matches too
    d = decide(r, policy("HIGH", True, by_source), today=TODAY)
    assert [f.package for f, _ in d.ignored] == ["zlib1g"]
    assert [f.package for f, _ in d.failing] == ["libc6"]

    other_image = IgnoreRule(id="H1", reason="ok", image="nginx*")
    d = decide(r, policy("HIGH", True, other_image), today=TODAY)
    assert len(d.failing) == 2 and d.stale == [other_image]
    this_image = IgnoreRule(id="h1", reason="ok", image="*/team/python")  # ids compare case-insensitively
    d = decide(r, policy("HIGH", True, this_image), today=TODAY)
    assert d.passed and len(d.ignored) == 2 and not d.stale


def test_until_date_is_inclusive_then_the_entry_expires():
    r = result(finding("H1"))
    rule = IgnoreRule(id="H1", reason="waiver", until=TODAY)
    assert decide(r, policy("HIGH", True, rule), today=TODAY).passed
    d = decide(r, policy("HIGH", True, rule), today=TODAY + dt.timedelta(days=1))
    assert not d.passed
    assert d.expired == [(rule, [r.findings[0]])]
    assert f"ignore entry expired on {TODAY.isoformat()}" in d.failing[0][1]
    assert d.stale == []  # expired entries are reported as expired, not as stale


def test_entry_matching_nothing_is_stale():
    rule = IgnoreRule(id="GONE", reason="fixed long ago")
    d = decide(result(finding("H1", severity="LOW")), policy("HIGH", True, rule), today=TODAY)
    assert d.passed and d.stale == [rule]
    assert d.summary()["stale"] == ["GONE"]


def test_summary_for_the_ledger():
    d = decide(result(finding("H1")), policy(), today=TODAY)
    s = d.summary()
    assert s["passed"] is False and s["failing_ids"] == ["H1"] and s["db_time"] == "2026-11-20T06:00:00Z"
    assert s["counts"]["HIGH"] == 1 and s["trivy_version"] == "0.59.1"
    assert d.reason().startswith("1 finding(s) fail the gate: H1 in zlib1g 1.0")


def test_trivyignore(tmp_path):
    path = tmp_path / ".trivyignore"
    path.write_text("# accepted risks\nCVE-1  # not reachable\n\nCVE-2 exp:2026-01-31\n")
    rules = parse_trivyignore(path)
    assert [(r.id, r.until, r.reason, r.source) for r in rules] == [
        ("CVE-1", None, "not reachable", ".trivyignore:2"), ("CVE-2", dt.date(2026, 1, 31), "", ".trivyignore:4")]
    path.write_text("CVE-3 exp:tomorrow\n")
    with pytest.raises(InputError, match=r"\.trivyignore:1: expected 'ID \[exp:YYYY-MM-DD\]'"):
        parse_trivyignore(path)


def test_trivyignore_yaml(tmp_path):
    path = tmp_path / ".trivyignore.yaml"
    path.write_text("vulnerabilities:\n"
                    "  - id: CVE-1\n    statement: vendor says not affected\n    expired_at: 2027-01-01\n"
                    "    purls: ['pkg:deb/debian/zlib1g@1.0?arch=amd64']\n"
                    "  - id: CVE-2\n")
    rules = parse_trivyignore_yaml(path)
    assert [(r.id, r.package, r.until, r.reason) for r in rules] == [
        ("CVE-1", "zlib1g", dt.date(2027, 1, 1), "vendor says not affected"), ("CVE-2", None, None, "")]
    path.write_text("vulnerabilities:\n  - id: CVE-1\n    expires: 2027-01-01\n")
    with pytest.raises(InputError, match=r"vulnerabilities\[0\]: unknown field 'expires'"):
        parse_trivyignore_yaml(path)


def test_repository_files_and_definition_override_join_the_global_policy(tmp_path):
    (tmp_path / ".trivyignore").write_text("CVE-T1\n")
    (tmp_path / ".trivyignore.yaml").write_text("vulnerabilities:\n  - id: CVE-T2\n    statement: s\n")
    p = project(tmp_path, policy={"severity": "critical", "ignore": [{"id": "CVE-G", "reason": "global"}]})
    pol = effective_policy(p)
    assert pol.severity == "CRITICAL" and pol.fixable_only is True
    assert [(r.id, r.source) for r in pol.ignore] == [
        ("CVE-G", "bakery.yaml"), ("CVE-T1", ".trivyignore:1"), ("CVE-T2", ".trivyignore.yaml: vulnerabilities[0]")]

    s = spec({"severity": "medium", "fixable_only": False,
              "ignore": [{"id": "CVE-D", "reason": "only here", "until": "2027-01-01"}]})
    pol = effective_policy(p, s)
    assert (pol.severity, pol.fixable_only) == ("MEDIUM", False)
    assert [r.id for r in pol.ignore] == ["CVE-G", "CVE-D", "CVE-T1", "CVE-T2"]
    assert pol.ignore[1].source == "base-images/python.yaml" and pol.ignore[1].until == dt.date(2027, 1, 1)

    # the definition's name matches an image-scoped entry even when the image reference is an ID
    p2 = project(tmp_path, policy={"ignore": [{"id": "H1", "reason": "r", "image": "python:3.12"}]})
    d = evaluate(p2, result(finding("H1"), image="sha256:" + "b" * 64), spec=spec(None), now=TODAY)
    assert d.passed and len(d.ignored) == 1


@pytest.mark.parametrize("override,needle", [
    ({"severity": "SEVERE"}, "base-images/python.yaml: policy.severity: 'SEVERE'"),
    ({"ignore": [{"id": "X"}]}, "base-images/python.yaml: policy.ignore[0].reason"),
])
def test_bad_definition_override_names_file_and_field(tmp_path, override, needle):
    with pytest.raises(InputError) as err:
        effective_policy(project(tmp_path), spec(override))
    assert needle in str(err.value)
