"""The BoltDB writer and the trivy-db v2 layout, read back with an independent minimal BoltDB reader."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
from pathlib import Path

import pytest

from bakery.errors import InputError
from bakery.trivydb import PAGE, _fnv64a, bucket_names, build_db, db_archive, load_advisories, write_bolt

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "advisories.yaml"


def read_bolt(path: Path) -> dict:
    """Walk a BoltDB file the way bbolt does (meta → root bucket → leaf/branch pages, inline buckets)."""
    data = path.read_bytes()
    assert len(data) % PAGE == 0
    metas = []
    for pgid in (0, 1):
        off = pgid * PAGE
        _, flags, _, _ = struct.unpack_from("<QHHI", data, off)
        assert flags == 0x04
        body = data[off + 16: off + 16 + 56]
        magic, version, psize, _, root, _, freelist, hwm, txid = struct.unpack("<IIIIQQQQQ", body)
        (checksum,) = struct.unpack_from("<Q", data, off + 16 + 56)
        assert (magic, version, psize) == (0xED0CDAED, 2, PAGE)
        assert checksum == _fnv64a(body)
        assert hwm * PAGE == len(data)
        metas.append((txid, root, freelist))
    _, root, freelist = max(metas)
    assert struct.unpack_from("<QHHI", data, freelist * PAGE)[1:3] == (0x10, 0)

    def page_items(buf: bytes, off: int) -> list[tuple[int, bytes, bytes]]:
        _, flags, count, _ = struct.unpack_from("<QHHI", buf, off)
        out = []
        if flags == 0x02:
            for i in range(count):
                e = off + 16 + i * 16
                f, pos, ks, vs = struct.unpack_from("<IIII", buf, e)
                out.append((f, buf[e + pos: e + pos + ks], buf[e + pos + ks: e + pos + ks + vs]))
        elif flags == 0x01:
            keys = []
            for i in range(count):
                e = off + 16 + i * 16
                pos, ks, child = struct.unpack_from("<IIQ", buf, e)
                keys.append(buf[e + pos: e + pos + ks])
                children = page_items(data, child * PAGE)
                assert children[0][1] == keys[-1]  # branch key = the child's first key
                out.extend(children)
        else:
            raise AssertionError(f"unexpected page flags {flags:#x}")
        return out

    def bucket(value: bytes) -> dict:
        root_pgid, _ = struct.unpack_from("<QQ", value)
        items = page_items(value, 16) if root_pgid == 0 else page_items(data, root_pgid * PAGE)
        keys = [k for _, k, _ in items]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        return {k: bucket(v) if f & 1 else v for f, k, v in items}

    return bucket(struct.pack("<QQ", root, 0))


def test_small_tree_round_trips(tmp_path):
    tree = {b"b": {b"k1": b"v1", b"k2": b""}, b"a": {b"nested": {b"x": b"1"}}, b"c": {}}
    write_bolt(tree, tmp_path / "t.db")
    assert read_bolt(tmp_path / "t.db") == tree


def test_large_tree_uses_branch_and_overflow_pages(tmp_path):
    big = {f"key{i:06d}".encode(): (b"v" * (9000 if i % 997 == 0 else 40)) for i in range(30000)}
    tree = {b"big": big, b"many": {f"p{i}".encode(): {b"CVE": b"{}"} for i in range(2000)}}
    write_bolt(tree, tmp_path / "t.db")
    size = (tmp_path / "t.db").stat().st_size
    assert size > 50 * PAGE
    assert read_bolt(tmp_path / "t.db") == tree


def test_empty_keys_are_refused(tmp_path):
    with pytest.raises(ValueError):
        write_bolt({b"": {}}, tmp_path / "t.db")


def test_fixture_db_has_the_trivy_v2_layout(tmp_path):
    db_dir = build_db(FIXTURE, tmp_path)
    meta = json.loads((db_dir / "metadata.json").read_text())
    assert meta["Version"] == 2 and meta["NextUpdate"].startswith("2999")
    assert meta["UpdatedAt"] == "2026-11-20T06:00:00.000000Z"
    tree = read_bolt(db_dir / "trivy.db")
    assert set(tree) == {b"debian 12", b"vulnerability", b"data-source"}
    debian = tree[b"debian 12"]
    assert json.loads(debian[b"zlib"][b"CVE-2099-1001"]) == {"FixedVersion": "1:1.2.13.dfsg-1+deb12u1", "Severity": 3}
    assert json.loads(debian[b"gzip"][b"CVE-2099-1002"]) == {"Status": 2, "Severity": 4}
    vuln = json.loads(tree[b"vulnerability"][b"CVE-2099-1001"])
    assert vuln["VendorSeverity"] == {"debian": 3} and vuln["CVSS"]["debian"]["V3Score"] == 8.1
    assert json.loads(tree[b"data-source"][b"debian 12"])["ID"] == "debian"


def test_db_archive_holds_both_files(tmp_path):
    db_dir = build_db(FIXTURE, tmp_path)
    blob = db_archive(db_dir)
    assert blob == db_archive(db_dir)  # deterministic: the same DB gives the same layer digest
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        assert sorted(tar.getnames()) == ["metadata.json", "trivy.db"]
        assert tar.extractfile("trivy.db").read() == (db_dir / "trivy.db").read_bytes()


@pytest.mark.parametrize("text,needle", [
    ("advisories: [{id: X, package: zlib, severity: SEVERE}]", "advisories[0].severity: 'SEVERE'"),
    ("advisories: [{id: X, package: zlib, fixd: '1'}]", "unknown field 'fixd'"),
    ("advisories: [{package: zlib}]", "advisories[0].id: required"),
    ("advisories: 3", "advisories: expected a list"),
    ("advisories: [\n", "invalid YAML"),
])
def test_bad_advisory_files_name_file_and_field(tmp_path, text, needle):
    path = tmp_path / "adv.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_advisories(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_fixture_covers_the_five_cases():
    adv = {a.id: a for a in load_advisories(FIXTURE).advisories}
    assert adv["CVE-2099-1001"].fixed and adv["CVE-2099-1002"].fixed is None
    assert {a.package for a in adv.values()} >= {"zlib", "gzip", "tar", "bzip2", "xz-utils"}


def test_bucket_names_reads_only_the_top_level(tmp_path):
    db_dir = build_db(FIXTURE, tmp_path)
    assert bucket_names(db_dir / "trivy.db") == ["data-source", "debian 12", "vulnerability"]
    # a root bucket spread over branch and leaf pages, next to a big nested bucket, values that are not buckets
    tree = {f"alpine 3.{i}".encode(): {b"k": b"v"} for i in range(400)}
    tree[b"vulnerability"] = {f"CVE-{i:06d}".encode(): b"x" * 300 for i in range(5000)}
    tree[b"plain"] = b"not a bucket"
    write_bolt(tree, tmp_path / "t.db")
    names = bucket_names(tmp_path / "t.db")
    assert names == sorted(k.decode() for k in tree if k != b"plain")


def test_bucket_names_refuses_what_is_not_boltdb(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x01" * (3 * PAGE))
    with pytest.raises(ValueError):
        bucket_names(junk)
