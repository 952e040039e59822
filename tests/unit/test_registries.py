"""bakery.registries: the one factory decides TLS, proxies, credentials and the kind of client per host."""

from __future__ import annotations

from pathlib import Path

import pytest

from bakery.config import Config, Environment, Project
from bakery.ecr import EcrRegistry
from bakery.registries import client_for_host, host_settings, registry_for, registry_for_host
from bakery.registry import RegistryClient


def _project(**envs: Environment) -> Project:
    return Project(root=Path("/nonexistent"), config=Config(environments=envs), config_file=None)


def test_loopback_is_plain_http_without_proxy_elsewhere_tls_with_proxy(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    project = _project(dev=Environment(registry="127.0.0.1:5001/bakery"),
                       prod=Environment(registry="reg.example/bakery"))
    local, remote = registry_for(project, "dev"), registry_for(project, "prod")
    assert isinstance(local, RegistryClient) and isinstance(remote, RegistryClient)
    assert (local.base, local.session.trust_env) == ("http://127.0.0.1:5001", False)
    assert (remote.base, remote.session.trust_env) == ("https://reg.example", True)
    # an image's host that no environment names: the same rule
    assert client_for_host(project, "localhost:5000").base == "http://localhost:5000"
    assert client_for_host(project, "quay.io").base == "https://quay.io"


def test_an_environment_setting_wins_for_its_host() -> None:
    project = _project(dev=Environment(registry="reg.internal:5000/ns", tls_verify=False),
                       prod=Environment(registry="127.0.0.1:5003", tls_verify=True))
    assert host_settings(project, "reg.internal:5000").insecure is True
    assert host_settings(project, "127.0.0.1:5003").insecure is False
    assert client_for_host(project, "127.0.0.1:5003").base == "https://127.0.0.1:5003"


def test_environment_variable_credentials_first_and_only_when_asked(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # no config.json: docker gives nothing
    project = _project(staging=Environment(registry="reg.example/ns", credentials={
        "username_env": "REG_USER", "password_env": "REG_PASS"}))
    client = registry_for(project, "staging")
    monkeypatch.setenv("REG_USER", "robot")
    monkeypatch.setenv("REG_PASS", "s3cret-value")
    assert client.credentials == ("robot", "s3cret-value")  # resolved on first use, not at creation


@pytest.mark.parametrize("kind", ["ecr"])
def test_ecr_environments_get_the_ecr_client_everywhere(kind: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    project = _project(dev=Environment(registry="123456789012.dkr.ecr.us-east-1.amazonaws.com/team", kind=kind))
    assert isinstance(registry_for(project, "dev"), EcrRegistry)
    assert isinstance(registry_for_host(project, "123456789012.dkr.ecr.us-east-1.amazonaws.com"), EcrRegistry)
