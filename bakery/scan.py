"""The scanner stage: every call to trivy, the result store by image digest, and the gate.

Fail closed: trivy missing, crashing, timing out, a missing or corrupt DB, or output that does not parse
raise :class:`ScannerError` (exit 3) — a scan that did not run never reads as "0 vulnerabilities".

An image whose OS the DB has no advisories for (a DB for "debian 12" only, and a Debian 11 or Alpine image)
is a ScannerError as well: trivy finds nothing there, which says nothing about the image.

Results are kept under ``<state_dir>/scans/`` keyed by the image config digest (the Docker image ID, the
same in the daemon and in every registry); a repeat scan of the same image with the same DB (its UpdatedAt
and the sha256 of its trivy.db) and trivy version is served from there unless ``rescan``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery import policy, tools
from bakery.errors import BakeryError, DaemonUnavailable, InputError, ScannerError, ToolFailed, ToolMissing, ToolTimeout
from bakery.ref import DOCKER_HUB, Ref, is_digest
from bakery.terms import SEVERITIES, iso_z

if TYPE_CHECKING:
    from bakery.config import Project
    from bakery.model import ImageSpec
    from bakery.policy import GateDecision

SEVERITY_ORDER = SEVERITIES  # bakery.model owns the order
STORE_SCHEMA = 1
_VERSION_CACHE: dict[tuple[str, int, int], str] = {}
_DB_SHA_CACHE: dict[tuple[str, int, int, int, int], str] = {}


@dataclass(frozen=True)
class Finding:
    """One vulnerability in one installed package."""

    id: str
    package: str  # the installed (binary) package
    installed: str
    fixed: str  # "" when no fixed version exists
    severity: str  # UNKNOWN LOW MEDIUM HIGH CRITICAL
    title: str = ""
    pkg_source: str = ""  # source package (Debian) when it differs
    status: str = ""  # trivy's status: fixed, affected, will_not_fix...
    target: str = ""  # trivy's result target ("img (debian 12.15)", a lock file...)
    pkg_type: str = ""  # debian, python-pkg...
    pkg_path: str = ""
    url: str = ""
    score: float | None = None

    @property
    def fixable(self) -> bool:
        return bool(self.fixed)

    @property
    def rank(self) -> int:
        return SEVERITY_ORDER.index(self.severity) if self.severity in SEVERITY_ORDER else 0


@dataclass
class ScanResult:
    """What trivy found in one image, and with which scanner and DB."""

    image: str  # what was scanned, as given
    image_id: str  # config digest (sha256:…) = Docker image ID
    digest: str  # manifest digest when known, else ""
    trivy_version: str
    db_updated_at: dt.datetime
    scanned_at: dt.datetime
    findings: list[Finding]
    db_sha256: str = ""  # "sha256:…" of the trivy.db scanned with; "" in results stored before it was recorded
    cached: bool = False
    seconds: float = 0.0  # bakery's total for this call
    trivy_seconds: float = 0.0  # the trivy subprocess alone (0 when served from the store)
    os: str = ""  # "debian 12.15"; "" when trivy detected no OS
    remote: bool = False
    rescanned: bool = False  # a stored result existed but was too old or forced away

    @property
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in reversed(SEVERITY_ORDER)}
        for f in self.findings:
            out[f.severity if f.severity in out else "UNKNOWN"] += 1
        return out

    def summary(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "digest": self.digest or None, "counts": self.counts,
                "scanned_at": _iso(self.scanned_at), "db_time": _iso(self.db_updated_at),
                "db_sha256": self.db_sha256 or None, "trivy_version": self.trivy_version, "cached": self.cached, "rescanned": self.rescanned}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["db_updated_at"] = _iso(self.db_updated_at)
        data["scanned_at"] = _iso(self.scanned_at)
        data["counts"] = self.counts
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScanResult:
        return cls(
            image=data["image"], image_id=data["image_id"], digest=data.get("digest", ""),
            trivy_version=data["trivy_version"], db_updated_at=_parse_time(data["db_updated_at"]),
            scanned_at=_parse_time(data["scanned_at"]),
            findings=[Finding(**f) for f in data["findings"]], db_sha256=str(data.get("db_sha256") or ""),
            cached=bool(data.get("cached")),
            seconds=float(data.get("seconds", 0)), trivy_seconds=float(data.get("trivy_seconds", 0)),
            os=data.get("os", ""), remote=bool(data.get("remote")),
        )


@dataclass(frozen=True)
class Scanner:
    """The resolved trivy binary and the settings every call uses."""

    path: str
    version: str
    cache_dir: Path
    db_repository: str | None
    timeout: float
    notes: list[str] = field(default_factory=list, hash=False, compare=False)

    def describe(self) -> str:
        db = db_info(self.cache_dir)
        where = f"DB updated {_iso(db.updated_at)}" if db else (
            f"DB from {self.db_repository}" if self.db_repository else "no DB yet")
        return f"trivy {self.version} ({self.path}), cache {self.cache_dir}, {where}"


@dataclass(frozen=True)
class DbInfo:
    updated_at: dt.datetime
    version: int
    path: Path
    next_update: dt.datetime | None = None


_iso = iso_z


def _parse_time(value: str) -> dt.datetime:
    # trivy writes up to nanoseconds; Python takes microseconds
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", value.strip())
    if not m:
        raise ValueError(f"not a timestamp: {value!r}")
    frac = (m.group(2) or "")[:7]
    tz = m.group(3) or "Z"
    parsed = dt.datetime.fromisoformat(m.group(1) + frac + ("+00:00" if tz == "Z" else tz))
    return parsed.astimezone(dt.timezone.utc)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# ---------------------------------------------------------------------------------------------- scanner
def trivy_binary(project: Project) -> str:
    """``scanner.trivy`` (``BAKERY_TRIVY`` overrides it when the config is loaded), else ``trivy`` on PATH."""
    return project.config.scanner.trivy or "trivy"


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def scanner(project: Project) -> Scanner:
    """Resolve trivy and check its version (at least ``scanner.min_version``)."""
    cfg = project.config.scanner
    binary = trivy_binary(project)
    hint = " (install trivy, set scanner.trivy in bakery.yaml or BAKERY_TRIVY)"
    try:
        path = tools.resolve(binary, hint=hint)
    except ToolMissing as exc:
        raise ScannerError(f"scanner unavailable: {exc}") from None
    version = _trivy_version(project, path)
    if _version_tuple(version) < _version_tuple(cfg.min_version):
        raise ScannerError(f"trivy {version} at {path} is older than the minimum {cfg.min_version} "
                           f"(scanner.min_version)")
    return Scanner(path=path, version=version, cache_dir=project.path(cfg.cache_dir),
                   db_repository=cfg.db_repository, timeout=cfg.timeout)


def _file_memo(project: Project, name: str, key: tuple[Any, ...], cache: dict[Any, str],
               compute: Callable[[], str]) -> str:
    """A value derived from a file, remembered by ``key`` (its path, size, times…) in ``cache`` and in
    ``<state>/scans/NAME``, so that a repeat, even in a new process, only pays for a stat."""
    value = cache.get(key)
    if value:
        return value
    memo = store_dir(project) / name
    try:
        saved = json.loads(memo.read_text())
        if saved["key"] == list(key) and isinstance(saved["value"], str) and saved["value"]:
            cache[key] = saved["value"]
            return cache[key]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = compute()
    cache[key] = value
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": list(key), "value": value}))
        tmp.replace(memo)
    except OSError:
        pass
    return value


def _trivy_version(project: Project, path: str) -> str:
    """``trivy --version`` (about 0.2 s), remembered per binary (path, size, mtime)."""
    st = os.stat(path)

    def ask() -> str:
        try:
            res = tools.run(path, ["--version"], timeout=60, check=False)
        except (ToolTimeout, ToolMissing) as exc:
            raise ScannerError(f"scanner unavailable: {exc}") from None
        m = re.search(r"Version:\s*v?(\d+\.\d+\.\d+\S*)", res.stdout)
        if res.returncode != 0 or not m:
            line = (res.stderr or res.stdout).strip().splitlines()[-1:] or [f"exit {res.returncode}"]
            raise ScannerError(f"{path} does not look like trivy (`--version` said: {line[0][:200]})")
        return m.group(1)

    return _file_memo(project, "trivy-version.json", (path, st.st_mtime_ns, st.st_size), _VERSION_CACHE, ask)


def db_info(cache_dir: Path) -> DbInfo | None:
    """The DB's metadata in a trivy cache dir; None when there is no DB; ScannerError when it is corrupt."""
    meta = Path(cache_dir) / "db" / "metadata.json"
    db = Path(cache_dir) / "db" / "trivy.db"
    if not meta.exists() and not db.exists():
        return None
    try:
        data = json.loads(meta.read_text())
        updated = _parse_time(str(data["UpdatedAt"]))
        version = int(data["Version"])
        next_update = _parse_time(str(data["NextUpdate"])) if data.get("NextUpdate") else None
    except FileNotFoundError:
        raise ScannerError(f"vulnerability DB in {db.parent} has no metadata.json: rebuild or re-download it") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ScannerError(f"vulnerability DB metadata {meta} is corrupt ({type(exc).__name__}): rebuild or "
                           f"re-download it") from None
    if not db.is_file() or db.stat().st_size < 4096:
        raise ScannerError(f"vulnerability DB {db} is missing or truncated: rebuild or re-download it")
    return DbInfo(updated_at=updated, version=version, path=db, next_update=next_update)


def db_sha256(project: Project, db: DbInfo) -> str:
    """``sha256:…`` of the DB file: which DB a result was computed with (two DBs can share an UpdatedAt).

    Hashed once per file (an upstream DB is about a gigabyte): remembered by path, size, mtime, ctime and inode
    in memory and in the state dir, so a repeat scan only pays for a stat.
    """
    try:
        st = os.stat(db.path)
    except OSError as exc:
        raise ScannerError(f"vulnerability DB {db.path} cannot be read ({exc.strerror}): rebuild or re-download "
                           f"it") from None

    def digest() -> str:
        import hashlib  # start-up: OpenSSL only when a DB file is hashed (a repeat scan reads the memo)

        h = hashlib.sha256()
        try:
            with open(db.path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except OSError as exc:
            raise ScannerError(f"vulnerability DB {db.path} cannot be read ({exc.strerror}): rebuild or "
                               f"re-download it") from None
        return "sha256:" + h.hexdigest()

    key = (str(db.path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return _file_memo(project, "db-sha256.json", key, _DB_SHA_CACHE, digest)


def same_db(stored: ScanResult, db: DbInfo, db_sha: str, trivy_version: str) -> bool:
    """A stored result still stands for this DB and trivy: same UpdatedAt, same DB file content, same trivy."""
    return (stored.db_updated_at == db.updated_at and bool(stored.db_sha256) and stored.db_sha256 == db_sha
            and stored.trivy_version == trivy_version)


# trivy's bucket for a detected OS, per family (its ospkg detectors): Debian by major version, Alpine by
# major.minor ("edge" as such), Ubuntu by the full version. Other families name their buckets in ways of their
# own ("Red Hat", "amazon linux 2", ...): their coverage is not checked.
_OS_BUCKET = {
    "debian": lambda v: f"debian {v.split('.')[0]}",
    "alpine": lambda v: "alpine edge" if "edge" in v else f"alpine {'.'.join(v.split('.')[:2])}",
    "ubuntu": lambda v: f"ubuntu {v}",
}


def os_bucket(family: str, name: str) -> str | None:
    """The DB bucket trivy reads for an image's OS (``debian``, ``12.15`` → ``debian 12``); None when unknown."""
    make = _OS_BUCKET.get(family.strip().lower())
    return make(name.strip()) if make is not None and name.strip() else None


def check_os_coverage(what: str, os_info: dict[str, Any], db: DbInfo) -> None:
    """ScannerError when the DB has no bucket for the image's OS: trivy would report 0 vulnerabilities for it
    without having had anything to compare with. Unknown families and unreadable bucket lists are not checked."""
    bucket = os_bucket(str(os_info.get("Family") or ""), str(os_info.get("Name") or ""))
    if bucket is None:
        return
    from bakery.trivydb import bucket_names  # start-up: the DB reader only after trivy ran

    try:
        names = bucket_names(db.path)
    except (OSError, ValueError):
        return  # trivy read this DB; bakery's minimal reader could not: no verdict rather than a wrong one
    if bucket in names:
        return
    family = bucket.split()[0]
    oses = sorted(n for n in names if n.split(" ", 1)[0].lower() in _OS_BUCKET and " " in n)
    same = [n for n in oses if n.split(" ", 1)[0].lower() == family]
    shown = same or oses
    covers = ", ".join(shown[:12]) + (f" and {len(shown) - 12} more" if len(shown) > 12 else "") if shown else (
        "no " + "/".join(_OS_BUCKET) + " release")
    raise ScannerError(f"cannot assess {what}: the vulnerability DB has no advisories for {bucket} (it covers: "
                       f"{covers}); no result - use a DB with {bucket} advisories (`bakery scan-db`, "
                       f"scanner.db_repository)")


def _pushed_ref(image: str) -> Ref | None:
    """``HOST/REPO[:TAG]@DIGEST`` in a registry other than Docker Hub (None otherwise: trivy's business)."""
    ref = Ref.try_parse(image)
    if ref is None or ref.registry == DOCKER_HUB or not ref.digest:
        return None
    return ref


def _trivy_args(sc: Scanner, project: Project, image: str, remote: bool) -> tuple[list[str], dict[str, str]]:
    from bakery.registries import host_settings  # start-up: a repeat scan served from the store needs no registry

    args = ["image", "--cache-dir", str(sc.cache_dir), "--timeout", f"{max(int(sc.timeout), 1)}s", "--quiet",
            "--image-src", "remote" if remote else "docker"]
    env: dict[str, str] = {}
    if sc.db_repository:
        args += ["--db-repository", sc.db_repository]
        db_ref = Ref.try_parse(sc.db_repository)
        if db_ref is not None and host_settings(project, db_ref.registry).insecure:
            env["TRIVY_INSECURE"] = "true"
    else:  # no repository configured: the DB in the cache dir is used as it is, never fetched from elsewhere
        args.append("--skip-db-update")
    if remote:
        ref = Ref.try_parse(image)
        hs = host_settings(project, ref.registry) if ref is not None else None
        if hs is not None and hs.insecure:
            args.append("--insecure")
        creds = hs.credentials.resolve() if hs is not None and hs.credentials is not None else None
        if creds:  # never on argv; trivy reads the docker config (and its helpers) itself
            env["TRIVY_USERNAME"], env["TRIVY_PASSWORD"] = creds
    return args, env


def _run_trivy(sc: Scanner, args: list[str], env: dict[str, str], what: str) -> tools.ToolResult:
    try:
        return tools.run(sc.path, args, timeout=sc.timeout, env=env, check=True, process_group=True,
                         failure_exit_code=ScannerError.exit_code)
    except ToolTimeout:
        raise ScannerError(f"trivy timed out after {sc.timeout:g}s scanning {what} (scanner.timeout); "
                           f"no result") from None
    except ToolMissing as exc:
        raise ScannerError(f"scanner unavailable: {exc}") from None
    except ToolFailed as exc:
        raise ScannerError(f"trivy failed scanning {what} (exit {exc.returncode}): "
                           f"{_trivy_error(exc.stderr or exc.stdout)}") from None


def _trivy_error(text: str) -> str:
    """Trivy's fatal message on one line (it spreads ``1 error occurred:\n\t* …`` over several)."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    start = next((i for i in range(len(lines) - 1, -1, -1) if "FATAL" in lines[i] or "panic:" in lines[i]), None)
    if start is None:
        return (lines[-1][:300] if lines else "no message")
    msg = " ".join([re.sub(r"^\S+\s+FATAL\s+", "", lines[start])] + [ln.lstrip("* ") for ln in lines[start + 1:]
                                                                       if "goroutine" not in ln][:3])
    msg = re.sub(r"\s+", " ", msg)
    return msg if len(msg) <= 400 else msg[:397] + "..."


def parse_report(stdout: str, what: str) -> tuple[dict[str, Any], list[Finding]]:
    """Trivy's JSON report → findings; anything unexpected is a ScannerError (fail closed)."""
    try:
        data = json.loads(stdout)
    except ValueError as exc:
        raise ScannerError(f"trivy output for {what} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                           f"no result") from None
    if not isinstance(data, dict) or data.get("SchemaVersion") != 2 or not isinstance(data.get("Metadata"), dict):
        raise ScannerError(f"trivy output for {what} is not a trivy JSON report (SchemaVersion 2); no result")
    results = data.get("Results") or []
    if not isinstance(results, list):
        raise ScannerError(f"trivy output for {what}: Results is not a list; no result")
    findings: list[Finding] = []
    seen: set[tuple[str, str, str]] = set()
    try:
        for r in results:
            for v in r.get("Vulnerabilities") or []:
                sev = str(v.get("Severity") or "UNKNOWN").upper()
                score = None
                for c in (v.get("CVSS") or {}).values():
                    if isinstance(c, dict) and c.get("V3Score") is not None:
                        score = float(c["V3Score"])
                        break
                f = Finding(
                    id=str(v["VulnerabilityID"]), package=str(v["PkgName"]),
                    installed=str(v.get("InstalledVersion") or ""), fixed=str(v.get("FixedVersion") or ""),
                    severity=sev if sev in SEVERITY_ORDER else "UNKNOWN", title=str(v.get("Title") or ""),
                    pkg_source=str(v.get("SrcName") or ""),
                    status=str(v.get("Status") or ""), target=str(r.get("Target") or ""),
                    pkg_type=str(r.get("Type") or ""), pkg_path=str(v.get("PkgPath") or ""),
                    url=str(v.get("PrimaryURL") or ""), score=score,
                )
                k = (f.id, f.package, f.pkg_path)
                if k not in seen:
                    seen.add(k)
                    findings.append(f)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ScannerError(f"trivy output for {what} has an unexpected vulnerability entry "
                           f"({type(exc).__name__}: {exc}); no result") from None
    findings.sort(key=lambda f: (-f.rank, f.id, f.package))
    return data, findings


# ---------------------------------------------------------------------------------------------- store
def store_dir(project: Project) -> Path:
    return project.state_dir / "scans"


def _store_path(project: Project, image_id: str) -> Path:
    return store_dir(project) / f"{image_id.replace(':', '-')}.json"


def load_stored(project: Project, image_id: str) -> ScanResult | None:
    try:
        data = json.loads(_store_path(project, image_id).read_text())
        if data.get("schema") != STORE_SCHEMA:
            return None
        return ScanResult.from_json(data["result"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable store entries are simply re-scanned


def save(project: Project, result: ScanResult) -> Path:
    path = _store_path(project, result.image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    data["cached"] = False
    import threading

    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"schema": STORE_SCHEMA, "result": data}, indent=1))
    tmp.replace(path)
    if result.digest:
        _index_digest(project, result.digest, result.image_id)
    return path


def _index_digest(project: Project, digest: str, image_id: str) -> None:
    """Remember manifest digest → image ID (a pushed image's digest is only known after the push)."""
    index = store_dir(project) / "by-digest"
    index.mkdir(parents=True, exist_ok=True)
    (index / digest.replace(":", "-")).write_text(image_id)


def _id_for_digest(project: Project, digest: str) -> str | None:
    try:
        value = (store_dir(project) / "by-digest" / digest.replace(":", "-")).read_text().strip()
    except OSError:
        return None
    return value if is_digest(value) else None


# ---------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class _LocalImage:
    image_id: str
    repo_digests: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict, hash=False)


def _docker_get(path: str, timeout: float = 30) -> tuple[int, Any]:
    """GET on the Docker Engine API over its unix socket (the SDK costs ~0.3 s to import; this is one call).

    One HTTP/1.0 request, the answer read to the end of the connection: no keep-alive, no chunked body (a 1.0
    request gets neither), so the status line, the header block and the body are all there is to read
    (http.client and the email parser it imports cost ~10 ms of a repeat scan's start-up). The socket is the
    interpreter's own (``_socket``, what the ``socket`` module wraps: the same calls, errors and timeouts), without
    the wrapper's enums and selectors (~3 ms of that start-up, issue 14)."""
    import _socket

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if any(c in path for c in "\r\n "):
        raise ValueError(f"not a request path: {path!r}")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(host[len("unix://"):])
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode("ascii"))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    return _http_answer(b"".join(chunks))


def _http_answer(raw: bytes) -> tuple[int, Any]:
    """(status, JSON body or None) of a whole HTTP/1.x answer; ValueError when it is not one."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {raw[:60]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit() or len(body) < int(length):
            raise ValueError(f"answer cut short ({len(body)} of {length.decode(errors='replace')} bytes)")
        body = body[:int(length)]
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        raise ValueError("a chunked answer to an HTTP/1.0 request")
    return int(parts[1]), (json.loads(body) if body else None)


_LOCAL_CACHE: dict[str, tuple[float, _LocalImage]] = {}
_LOCAL_FOR = 10.0  # seconds an answer about an image ID is reused (one command's inspections, not a long process's)
_IMMUTABLE = re.compile(r"^(?:sha256:[0-9a-f]{64}|[^\s@]+@sha256:[0-9a-f]{64})$")


def _inspect_local(image: str) -> _LocalImage:
    """The daemon's view of a local image. An image ID or NAME@DIGEST names the same image (its config, its
    labels) for good, so one command asks once (`bakery scan ID` asked three times: is it local, its labels,
    its ID); after ``_LOCAL_FOR`` seconds the daemon is asked again (the image may have been removed). A tag is
    asked every time (it may move)."""
    if not _IMMUTABLE.match(image):
        return _inspect_daemon(image)
    now = time.monotonic()
    held = _LOCAL_CACHE.get(image)
    if held is None or now - held[0] > _LOCAL_FOR:
        held = _LOCAL_CACHE[image] = (now, _inspect_daemon(image))
    return held[1]


def _inspect_daemon(image: str) -> _LocalImage:
    from urllib.parse import quote

    if not os.environ.get("DOCKER_HOST", "unix://").startswith("unix://"):
        return _inspect_sdk(image)
    try:
        status, info = _docker_get(f"/images/{quote(image, safe='/:@')}/json")
    except (OSError, ValueError) as exc:
        raise DaemonUnavailable(f"docker daemon unavailable: {type(exc).__name__}: {str(exc)[:200]}") from None
    if status == 404:
        raise InputError(f"image {image!r} not found in the docker daemon (build or pull it first, or use "
                         f"--remote for a registry image)")
    if status == 400:
        raise InputError(f"{image!r} is not a valid image reference (the docker daemon refused it)")
    if status != 200 or not isinstance(info, dict) or "Id" not in info:
        raise DaemonUnavailable(f"docker daemon answered {status} inspecting {image!r}")
    return _LocalImage(image_id=info["Id"], repo_digests=tuple(info.get("RepoDigests") or ()),
                       labels=dict((info.get("Config") or {}).get("Labels") or {}))


def _inspect_sdk(image: str) -> _LocalImage:
    """tcp:// and friends (TLS, ssh): through the Docker SDK."""
    import docker
    import docker.errors

    try:
        info = docker.from_env(timeout=30).api.inspect_image(image)
    except docker.errors.ImageNotFound:
        raise InputError(f"image {image!r} not found in the docker daemon") from None
    except docker.errors.DockerException as exc:
        raise DaemonUnavailable(f"docker daemon unavailable: {str(exc).splitlines()[0][:200]}") from None
    return _LocalImage(image_id=info["Id"], repo_digests=tuple(info.get("RepoDigests") or ()),
                       labels=dict((info.get("Config") or {}).get("Labels") or {}))


def _remote_image_id(project: Project, image: str) -> str | None:
    """The config digest of ``host/repo@sha256:…`` from its registry (one or two manifest GETs), so that a pushed
    image scanned before under its local ID is served from the store. None when it cannot be read: then trivy
    scans it and reports any access problem itself."""
    from bakery.registries import registry_for_ref  # start-up: see _trivy_args

    ref = _pushed_ref(image)
    if ref is None or ref.digest is None:
        return None
    repo = ref.repository
    try:
        client = registry_for_ref(project, ref, timeout=10, retries=1)
        manifest = client.get_manifest(repo, ref.digest)
        if manifest.is_index:
            children = manifest.children()
            pick = next((c for c in children if (c.platform or {}).get("os") == "linux"
                         and (c.platform or {}).get("architecture") == "amd64"), children[0] if children else None)
            if pick is None:
                return None
            manifest = client.get_manifest(repo, pick.digest)
        config = (manifest.json().get("config") or {}).get("digest", "")
        return config if is_digest(config) else None
    except Exception:  # noqa: BLE001 - only an optimisation: trivy is the judge of reachability
        return None


def require_pushed(project: Project, image: str) -> None:
    """HOST/REPO[:TAG]@DIGEST must be in its registry: a typo is bad input (exit 2) found before trivy runs,
    not a scanner failure (exit 3). Docker Hub short names are left to trivy."""
    from bakery.registries import registry_for_ref  # start-up: see _trivy_args

    ref = _pushed_ref(image)
    if ref is None or ref.digest is None:
        return
    if registry_for_ref(project, ref, retries=1).head_manifest(ref.repository, ref.digest) is None:
        raise InputError(f"{image}: no such manifest in {ref.name}")


def _digest_of(image: str) -> str:
    """The digest an image reference is pinned by ("" when none); a malformed one is reported by the caller."""
    return image.rsplit("@", 1)[1] if "@" in image else ""  # not Ref.parse: the caller names a bad digest


# ---------------------------------------------------------------------------------------------- scan
def scan_image(project: Project, image: str, *, remote: bool = False, rescan: bool = False,
               sbom: Path | None = None, now: dt.datetime | None = None,
               max_age: dt.timedelta | None = None, sc: Scanner | None = None) -> ScanResult:
    """Scan ``image`` (a local ref/ID from the daemon, or ``repo@sha256:…`` with ``remote``), or serve it from
    the store when the same image was scanned with the same DB and trivy version (unless ``rescan``)."""
    started = time.monotonic()
    sc = sc or scanner(project)
    db = db_info(sc.cache_dir)
    if db is None and not sc.db_repository:
        raise ScannerError(f"no vulnerability DB in {sc.cache_dir}/db and no scanner.db_repository configured: "
                           f"refusing to scan without one (set scanner.db_repository to the registry that serves "
                           f"it, or build one: `bakery scan-db build --help`)")
    digest = _digest_of(image)
    if digest and not is_digest(digest):
        raise InputError(f"{image}: {digest!r} is not a digest (sha256: and 64 hex digits)")
    if remote:
        image_id = (_id_for_digest(project, digest) or _remote_image_id(project, image)) if digest else None
    else:
        local = _inspect_local(image)
        image_id = local.image_id
    what = image
    stored = load_stored(project, image_id) if image_id else None
    now = now or _now()
    was_stored = stored is not None
    if stored is not None and not rescan and db is not None:
        fresh = max_age is None or now - stored.scanned_at <= max_age
        # a DB due for an update from the repository may change with this scan: then scan
        due = bool(sc.db_repository) and db.next_update is not None and db.next_update <= now
        if fresh and not due and same_db(stored, db, db_sha256(project, db), sc.version):
            stored.cached = True
            stored.image = image
            stored.remote = remote
            if digest and digest != stored.digest:
                stored.digest = digest
                _index_digest(project, digest, stored.image_id)
            stored.seconds = time.monotonic() - started
            stored.trivy_seconds = 0.0
            if sbom is not None:
                write_sbom(project, image, sbom, remote=remote, sc=sc)
            return stored
    args, env = _trivy_args(sc, project, image, remote)
    res = _run_trivy(sc, [*args, "--format", "json", "--scanners", "vuln", image], env, what)
    data, findings = parse_report(res.stdout, what)
    meta = data["Metadata"]
    found_id = str(meta.get("ImageID") or "")
    if not is_digest(found_id):
        raise ScannerError(f"trivy output for {what} carries no image ID; no result")
    if not remote and image_id and found_id != image_id:
        raise ScannerError(f"{image} changed while it was scanned ({image_id[:19]} → {found_id[:19]}); scan again")
    db_after = db_info(sc.cache_dir)
    if db_after is None:
        raise ScannerError(f"trivy scanned {what} but left no vulnerability DB in {sc.cache_dir}; no result")
    if not digest and remote:
        for d in meta.get("RepoDigests") or []:
            pinned = Ref.try_parse(d)
            if pinned is not None and pinned.digest:
                digest = pinned.digest
                break
    os_info = meta.get("OS") or {}
    if not isinstance(os_info, dict):
        raise ScannerError(f"trivy output for {what}: Metadata.OS is not an object; no result")
    check_os_coverage(what, os_info, db_after)
    os_name = f"{os_info.get('Family', '')} {os_info.get('Name', '')}".strip()
    if not os_name and not data.get("Results"):  # an empty view: a verdict only when the image has no packages
        evidence = os_package_files(project, image, remote)
        if evidence:
            raise ScannerError(f"trivy detected no OS and reported nothing for {what}, but the image has "
                               f"{evidence}: that is not '0 vulnerabilities'; no result")
        os_name = NO_OS_PACKAGES
    result = ScanResult(
        image=image, image_id=found_id, digest=digest, trivy_version=sc.version,
        db_updated_at=db_after.updated_at, db_sha256=db_sha256(project, db_after), scanned_at=now,
        findings=findings, cached=False,
        trivy_seconds=res.seconds, os=os_name,
        remote=remote, rescanned=was_stored,
    )
    save(project, result)
    if sbom is not None:
        write_sbom(project, image, sbom, remote=remote, sc=sc)
    result.seconds = time.monotonic() - started
    return result


NO_OS_PACKAGES = "none: no OS packages by construction (no package database in any layer)"
# What an OS package manager leaves in a filesystem: one of these in any layer means trivy should have seen an OS.
_PACKAGE_DBS = ("var/lib/dpkg/status", "lib/apk/db/installed", "var/lib/rpm/", "usr/lib/sysimage/rpm/",
                "etc/os-release", "usr/lib/os-release", "var/lib/dpkg/status.d/")


def os_package_files(project: Project, image: str, remote: bool) -> str:
    """The first package database or OS release file found in the image's layers ("" when there is none), read
    from the daemon (``docker save``) or the registry. Called only when trivy saw no OS and no results."""
    import tarfile

    def first_hit(names: Any) -> str:
        for name in names:
            name = name.lstrip("./")
            if any(name == p.rstrip("/") or name.startswith(p) for p in _PACKAGE_DBS):
                return f"/{name}"
        return ""

    from bakery.registries import registry_for_ref  # start-up: see _trivy_args

    try:
        if remote:
            ref = Ref.try_parse(image)
            if ref is None:
                raise ScannerError(f"trivy saw no OS in {image} and its layers cannot be located to confirm "
                                   f"that; no result")
            client = registry_for_ref(project, ref)
            repo = ref.repository
            manifest = client.resolve_image_manifest(repo, ref.digest or ref.tag or "latest")
            import tempfile

            for layer in manifest.blobs()[1:]:
                with tempfile.NamedTemporaryFile() as tmp:
                    client.download_blob(repo, layer.digest, tmp.name)
                    with tarfile.open(tmp.name, mode="r:*") as tar:
                        hit = first_hit(tar.getnames())
                        if hit:
                            return hit
            return ""
        import docker

        client = docker.from_env(timeout=600)
        stream = client.api.get_image(image)
        with tarfile.open(fileobj=_ChunkReader(stream), mode="r|") as outer:
            for member in outer:
                if not member.isfile():
                    continue
                inner = outer.extractfile(member)
                if inner is None:
                    continue
                try:
                    with tarfile.open(fileobj=inner, mode="r|*") as layer:
                        hit = first_hit(m.name for m in layer)
                        if hit:
                            return hit
                except tarfile.TarError:
                    continue  # the config JSON, the manifest: not a layer
        return ""
    except (OSError, tarfile.TarError) as exc:
        raise ScannerError(f"trivy saw no OS in {image} and its layers cannot be read to confirm that: {exc}; "
                           f"no result") from None
    except Exception as exc:  # noqa: BLE001 - the daemon or the registry could not be asked: fail closed
        if isinstance(exc, BakeryError):
            raise
        raise ScannerError(f"trivy saw no OS in {image} and its layers cannot be read to confirm that "
                           f"({type(exc).__name__}); no result") from None


class _ChunkReader:
    """A read()-able view of an iterator of byte chunks (the daemon's image export stream)."""

    def __init__(self, chunks: Any):
        self._chunks = iter(chunks)
        self._buf = b""
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = n
        while want != 0:
            if self._pos >= len(self._buf):
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buf, self._pos = chunk, 0
            take = len(self._buf) - self._pos if want < 0 else min(want, len(self._buf) - self._pos)
            parts.append(self._buf[self._pos:self._pos + take])
            self._pos += take
            if want > 0:
                want -= take
        return b"".join(parts)


def write_sbom(project: Project, image: str, path: Path, *, remote: bool = False, sc: Scanner | None = None) -> Path:
    """A CycloneDX SBOM of ``image`` written by trivy (needs no vulnerability DB)."""
    sc = sc or scanner(project)
    args, env = _trivy_args(sc, project, image, remote)
    if "--db-repository" in args:  # an SBOM needs no DB
        i = args.index("--db-repository")
        del args[i:i + 2]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    res = _run_trivy(sc, [*args, "--format", "cyclonedx", image], env, f"{image} (SBOM)")
    try:
        bom = json.loads(res.stdout)
        if bom.get("bomFormat") != "CycloneDX":
            raise ValueError("bomFormat is not CycloneDX")
    except (ValueError, AttributeError) as exc:
        raise ScannerError(f"trivy SBOM output for {image} is not a CycloneDX document ({exc})") from None
    path.write_text(res.stdout)
    return path


def evaluate(project: Project, result: ScanResult, *, spec: ImageSpec | None = None,
             now: dt.date | None = None) -> GateDecision:
    """Apply the policy (global, overridden per definition, plus .trivyignore files) to a scan result."""
    return policy.evaluate(project, result, spec=spec, now=now)


def gate(project: Project, image: str, *, remote: bool = False, spec: ImageSpec | None = None,
         rescan: bool = False, max_age: dt.timedelta | None = None, now: dt.datetime | None = None,
         sbom: Path | None = None) -> tuple[ScanResult, GateDecision]:
    """Scan (or serve from the store; re-scan when older than ``max_age``) and evaluate the policy."""
    result = scan_image(project, image, remote=remote, rescan=rescan, max_age=max_age, now=now, sbom=sbom)
    today = (now or _now()).date()
    return result, evaluate(project, result, spec=spec, now=today)


__all__ = ["BakeryError", "DbInfo", "Finding", "ScanResult", "Scanner", "check_os_coverage", "db_info",
           "db_sha256", "evaluate", "gate", "load_stored", "os_bucket", "parse_report", "same_db", "save",
           "scan_image", "scanner", "write_sbom"]
