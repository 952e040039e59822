"""RegistryClient against real registries of the shared stack (Distribution 2.8.2 processes)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from pathlib import Path

import docker
import pytest
import requests

from bakery.errors import RegistryError, RegistryUnavailable
from bakery.registry import DOCKER_MANIFEST, OCI_INDEX, RegistryAuthError, RegistryClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pushed(stack, tmp_path_factory):
    """A small three-blob image (config + 2 layers) pushed with the docker SDK to the dev registry."""
    ctx: Path = tmp_path_factory.mktemp("img")
    (ctx / "a.txt").write_text("hello\n")
    (ctx / "b.bin").write_bytes(os.urandom(200_000))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a.txt\nCOPY b.bin /b.bin\n"
                                    'LABEL org.opencontainers.image.title="regtest" dev.bakery.test="yes"\n')
    repo = f"{stack.registry('dev')}/r{uuid.uuid4().hex[:8]}/app"
    client = docker.from_env()
    for item in client.api.build(path=str(ctx), tag=f"{repo}:1", rm=True, forcerm=True, pull=False, decode=True):
        assert "error" not in item, item
    digest = None
    for item in client.api.push(repo, "1", stream=True, decode=True):
        assert "error" not in item, item
        digest = (item.get("aux") or {}).get("Digest", digest)
    assert digest
    yield repo.split("/", 1)[1], digest
    client.images.remove(f"{repo}:1", force=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_head_get_and_digest_identity(stack, pushed):
    repo, digest = pushed
    dev = stack.client("dev")
    assert dev.head_manifest(repo, "1") == digest
    m = dev.get_manifest(repo, "1")
    header = requests.head(f"http://{stack.registry('dev')}/v2/{repo}/manifests/1",
                           headers={"Accept": DOCKER_MANIFEST}).headers["Docker-Content-Digest"]
    assert "sha256:" + hashlib.sha256(m.body).hexdigest() == m.digest == digest == header
    assert m.media_type == DOCKER_MANIFEST and len(m.blobs()) == 3
    assert dev.head_manifest(repo, "no-such-tag") is None
    assert dev.head_manifest(repo, "sha256:" + "0" * 64) is None


def test_labels_and_config(stack, pushed):
    repo, digest = pushed
    dev = stack.client("dev")
    assert dev.labels(repo, digest) == {"org.opencontainers.image.title": "regtest", "dev.bakery.test": "yes"}
    assert dev.image_config(repo, "1")["rootfs"]["type"] == "layers"


def test_unknown_manifest_is_a_permanent_error(stack, pushed):
    repo, _ = pushed
    with pytest.raises(RegistryError) as err:
        stack.client("dev").get_manifest(repo, "nope")
    assert err.value.status == 404 and err.value.exit_code == 1
    assert stack.registry("dev") in str(err.value)


def test_list_tags_pagination_and_missing_repo(stack, pushed):
    repo, digest = pushed
    dev = stack.client("dev")
    m = dev.get_manifest(repo, digest)
    for tag in ("2", "3", "4", "5"):
        assert dev.put_manifest(repo, tag, m.body, m.media_type) == digest
    dev.page_size = 2  # forces three pages, joined through the Link header
    assert sorted(dev.list_tags(repo)) == ["1", "2", "3", "4", "5"]
    assert dev.list_tags(f"nothing-{uuid.uuid4().hex[:6]}/here") == []


def test_list_tags_answer_cut_mid_headers_is_retried(stack, pushed):
    """A tags answer cut in its headers, or a refused connection, is a transient fault: retried, and the tags
    come back whole."""
    from faultproxy import FaultProxy, Rule

    repo, _ = pushed
    expected = RegistryClient(stack.registry("dev"), insecure=True).list_tags(repo)
    with FaultProxy(stack.ports["dev"]) as proxy:
        proxy.add(Rule("cut", method="GET", path="/tags/list", keep=30, times=1))
        client = RegistryClient(f"127.0.0.1:{proxy.port}", insecure=True, backoff=0.01)
        assert client.list_tags(repo) == expected
        tries = [line.rsplit(" ", 1)[1] for line in proxy.seen if "/tags/list" in line]
        assert tries == ["cut", "ok"]  # the cut answer, then the retry
        proxy.add(Rule("refuse", method="GET", path="/tags/list", times=1))
        assert client.list_tags(repo) == expected


def test_a_tags_answer_cut_after_its_status_line_is_retried(stack, pushed):
    """A 200 whose headers and body never arrive (the connection cut right after the status line) is a transient
    fault: retried, and the tags come back (it was exit 3, "not JSON", at the first cut). When it persists: exit
    3 (registry unavailable), saying what was wrong."""
    from faultproxy import FaultProxy, Rule

    from bakery.errors import RegistryUnavailable

    repo, _ = pushed
    expected = RegistryClient(stack.registry("dev"), insecure=True).list_tags(repo)
    status_line = len(b"HTTP/1.1 200 OK\r\n")
    with FaultProxy(stack.ports["dev"]) as proxy:
        proxy.add(Rule("cut", method="GET", path="/tags/list", keep=status_line, times=2))
        client = RegistryClient(f"127.0.0.1:{proxy.port}", insecure=True, backoff=0.01)
        assert client.list_tags(repo) == expected
        tries = [line.rsplit(" ", 1)[1] for line in proxy.seen if "/tags/list" in line]
        assert tries == ["cut", "cut", "ok"]  # two cut answers, each retried
        proxy.add(Rule("cut", method="GET", path="/tags/list", keep=status_line, times=100))
        with pytest.raises(RegistryUnavailable, match="not JSON"):
            client.list_tags(repo)


def test_copy_across_registries_by_digest_without_tag(stack, pushed):
    repo, digest = pushed
    dev, staging = stack.client("dev"), stack.client("staging")
    dst = f"c{uuid.uuid4().hex[:8]}/app"
    stats = staging.copy_image(dev, repo, digest, dst)
    assert (stats.blobs_copied, stats.blobs_mounted, stats.manifests_copied) == (3, 0, 1)
    sizes = [b.size for b in dev.get_manifest(repo, digest).blobs()]
    assert stats.bytes_copied == sum(sizes) and stats.bytes_copied > 200_000
    assert staging.list_tags(dst) == []  # by digest only: no tag written
    copied = staging.get_manifest(dst, digest)
    assert copied.body == dev.get_manifest(repo, digest).body
    assert staging.put_manifest(dst, "1.0", copied.body, copied.media_type) == digest
    assert staging.list_tags(dst) == ["1.0"] and staging.head_manifest(dst, "1.0") == digest
    again = staging.copy_image(dev, repo, digest, dst)
    assert (again.manifests_skipped, again.blobs_copied, again.bytes_copied) == (1, 0, 0)


def test_copy_within_one_host_mounts_blobs(stack, pushed):
    repo, digest = pushed
    dev = stack.client("dev")
    dst = f"m{uuid.uuid4().hex[:8]}/app"
    stats = dev.copy_image(dev, repo, digest, dst)
    assert (stats.blobs_mounted, stats.blobs_copied, stats.bytes_copied) == (3, 0, 0)
    assert dev.head_manifest(dst, digest) == digest


def test_copy_index_copies_children_first(stack, pushed):
    repo, digest = pushed
    dev, prod = stack.client("dev"), stack.client("prod")
    child = dev.get_manifest(repo, digest)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": child.media_type, "digest": digest, "size": len(child.body),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    index_digest = dev.put_manifest(repo, "multi", index, OCI_INDEX)
    assert index_digest == "sha256:" + hashlib.sha256(index).hexdigest()
    dst = f"i{uuid.uuid4().hex[:8]}/app"
    stats = prod.copy_image(dev, repo, index_digest, dst)
    assert stats.manifests_copied == 2 and stats.blobs_copied == 3
    got = prod.get_manifest(dst, index_digest)
    assert got.media_type == OCI_INDEX and got.body == index
    assert prod.head_manifest(dst, digest) == digest
    assert prod.labels(dst, index_digest)["dev.bakery.test"] == "yes"  # resolves linux/amd64 child


def test_wrong_password_is_an_auth_error(stack, pushed):
    bad = RegistryClient(stack.registry("staging"), insecure=True, credentials=(stack.user, "wrong-pass-123"))
    with pytest.raises(RegistryAuthError) as err:
        bad.head_manifest("any/repo", "1")
    assert err.value.exit_code == 3
    assert str(err.value) == f"{stack.registry('staging')}: authentication failed for any/repo (401)"
    with pytest.raises(RegistryAuthError):
        RegistryClient(stack.registry("prod"), insecure=True).list_tags("any/repo")  # anonymous
    stack.client("prod").ping()  # the right credentials work


def test_stopped_registry_is_unavailable_after_retries(stack):
    host = f"127.0.0.1:{_free_port()}"
    client = RegistryClient(host, insecure=True, retries=2, backoff=0.01)
    with pytest.raises(RegistryUnavailable) as err:
        client.head_manifest("team/app", "1")
    assert err.value.exit_code == 3
    assert host in str(err.value) and "HEAD manifest team/app" in str(err.value)
    assert "3 attempts" in str(err.value)


# --- the Bearer token flow (Docker Hub / ECR style) against a registry with `auth.token` ------------------------


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _TokenServer:
    """A tiny token server: basic credentials in, an ES256 JWT with the requested access out."""

    def __init__(self, directory: Path, user: str, password: str, service: str, issuer: str):
        import datetime as dt
        import http.server
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bakery-test-token")])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_pem = directory / "token-cert.pem"
        self.cert_pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[tuple[str | None, list[str]]] = []  # (basic user or None, scopes)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                import base64
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(self.path).query)
                scopes = query.get("scope", [])
                auth = self.headers.get("Authorization", "")
                who = None
                if auth.startswith("Basic "):
                    who, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    if (who, pw) != (user, password):
                        who = "!bad"
                server.requests.append((who, scopes))
                if who in (None, "!bad"):
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": server.jwt(who, scopes, service, issuer)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def jwt(self, subject: str, scopes: list[str], service: str, issuer: str) -> str:
        import base64
        import time as _time

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            for part in scope.split(" "):
                kind, _, rest = part.partition(":")
                name, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(_time.time())
        header = {"alg": "ES256", "typ": "JWT",  # x5c: the signing certificate, trusted via rootcertbundle
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": issuer, "sub": subject, "aud": service, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    """A real Distribution registry with token auth, plus its token server."""
    import subprocess
    import time as _time

    import yaml

    d = tmp_path_factory.mktemp("token-registry")
    tokens = _TokenServer(d, "robot", "t0ken-pass", "bakery-test", "bakery-test-issuer")
    port = _free_port()
    config = {"version": 0.1, "log": {"level": "warn"},
              "storage": {"filesystem": {"rootdirectory": str(d / "data")}, "delete": {"enabled": True}},
              "http": {"addr": f"127.0.0.1:{port}"},
              "auth": {"token": {"realm": f"http://127.0.0.1:{tokens.port}/token", "service": "bakery-test",
                                 "issuer": "bakery-test-issuer", "rootcertbundle": str(tokens.cert_pem)}}}
    (d / "config.yml").write_text(yaml.safe_dump(config))
    log = open(d / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 401:
                    break
            except requests.ConnectionError:
                _time.sleep(0.05)
        yield f"127.0.0.1:{port}", tokens
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        tokens.close()


def test_bearer_token_flow_copy_and_read(stack, pushed, token_registry):
    host, tokens = token_registry
    repo, digest = pushed
    client = RegistryClient(host, insecure=True, credentials=("robot", "t0ken-pass"))
    stats = client.copy_image(stack.client("dev"), repo, digest, "team/app")
    assert stats.blobs_copied == 3 and stats.manifests_copied == 1
    m = client.get_manifest("team/app", digest)
    assert client.put_manifest("team/app", "1.0", m.body, m.media_type) == digest
    assert client.list_tags("team/app") == ["1.0"]
    assert client.labels("team/app", "1.0")["dev.bakery.test"] == "yes"
    client.ping()
    # every token request carried the basic credentials, one per scope (cached, not one per request)
    assert all(who == "robot" for who, _ in tokens.requests)
    scopes = [tuple(s) for _, s in tokens.requests]
    assert ("repository:team/app:pull,push",) in scopes and ("repository:team/app:pull",) in scopes
    assert len(scopes) == len(set(scopes)) <= 4
    # a cached token that the registry no longer accepts (expired) is replaced once, transparently
    client._auth.tokens["repository:team/app:pull"] = "expired.token.value"
    before = len(tokens.requests)
    assert client.head_manifest("team/app", "1.0") == digest
    assert len(tokens.requests) == before + 1


def test_bearer_token_refused_is_an_auth_error(token_registry):
    host, tokens = token_registry
    with pytest.raises(RegistryAuthError) as err:
        RegistryClient(host, insecure=True, credentials=("robot", "wrong")).head_manifest("team/app", "1.0")
    assert str(err.value) == f"{host}: authentication failed for team/app (401)" and err.value.exit_code == 3
    with pytest.raises(RegistryAuthError):
        RegistryClient(host, insecure=True).list_tags("team/app")  # anonymous: the token server says no
