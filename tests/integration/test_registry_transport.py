"""The registry transport (bakery/transport.py, http.client) against real servers: a Distribution registry
over TLS with its own CA, the same through a real forward proxy (tinyproxy: CONNECT for https, the absolute
form for http, NO_PROXY), and a registry that redirects blob downloads to another server (Distribution's
``redirect`` storage middleware in front of a static file server), whose credentials must not follow."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bakery.errors import RegistryUnavailable
from bakery.registry import RegistryClient, sha256_digest

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry"), reason="needs the docker-registry binary")

USER, PASSWORD = "transport", "s3cret-transport-pw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port}")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bakery test CA",
             cwd=d)
    _openssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "srv.pem", "-days", "2", "-extfile", "ext", cwd=d)
    return d


def _registry(d: Path, *, tls: Path | None = None, redirect: str | None = None) -> Iterator[int]:
    port = _free_port()
    d.mkdir(parents=True, exist_ok=True)
    htpasswd = subprocess.run(["htpasswd", "-nbB", USER, PASSWORD], check=True, capture_output=True, text=True)
    (d / "htpasswd").write_text(htpasswd.stdout.strip() + "\n")
    config: dict = {
        "version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(d / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "auth": {"htpasswd": {"realm": "transport", "path": str(d / "htpasswd")}},
    }
    if tls is not None:
        config["http"]["tls"] = {"certificate": str(tls / "srv.pem"), "key": str(tls / "srv.key")}
    if redirect is not None:
        config["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": redirect}}]}
    (d / "config.yml").write_text(yaml.safe_dump(config))
    log = open(d / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, "docker-registry")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory, certs) -> Iterator[int]:
    yield from _registry(tmp_path_factory.mktemp("tls-registry"), tls=certs)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Iterator[tuple[int, Path]]:
    """A real forward proxy (tinyproxy) on loopback; yields (port, its log)."""
    if not shutil.which("tinyproxy"):
        pytest.skip("needs tinyproxy (scripts/setup-host.sh installs it)")
    d = tmp_path_factory.mktemp("proxy")
    port = _free_port()
    log = d / "tinyproxy.log"
    (d / "tinyproxy.conf").write_text(
        f'Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile "{log}"\nLogLevel Connect\nMaxClients 20\n'
        f"Allow 127.0.0.1\nDisableViaHeader Yes\n")
    out = open(d / "stdout.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(d / "tinyproxy.conf")], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, "tinyproxy")
        yield port, log
    finally:
        proc.terminate()
        proc.wait(10)
        out.close()


CA_NAMES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


def _trust(monkeypatch, name: str | None, ca: Path | None = None) -> None:
    """Name the CA bundle in one variable only (a CI machine may set all three to the system's)."""
    for other in CA_NAMES:
        monkeypatch.delenv(other, raising=False)
    if name is not None:
        monkeypatch.setenv(name, str(ca))


def _client(port: int, **kw) -> RegistryClient:
    kw.setdefault("use_proxy", False)
    return RegistryClient(f"127.0.0.1:{port}", insecure=False, credentials=(USER, PASSWORD), backoff=0.01, **kw)


def _round_trip(client: RegistryClient, repo: str) -> None:
    """Push a blob, a config and a manifest, then read them back: every verb the promotion uses."""
    layer = os.urandom(3 * 1024 * 1024 + 17)  # more than one socket block
    layer_digest = client.push_blob(repo, layer)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = client.push_blob(repo, config)
    manifest = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        f'"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}",'
        f'"size":{len(config)}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar",'
        f'"digest":"{layer_digest}","size":{len(layer)}}}]}}').encode()
    digest = client.put_manifest(repo, "1", manifest, "application/vnd.oci.image.manifest.v1+json")
    assert digest == sha256_digest(manifest)
    assert client.head_manifest(repo, "1") == digest
    assert client.list_tags(repo) == ["1"]
    assert client.get_blob(repo, layer_digest) == layer


def test_a_tls_registry_is_verified_against_the_named_ca(tls_registry, certs, monkeypatch) -> None:
    _trust(monkeypatch, "SSL_CERT_FILE", certs / "ca.pem")
    _round_trip(_client(tls_registry), "tls/app")
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # what requests honoured, still honoured
        _trust(monkeypatch, name, certs / "ca.pem")
        assert _client(tls_registry).list_tags("tls/app") == ["1"]


def test_a_tls_registry_with_an_unknown_ca_is_an_environment_failure(tls_registry, monkeypatch) -> None:
    _trust(monkeypatch, None)
    with pytest.raises(RegistryUnavailable, match="TLS certificate not trusted") as err:
        _client(tls_registry, retries=0).list_tags("tls/app")
    assert err.value.exit_code == 3 and PASSWORD not in str(err.value)


def test_https_goes_through_a_proxy_tunnel_and_no_proxy_bypasses_it(tls_registry, certs, proxy, monkeypatch) -> None:
    port, log = proxy
    _trust(monkeypatch, "SSL_CERT_FILE", certs / "ca.pem")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    _round_trip(_client(tls_registry, use_proxy=True), "proxied/app")
    connects = log.read_text().count(f"CONNECT 127.0.0.1:{tls_registry}")
    assert connects >= 1  # the proxy carried it (one tunnel per pooled connection)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert _client(tls_registry, use_proxy=True).list_tags("proxied/app") == ["1"]
    assert log.read_text().count(f"CONNECT 127.0.0.1:{tls_registry}") == connects  # straight to the registry
    monkeypatch.delenv("NO_PROXY")
    assert _client(tls_registry, use_proxy=False).list_tags("proxied/app") == ["1"]  # loopback: never proxied
    assert log.read_text().count(f"CONNECT 127.0.0.1:{tls_registry}") == connects


def test_plain_http_goes_through_a_proxy_in_absolute_form(stack, proxy, monkeypatch) -> None:
    port, log = proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    dev = stack.registry("dev")
    client = RegistryClient(dev, insecure=True, use_proxy=True)
    digest = client.push_blob("proxied-http/app", b"through the proxy")
    assert client.get_blob("proxied-http/app", digest) == b"through the proxy"
    assert f"http://{dev}/v2/proxied-http/app/blobs/{digest}" in log.read_text()


class _Storage(http.server.SimpleHTTPRequestHandler):
    """A static file server for the registry's storage (what a CDN or S3 is to a registry): records whether a
    request carried an Authorization header."""

    seen: list[tuple[str, str, bool]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self.seen.append(("GET", self.path, "Authorization" in self.headers))
        super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        self.seen.append(("HEAD", self.path, "Authorization" in self.headers))
        super().do_HEAD()

    def log_message(self, *args) -> None:
        pass


def test_a_blob_redirected_to_storage_arrives_without_the_registry_credentials(tmp_path) -> None:
    d = tmp_path / "redirecting"
    (d / "data").mkdir(parents=True)
    handler = lambda *a, **kw: _Storage(*a, directory=str(d / "data"), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Storage.seen.clear()
    try:
        # "localhost" is another origin than the registry's 127.0.0.1: the credentials stay with the registry
        for port in _registry(d, redirect=f"http://localhost:{server.server_port}/"):
            client = RegistryClient(f"127.0.0.1:{port}", insecure=True, credentials=(USER, PASSWORD), backoff=0.01)
            body = os.urandom(2 * 1024 * 1024)
            digest = client.push_blob("redirected/app", body)
            assert client.get_blob("redirected/app", digest) == body
            target = tmp_path / "downloaded"
            assert client.download_blob("redirected/app", digest, target) == len(body)
            assert target.read_bytes() == body
    finally:
        server.shutdown()
        server.server_close()
    gets = [s for s in _Storage.seen if s[0] == "GET" and s[1].endswith("/data")]
    assert len(gets) == 2, _Storage.seen  # both downloads came from the storage server, by redirect
    assert not any(auth for _, _, auth in _Storage.seen), _Storage.seen


def test_a_blob_cut_mid_copy_is_copied_again_whole(stack) -> None:
    """The source's answer ends 64 KiB into a 3 MiB layer while the target receives it: that upload is
    abandoned (its connection closed), the copy starts over, and the target holds the whole blob; when the
    cut persists, exit 3 (registry unavailable) and the target has no blob under that digest."""
    import uuid

    from faultproxy import FaultProxy, Rule

    body = os.urandom(3 * 1024 * 1024)
    digest = stack.client("dev").push_blob("cut/app", body)
    staging = stack.client("staging", backoff=0.01)
    with FaultProxy(stack.ports["dev"]) as proxy:
        proxy.add(Rule("cut", method="GET", path=f"/blobs/{digest}", keep=64 * 1024, times=1))
        src = RegistryClient(f"127.0.0.1:{proxy.port}", insecure=True, backoff=0.01)
        repo = f"cut-{uuid.uuid4().hex[:8]}/app"
        assert staging.copy_blob(src, "cut/app", digest, repo, len(body)) == len(body)
        tries = [line.rsplit(" ", 1)[1] for line in proxy.seen if f"/blobs/{digest}" in line]
        assert tries == ["cut", "ok"]
        assert staging.get_blob(repo, digest) == body

        proxy.add(Rule("cut", method="GET", path=f"/blobs/{digest}", keep=64 * 1024))
        other = f"cut-{uuid.uuid4().hex[:8]}/app"
        with pytest.raises(RegistryUnavailable, match="answer cut short") as err:
            staging.copy_blob(src, "cut/app", digest, other, len(body))
        assert err.value.exit_code == 3
        assert not staging.blob_exists(other, digest)


def test_the_largest_blob_starts_before_the_others_are_asked_about(stack) -> None:
    """A copy's wall time is its largest blob's: its bytes flow before the other blobs' checks begin, so their
    requests do not hold up its own (python:3.11's 50 MB layer used to start ~50 ms into the copy, behind five
    others' HEADs and upload sessions). Widened: the proxy in front of the target holds the largest blob's
    upload session 0.4 s; no other blob is asked about meanwhile, and the copy is whole."""
    import json
    import uuid

    from faultproxy import FaultProxy, Rule

    dev = stack.client("dev")
    repo = f"order-{uuid.uuid4().hex[:8]}/app"
    layers = [os.urandom(n) for n in (40_000, 3 * 1024 * 1024, 200_000)]
    digests = [dev.push_blob(repo, b) for b in layers]
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = dev.push_blob(repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(b)}
                   for d, b in zip(digests, layers)]}).encode()
    digest = dev.put_manifest(repo, "1", manifest, "application/vnd.oci.image.manifest.v1+json")
    largest = digests[1]
    with FaultProxy(stack.ports["dev"]) as proxy:
        target = RegistryClient(f"127.0.0.1:{proxy.port}", insecure=True, backoff=0.01)
        held = proxy.add(Rule("delay", method="PUT", path=f"digest={largest.replace(':', '%3A')}", seconds=0.4))
        stats = target.copy_image(dev, repo, digest, f"copy-{repo}")
        assert held.hits == 1, proxy.seen
        assert stats.blobs_copied == 4 and stats.bytes_copied == sum(map(len, layers)) + len(config)
        lines = list(zip(proxy.seen, proxy.stamps))
        put = next(t for line, t in lines if line.endswith(" delay"))
        # (an anonymous target: the config, the smallest, goes alone first, as it fetches any tokens)
        others = [t for line, t in lines for d in digests if d != largest and d in line]
        assert others and min(others) >= put, "\n".join(proxy.seen)  # nobody else started before its bytes flowed
    assert dev.get_blob(f"copy-{repo}", largest) == layers[1]
