"""The validated configuration read back from the cache behaves like the one pydantic validated."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from bakery import configview, secrets
from bakery.config import load_project
from bakery.errors import InputError

CONFIG = """\
environments:
  dev: {registry: '127.0.0.1:5001/team', aliases: ['{version}'], gates: {require_previous: false}}
  staging:
    registry: registry.example.com/team
    credentials: {username_env: REG_USER, password_env: REG_PASSWORD}
    gates: {max_scan_age: 12h, soak: 2d}
policy:
  severity: critical
  ignore:
    - {id: CVE-2024-0001, reason: not reachable, until: 2030-01-31, image: 'python*'}
build: {engine: classic, secrets: {tok: {env: TOKEN}}}
"""


def _load(root: Path, environ: dict[str, str]):
    return load_project(cwd=root, environ=environ)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "bakery.yaml").write_text(CONFIG)
    return tmp_path


def test_a_cached_configuration_reads_back_as_validated(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {"REG_USER": "robot", "REG_PASSWORD": "s3cr3t-pw-for-test"}
    for k, v in environ.items():
        monkeypatch.setenv(k, v)  # credentials are read from the process environment when resolved
    first = _load(repo, environ)
    assert list(configview.cache_dir().glob("*.json")), "the validated configuration was cached"
    again = configview.load_project_fast(cwd=repo, environ=environ)
    assert again is not None
    for p in (first, again):
        c = p.config
        assert c.first_env == "dev" and c.env_order == ["dev", "staging"] and c.previous_env("staging") == "dev"
        staging = c.env("staging")
        assert (staging.host, staging.namespace, staging.insecure) == ("registry.example.com", "team", False)
        assert c.env("dev").insecure is True and c.env("dev").repository("python") == "team/python"
        assert staging.gates.max_scan_age_delta == dt.timedelta(hours=12)
        assert staging.gates.soak_delta == dt.timedelta(days=2)
        assert staging.credentials.resolve() == ("robot", "s3cr3t-pw-for-test")
        entry = c.policy.ignore[0]
        assert (entry.id, entry.until, entry.image, c.policy.severity) == ("CVE-2024-0001", dt.date(2030, 1, 31),
                                                                           "python*", "CRITICAL")
        assert c.build.engine == "classic" and c.build.secrets["tok"].env == "TOKEN"
        assert c.mirrors == {"docker.io": "127.0.0.1:5000"} and c.tags.aliases == ["{version}"]
        with pytest.raises(InputError, match="unknown environment 'prod'"):
            c.env("prod")
        with pytest.raises(AttributeError):
            c.build = None  # type: ignore[misc]
    assert configview.effective(first.config) == configview.effective(again.config)
    assert secrets.mask("s3cr3t-pw-for-test") == secrets.MASK  # registered on the cached path too
    assert again.config_file == repo / "bakery.yaml" and again.root == repo


def test_what_the_configuration_depends_on_invalidates_it(repo: Path) -> None:
    assert _load(repo, {}).config.build.jobs == 2
    # a variable
    assert configview.load_project_fast(cwd=repo, environ={"BAKERY_JOBS": "5"}) is None
    assert _load(repo, {"BAKERY_JOBS": "5"}).config.build.jobs == 5
    assert configview.load_project_fast(cwd=repo, environ={"BAKERY_JOBS": "5"}).config.build.jobs == 5
    # the file
    (repo / "bakery.yaml").write_text(CONFIG.replace("build: {", "build: {jobs: 7, "))
    assert configview.load_project_fast(cwd=repo, environ={}) is None
    assert _load(repo, {}).config.build.jobs == 7
    # a corrupt cache entry is validated again, not trusted
    for f in configview.cache_dir().glob("*.json"):
        f.write_text(json.dumps({"format": 1, "shape": {"model": "Config"}, "data": "nonsense"}))
    assert configview.load_project_fast(cwd=repo, environ={}) is None
    assert _load(repo, {}).config.build.jobs == 7


def test_an_invalid_configuration_is_never_cached(repo: Path) -> None:
    from bakery.errors import ValidationError

    (repo / "bakery.yaml").write_text("build: {engine: kit}\n")
    for _ in range(2):
        with pytest.raises(ValidationError):
            _load(repo, {})
        assert configview.load_project_fast(cwd=repo, environ={}) is None
