"""Promotion logic without registries: references, the build tag scheme read backwards, soak and approval gates."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bakery import ledger
from bakery.config import Config, Environment, Gates, Project
from bakery.errors import InputError
from bakery.model import ImageKey, Published
from bakery.tags import build_tag_pattern
from bakery.promote import (GateResult, Promotion, alias_tags, gate_approval, gate_soak,
                            newest_build_tag, parse_ref)

UTC = dt.timezone.utc
D1 = "sha256:" + "a" * 64
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _project(tmp_path: Path, *, soak: str = "0s", approvers: list[str] | None = None) -> Project:
    envs = {
        "dev": Environment(registry="127.0.0.1:1/dev", aliases=["{version}"], gates=Gates(require_previous=False)),
        "staging": Environment(registry="127.0.0.1:2/st", aliases=["{version}", "staging"]),
        "prod": Environment(registry="127.0.0.1:3/pr", aliases=["{version}", "prod", "{version}-prod"],
                            gates=Gates(soak=soak, approvers=approvers or [])),
    }
    return Project(root=tmp_path, config=Config(environments=envs), config_file=None)


def _pub(env: str = "staging") -> Published:
    return Published(key=ImageKey("python", "3.11"), env=env, repository="127.0.0.1:2/st/python",
                     build_tag="3.11-20260301.2", digest=D1)


def _arrival(env: str, when: dt.datetime, digest: str = D1, kind: str = "promote") -> ledger.Event:
    return ledger.Event(kind=kind, image="python:3.11", digest=digest, build_tag="3.11-20260301.2",
                        from_env="dev", to_env=env, actor="ci", time=when)


@pytest.mark.parametrize("text,name,tag,digest", [
    ("python:3.11", "python", "3.11", None),
    ("python:3.11-slim", "python", "3.11-slim", None),
    ("python:3.11-20260301.2", "python", "3.11-20260301.2", None),
    ("python@" + D1, "python", None, D1),
    ("127.0.0.1:5101/ns/python:3.11@" + D1, "python", "3.11", D1),
])
def test_parse_ref(text, name, tag, digest):
    r = parse_ref(text)
    assert (r.name, r.tag, r.digest) == (name, tag, digest)


@pytest.mark.parametrize("bad,msg", [("python", "name a version"), ("python@sha256:xyz", "not a sha256"),
                                     ("Py Thon:1", "not an image reference")])
def test_parse_ref_rejects(bad, msg):
    with pytest.raises(InputError, match=msg):
        parse_ref(bad)


def test_build_tag_pattern_default_scheme():
    p = build_tag_pattern("{version}-{yyyymmdd}.{n}", tag_version="3.11")
    assert p.match("3.11-20260301.2")
    assert not p.match("3.11")
    assert not p.match("3.11-slim-20260301.2")  # another variant's build
    assert not p.match("3.12-20260301.2")
    any_version = build_tag_pattern("{version}-{yyyymmdd}.{n}")
    assert any_version.match("3.11-slim-20260301.2").group("version") == "3.11-slim"


def test_newest_build_tag_orders_by_date_then_counter_not_text():
    tags = ["3.11", "staging", "3.11-20260301.2", "3.11-20260301.10", "3.11-20260228.99", "3.12-20260401.1"]
    assert newest_build_tag("{version}-{yyyymmdd}.{n}", tags, name="python", tag_version="3.11") == "3.11-20260301.10"
    assert newest_build_tag("{version}-{yyyymmdd}.{n}", tags, name="python", tag_version="3.10") is None


def test_alias_tags_rendered_for_the_target_environment(tmp_path):
    project = _project(tmp_path)
    key = ImageKey("python", "3.11", "slim")
    assert alias_tags(project, "prod", key, T0.date()) == ["3.11-slim", "prod", "3.11-slim-prod"]
    assert alias_tags(project, "staging", ImageKey("python", "3.11"), T0.date()) == ["3.11", "staging"]


def test_soak_counts_from_arrival_in_previous_environment(tmp_path):
    project = _project(tmp_path, soak="24h")
    events = [_arrival("dev", T0 - dt.timedelta(days=5), kind="publish"), _arrival("staging", T0)]
    early = gate_soak(project, _pub(), "prod", events, T0 + dt.timedelta(hours=23))
    assert not early.passed and "need 24h" in early.reason and "23h" in early.reason
    late = gate_soak(project, _pub(), "prod", events, T0 + dt.timedelta(hours=24, minutes=1))
    assert late.passed
    assert late.details["since"].startswith("2026-03-01T12:00")


def test_soak_uses_first_arrival_and_only_this_digest(tmp_path):
    project = _project(tmp_path, soak="1d")
    other = "sha256:" + "b" * 64
    events = [_arrival("staging", T0 - dt.timedelta(days=3), digest=other), _arrival("staging", T0),
              _arrival("staging", T0 + dt.timedelta(hours=20), kind="rollback")]
    assert not gate_soak(project, _pub(), "prod", events, T0 + dt.timedelta(hours=23)).passed
    assert gate_soak(project, _pub(), "prod", events, T0 + dt.timedelta(hours=25)).passed


def test_soak_without_ledger_record_fails_closed(tmp_path):
    result = gate_soak(_project(tmp_path, soak="1h"), _pub(), "prod", [], T0)
    assert not result.passed and "no ledger record" in result.reason


def test_no_soak_configured_passes(tmp_path):
    assert gate_soak(_project(tmp_path), _pub(), "prod", [], T0).passed


def test_approval_gate(tmp_path):
    project = _project(tmp_path, approvers=["alice", "bob"])
    assert not gate_approval(project, "prod", None).passed
    refused = gate_approval(project, "prod", "mallory")
    assert not refused.passed and "not an approver" in refused.reason
    assert gate_approval(project, "prod", "bob").passed
    assert gate_approval(project, "staging", None).passed  # nobody required there


def test_promotion_json_and_ok():
    p = Promotion(image="python:3.11", digest=D1, build_tag="3.11-20260301.2", from_env="staging", to_env="prod",
                  source="s@" + D1, target="t", tags=["3.11-20260301.2", "3.11", "prod"], action="refused",
                  gates=[GateResult("soak", False, "only 1h")])
    data = p.to_json()
    assert data["ok"] is False and data["from"] == "staging" and data["gates"][0]["passed"] is False
    p.action = "up-to-date"
    assert p.ok


def _git_repo(path: Path) -> list[str]:
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                               "-c", "init.defaultBranch=main", *args], cwd=path, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    revs = []
    for i in range(2):
        (path / "f").write_text(str(i))
        git("add", "f")
        git("commit", "-qm", f"c{i}")
        revs.append(git("rev-parse", "HEAD"))
    return revs


def test_git_tag_at_the_image_revision_never_moves(tmp_path, monkeypatch):
    import subprocess

    from bakery.errors import StepFailed
    from bakery.gitrefs import LABEL_REVISION, tag_promotion

    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    first, second = _git_repo(tmp_path)
    project = _project(tmp_path)
    pub = _pub("prod")
    assert tag_promotion(project, "prod", pub, {LABEL_REVISION: first}) == "prod/python/3.11-20260301.2"
    show = subprocess.run(["git", "cat-file", "-p", "prod/python/3.11-20260301.2"], cwd=tmp_path,
                          capture_output=True, text=True).stdout
    assert f"object {first}" in show and "type commit" in show and D1 in show and "actor: octocat" in show
    assert tag_promotion(project, "prod", pub, {LABEL_REVISION: first}) == "prod/python/3.11-20260301.2"
    with pytest.raises(StepFailed, match="exists at another revision"):
        tag_promotion(project, "prod", pub, {LABEL_REVISION: second})
    with pytest.raises(StepFailed, match="no org.opencontainers.image.revision label"):
        tag_promotion(project, "staging", pub, {})
    with pytest.raises(StepFailed, match="not in the repository"):
        tag_promotion(project, "staging", pub, {LABEL_REVISION: "f" * 40})
