"""Which DB a stored scan result stands for (UpdatedAt *and* the DB file's sha256), and the OS coverage check."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bakery import scan
from bakery.errors import ScannerError
from bakery.trivydb import build_db

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "advisories.yaml"


def _db(tmp_path: Path, name: str, **changes) -> scan.DbInfo:
    data = yaml.safe_load(FIXTURE.read_text())
    data.update(changes)
    src = tmp_path / f"{name}.yaml"
    src.write_text(yaml.safe_dump(data))
    build_db(src, tmp_path / name)
    info = scan.db_info(tmp_path / name)
    assert info is not None
    return info


def _result(db: scan.DbInfo, sha: str) -> scan.ScanResult:
    return scan.ScanResult(image="x", image_id="sha256:" + "1" * 64, digest="", trivy_version="0.59.1",
                           db_updated_at=db.updated_at, scanned_at=dt.datetime.now(dt.timezone.utc), findings=[],
                           db_sha256=sha)


def test_db_sha256_is_the_file_hash_and_is_remembered(tmp_path, monkeypatch):
    project = SimpleNamespace(state_dir=tmp_path / "state")
    db = _db(tmp_path, "a")
    expected = "sha256:" + hashlib.sha256(db.path.read_bytes()).hexdigest()
    scan._DB_SHA_CACHE.clear()
    assert scan.db_sha256(project, db) == expected
    assert (tmp_path / "state" / "scans" / "db-sha256.json").is_file()

    # a new process (empty memory) reads the memo instead of hashing again
    scan._DB_SHA_CACHE.clear()
    monkeypatch.setattr(hashlib, "sha256", lambda: pytest.fail("hashed again"))  # (scan imports it when it hashes)
    assert scan.db_sha256(project, db) == expected
    monkeypatch.undo()

    # the file replaced (a new DB, the same UpdatedAt): hashed again, a different identity
    other = _db(tmp_path, "a", advisories=yaml.safe_load(FIXTURE.read_text())["advisories"][:1])
    assert other.updated_at == db.updated_at
    assert scan.db_sha256(project, other) == "sha256:" + hashlib.sha256(other.path.read_bytes()).hexdigest()
    assert scan.db_sha256(project, other) != expected


def test_a_stored_result_counts_only_for_the_same_db_file(tmp_path):
    db = _db(tmp_path, "a")
    sha = "sha256:" + "a" * 64
    assert scan.same_db(_result(db, sha), db, sha, "0.59.1")
    assert not scan.same_db(_result(db, sha), db, "sha256:" + "b" * 64, "0.59.1")  # same UpdatedAt, other DB
    assert not scan.same_db(_result(db, sha), db, sha, "0.60.0")
    assert not scan.same_db(_result(db, ""), db, sha, "0.59.1")  # stored before the DB's hash was recorded
    # the hash goes into the stored result and the JSON report, and comes back
    data = _result(db, sha).to_json()
    assert data["db_sha256"] == sha and scan.ScanResult.from_json(data).db_sha256 == sha
    del data["db_sha256"]
    assert scan.ScanResult.from_json(data).db_sha256 == ""


@pytest.mark.parametrize("family,name,bucket", [
    ("debian", "12.15", "debian 12"), ("debian", "11.11", "debian 11"), ("alpine", "3.19.1", "alpine 3.19"),
    ("alpine", "3.21_alpha20240807", "alpine 3.21_alpha20240807"), ("ubuntu", "22.04", "ubuntu 22.04"),
    ("redhat", "9.3", None), ("debian", "", None),
])
def test_os_bucket(family, name, bucket):
    assert scan.os_bucket(family, name) == bucket


def test_os_coverage(tmp_path):
    db = _db(tmp_path, "a")  # debian 12 only
    scan.check_os_coverage("img", {"Family": "debian", "Name": "12.15"}, db)
    scan.check_os_coverage("img", {}, db)  # no OS: only language packages, noted by the policy
    scan.check_os_coverage("img", {"Family": "redhat", "Name": "9.3"}, db)  # bucket naming unknown: not checked
    for os_info, needle in [
        ({"Family": "debian", "Name": "11.11"}, "no advisories for debian 11 (it covers: debian 12)"),
        ({"Family": "alpine", "Name": "3.19.1"}, "no advisories for alpine 3.19 (it covers: debian 12)"),
    ]:
        with pytest.raises(ScannerError) as err:
            scan.check_os_coverage("img", os_info, db)
        assert needle in str(err.value) and err.value.exit_code == 3
    db.path.write_bytes(b"\x01" * (3 * 4096))  # unreadable for bakery's reader: no verdict
    scan.check_os_coverage("img", {"Family": "debian", "Name": "11.11"}, db)
