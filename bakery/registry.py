"""A small OCI distribution (Docker Registry v2) client over :mod:`bakery.transport` (``http.client``, pooled).

Used by publish (immutable tag checks), promote (copy by digest), plan (cheap HEAD requests) and status.
Auth: anonymous, Basic, and the Bearer token flow (Docker Hub / ECR style), tokens cached per scope.
Transient failures (connection errors, timeouts, 5xx, 429) are retried with exponential backoff and end in
:class:`RegistryUnavailable` (exit 3); 401/403 is :class:`RegistryAuthError` (exit 3); other 4xx is
:class:`RegistryError` (exit 1) and never retried.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit, parse_qsl

from bakery import cachedir, secrets
from bakery.errors import AuthenticationFailed, RegistryError, RegistryUnavailable
from bakery.ref import is_digest, is_loopback, normalise_host

if TYPE_CHECKING:
    from bakery.transport import Response

log = logging.getLogger("bakery.registry")
_MEMO_BLOB = 256 * 1024  # blobs kept by get_blob (image configs, attestations), verified by their digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join(MANIFEST_TYPES)
FOREIGN_LAYER_TYPES = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
})
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_UPLOAD_LOCATION = re.compile(r"/blobs/uploads/[^/]+$")
_LOST_UPLOAD = frozenset({"BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"})
_CHUNK = 1024 * 1024
# Blobs copied at once by copy_image: enough to overlap the round trips and the hashing of a few large layers,
# few enough not to flood a registry (skopeo copies up to 6 layers at once).
COPY_WORKERS = 6
# bakery's labels naming an image's parent (bakery.model.OCI + "base.name" / "base.digest")
_LABEL_BASE_NAME = "org.opencontainers.image.base.name"
_LABEL_BASE_DIGEST = "org.opencontainers.image.base.digest"
T = TypeVar("T")


class RegistryAuthError(AuthenticationFailed):
    """The registry refused our credentials (401/403): a setup problem, exit 3."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Transient(Exception):
    """A failure worth retrying (connection problem, 5xx, 429)."""


# --------------------------------------------------------------------------------------------------------------
# Pure helpers


def sha256_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def retryable_status(status: int) -> bool:
    """5xx and 429 are transient; every other status is final."""
    return status == 429 or 500 <= status <= 599


def retryable_exception(exc: BaseException) -> bool:
    """Connection refused/reset, timeouts, TLS and answers cut short (:class:`bakery.transport.TransportError`)
    are transient."""
    from bakery.transport import TransportError

    return isinstance(exc, (TransportError, ConnectionError, TimeoutError, _Transient))


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="https://auth",service="reg",scope="repository:a:pull"`` → ("bearer", {...})."""
    header = (header or "").strip()
    if not header:
        return "", {}
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    for m in re.finditer(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))', rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


def parse_link_next(header: str | None) -> str | None:
    """The URL of ``rel="next"`` in a Link header, or None."""
    if not header:
        return None
    for part in header.split(","):
        m = re.match(r'\s*<([^>]*)>\s*;(.*)', part)
        if m and re.search(r'rel\s*=\s*"?next"?', m.group(2)):
            return m.group(1)
    return None


def docker_config_credentials(host: str, *, environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    """``(user, password)`` for ``host`` from ``$DOCKER_CONFIG/config.json`` (default ``~/.docker``), or None.

    Resolved by the docker SDK (``docker.auth``) exactly as ``docker pull`` does: ``credHelpers[host]`` first,
    then ``credsStore`` (``docker-credential-NAME get`` on PATH), then ``auths`` (``auth`` base64
    ``user:password`` or ``username``/``password``; keys may carry a scheme or path). A helper that is
    missing or fails is an environment problem (:class:`RegistryAuthError`, exit 3), as it is for docker.
    """
    environ = os.environ if environ is None else environ
    base = environ.get("DOCKER_CONFIG") or str(Path(environ.get("HOME") or Path.home()) / ".docker")
    path = Path(base) / "config.json"
    if not path.is_file():
        return None
    # The docker SDK (~0.1 s to import: most of a short command's start-up) only when there is a config to read.
    import docker.auth
    import docker.errors

    try:
        data = json.loads(path.read_text())
        for entry in (data.get("auths") or {}).values():  # docker's CLI also reads plain username/password
            if isinstance(entry, dict) and not entry.get("auth") and entry.get("username") and entry.get("password"):
                entry["auth"] = base64.b64encode(f"{entry['username']}:{entry['password']}".encode()).decode()
        config = docker.auth.load_config(config_dict=data, credstore_env=None)
    except (docker.errors.DockerException, OSError, ValueError, TypeError, AttributeError, binascii.Error) as exc:
        log.debug("%s: unreadable docker config: %s", path, exc)
        return None
    wanted = normalise_host(host)
    helper = config.get_credential_store(wanted) if (config.creds_store or config.cred_helpers) else None
    try:
        entry = config.resolve_authconfig(wanted)
    except docker.errors.DockerException as exc:  # the helper is missing or failed: docker would stop here too
        raise RegistryAuthError(f"{host}: credential helper docker-credential-{helper} failed: "
                                f"{secrets.mask(str(exc)).splitlines()[0][:200]}") from None
    if not entry:
        return None
    user = entry.get("Username") or entry.get("username")
    password = entry.get("Password") or entry.get("password")
    if not (user and password):
        return None  # an identity token alone (no user/password) is not supported
    secrets.register(password)
    return str(user), str(password)


def _scope(repo: str | None, actions: str, extra: str | None = None) -> str:
    if repo is None:
        return ""
    scope = f"repository:{repo}:{actions}"
    if extra:
        scope += f" repository:{extra}:pull"
    return scope


# --------------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int | None = None
    platform: dict[str, Any] | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """A manifest exactly as the registry returned it: the bytes are the identity."""

    body: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def is_index(self) -> bool:
        return is_index(self.media_type)

    def children(self) -> list[Descriptor]:
        """For an index / manifest list: the child manifests."""
        if not self.is_index:
            return []
        return [_descriptor(d, OCI_MANIFEST) for d in self.json().get("manifests") or []]

    def blobs(self) -> list[Descriptor]:
        """For an image manifest: the config and the layers."""
        if self.is_index:
            return []
        data = self.json()
        out = []
        if isinstance(data.get("config"), dict):
            out.append(_descriptor(data["config"], "application/octet-stream"))
        out.extend(_descriptor(d, "application/octet-stream") for d in data.get("layers") or [])
        return out


def _descriptor(d: dict[str, Any], default_type: str) -> Descriptor:
    return Descriptor(media_type=d.get("mediaType") or default_type, digest=d["digest"], size=d.get("size"),
                      platform=d.get("platform"), urls=tuple(d.get("urls") or ()))


def _is_manifest(body: bytes) -> bool:
    """Every image manifest and index (Docker v2, OCI) is a JSON object with a schemaVersion."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and "schemaVersion" in data


def media_type_of(body: bytes, header: str | None) -> str:
    """The manifest's media type: the Content-Type header, else the ``mediaType`` field, else by shape."""
    ctype = (header or "").split(";", 1)[0].strip()
    if ctype in MANIFEST_TYPES:
        return ctype
    try:
        data = json.loads(body)
    except ValueError:
        return ctype or "application/octet-stream"
    if isinstance(data, dict):
        if data.get("mediaType"):
            return str(data["mediaType"])
        if "manifests" in data:
            return OCI_INDEX
        if "layers" in data:
            return OCI_MANIFEST
    return ctype or "application/octet-stream"


@dataclass
class CopyStats:
    """What one copy did: manifests written or already there, blobs skipped / mounted / copied, bytes sent."""

    manifests_copied: int = 0
    manifests_skipped: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    blobs_copied: int = 0
    bytes_copied: int = 0
    seconds: float = 0.0

    def add(self, other: CopyStats) -> None:
        for f in ("manifests_copied", "manifests_skipped", "blobs_skipped", "blobs_mounted", "blobs_copied",
                  "bytes_copied"):
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("manifests_copied", "manifests_skipped", "blobs_skipped",
                                              "blobs_mounted", "blobs_copied", "bytes_copied", "seconds")}


class _BlobLocations:
    """Which repositories of a registry were seen holding a blob (like skopeo's blob-info cache): a blob promoted
    once into one repository of a registry is mounted, not copied, into the next one. Kept in
    ``$BAKERY_CACHE_DIR/blob-locations.sqlite`` (default ``~/.cache/bakery``), shared by every bakery process of
    the user; only a hint — a mount from a repository that no longer holds the blob fails and is forgotten."""

    def __init__(self) -> None:
        self.path = cachedir.cache_dir("blob-locations.sqlite")
        self._ready = False

    def _db(self) -> Any:
        import sqlite3

        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        if not self._ready:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS blobs (host TEXT, digest TEXT, repo TEXT, seen REAL, "
                       "PRIMARY KEY (host, digest, repo))")
            self._ready = True
        return db

    def known(self, host: str, digest: str, limit: int = 3) -> list[str]:
        try:
            db = self._db()
            try:
                rows = db.execute("SELECT repo FROM blobs WHERE host = ? AND digest = ? ORDER BY seen DESC LIMIT ?",
                                  (host, digest, limit)).fetchall()
            finally:
                db.close()
        except Exception as exc:  # noqa: BLE001 - a hint only
            log.debug("blob locations: %s", _short(exc))
            return []
        return [r[0] for r in rows]

    def update(self, seen: list[tuple[str, str, str]], gone: list[tuple[str, str, str]] = ()) -> None:
        if not seen and not gone:
            return
        try:
            db = self._db()
            try:
                now = time.time()
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?)", [(*t, now) for t in seen])
                db.executemany("DELETE FROM blobs WHERE host = ? AND digest = ? AND repo = ?", list(gone))
                db.execute("COMMIT")
            finally:
                db.close()
        except Exception as exc:  # noqa: BLE001 - a hint only
            log.debug("blob locations: %s", _short(exc))


_blob_locations: _BlobLocations | None = None


def blob_locations() -> _BlobLocations:
    global _blob_locations
    if _blob_locations is None:
        _blob_locations = _BlobLocations()
    return _blob_locations


class _SizedStream:
    """A streamed response body with a known length, handed to the transport as an iterable with ``__len__``: it
    sends Content-Length, and each chunk goes to the socket as it comes (no re-slicing, no copy)."""

    def __init__(self, chunks: Iterator[bytes], size: int, on_bytes: Callable[[int], None]):
        self._chunks = chunks
        self._size = size
        self._on_bytes = on_bytes

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self._on_bytes(len(chunk))
            yield chunk


# --------------------------------------------------------------------------------------------------------------
# Client


@dataclass
class _Auth:
    scheme: str = ""  # "", "basic" or "bearer" once the registry told us
    challenge: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # scope -> token


class RegistryClient:
    """One registry host. Thread-compatible for sequential use; create one per worker thread for parallelism
    (copy_image alone runs its blob copies concurrently over the one transport: its pool is thread-safe)."""

    page_size = 1000  # n= for tags/list and _catalog; the registry's Link header gives the next page

    def __init__(self, host: str, *, insecure: bool | None = None,
                 credentials: tuple[str, str] | Callable[[], tuple[str, str] | None] | None = None,
                 timeout: float = 30, retries: int = 4, backoff: float = 0.5, use_proxy: bool | None = None):
        """Made by :mod:`bakery.registries` (the one factory), which decides TLS, proxies and credentials per
        host; the defaults here (plain HTTP and no proxy on loopback) are the same rule, from bakery.ref.

        ``credentials``: a pair, or a function returning one, called only when the registry asks for them (a
        credential helper runs only for registries that need it)."""
        self.host = host.rstrip("/")
        self.insecure = is_loopback(self.host) if insecure is None else insecure
        self.base = f"{'http' if self.insecure else 'https'}://{self.host}"
        self._credentials_source = credentials
        self._credentials: tuple[str, str] | None = None
        self._credentials_resolved = not callable(credentials)
        if not callable(credentials):
            self._credentials = credentials
            if credentials:
                secrets.register(credentials[1])
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        from bakery.transport import Transport  # http.client + ssl: ~10 ms, paid by commands that talk to one

        self.session = Transport(trust_env=(not is_loopback(self.host)) if use_proxy is None else use_proxy,
                                 timeout=timeout, headers={"User-Agent": "bakery"})
        self._auth = _Auth()

    def __repr__(self) -> str:
        return f"RegistryClient({self.host!r}, insecure={self.insecure})"

    @property
    def credentials(self) -> tuple[str, str] | None:
        if not self._credentials_resolved:
            source = self._credentials_source
            assert callable(source)
            self._credentials = source()
            self._credentials_resolved = True
            if self._credentials:
                secrets.register(self._credentials[1])
        return self._credentials

    def ensure_repository(self, repo: str, aliases: list[str] | None = None) -> None:
        """Distribution creates repositories on first push: nothing to do (ECR creates them here)."""

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base + path

    def _retry(self, op: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with exponential backoff (tenacity) on transient failures (:func:`retryable_exception`);
        when they persist, :class:`RegistryUnavailable` (exit 3). Any other exception passes through at once.

        The first attempt runs bare: tenacity (~5 ms to import) loads only when a request has to be retried; the
        waits are the same (``backoff`` × 1, 2, 4, … seconds before the 2nd, 3rd, 4th … attempt)."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not retryable_exception(exc):
                raise
            first = exc
        if self.retries == 0:
            raise self._unavailable(op, first, 1) from None
        import tenacity

        log.debug("%s: %s failed (%s); retrying in %.2fs", self.host, op, _short(first), self.backoff)
        time.sleep(self.backoff)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.debug("%s: %s failed (%s); retrying in %.2fs", self.host, op, _short(exc) if exc else "?",
                      state.next_action.sleep if state.next_action else 0.0)

        retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(retryable_exception),
                                     stop=tenacity.stop_after_attempt(self.retries),
                                     wait=tenacity.wait_exponential(multiplier=self.backoff * 2, exp_base=2),
                                     before_sleep=before_sleep, reraise=True)
        try:
            return retrying(fn)
        except Exception as exc:  # noqa: BLE001 - classified below
            if not retryable_exception(exc):
                raise
            raise self._unavailable(op, exc, 1 + retrying.statistics.get("attempt_number", self.retries)) from None

    def _unavailable(self, op: str, exc: BaseException, attempts: int) -> RegistryUnavailable:
        return RegistryUnavailable(f"{self.host}: registry unavailable during {op}: {_short(exc)} "
                                   f"(after {attempts} attempt{'s' if attempts > 1 else ''})")

    def _auth_ready(self, scope: str) -> bool:
        """Whether a request for ``scope`` goes out with credentials already in hand: Basic, or its bearer token."""
        a = self._auth
        return (a.scheme == "basic" and self.credentials is not None) or (a.scheme == "bearer" and scope in a.tokens)

    def _auth_header(self, scope: str) -> dict[str, str]:
        a = self._auth
        if a.scheme == "bearer":
            token = a.tokens.get(scope)
            if token:
                return {"Authorization": f"Bearer {token}"}
        elif a.scheme == "basic" and self.credentials:
            return {"Authorization": _basic(self.credentials)}
        return {}

    def _fetch_token(self, params: dict[str, str], scope: str, op: str, repo: str | None) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryAuthError(f"{self.host}: Bearer challenge without realm during {op}", 401)
        query = {}
        if params.get("service"):
            query["service"] = params["service"]
        wanted = scope or params.get("scope", "")
        scopes = [s for s in wanted.split(" ") if s]
        url = realm + ("&" if "?" in realm else "?") + urlencode(
            list(query.items()) + [("scope", s) for s in scopes])
        headers = {"Authorization": _basic(self.credentials)} if self.credentials else {}
        resp = self.session.request("GET", url, headers=headers)
        if resp.status_code in (401, 403):
            raise RegistryAuthError(
                f"{self.host}: authentication failed for {repo or '(registry)'} ({resp.status_code})",
                resp.status_code)
        if retryable_status(resp.status_code):
            raise _Transient(f"token endpoint answered {resp.status_code}")
        if resp.status_code != 200:
            raise RegistryError(f"{self.host}: token request failed during {op} ({resp.status_code})",
                                resp.status_code)
        try:
            data = resp.json()
        except ValueError:
            raise RegistryError(f"{self.host}: token endpoint returned no JSON during {op}") from None
        token = data.get("token") or data.get("access_token")
        if not token:
            raise RegistryError(f"{self.host}: token endpoint returned no token during {op}")
        secrets.register(token)
        return token

    def _send(self, method: str, path: str, *, op: str, repo: str | None, scope: str,
              ok: tuple[int, ...], missing_ok: bool = False, headers: dict[str, str] | None = None,
              data: Any = None, stream: bool = False, params: dict[str, str] | None = None,
              allow_redirects: bool = True) -> Response | None:
        """One request (no retry): auth challenge handling and status classification.

        Returns None for 404 when ``missing_ok``; raises _Transient for retryable outcomes.
        """
        url = self._url(path)
        fetched = False  # a fresh token was fetched during this call (a cached one may have expired)
        for _ in range(3):  # initial + at most one challenge round per scheme
            hdrs = dict(headers or {})
            hdrs.update(self._auth_header(scope))
            log.debug("%s %s", method, url)
            resp = self.session.request(method, url, headers=hdrs, data=data, stream=stream, params=params,
                                        allow_redirects=allow_redirects)
            if resp.status_code == 401:
                scheme, challenge = parse_www_authenticate(resp.headers.get("WWW-Authenticate", ""))
                already = "Authorization" in hdrs
                resp.close()
                if scheme == "bearer" and not fetched:
                    self._auth.scheme, self._auth.challenge = "bearer", challenge
                    self._auth.tokens.pop(scope, None)
                    self._auth.tokens[scope] = self._fetch_token(challenge, scope, op, repo)
                    fetched = True
                    continue
                if scheme == "basic" and self.credentials and not already:
                    self._auth.scheme = "basic"
                    continue
                raise RegistryAuthError(f"{self.host}: authentication failed for {repo or '(registry)'} (401)", 401)
            if resp.status_code == 403:
                resp.close()
                raise RegistryAuthError(f"{self.host}: authentication failed for {repo or '(registry)'} (403)", 403)
            if _headers_cut(resp):  # a response cut mid-headers: a transport fault, retried like a reset
                resp.close()
                raise _Transient("response headers cut short")
            if resp.status_code in ok:
                return resp
            if resp.status_code == 404 and missing_ok:
                resp.close()
                return None
            if retryable_status(resp.status_code):
                resp.close()
                raise _Transient(f"HTTP {resp.status_code}")
            detail = _error_detail(resp)
            resp.close()
            if detail.split(" ", 1)[0] in _LOST_UPLOAD:  # the upload session is gone: start a new one
                raise _Transient(f"upload session lost ({detail.split(' ', 1)[0]})")
            target = f" {repo}" if repo else ""
            raise RegistryError(f"{self.host}: {op}{target} failed ({resp.status_code}{': ' + detail if detail else ''})",
                                resp.status_code)
        raise RegistryAuthError(f"{self.host}: authentication failed for {repo or '(registry)'} (401)", 401)

    def _request(self, method: str, path: str, *, op: str, repo: str | None, actions: str = "pull",
                 extra_scope: str | None = None, **kw: Any) -> Response | None:
        scope = _scope(repo, actions, extra_scope)
        return self._retry(f"{op} {repo}" if repo else op,
                           lambda: self._send(method, path, op=op, repo=repo, scope=scope, **kw))

    # -- API ---------------------------------------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: the registry answers and accepts our credentials."""
        resp = self._request("GET", "/v2/", op="ping", repo=None, ok=(200,))
        assert resp is not None
        resp.close()

    def head_manifest(self, repo: str, reference: str) -> str | None:
        """The digest ``reference`` (tag or digest) resolves to, or None when unknown."""
        resp = self._request("HEAD", f"/v2/{repo}/manifests/{reference}", op="HEAD manifest", repo=repo,
                             ok=(200,), missing_ok=True, headers={"Accept": ACCEPT})
        if resp is None:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        if is_digest(reference):
            return reference
        return self.get_manifest(repo, reference).digest

    def _memo(self) -> dict[tuple[str, str, str], Any]:
        """Content this client fetched by digest (verified against it): a manifest or a small blob never changes
        under its digest, so one command asks for it once (a promotion reads the source's labels for the
        resolution and again for the source check, its manifest for the copy and again for the tags)."""
        memo = self.__dict__.get("_by_digest")
        if memo is None:
            memo = self.__dict__["_by_digest"] = {}
        return memo

    def get_manifest(self, repo: str, reference: str) -> Manifest:
        """The manifest bytes, media type and digest (sha256 of the bytes; verified for digest references)."""
        memo = self._memo()
        if ("manifest", repo, reference) in memo:
            return memo[("manifest", repo, reference)]

        def fetch() -> Manifest:
            resp = self._send("GET", f"/v2/{repo}/manifests/{reference}", op="GET manifest", repo=repo,
                              scope=_scope(repo, "pull"), ok=(200,), headers={"Accept": ACCEPT})
            assert resp is not None
            body = resp.content
            if not _is_manifest(body):
                ctype = resp.headers.get("Content-Type") or "no Content-Type"
                raise RegistryUnavailable(f"{self.host}: GET manifest {repo}:{reference} answered something that is "
                                          f"not an image manifest ({ctype}, {len(body)} bytes); is this a registry?")
            return Manifest(body=body, media_type=media_type_of(body, resp.headers.get("Content-Type")),
                            digest=sha256_digest(body))

        m = self._retry(f"GET manifest {repo}:{reference}", fetch)
        if is_digest(reference) and m.digest != reference:
            raise RegistryError(f"{self.host}: manifest {repo}@{reference} does not match its digest "
                                f"(got {m.digest})")
        if is_digest(reference):
            memo[("manifest", repo, reference)] = m
        return m

    def manifest_exists(self, repo: str, reference: str) -> bool:
        return self.head_manifest(repo, reference) is not None

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """Write a manifest under a tag or a digest; returns its digest."""
        resp = self._request("PUT", f"/v2/{repo}/manifests/{reference}", op="PUT manifest", repo=repo,
                             actions="pull,push", ok=(200, 201, 202), data=body,
                             headers={"Content-Type": media_type})
        assert resp is not None
        resp.close()
        digest = resp.headers.get("Docker-Content-Digest") or sha256_digest(body)
        return digest

    def delete_manifest(self, repo: str, digest: str) -> bool:
        """Delete a manifest by digest (the registry must allow deletes); False when unknown."""
        self._memo().pop(("manifest", repo, digest), None)
        resp = self._request("DELETE", f"/v2/{repo}/manifests/{digest}", op="DELETE manifest", repo=repo,
                             actions="pull,push,delete", ok=(200, 202), missing_ok=True)
        if resp is None:
            return False
        resp.close()
        return True

    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", op="HEAD blob", repo=repo, ok=(200,),
                             missing_ok=True)
        if resp is None:
            return False
        resp.close()
        return True

    def get_blob(self, repo: str, digest: str) -> bytes:
        """A (small) blob in memory, verified against its digest."""
        memo = self._memo()
        if ("blob", repo, digest) in memo:
            return memo[("blob", repo, digest)]

        def fetch() -> bytes:
            resp = self._send("GET", f"/v2/{repo}/blobs/{digest}", op="GET blob", repo=repo,
                              scope=_scope(repo, "pull"), ok=(200,))
            assert resp is not None
            return resp.content

        body = self._retry(f"GET blob {repo}@{digest}", fetch)
        if digest.startswith("sha256:") and sha256_digest(body) != digest:
            raise RegistryError(f"{self.host}: blob {repo}@{digest} does not match its digest")
        if digest.startswith("sha256:") and len(body) <= _MEMO_BLOB:
            memo[("blob", repo, digest)] = body
        return body

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount on this host; True if mounted (201), False if the registry declined."""
        resp = self._request("POST", f"/v2/{repo}/blobs/uploads/", op="mount blob", repo=repo,
                             actions="pull,push", extra_scope=from_repo, ok=(201, 202),
                             params={"mount": digest, "from": from_repo})
        assert resp is not None
        resp.close()
        if resp.status_code == 201:
            return True
        location = resp.headers.get("Location")
        if location:  # the registry opened an upload session instead: cancel it
            try:
                self._send("DELETE", urljoin(self.base + "/", location), op="cancel upload", repo=repo,
                           scope=_scope(repo, "pull,push"), ok=(200, 202, 204), missing_ok=True)
            except Exception as exc:  # noqa: BLE001 - best effort
                log.debug("cancel upload failed: %s", _short(exc))
        return False

    def _start_upload(self, repo: str, digest: str) -> str:
        """Open a blob upload session in ``repo``; returns the URL to PUT the whole blob to."""
        start = self._send("POST", f"/v2/{repo}/blobs/uploads/", op="start upload", repo=repo,
                           scope=_scope(repo, "pull,push"), ok=(202,))
        assert start is not None
        start.close()
        location = start.headers.get("Location")
        if not location or not _UPLOAD_LOCATION.search(urlsplit(location).path):
            raise _Transient(f"upload for {repo} returned no usable Location")  # cut headers: retried
        return _with_query(urljoin(self.base + "/", location), digest=digest)

    def copy_blob(self, src: RegistryClient, src_repo: str, digest: str, repo: str,
                  size: int | None = None, on_start: Callable[[], None] | None = None) -> int:
        """Stream one blob from ``src`` into ``repo`` here (GET → monolithic PUT). Returns bytes sent.
        ``on_start`` is called when the bytes start to flow (the source answered, the upload is open)."""
        sent = [0]

        def attempt() -> int:
            sent[0] = 0
            upload_url = self._start_upload(repo, digest)
            src_resp = src._send("GET", f"/v2/{src_repo}/blobs/{digest}", op="GET blob", repo=src_repo,
                                 scope=_scope(src_repo, "pull"), ok=(200,), stream=True)
            assert src_resp is not None
            if on_start is not None:
                on_start()
            try:
                length = size if size is not None else _int(src_resp.headers.get("Content-Length"))
                hasher = hashlib.sha256()

                def chunks() -> Iterator[bytes]:
                    for chunk in src_resp.iter_content(_CHUNK):
                        hasher.update(chunk)
                        yield chunk

                def count(n: int) -> None:
                    sent[0] += n

                if length is not None:
                    body: Any = _SizedStream(chunks(), length, count)
                else:
                    def counted() -> Iterator[bytes]:
                        for c in chunks():
                            count(len(c))
                            yield c
                    body = counted()
                put = self._send("PUT", upload_url, op="upload blob", repo=repo, scope=_scope(repo, "pull,push"),
                                 ok=(201, 204), data=body, headers={"Content-Type": "application/octet-stream"})
                assert put is not None
                put.close()
            finally:
                src_resp.close()
            if digest.startswith("sha256:") and "sha256:" + hasher.hexdigest() != digest:
                raise RegistryError(f"{src.host}: blob {src_repo}@{digest} content does not match its digest")
            return sent[0]

        return self._retry(f"copy blob {digest[:19]} to {repo}", attempt)

    def download_blob(self, repo: str, digest: str, path: str | os.PathLike[str]) -> int:
        """Stream a blob into a file, verified against its digest; returns its size."""
        def attempt() -> int:
            resp = self._send("GET", f"/v2/{repo}/blobs/{digest}", op="GET blob", repo=repo,
                              scope=_scope(repo, "pull"), ok=(200,), stream=True)
            assert resp is not None
            h, size = hashlib.sha256(), 0
            try:
                with open(path, "wb") as fh:
                    for chunk in resp.iter_content(_CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        fh.write(chunk)
            finally:
                resp.close()
            if digest.startswith("sha256:") and "sha256:" + h.hexdigest() != digest:
                raise RegistryError(f"{self.host}: blob {repo}@{digest} does not match its digest")
            return size

        return self._retry(f"GET blob {repo}@{digest[:19]}", attempt)

    def push_blob_file(self, repo: str, digest: str, path: str | os.PathLike[str]) -> bool:
        """Upload a blob from a file (monolithic PUT) unless the registry has it; True if uploaded."""
        if self.blob_exists(repo, digest):
            return False

        def attempt() -> bool:
            upload_url = self._start_upload(repo, digest)
            with open(path, "rb") as fh:
                put = self._send("PUT", upload_url,
                                 op="upload blob", repo=repo, scope=_scope(repo, "pull,push"), ok=(201, 204),
                                 data=fh, headers={"Content-Type": "application/octet-stream"})
            assert put is not None
            put.close()
            return True

        return self._retry(f"upload blob {digest[:19]} to {repo}", attempt)

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload a small blob from memory (monolithic PUT) unless the registry has it; returns its digest."""
        digest = sha256_digest(data)
        if self.blob_exists(repo, digest):
            return digest

        def attempt() -> None:
            upload_url = self._start_upload(repo, digest)
            put = self._send("PUT", upload_url, op="upload blob", repo=repo, scope=_scope(repo, "pull,push"),
                             ok=(201, 204), data=data, headers={"Content-Type": "application/octet-stream"})
            assert put is not None
            put.close()

        self._retry(f"upload blob {digest[:19]} to {repo}", attempt)
        return digest

    def referrers(self, repo: str, digest: str) -> Manifest | None:
        """The OCI 1.1 referrers API answer for ``digest`` (an image index), or None when the registry does not
        implement the API (404: use the referrers tag schema instead)."""
        resp = self._request("GET", f"/v2/{repo}/referrers/{digest}", op="GET referrers", repo=repo, ok=(200,),
                             missing_ok=True, headers={"Accept": OCI_INDEX})
        if resp is None:
            return None
        body = resp.content
        resp.close()
        if not _is_manifest(body) or (resp.headers.get("Content-Type") or "").split(";")[0].strip() != OCI_INDEX:
            return None
        return Manifest(body=body, media_type=OCI_INDEX, digest=sha256_digest(body))

    def list_tags(self, repo: str) -> list[str]:
        """All tags of ``repo`` ([] when the repository does not exist), following Link pagination."""
        url: str | None = f"/v2/{repo}/tags/list?n={self.page_size}"
        tags: list[str] = []
        while url:
            page = self._json_page(url, op="list tags", repo=repo, missing_ok=True)
            if page is None:
                return tags
            data, link = page
            tags.extend(data.get("tags") or [])
            nxt = parse_link_next(link)
            url = urljoin(self.base + "/", nxt) if nxt else None
        return tags

    def _json_page(self, url: str, *, op: str, repo: str | None,
                   missing_ok: bool = False) -> tuple[dict[str, Any], str | None] | None:
        """(the JSON object of a 200 answer, its Link header); None for a missing repository (``missing_ok``). An
        answer whose body is not a JSON object — cut after its status line or in its body — is retried like any
        transient fault, and is exit 3 (registry unavailable) when it persists."""
        scope = _scope(repo, "pull")

        def fetch() -> tuple[dict[str, Any], str | None] | None:
            resp = self._send("GET", url, op=op, repo=repo, scope=scope, ok=(200,), missing_ok=missing_ok)
            if resp is None:
                return None
            try:
                data = resp.json()
            except ValueError:
                raise _Transient("the answer is not JSON (cut short?)") from None
            if not isinstance(data, dict):
                raise _Transient("the answer is not a JSON object")
            return data, resp.headers.get("Link")

        return self._retry(f"{op} {repo}" if repo else op, fetch)

    def catalog(self) -> list[str]:
        """Repository names (``/v2/_catalog``, paginated)."""
        repos: list[str] = []
        url: str | None = f"/v2/_catalog?n={self.page_size}"
        while url:
            page = self._json_page(url, op="catalog", repo=None)
            assert page is not None
            data, link = page
            repos.extend(data.get("repositories") or [])
            nxt = parse_link_next(link)
            url = urljoin(self.base + "/", nxt) if nxt else None
        return repos

    def resolve_image_manifest(self, repo: str, reference: str, *, os_name: str = "linux",
                               arch: str = "amd64") -> Manifest:
        """The image manifest for ``reference``; for an index, the child for os/arch (else the first)."""
        m = self.get_manifest(repo, reference)
        if not m.is_index:
            return m
        children = m.children()
        if not children:
            raise RegistryError(f"{self.host}: {repo}@{m.digest} is an empty index")
        chosen = next((c for c in children if (c.platform or {}).get("os") == os_name
                       and (c.platform or {}).get("architecture") == arch), children[0])
        return self.get_manifest(repo, chosen.digest)

    def image_config(self, repo: str, reference: str) -> dict[str, Any]:
        """The image config blob as JSON (labels under ``["config"]["Labels"]``)."""
        m = self.resolve_image_manifest(repo, reference)
        config = m.json().get("config")
        if not isinstance(config, dict) or "digest" not in config:
            raise RegistryError(f"{self.host}: {repo}@{m.digest} has no config blob")
        try:
            return json.loads(self.get_blob(repo, config["digest"]))
        except ValueError:
            raise RegistryError(f"{self.host}: config blob of {repo}@{m.digest} is not JSON") from None

    def labels(self, repo: str, reference: str) -> dict[str, str]:
        config = self.image_config(repo, reference)
        return dict((config.get("config") or {}).get("Labels") or {})

    def copy_image(self, src: RegistryClient, src_repo: str, digest: str, dst_repo: str, *,
                   mount_from: Sequence[str] = ()) -> CopyStats:
        """Copy ``src_repo@digest`` from ``src`` into ``dst_repo`` here, BY DIGEST, no tag written.

        Index: children first. Each blob: skip if present, cross-mount on the same host (from the source
        repository, or from ``mount_from``: repositories of this registry known to hold blobs of the image, such
        as its parent's), else stream GET → PUT. Blobs go ``COPY_WORKERS`` at a time over this client's and
        ``src``'s connection pools. The manifest is PUT byte-identical under its digest with its original media
        type, after all its blobs.
        """
        started = time.monotonic()
        stats = CopyStats()
        candidates = [r for r in dict.fromkeys(mount_from) if r and r != dst_repo]
        self._copy_manifest(src, src_repo, digest, dst_repo, stats, candidates)
        stats.seconds = round(time.monotonic() - started, 3)
        return stats

    def _copy_manifest(self, src: RegistryClient, src_repo: str, digest: str, dst_repo: str,
                       stats: CopyStats, mount_from: list[str] | None = None) -> None:
        if self.head_manifest(dst_repo, digest) == digest:
            stats.manifests_skipped += 1
            return
        m = src.get_manifest(src_repo, digest)
        for child in m.children():
            self._copy_manifest(src, src_repo, child.digest, dst_repo, stats, mount_from)
        candidates = list(mount_from or [])
        if src.host == self.host and src_repo != dst_repo:
            candidates.insert(0, src_repo)
        blobs = [b for b in m.blobs() if not (b.urls and b.media_type in FOREIGN_LAYER_TYPES)]  # foreign: elsewhere
        parent_blobs = {} if m.is_index else self._parent_blobs(src, src_repo, m, dst_repo)

        locations = blob_locations()
        seen: list[tuple[str, str, str]] = []
        gone: list[tuple[str, str, str]] = []

        def one(blob: Descriptor, on_start: Callable[[], None] | None = None) -> tuple[str, int]:
            seen.append((src.host, blob.digest, src_repo))
            parent_repo = parent_blobs.get(blob.digest)
            if parent_repo and self.mount_blob(dst_repo, blob.digest, parent_repo):
                return "mounted", 0  # the parent image, already here, holds it: no HEAD, no bytes
            if self.blob_exists(dst_repo, blob.digest):
                return "skipped", 0
            for repo in candidates:
                if self.mount_blob(dst_repo, blob.digest, repo):
                    return "mounted", 0
            for repo in locations.known(self.host, blob.digest):
                if repo == dst_repo or repo in candidates:
                    continue
                # Only a hint, maybe stale (a repository deleted or emptied since): asked first, with the mount's
                # own scope, so a stale one costs one HEAD, not an upload session opened and cancelled (as
                # skopeo does); an unreadable one is as good as gone.
                try:
                    held = self._request("HEAD", f"/v2/{repo}/blobs/{blob.digest}", op="HEAD blob", repo=dst_repo,
                                         actions="pull,push", extra_scope=repo, ok=(200,), missing_ok=True)
                except (RegistryAuthError, RegistryError):
                    held = None
                if held is not None:
                    held.close()
                    if self.mount_blob(dst_repo, blob.digest, repo):
                        return "mounted", 0
                gone.append((self.host, blob.digest, repo))
            return "copied", self.copy_blob(src, src_repo, blob.digest, dst_repo, blob.size, on_start=on_start)

        if len(blobs) > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._size_pool(COPY_WORKERS)
            src._size_pool(COPY_WORKERS)
            # Unless both sides' credentials are in hand already (Basic, or the scopes' tokens; an anonymous
            # source that answered this repository's reads), the smallest (the config) goes alone first: its
            # requests fetch the tokens the others then share (one token request per scope, not one per thread).
            # Then the largest first, so the copy does not end waiting on a big layer started last.
            ordered = sorted(blobs, key=lambda b: b.size or 0)
            ready = self._auth_ready(_scope(dst_repo, "pull,push")) and (
                src._auth.scheme == "" or src._auth_ready(_scope(src_repo, "pull")))
            outcomes = [] if ready else [one(ordered[0])]
            rest = ordered[::-1] if ready else ordered[:0:-1]
            # The largest blob is the copy's critical path: the others start once its bytes flow (or once it
            # needs none: present, mounted), so their requests do not hold up its own on the registries and the
            # cores (python:3.11's 50 MB layer used to start ~50 ms into the copy, behind five others' checks).
            flowing = threading.Event()

            def lead(blob: Descriptor) -> tuple[str, int]:
                try:
                    return one(blob, on_start=flowing.set)
                finally:
                    flowing.set()

            with ThreadPoolExecutor(max_workers=min(COPY_WORKERS, len(rest)),
                                    thread_name_prefix="bakery-copy") as pool:
                first = pool.submit(lead, rest[0])
                flowing.wait(timeout=2.0)  # a slow start (a retry's backoff) does not hold the others for long
                others = list(pool.map(one, rest[1:]))
                outcomes += [first.result(), *others]
        else:
            outcomes = [one(b) for b in blobs]
        seen += [(self.host, b.digest, dst_repo) for b in blobs]
        for what, sent in outcomes:
            if what == "skipped":
                stats.blobs_skipped += 1
            elif what == "mounted":
                stats.blobs_mounted += 1
            else:
                stats.blobs_copied += 1
                stats.bytes_copied += sent

        # the blob-location hints are kept (an SQLite commit) while the manifest is written
        hints = threading.Thread(target=locations.update, args=(seen, gone), name="bakery-blob-locations")
        hints.start()
        try:
            written = self.put_manifest(dst_repo, digest, m.body, m.media_type)
        finally:
            hints.join()
        if written != digest:
            raise RegistryError(f"{self.host}: {dst_repo}: manifest written as {written}, expected {digest}")
        stats.manifests_copied += 1

    def _parent_blobs(self, src: RegistryClient, src_repo: str, m: Manifest, dst_repo: str) -> dict[str, str]:
        """Blobs of the image's parent when this registry holds the parent next to ``dst_repo`` (same namespace,
        the parent's name; the image's base.name and base.digest labels say which): digest -> repository to
        mount from. A promoted child finds its promoted parent there; {} when anything is missing."""
        config = m.json().get("config")
        if not isinstance(config, dict) or not config.get("digest") or (config.get("size") or 0) > 1 << 20:
            return {}
        try:
            labels = (json.loads(src.get_blob(src_repo, config["digest"])).get("config") or {}).get("Labels") or {}
        except (RegistryError, ValueError, AttributeError):
            return {}
        base_name, base_digest = labels.get(_LABEL_BASE_NAME) or "", labels.get(_LABEL_BASE_DIGEST) or ""
        repo_path = base_name.split("@", 1)[0]
        if ":" in repo_path.rsplit("/", 1)[-1]:
            repo_path = repo_path.rsplit(":", 1)[0]
        name = repo_path.rsplit("/", 1)[-1]
        if not name or not is_digest(base_digest):
            return {}
        namespace = dst_repo.rsplit("/", 1)[0] if "/" in dst_repo else ""
        parent_repo = f"{namespace}/{name}" if namespace else name
        if parent_repo == dst_repo:
            return {}
        try:
            if self.head_manifest(parent_repo, base_digest) != base_digest:
                return {}
            parent = self.get_manifest(parent_repo, base_digest)
        except (RegistryError, RegistryAuthError):  # only a shortcut: the blobs are copied instead
            return {}
        if parent.is_index:
            return {}
        return {b.digest: parent_repo for b in parent.blobs()}

    def _size_pool(self, workers: int) -> None:
        """Keep up to ``workers`` connections to this host (the transport keeps 10; this only grows it)."""
        self.session.resize(workers)


# --------------------------------------------------------------------------------------------------------------


def _basic(credentials: tuple[str, str]) -> str:
    raw = f"{credentials[0]}:{credentials[1]}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _with_query(url: str, **extra: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(extra.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _short(exc: BaseException) -> str:
    """A one-line reason for a transient failure (no URLs with credentials, no nested reprs)."""
    from bakery.transport import TransportError

    if isinstance(exc, TransportError):
        return exc.reason
    return secrets.mask(str(exc)) or type(exc).__name__


def _headers_cut(resp: Response) -> bool:
    """Whether the header block arrived damaged: unparsable lines, the block ended by the connection closing,
    or a digest header cut short. A cut between two whole lines is caught where a header is needed (Location)."""
    digest = resp.headers.get("Docker-Content-Digest")
    if digest is not None and not _ANY_DIGEST.match(digest):
        return True
    return resp.headers_cut()


def _error_detail(resp: Response) -> str:
    """The first error code/message of a registry error body."""
    try:
        data = resp.json()
        errs = data.get("errors") or []
        if errs:
            e = errs[0]
            return secrets.mask(f"{e.get('code', '')} {e.get('message', '')}".strip())
    except (ValueError, AttributeError):
        pass
    return ""
