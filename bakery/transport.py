"""The HTTP transport under :class:`bakery.registry.RegistryClient`: ``http.client`` with a connection pool.

Why not ``requests``: importing it (with urllib3, charset_normalizer, idna, http.cookiejar…) costs ~50 ms on this
machine against ~10 ms for ``http.client`` and ``ssl``, and every short command that talks to a registry (a repeat
promotion, ``bakery status``, the nightly) paid it; each request also cost a few hundred µs of requests' own
machinery. A registry client needs little of what requests does, and this module does exactly that much:

* **connections** — kept alive and pooled per (scheme, host, port, proxy), thread-safe (copy_image runs its
  blob copies on worker threads over one transport); a pooled connection the server has closed is noticed
  before it is reused (urllib3's check: is the idle socket readable?);
* **TLS** — verified always (plain HTTP is the caller's explicit choice: loopback, or ``tls_verify: false``),
  against the CA bundle named by ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE`` or ``SSL_CERT_FILE`` (a file or a
  directory), else certifi's bundle (what requests used), else the system's;
* **proxies** — ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` and ``NO_PROXY`` when the environment is trusted
  (never for loopback: :mod:`bakery.registries` decides), an ``https`` target through a ``CONNECT`` tunnel;
  ``user:password@`` in the proxy URL becomes ``Proxy-Authorization``;
* **redirects** — followed for GET and HEAD (a registry sends blob downloads to its storage), at most 10, the
  ``Authorization`` header dropped when the host changes; other methods get the 3xx back;
* **bodies** — bytes, a file (sent in 1 MiB blocks with its Content-Length), an iterable with ``__len__`` (its
  Content-Length, chunks written as they come) or any other iterable (chunked);
* **responses** — read whole unless ``stream=True`` (so a connection goes back to the pool at once); a streamed
  one goes back when it was read to the end, and is dropped when closed early;
* **faults** — anything the network does wrong (refused, reset, timed out, unknown host, TLS, an answer cut
  short) is one :class:`TransportError` with a short reason and no URL; the caller decides what is transient
  (:func:`bakery.registry.retryable_exception`) and retries.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlencode, urljoin, urlsplit

BLOCK = 1024 * 1024  # socket reads and file sends: 1 MiB at a time (http.client's default is 8 KiB)
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DRAIN = 64 * 1024  # an unread body up to this size is read on close, so its connection can be reused


class TransportError(Exception):
    """The network failed this request: ``reason`` is short and names no URL (credentials may be in one)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _reason(exc: BaseException) -> str:
    """What went wrong, in a few words (no URL, no nested reprs)."""
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "answer cut short"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return "connection reset"
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({getattr(exc, 'verify_message', None) or 'verify failed'})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({getattr(exc, 'reason', None) or type(exc).__name__})"
    if isinstance(exc, http.client.HTTPException):
        return f"bad answer ({type(exc).__name__})"
    return "connection failed"


class Response:
    """One answer: ``status_code``, ``headers`` (case-insensitive ``get``), ``content``/``json()`` or, streamed,
    ``iter_content``; ``close()`` ends it (a streamed body not read to its end drops the connection)."""

    def __init__(self, raw: http.client.HTTPResponse, release: Any, url: str, content: bytes | None = None):
        self._raw = raw
        self._release = release  # (keep: bool) -> None: hands the connection back to the pool, or drops it
        self.url = url
        self.status_code = raw.status
        self.headers = raw.msg
        self._content = content

    def headers_cut(self) -> bool:
        """Whether the header block arrived damaged: a line that is no header, or the header block ended by the
        connection closing (what urllib3 reports as a HeaderParsingError)."""
        msg = self.headers
        if getattr(msg, "defects", None):
            return True
        try:
            payload = msg.get_payload()
        except Exception:  # noqa: BLE001 - an odd message object: nothing to judge
            return False
        return bool(payload) if isinstance(payload, (str, bytes)) else False

    @property
    def content(self) -> bytes:
        if self._content is None:
            try:
                self._content = self._raw.read()
            except (OSError, http.client.HTTPException) as exc:
                self._end(keep=False)
                raise TransportError(_reason(exc)) from None
            self._end(keep=True)
        return self._content

    def json(self) -> Any:
        return json.loads(self.content)

    def iter_content(self, size: int = BLOCK) -> Iterator[bytes]:
        if self._content is not None:
            yield self._content
            return
        while True:
            try:
                chunk = self._raw.read(size)
            except (OSError, http.client.HTTPException) as exc:
                self._end(keep=False)
                raise TransportError(_reason(exc)) from None
            if not chunk:
                if self._raw.length:  # http.client's read(n) gives b"" when the peer closes early: cut short
                    self._end(keep=False)
                    raise TransportError("answer cut short")
                self._end(keep=True)
                return
            yield chunk

    def close(self) -> None:
        if self._release is None:
            return
        raw = self._raw
        length = raw.length
        if raw.isclosed():
            self._end(keep=True)
        elif length is not None and length <= _DRAIN and not raw.chunked:
            try:
                raw.read()
                self._end(keep=True)
            except (OSError, http.client.HTTPException):
                self._end(keep=False)
        else:
            self._end(keep=False)

    def _end(self, keep: bool) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(keep and self._raw.isclosed() and not self._raw.will_close)


class Transport:
    """Pooled HTTP/1.1 connections for one client (see the module's text)."""

    def __init__(self, *, trust_env: bool = True, timeout: float = 30, headers: Mapping[str, str] | None = None,
                 pool_size: int = 10, environ: Mapping[str, str] | None = None):
        self.trust_env = trust_env
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.pool_size = pool_size
        self._environ = environ
        self._idle: dict[tuple[Any, ...], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: Any = None

    # -- public --------------------------------------------------------------------------------------------------

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None, data: Any = None,
                params: Mapping[str, str] | None = None, stream: bool = False,
                allow_redirects: bool = True) -> Response:
        if params:
            url += ("&" if urlsplit(url).query else "?") + urlencode(list(params.items()))
        hdrs = {**self.headers, **(headers or {})}
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._once(method, url, hdrs, data, stream)
            location = resp.headers.get("Location")
            if not (allow_redirects and method in ("GET", "HEAD") and resp.status_code in _REDIRECTS and location):
                return resp
            resp.close()
            target = urljoin(url, location)
            if _origin(target) != _origin(url):  # another host: the registry's credentials stay here
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            url = target
        raise TransportError(f"more than {MAX_REDIRECTS} redirects")

    def resize(self, pool_size: int) -> None:
        """Keep up to ``pool_size`` idle connections per host (it only grows)."""
        self.pool_size = max(self.pool_size, pool_size)

    def close(self) -> None:
        with self._lock:
            pools, self._idle = self._idle, {}
        for conns in pools.values():
            for conn in conns:
                conn.close()

    # -- internals -----------------------------------------------------------------------------------------------

    def _once(self, method: str, url: str, headers: dict[str, str], data: Any, stream: bool) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"not an http(s) URL ({parts.scheme or 'no scheme'})")
        proxy = self._proxy_for(parts)
        key = (parts.scheme, parts.hostname, parts.port, proxy)
        conn = self._checkout(key, parts, proxy)
        target = url if (proxy and parts.scheme == "http") else (parts.path or "/") + (
            f"?{parts.query}" if parts.query else "")
        hdrs = dict(headers)
        if proxy and parts.scheme == "http" and proxy[2]:
            hdrs["Proxy-Authorization"] = proxy[2]
        body, chunked = _body(data, hdrs)

        def release(keep: bool) -> None:
            self._checkin(key, conn, keep)

        try:
            conn.request(method, target, body=body, headers=hdrs, encode_chunked=chunked)
            raw = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(_reason(exc)) from None
        except BaseException:  # the body's source failed mid-request (a streamed copy): this connection is spent
            conn.close()
            raise
        resp = Response(raw, release, url)
        if not stream:
            resp.content  # noqa: B018 - read whole: the connection goes back to the pool now
        return resp

    def _checkout(self, key: tuple[Any, ...], parts: Any,
                  proxy: tuple[str, int, str] | None) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if not _dropped(conn):
                    return conn
                conn.close()
        t = self.timeout
        port = parts.port or (443 if parts.scheme == "https" else 80)
        conn: http.client.HTTPConnection
        if proxy is None:
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, port, timeout=t, context=self._context(),
                                                   blocksize=BLOCK)
            else:
                conn = http.client.HTTPConnection(parts.hostname, port, timeout=t, blocksize=BLOCK)
        else:
            phost, pport, pauth = proxy
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(phost, pport, timeout=t, context=self._context(), blocksize=BLOCK)
                conn.set_tunnel(parts.hostname, port, headers={"Proxy-Authorization": pauth} if pauth else None)
            else:
                conn = http.client.HTTPConnection(phost, pport, timeout=t, blocksize=BLOCK)
        return conn

    def _checkin(self, key: tuple[Any, ...], conn: http.client.HTTPConnection, keep: bool) -> None:
        if keep and conn.sock is not None:
            with self._lock:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self.pool_size:
                    idle.append(conn)
                    return
        conn.close()

    def _context(self) -> Any:
        if self._tls is None:
            import ssl

            env = self._env()
            bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or env.get("SSL_CERT_FILE")
            if bundle:
                self._tls = (ssl.create_default_context(capath=bundle) if os.path.isdir(bundle)
                             else ssl.create_default_context(cafile=bundle))
            else:
                try:
                    import certifi

                    self._tls = ssl.create_default_context(cafile=certifi.where())
                except ImportError:
                    self._tls = ssl.create_default_context()
        return self._tls

    def _env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def _proxy_for(self, parts: Any) -> tuple[str, int, str] | None:
        """(proxy host, port, Proxy-Authorization or "") for this URL, from the environment; None: direct."""
        if not self.trust_env:
            return None
        env = {k.lower(): v for k, v in self._env().items() if k.lower().endswith("_proxy") and v}
        chosen = env.get(f"{parts.scheme}_proxy") or env.get("all_proxy")
        if not chosen or _bypassed(parts, env.get("no_proxy", "")):
            return None
        if "://" not in chosen:
            chosen = "http://" + chosen
        p = urlsplit(chosen)
        if p.scheme != "http" or not p.hostname:
            raise TransportError(f"proxy scheme {p.scheme!r} is not supported (an http:// proxy is)")
        auth = ""
        if p.username is not None:
            raw = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            auth = "Basic " + base64.b64encode(raw).decode()
        return p.hostname, p.port or 80, auth


def _origin(url: str) -> tuple[str, str | None, int | None]:
    p = urlsplit(url)
    return p.scheme, p.hostname, p.port


def _bypassed(parts: Any, no_proxy: str) -> bool:
    """``NO_PROXY``: ``*``, or host names / domain suffixes (``.example.com`` and ``example.com`` both match
    subdomains), optionally with ``:port``; IP networks in CIDR form."""
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, want_port = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
        if want_port and want_port != str(port):
            continue
        if "/" in name:
            import ipaddress

            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle pooled connection is gone: no socket, or readable (the server closed it, or sent
    something unasked)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _body(data: Any, headers: dict[str, str]) -> tuple[Any, bool]:
    """(what http.client sends, whether chunked); sets Content-Length where the size is known."""
    if data is None or isinstance(data, (bytes, bytearray, memoryview)):
        return data, False
    if isinstance(data, str):
        return data.encode(), False
    if hasattr(data, "read"):  # a file: its size from here to its end
        try:
            size = os.fstat(data.fileno()).st_size - data.tell()
            headers["Content-Length"] = str(size)
            return data, False
        except (OSError, AttributeError, ValueError):
            return _chunks(data), True
    if hasattr(data, "__len__") and isinstance(data, Iterable):
        headers["Content-Length"] = str(len(data))
        return data, False
    return data, True


def _chunks(fh: Any) -> Iterator[bytes]:
    while True:
        block = fh.read(BLOCK)
        if not block:
            return
        yield block
