"""The registry transport's pure parts: proxy choice (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY), request bodies and
their Content-Length, fault reasons, damaged header blocks."""

from __future__ import annotations

import http.client
import io
import socket
import ssl
from urllib.parse import urlsplit

import pytest

from bakery.transport import Transport, TransportError, _body, _bypassed, _reason


def proxy(url: str, **env: str) -> tuple[str, int, str] | None:
    return Transport(trust_env=True, environ=env)._proxy_for(urlsplit(url))


def test_proxies_come_from_the_environment_by_scheme_then_all() -> None:
    assert proxy("https://reg.example.com/v2/", HTTPS_PROXY="http://proxy:3128") == ("proxy", 3128, "")
    assert proxy("https://reg.example.com/v2/", https_proxy="proxy:8080") == ("proxy", 8080, "")
    assert proxy("http://reg.example.com/v2/", HTTPS_PROXY="http://proxy:3128") is None
    assert proxy("http://reg.example.com/v2/", ALL_PROXY="http://all:1") == ("all", 1, "")
    assert proxy("https://reg.example.com/v2/") is None
    assert proxy("https://reg.example.com/v2/", HTTPS_PROXY="") is None


def test_a_proxy_password_becomes_proxy_authorization_and_is_decoded() -> None:
    host, port, auth = proxy("https://r.example/v2/", HTTPS_PROXY="http://us%40er:p%3Ass@proxy:3128")
    assert (host, port) == ("proxy", 3128)
    import base64

    assert base64.b64decode(auth.split(" ", 1)[1]).decode() == "us@er:p:ss"


def test_an_untrusted_environment_has_no_proxy() -> None:
    t = Transport(trust_env=False, environ={"HTTPS_PROXY": "http://proxy:3128"})
    assert t._proxy_for(urlsplit("https://reg.example.com/v2/")) is None


def test_a_socks_or_https_proxy_is_refused_by_name() -> None:
    with pytest.raises(TransportError, match="socks5"):
        proxy("https://r.example/v2/", HTTPS_PROXY="socks5://p:1080")


@pytest.mark.parametrize("url,no_proxy,bypassed", [
    ("https://reg.example.com/v2/", "*", True),
    ("https://reg.example.com/v2/", "example.com", True),
    ("https://reg.example.com/v2/", ".example.com", True),
    ("https://example.com/v2/", ".example.com", True),
    ("https://notexample.com/v2/", "example.com", False),
    ("https://reg.example.com:5000/v2/", "reg.example.com:5000", True),
    ("https://reg.example.com:5001/v2/", "reg.example.com:5000", False),
    ("https://reg.example.com/v2/", "reg.example.com:443", True),
    ("https://10.1.2.3/v2/", "10.0.0.0/8", True),
    ("https://11.1.2.3/v2/", "10.0.0.0/8", False),
    ("https://reg.example.com/v2/", " other.org , example.com ", True),
    ("https://reg.example.com/v2/", "", False),
])
def test_no_proxy(url: str, no_proxy: str, bypassed: bool) -> None:
    assert _bypassed(urlsplit(url), no_proxy) is bypassed
    assert (proxy(url, HTTPS_PROXY="http://p:1", NO_PROXY=no_proxy) is None) is bypassed


def test_bodies_carry_their_length(tmp_path) -> None:
    headers: dict[str, str] = {}
    assert _body(b"abc", headers) == (b"abc", False) and headers == {}  # http.client sets it for bytes
    f = tmp_path / "blob"
    f.write_bytes(b"x" * 5000)
    with open(f, "rb") as fh:
        fh.read(1000)
        headers = {}
        body, chunked = _body(fh, headers)
        assert body is fh and not chunked and headers == {"Content-Length": "4000"}  # from here to the end

    class Sized:
        def __len__(self) -> int:
            return 7

        def __iter__(self):
            yield b"1234567"

    headers = {}
    sized = Sized()
    assert _body(sized, headers) == (sized, False) and headers == {"Content-Length": "7"}
    headers = {}
    gen = iter([b"a", b"b"])
    assert _body(gen, headers) == (gen, True) and headers == {}  # no size: chunked
    headers = {}
    body, chunked = _body(io.BytesIO(b"no fileno"), headers)
    assert chunked and b"".join(body) == b"no fileno"


@pytest.mark.parametrize("exc,reason", [
    (ConnectionRefusedError(), "connection refused"),
    (ConnectionResetError(), "connection reset"),
    (BrokenPipeError(), "connection reset"),
    (http.client.RemoteDisconnected("closed"), "connection reset"),
    (TimeoutError(), "timed out"),
    (socket.timeout(), "timed out"),
    (socket.gaierror(-2, "Name or service not known"), "unknown host"),
    (http.client.IncompleteRead(b"ab", 10), "answer cut short"),
    (http.client.BadStatusLine("x"), "bad answer (BadStatusLine)"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS failed"),
    (OSError(113, "No route to host"), "connection failed"),
])
def test_faults_have_short_reasons_without_urls(exc: BaseException, reason: str) -> None:
    assert _reason(exc).startswith(reason)


def _parsed(raw: bytes) -> http.client.HTTPMessage:
    return http.client.parse_headers(io.BytesIO(raw))


def test_a_header_block_cut_mid_line_is_seen() -> None:
    from bakery.transport import Response

    class Raw:
        status = 200

        def __init__(self, msg: http.client.HTTPMessage):
            self.msg = msg

    whole = Response(Raw(_parsed(b"Content-Type: a/b\r\nDocker-Content-Digest: sha256:ab\r\n\r\n")), None, "u")
    assert not whole.headers_cut()
    cut = Response(Raw(_parsed(b"Content-Type: a/b\r\nDocker-Content-Dig")), None, "u")
    assert cut.headers_cut()
    ended = Response(Raw(_parsed(b"")), None, "u")  # the status line and then nothing: judged by the body
    assert not ended.headers_cut()
