"""A Trivy vulnerability DB (schema v2) built from a readable advisory file, for air-gapped use and tests.

Trivy reads ``CACHE/db/trivy.db`` (a BoltDB file) and ``CACHE/db/metadata.json``. This module writes both
from YAML (see ``tests/fixtures/advisories.yaml``) with a small pure-Python BoltDB writer, and can push the
DB as the OCI artifact ``trivy --db-repository`` pulls.

Advisory file::

    os: debian 12                      # bucket name: OS family + major version
    updated_at: 2026-11-01T00:00:00Z   # optional (default: now)
    advisories:
      - id: CVE-2099-1001
        package: zlib                  # the SOURCE package name
        fixed: "1:1.2.13.dfsg-1+deb12u1"   # omit for "no fix yet"
        severity: HIGH
        title: ...
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery.errors import InputError
from bakery.model import SEVERITIES
from bakery.validation import load_yaml
from bakery.registry import RegistryClient

PAGE = 4096
_LEAF, _BRANCH, _META, _FREELIST = 0x02, 0x01, 0x04, 0x10
_BUCKET_FLAG = 1
SEVERITY_INT = {s: i for i, s in enumerate(SEVERITIES)}  # trivy-db stores the rank
STATUS_AFFECTED = 2

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.aquasec.trivy.config.v1+json"
MEDIA_LAYER = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"

Tree = dict[bytes, "bytes | Tree"]


# ---------------------------------------------------------------------------------------------- BoltDB
def _fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class _Writer:
    """Lays out a nested dict of buckets as BoltDB pages (read-only DB: one transaction, empty freelist)."""

    def __init__(self) -> None:
        self.pages: list[bytes] = []  # pages from pgid 3 on, each padded to a multiple of PAGE
        self.next_pgid = 3

    def _alloc(self, body: bytes, flags: int, count: int) -> int:
        size = 16 + len(body)
        npages = max(1, -(-size // PAGE))
        pgid = self.next_pgid
        self.next_pgid += npages
        data = struct.pack("<QHHI", pgid, flags, count, npages - 1) + body
        self.pages.append(data + b"\0" * (npages * PAGE - len(data)))
        return pgid

    @staticmethod
    def _leaf_body(elems: list[tuple[int, bytes, bytes]]) -> bytes:
        n = len(elems)
        headers, payload = [], b""
        for i, (flags, k, v) in enumerate(elems):
            pos = (n - i) * 16 + len(payload)  # relative to this element's own start
            headers.append(struct.pack("<IIII", flags, pos, len(k), len(v)))
            payload += k + v
        return b"".join(headers) + payload

    @staticmethod
    def _branch_body(children: list[tuple[bytes, int]]) -> bytes:
        n = len(children)
        headers, payload = [], b""
        for i, (k, pgid) in enumerate(children):
            headers.append(struct.pack("<IIQ", (n - i) * 16 + len(payload), len(k), pgid))
            payload += k
        return b"".join(headers) + payload

    def bucket(self, tree: Tree, *, on_page: bool = False) -> bytes:
        """The value stored for a bucket: ``<QQ`` (root pgid, sequence), plus an inline page when small."""
        elems: list[tuple[int, bytes, bytes]] = []
        for key in sorted(tree):
            if not key:
                raise ValueError("BoltDB keys must not be empty")
            value = tree[key]
            if isinstance(value, dict):
                elems.append((_BUCKET_FLAG, key, self.bucket(value)))
            else:
                elems.append((0, key, value))
        inline_size = 16 + sum(16 + len(k) + len(v) for _, k, v in elems)
        if not on_page and all(f == 0 for f, _, _ in elems) and inline_size <= PAGE // 4:
            page = struct.pack("<QHHI", 0, _LEAF, len(elems), 0) + self._leaf_body(elems)
            return struct.pack("<QQ", 0, 0) + page
        return struct.pack("<QQ", self._tree_pages(elems), 0)

    def _tree_pages(self, elems: list[tuple[int, bytes, bytes]]) -> int:
        # leaves: fill each page up to PAGE; an element bigger than a page gets a page with overflow
        groups: list[list[tuple[int, bytes, bytes]]] = [[]]
        size = 16
        for e in elems:
            esize = 16 + len(e[1]) + len(e[2])
            if groups[-1] and size + esize > PAGE:
                groups.append([])
                size = 16
            groups[-1].append(e)
            size += esize
        level = [(g[0][1], self._alloc(self._leaf_body(g), _LEAF, len(g))) for g in groups if g]
        if not level:  # an empty bucket still needs an (empty) leaf page
            return self._alloc(b"", _LEAF, 0)
        while len(level) > 1:
            parents: list[list[tuple[bytes, int]]] = [[]]
            size = 16
            for k, pgid in level:
                if parents[-1] and size + 16 + len(k) > PAGE:
                    parents.append([])
                    size = 16
                parents[-1].append((k, pgid))
                size += 16 + len(k)
            level = [(p[0][0], self._alloc(self._branch_body(p), _BRANCH, len(p))) for p in parents]
        return level[0][1]


def write_bolt(tree: Tree, path: Path) -> None:
    """Write ``tree`` (bytes keys; dict values are buckets, bytes values are values) as a BoltDB file."""
    w = _Writer()
    root_pgid = struct.unpack("<QQ", w.bucket(tree, on_page=True)[:16])[0]  # the root is never inline
    high_water = w.next_pgid

    def meta(pgid: int, txid: int) -> bytes:
        body = struct.pack("<IIIIQQQQQ", 0xED0CDAED, 2, PAGE, 0, root_pgid, 0, 2, high_water, txid)
        page = struct.pack("<QHHI", pgid, _META, 0, 0) + body + struct.pack("<Q", _fnv64a(body))
        return page + b"\0" * (PAGE - len(page))

    freelist = struct.pack("<QHHI", 2, _FREELIST, 0, 0)
    out = meta(0, 0) + meta(1, 1) + freelist + b"\0" * (PAGE - len(freelist)) + b"".join(w.pages)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(out)
    tmp.replace(path)


def bucket_names(path: Path) -> list[str]:
    """The names of the top-level buckets of a BoltDB file ("debian 12", "vulnerability", ...).

    Reads only the meta pages and the root bucket's own pages (a few reads, whatever the file's size), so that
    an upstream trivy DB of a gigabyte costs the same as a fixture. ValueError when the file is not BoltDB.
    """
    with open(path, "rb") as fh:
        head = fh.read(PAGE)
        if len(head) < 16 + 64:
            raise ValueError(f"{path}: too short for a BoltDB file")
        psize = struct.unpack_from("<I", head, 16 + 8)[0]
        if psize < 1024 or psize & (psize - 1):
            raise ValueError(f"{path}: implausible BoltDB page size {psize}")
        metas = []
        for pgid in (0, 1):
            fh.seek(pgid * psize)
            page = fh.read(16 + 64)
            if len(page) < 16 + 64:
                continue
            body = page[16:16 + 56]
            magic, version, _, _, root, _, _, _, txid = struct.unpack("<IIIIQQQQQ", body)
            if magic == 0xED0CDAED and version == 2 and struct.unpack_from("<Q", page, 16 + 56)[0] == _fnv64a(body):
                metas.append((txid, root))
        if not metas:
            raise ValueError(f"{path}: no valid BoltDB meta page")
        names: list[str] = []

        def walk(pgid: int, depth: int) -> None:
            if depth > 8:
                raise ValueError(f"{path}: BoltDB root bucket deeper than 8 levels")
            fh.seek(pgid * psize)
            header = fh.read(16)
            if len(header) < 16:
                raise ValueError(f"{path}: page {pgid} is past the end of the file")
            _, flags, count, overflow = struct.unpack("<QHHI", header)
            fh.seek(pgid * psize)
            buf = fh.read((overflow + 1) * psize)
            for i in range(count):
                e = 16 + i * 16
                if flags == _LEAF:
                    f, pos, ksize, _ = struct.unpack_from("<IIII", buf, e)
                    if f & _BUCKET_FLAG:
                        names.append(buf[e + pos:e + pos + ksize].decode("utf-8", "replace"))
                elif flags == _BRANCH:
                    walk(struct.unpack_from("<IIQ", buf, e)[2], depth + 1)
                else:
                    raise ValueError(f"{path}: page {pgid} is neither a leaf nor a branch (flags {flags:#x})")

        walk(max(metas)[1], 0)
    return names


# ---------------------------------------------------------------------------------------------- advisories
@dataclass(frozen=True)
class Advisory:
    id: str
    package: str  # source package name
    severity: str = "UNKNOWN"
    fixed: str | None = None
    title: str = ""
    description: str = ""
    cvss_vector: str = ""
    cvss_score: float | None = None
    references: tuple[str, ...] = ()
    published: str | None = None


@dataclass
class AdvisoryFile:
    os: str
    advisories: list[Advisory]
    updated_at: dt.datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _utc(value: Any, where: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{where}: not a date-time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def load_advisories(path: Path) -> AdvisoryFile:
    """Read and check an advisory YAML file; problems name the file, entry and field."""
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{path}: advisory file not found")
    data = load_yaml(path, display=str(path), large=True)
    if not isinstance(data, dict) or not isinstance(data.get("advisories"), list):
        raise InputError(f"{path}: advisories: expected a list of advisories")
    os_name = str(data.get("os", "debian 12"))
    out: list[Advisory] = []
    allowed = {"id", "package", "severity", "fixed", "title", "description", "cvss", "references",
               "published", "note"}
    for i, a in enumerate(data["advisories"]):
        where = f"{path}: advisories[{i}]"
        if not isinstance(a, dict):
            raise InputError(f"{where}: expected a mapping")
        unknown = set(a) - allowed
        if unknown:
            raise InputError(f"{where}: unknown field {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(allowed))})")
        for req in ("id", "package"):
            if not a.get(req):
                raise InputError(f"{where}.{req}: required")
        sev = str(a.get("severity", "UNKNOWN")).upper()
        if sev not in SEVERITY_INT:
            raise InputError(f"{where}.severity: {a.get('severity')!r} is not one of {', '.join(SEVERITY_INT)}")
        cvss = a.get("cvss") or {}
        out.append(Advisory(
            id=str(a["id"]), package=str(a["package"]), severity=sev,
            fixed=str(a["fixed"]) if a.get("fixed") not in (None, "") else None,
            title=str(a.get("title", "")), description=str(a.get("description", "")),
            cvss_vector=str(cvss.get("vector", "")), cvss_score=cvss.get("score"),
            references=tuple(str(r) for r in a.get("references", []) or []),
            published=_utc(a["published"], f"{where}.published").strftime("%Y-%m-%dT%H:%M:%SZ")
            if a.get("published") else None,
        ))
    updated = _utc(data["updated_at"], f"{path}: updated_at") if data.get("updated_at") else None
    return AdvisoryFile(os=os_name, advisories=out, updated_at=updated)


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def db_tree(adv: AdvisoryFile) -> Tree:
    """The bucket layout Trivy 0.59 reads (see ENVIRONMENT.md: the trivy-db v2 schema)."""
    family = adv.os.split()[0]
    os_bucket: dict[bytes, Any] = {}
    vulns: dict[bytes, Any] = {}
    for a in adv.advisories:
        pkg = os_bucket.setdefault(a.package.encode(), {})
        value: dict[str, Any] = {"FixedVersion": a.fixed} if a.fixed else {"Status": STATUS_AFFECTED}
        value["Severity"] = SEVERITY_INT[a.severity]
        pkg[a.id.encode()] = _compact(value)
        detail: dict[str, Any] = {"Title": a.title, "Description": a.description,
                                  "VendorSeverity": {family: SEVERITY_INT[a.severity]}}
        if a.cvss_vector or a.cvss_score is not None:
            detail["CVSS"] = {family: {"V3Vector": a.cvss_vector, "V3Score": a.cvss_score}}
        if a.references:
            detail["References"] = list(a.references)
        if a.published:
            detail["PublishedDate"] = a.published
        vulns[a.id.encode()] = _compact(detail)
    source = {"ID": family, "Name": "bakery advisory fixture", "URL": "https://example.invalid/advisories"}
    return {
        adv.os.encode(): os_bucket,
        b"vulnerability": vulns or {b"_": b"{}"},
        b"data-source": {adv.os.encode(): _compact(source)},
    }


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_db(advisories_yaml: Path, cache_dir: Path, updated_at: dt.datetime | None = None) -> Path:
    """Write ``CACHE/db/trivy.db`` and ``CACHE/db/metadata.json``; return the db directory."""
    adv = load_advisories(Path(advisories_yaml))
    updated = updated_at or adv.updated_at or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    db_dir = Path(cache_dir) / "db"
    write_bolt(db_tree(adv), db_dir / "trivy.db")
    metadata = {"Version": 2, "NextUpdate": "2999-01-01T00:00:00Z", "UpdatedAt": _stamp(updated),
                "DownloadedAt": _stamp(dt.datetime.now(dt.timezone.utc))}
    (db_dir / "metadata.json").write_text(json.dumps(metadata))
    return db_dir


def db_archive(db_dir: Path) -> bytes:
    """``db.tar.gz`` holding trivy.db and metadata.json (deterministic: fixed mtimes, no gzip name)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name in ("trivy.db", "metadata.json"):
            data = (Path(db_dir) / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def push_db(cache_dir_or_tar: Path, client: RegistryClient, repository: str = "trivy-db", tag: str = "2") -> str:
    """Push the DB as the OCI artifact ``trivy --db-repository HOST/REPOSITORY:TAG`` pulls; return its digest.

    ``cache_dir_or_tar`` is a trivy cache dir (with ``db/``), a ``db`` dir, or a ready ``db.tar.gz``. ``client``
    comes from :mod:`bakery.registries` (TLS, proxies, credentials, token auth and retries like every push).
    """
    src = Path(cache_dir_or_tar)
    if src.is_file():
        layer = src.read_bytes()
    else:
        db_dir = src / "db" if (src / "db" / "trivy.db").is_file() else src
        if not (db_dir / "trivy.db").is_file():
            raise InputError(f"{src}: no trivy.db found (expected {src}/db/trivy.db)")
        layer = db_archive(db_dir)
    config = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": client.push_blob(repository, config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": client.push_blob(repository, layer), "size": len(layer),
                    "annotations": {"org.opencontainers.image.title": "db.tar.gz"}}],
        "annotations": {"org.opencontainers.image.created": _stamp(dt.datetime.now(dt.timezone.utc))},
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()
    client.put_manifest(repository, tag, body, MEDIA_MANIFEST)
    return "sha256:" + hashlib.sha256(body).hexdigest()
