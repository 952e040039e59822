"""Pure parts of the registry client: header parsing, docker config credentials, media types, retry rules."""

from __future__ import annotations

import base64
import json

import pytest

from bakery import secrets
from bakery.errors import EnvironmentFailure, RegistryUnavailable
from bakery.transport import TransportError
from bakery.registry import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    RegistryAuthError,
    RegistryClient,
    docker_config_credentials,
    media_type_of,
    parse_link_next,
    parse_www_authenticate,
    retryable_exception,
    retryable_status,
    sha256_digest,
)


def test_parse_bearer_challenge():
    scheme, params = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:team/app:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "registry.example",
                      "scope": "repository:team/app:pull,push"}


def test_parse_basic_challenge_and_empty():
    assert parse_www_authenticate('Basic realm="basic-realm"') == ("basic", {"realm": "basic-realm"})
    assert parse_www_authenticate("") == ("", {})


def test_parse_challenge_with_escaped_quote_and_unquoted_value():
    scheme, params = parse_www_authenticate('Bearer realm="a\\"b", error=invalid_token')
    assert params == {"realm": 'a"b', "error": "invalid_token"}


def test_link_next():
    assert parse_link_next('</v2/x/tags/list?n=2&last=b>; rel="next"') == "/v2/x/tags/list?n=2&last=b"
    assert parse_link_next(None) is None
    assert parse_link_next('</v2/x>; rel="prev"') is None


def _write_config(tmp_path, auths):
    (tmp_path / "config.json").write_text(json.dumps({"auths": auths}))
    return {"DOCKER_CONFIG": str(tmp_path), "HOME": "/nonexistent"}


def test_docker_config_credentials_auth_field(tmp_path):
    token = base64.b64encode(b"robot:pa:ss-w0rd").decode()
    env = _write_config(tmp_path, {"https://reg.example:5000/v1/": {"auth": token}})
    assert docker_config_credentials("reg.example:5000", environ=env) == ("robot", "pa:ss-w0rd")
    assert secrets.mask("pa:ss-w0rd") == secrets.MASK  # registered for masking
    assert docker_config_credentials("other.example", environ=env) is None


def test_docker_config_credentials_username_password_and_docker_hub_alias(tmp_path):
    env = _write_config(tmp_path, {"https://index.docker.io/v1/": {"username": "u", "password": "hub-pass"}})
    assert docker_config_credentials("docker.io", environ=env) == ("u", "hub-pass")


def test_docker_config_credentials_missing_or_broken(tmp_path):
    assert docker_config_credentials("x", environ={"DOCKER_CONFIG": str(tmp_path / "none")}) is None
    (tmp_path / "config.json").write_text("{not json")
    assert docker_config_credentials("x", environ={"DOCKER_CONFIG": str(tmp_path)}) is None
    env = _write_config(tmp_path, {"x": {"auth": base64.b64encode(b"no-colon").decode()}})
    assert docker_config_credentials("x", environ=env) is None


def test_media_type_from_header_field_or_shape():
    body = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": []}).encode()
    assert media_type_of(body, "application/vnd.oci.image.index.v1+json; charset=utf-8") == OCI_INDEX
    assert media_type_of(body, "application/json") == DOCKER_LIST
    assert media_type_of(json.dumps({"schemaVersion": 2, "manifests": []}).encode(), None) == OCI_INDEX
    assert media_type_of(json.dumps({"schemaVersion": 2, "layers": []}).encode(), "") == OCI_MANIFEST


def test_manifest_children_and_blobs():
    child = {"mediaType": DOCKER_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 10,
             "platform": {"os": "linux", "architecture": "amd64"}}
    index = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [child]}).encode()
    m = Manifest(index, DOCKER_LIST, sha256_digest(index))
    assert m.is_index and [c.digest for c in m.children()] == [child["digest"]] and m.blobs() == []
    image = json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" + "c" * 64, "size": 5},
                        "layers": [{"digest": "sha256:" + "1" * 64, "size": 7}]}).encode()
    m2 = Manifest(image, OCI_MANIFEST, sha256_digest(image))
    assert not m2.is_index
    assert [(b.digest[7], b.size) for b in m2.blobs()] == [("c", 5), ("1", 7)]
    assert m2.json()["schemaVersion"] == 2


@pytest.mark.parametrize("status,retry", [(500, True), (502, True), (503, True), (429, True),
                                          (400, False), (401, False), (403, False), (404, False), (200, False)])
def test_retry_classification_by_status(status, retry):
    assert retryable_status(status) is retry


def test_retry_classification_by_exception():
    assert retryable_exception(TransportError("connection refused"))
    assert retryable_exception(TransportError("answer cut short"))
    assert retryable_exception(ConnectionResetError())
    assert retryable_exception(TimeoutError())
    assert not retryable_exception(ValueError("bad"))


def test_retry_gives_up_with_registry_unavailable_after_retries():
    client = RegistryClient("reg.invalid:1", retries=2, backoff=0)
    calls = []

    def always_refused():
        calls.append(1)
        raise TransportError("connection refused")

    with pytest.raises(RegistryUnavailable) as err:
        client._retry("HEAD manifest team/app", always_refused)
    assert len(calls) == 3
    assert "reg.invalid:1" in str(err.value) and "HEAD manifest team/app" in str(err.value)
    assert err.value.exit_code == 3


def test_auth_error_is_an_environment_failure():
    assert issubclass(RegistryAuthError, EnvironmentFailure) and RegistryAuthError("x").exit_code == 3


def test_scheme_follows_insecure_and_password_is_masked():
    assert RegistryClient("h:5000", insecure=True).base == "http://h:5000"
    assert RegistryClient("h", credentials=("u", "client-secret-1")).base == "https://h"
    assert "client-secret-1" not in secrets.mask("token client-secret-1")


def test_a_server_that_is_not_a_registry_is_an_environment_failure():
    """A web server answering 200 "oops" to everything must not yield a made-up digest (sha256 of "oops")."""
    import http.server
    import threading

    class Oops(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(b"oops\n")))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(b"oops\n")

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Oops)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = RegistryClient(f"127.0.0.1:{server.server_address[1]}", insecure=True, retries=0, backoff=0)
        with pytest.raises(RegistryUnavailable) as err:
            client.head_manifest("team/app", "1.0")
        assert "not an image manifest" in str(err.value) and err.value.exit_code == 3
    finally:
        server.shutdown()
