"""Scan reports (table, JSON, SARIF 2.1.0 against the official schema, Markdown) and reading trivy's JSON."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest

from bakery import reports
from bakery.errors import ScannerError
from bakery.policy import EffectivePolicy, IgnoreRule, decide
from bakery.scan import Finding, ScanResult, parse_report

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "sarif-schema-2.1.0.json").read_text())
TODAY = dt.date(2026, 11, 26)


def sample():
    fs = [
        Finding("CVE-1", "zlib1g", "1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1+deb12u1", "HIGH", "zlib | overflow <b>",
                url="https://example.invalid/CVE-1", score=8.1),
        Finding("CVE-2", "gzip", "1.12-1", "", "CRITICAL", "gzip crash"),
        Finding("CVE-3", "libbz2-1.0", "1.0.8-5+b1", "1.0.8-6", "HIGH", "bzip2"),
        Finding("CVE-4", "libtinfo6", "6.4-4", "6.4-4+deb12u1", "LOW", "ncurses"),
    ]
    t = dt.datetime(2026, 11, 20, 6, tzinfo=dt.timezone.utc)
    r = ScanResult(image="127.0.0.1:5001/team/python@sha256:" + "c" * 64, image_id="sha256:" + "a" * 64,
                   digest="sha256:" + "c" * 64, trivy_version="0.59.1", db_updated_at=t, scanned_at=t,
                   findings=fs, os="debian 12.15", remote=True, trivy_seconds=1.2)
    pol = EffectivePolicy("HIGH", True, (IgnoreRule("CVE-3", "not reachable", dt.date(2999, 1, 1)),
                                         IgnoreRule("CVE-9", "left behind")))
    return r, decide(r, pol, today=TODAY)


def test_sarif_is_valid_against_the_official_schema():
    r, d = sample()
    log = reports.sarif(r, d)
    jsonschema.Draft4Validator(SCHEMA).validate(log)
    run = log["runs"][0]
    assert log["version"] == "2.1.0"
    assert [rule["id"] for rule in run["tool"]["driver"]["rules"]] == ["CVE-1", "CVE-2", "CVE-3", "CVE-4"]
    by_id = {res["ruleId"]: res for res in run["results"]}
    assert by_id["CVE-1"]["level"] == "error" and "Gate: fails" in by_id["CVE-1"]["message"]["text"]
    assert by_id["CVE-2"]["level"] == "warning" and by_id["CVE-4"]["level"] == "note"
    assert by_id["CVE-3"]["suppressions"][0]["kind"] == "external"
    assert by_id["CVE-1"]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "team/python"
    assert run["tool"]["driver"]["rules"][0]["properties"]["security-severity"] == "8.1"
    assert run["properties"]["gatePassed"] is False


def test_schema_check_is_not_vacuous():
    r, d = sample()
    log = reports.sarif(r, d)
    log["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(SCHEMA).validate(log)


def test_markdown_for_the_step_summary():
    r, d = sample()
    md = reports.markdown(r, d)
    assert md.startswith("### ❌ bakery scan: `127.0.0.1:5001/team/python@sha256:")
    assert "| 1 | 2 | 0 | 1 | 0 |" in md  # CRITICAL HIGH MEDIUM LOW UNKNOWN
    assert "| CVE-1 | HIGH | zlib1g | 1:1.2.13.dfsg-1 | 1:1.2.13.dfsg-1+deb12u1 |" in md
    assert "**Ignored (1)**" in md and "**No fix available (1)**" in md and "**Stale ignore entries**" in md
    assert "DB updated 2026-11-20T06:00:00Z" in md


def test_table_lists_counts_and_failing_findings_with_versions():
    r, d = sample()
    text = reports.table(r, d, width=160)
    assert "1 CRITICAL, 2 HIGH, 0 MEDIUM, 1 LOW, 0 UNKNOWN (total 4)" in text
    assert "Gate (HIGH+, fixable only): FAILED - 1 failing finding(s)" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("CVE-1"))
    assert "1:1.2.13.dfsg-1 " in row and "1:1.2.13.dfsg-1+deb12u1" in row
    assert "Stale ignore entries" in text and "CVE-9" in text


def test_json_report_round_trips_the_scan_result():
    r, d = sample()
    data = json.loads(reports.render("json", r, d))
    assert data["gate"]["failing"][0]["id"] == "CVE-1" and data["gate"]["passed"] is False
    assert ScanResult.from_json(data["scan"]).findings == r.findings
    assert data["scan"]["db_updated_at"] == "2026-11-20T06:00:00Z"


TRIVY_JSON = {
    "SchemaVersion": 2, "ArtifactName": "img", "ArtifactType": "container_image",
    "Metadata": {"OS": {"Family": "debian", "Name": "12.15"}, "ImageID": "sha256:" + "a" * 64},
    "Results": [{"Target": "img (debian 12.15)", "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": [
        {"VulnerabilityID": "CVE-1", "PkgName": "zlib1g", "InstalledVersion": "1.0", "FixedVersion": "1.1",
         "Status": "fixed", "Severity": "HIGH", "Title": "t", "CVSS": {"debian": {"V3Score": 8.1}}},
        {"VulnerabilityID": "CVE-2", "PkgName": "gzip", "InstalledVersion": "1.12-1", "Status": "affected",
         "Severity": "CRITICAL"},
    ]}],
}


def test_reading_trivy_json():
    _, findings = parse_report(json.dumps(TRIVY_JSON), "img")
    assert [(f.id, f.package, f.fixed, f.severity, f.score) for f in findings] == [
        ("CVE-2", "gzip", "", "CRITICAL", None), ("CVE-1", "zlib1g", "1.1", "HIGH", 8.1)]


@pytest.mark.parametrize("stdout,needle", [
    ("", "not valid JSON"),
    ("Segmentation fault", "not valid JSON"),
    ("[]", "not a trivy JSON report"),
    (json.dumps({**TRIVY_JSON, "SchemaVersion": 1}), "not a trivy JSON report"),
    (json.dumps({**TRIVY_JSON, "Results": [{"Vulnerabilities": [{"PkgName": "x"}]}]}), "unexpected vulnerability"),
])
def test_unreadable_trivy_output_fails_closed(stdout, needle):
    with pytest.raises(ScannerError) as err:
        parse_report(stdout, "img")
    assert needle in str(err.value) and err.value.exit_code == 3


def test_table_shortens_the_list_below_the_threshold():
    r, _ = sample()
    many = [Finding(f"CVE-L{i}", "libx", "1", "2", "LOW") for i in range(40)]
    r.findings = r.findings + many
    d = decide(r, EffectivePolicy("HIGH", True, ()), today=TODAY)
    text = reports.table(r, d, width=160)
    assert "... and 16 more below HIGH" in text  # 41 LOW findings, 25 shown
    assert len(json.loads(reports.render("json", r, d))["gate"]["below_threshold"]) == 41


def test_the_table_prints_user_text_as_written_not_as_rich_markup():
    """Ignore reasons, package names and image names come from definitions and registries: `[bold]`, `[/]` or
    `:smile:` in them is printed as written (rich markup would drop or replace it, or fail on a stray `[/x]`)."""
    r, _ = sample()
    import dataclasses

    r = dataclasses.replace(r, image="127.0.0.1:5001/team/[red]py[/red]@sha256:" + "c" * 64, findings=[
        dataclasses.replace(f, package="lib[/oops]bz2") if f.id == "CVE-3" else f for f in r.findings])
    pol = EffectivePolicy("HIGH", True, (IgnoreRule("CVE-3", "[bold]safe[/bold] :smile: [link=x]y[/link]",
                                                    dt.date(2999, 1, 1)),))
    text = reports.table(r, decide(r, pol, today=TODAY), width=200)
    assert "[bold]safe[/bold] :smile: [link=x]y[/link]" in text
    assert "team/[red]py[/red]@sha256" in text and "lib[/oops]bz2" in text
