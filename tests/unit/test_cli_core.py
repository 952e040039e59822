"""The core commands: schema, list, config (secrets masked), and --help of every command."""

from __future__ import annotations

import json
from pathlib import Path

import click
import jsonschema
import pytest
import yaml

from bakery.cli import cli

CREDS_CONFIG = """\
environments:
  dev:
    registry: 127.0.0.1:5001/bakery
    credentials: {username_env: TEST_REG_USER, password_env: TEST_REG_PASSWORD}
"""
PASSWORD = "s3cret-Pa55word-xyz"


def schema(bakery, cwd: Path) -> dict:
    result = bakery("schema", cwd=cwd)
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_schema_validates_example_definitions(example: Path, bakery) -> None:
    doc = schema(bakery, example)
    jsonschema.Draft202012Validator.check_schema(doc)
    validator = jsonschema.Draft202012Validator(doc)
    files = sorted((example / "base-images").glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path.name


@pytest.mark.parametrize(("doc", "fragment"), [
    ({"name": "a", "templat": "t", "versions": {"1": {"parent": "x:1"}}}, "'templat' was unexpected"),
    ({"name": "a", "template": "t"}, "'versions' is a required property"),
    ({"name": "a", "template": "t", "versions": {}}, "should be non-empty"),
    ({"name": "a", "template": "t", "versions": {"1": {"tags": []}}}, "'parent' is a required property"),
    ({"name": 5, "template": "t", "versions": {"1": {"parent": "x:1"}}}, "5 is not of type 'string'"),
])
def test_schema_rejects_bad_definitions(example: Path, bakery, doc: dict, fragment: str) -> None:
    validator = jsonschema.Draft202012Validator(schema(bakery, example))
    messages = [e.message for e in validator.iter_errors(doc)]
    assert any(fragment in m for m in messages), messages


def test_schema_needs_no_project(tmp_path: Path, bakery) -> None:
    assert schema(bakery, tmp_path)["title"] == "bakery image definition"


def test_list_json(example: Path, bakery) -> None:
    result = bakery("list", "--format", "json", cwd=example)
    assert result.code == 0, result.err
    rows = {r["ref"]: r for r in json.loads(result.out)}
    assert rows["python:3.11-full"] == {
        "ref": "python:3.11-full", "name": "python", "version": "3.11", "variant": "full", "parent": "base:12",
        "parent_kind": "bakery", "tags": ["3.11-full"], "builder": "docker", "template": "python", "level": 1,
        "file": "base-images/python.yaml"}
    assert rows["base:12"]["parent_kind"] == "upstream" and rows["base:12"]["tags"] == ["12", "bookworm"]
    assert rows["python-web:1.0"]["level"] == 2


def test_list_refs_and_table(example: Path, bakery) -> None:
    result = bakery("list", "python", "--format", "json", cwd=example)
    assert [r["ref"] for r in json.loads(result.out)] == ["python:3.11", "python:3.11-full"]
    table = bakery("list", cwd=example)
    assert table.code == 0
    assert table.out.split()[:6] == ["IMAGE", "PARENT", "LEVEL", "BUILDER", "TAGS", "FILE"]
    assert "python-web:1.0" in table.out


def test_config_masks_password_from_env(make_project, bakery) -> None:
    project = make_project({}, config=CREDS_CONFIG)
    env = {"TEST_REG_USER": "alice", "TEST_REG_PASSWORD": PASSWORD}
    result = bakery("config", "--format", "json", cwd=project, env=env)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    dev = data["environments"]["dev"]
    assert dev["credentials"]["resolved"] == {"username": "alice", "password": "********"}
    assert dev["credentials"]["password_env"] == "TEST_REG_PASSWORD"
    yaml_out = bakery("config", cwd=project, env=env)
    for text in (result.out, result.err, yaml_out.out, yaml_out.err):
        assert PASSWORD not in text
    assert "********" in yaml_out.out


def test_config_masks_password_in_errors(make_project, bakery) -> None:
    """A secret that ends up in an error message (here: as a bad value) is masked too."""
    project = make_project({}, config=CREDS_CONFIG)
    env = {"TEST_REG_USER": "alice", "TEST_REG_PASSWORD": PASSWORD}
    result = bakery("render", PASSWORD, cwd=project, env=env)
    assert result.code == 2
    assert PASSWORD not in result.err and "********" in result.err


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in sorted(group.commands.items()):
        out.append((*prefix, name))
        if isinstance(command, click.Group):
            out += _commands(command, (*prefix, name))
    return out


@pytest.mark.parametrize("path", [(), *_commands(cli)], ids=lambda p: " ".join(p) or "bakery")
def test_help_of_every_command(tmp_path: Path, bakery, path: tuple[str, ...]) -> None:
    result = bakery(*path, "--help", cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.out.startswith("Usage: bakery")
    assert "Traceback" not in result.err


def test_history_of_an_unknown_image_is_bad_input(example: Path, bakery) -> None:
    """A typo is not an empty history: neither in the fleet nor in the ledger → one line, exit 2."""
    result = bakery("history", "pyhton:3.11", cwd=example)
    assert result.code == 2
    assert result.errors == ["error: pyhton:3.11: unknown image: not in the fleet and no event in the ledger "
                             "(`bakery list` shows the fleet)"]
    known = bakery("history", "python:3.11", "--format", "json", cwd=example)  # in the fleet, never published
    assert known.code == 0 and json.loads(known.out) == {"events": []}


@pytest.mark.parametrize("args", [["promote", "python:3.11", "--to", "staging"],
                                  ["rollback", "python:3.11", "--env", "staging"],
                                  ["gc", "--env", "dev", "--keep", "1"]])
def test_changes_need_a_bakery_yaml(tmp_path: Path, bakery, args: list[str]) -> None:
    """Outside a bakery repository the built-in example registries are never changed by accident."""
    result = bakery(*args, cwd=tmp_path)
    assert result.code == 2
    assert result.errors == ["error: no bakery.yaml here or above: run this in a bakery repository, or name one "
                             "with --config / $BAKERY_CONFIG (the built-in example registries are not used for "
                             "changes)"]
    assert not (tmp_path / ".bakery").exists()


@pytest.mark.parametrize("args", [("--all", "--changed"), ("--changed", "--all")])
def test_build_all_and_changed_is_usage_error(example: Path, bakery, args: tuple[str, ...]) -> None:
    result = bakery("build", *args, cwd=example)
    assert result.code == 2
    assert "--all and --changed cannot be combined" in result.err
    assert "Traceback" not in result.err


def test_list_tags_are_what_build_pushes(make_project, bakery) -> None:
    """A variant is pushed as VERSION-VARIANT and its version's tags get the -VARIANT suffix: `list` shows
    exactly the aliases `build` writes (one function for both)."""
    import datetime as dt

    from bakery.config import load_project
    from bakery.definitions import load_fleet
    from bakery.publish import aliases

    definition = ("name: nginx\ntemplate: t\nvariables: {user: app}\nversions:\n"
                  "  '1.22':\n    parent: docker.io/library/debian:12\n"
                  "  '1.23':\n    parent: docker.io/library/debian:12\n    tags: [latest]\n"
                  "    variants:\n      extras: {tags: [full]}\n")
    project = make_project({"base-images/nginx.yaml": definition})
    env = {"BAKERY_NOW": "2026-03-02T10:00:00+00:00"}
    result = bakery("list", "--format", "json", cwd=project, env=env)
    assert result.code == 0, result.err
    listed = {r["ref"]: r["tags"] for r in json.loads(result.out)}
    assert listed == {"nginx:1.22": ["1.22"], "nginx:1.23": ["1.23", "latest"],
                      "nginx:1.23-extras": ["1.23-extras", "latest-extras", "full-extras"]}
    p = load_project(cwd=project, environ={})
    fleet = load_fleet(p)
    for spec in fleet.specs.values():
        assert listed[spec.ref] == aliases(p, spec, p.config.first_env, dt.date(2026, 3, 2))
    table = bakery("list", "nginx:1.23-extras", cwd=project, env=env)
    assert "1.23-extras, latest-extras, full-extras" in table.out


def test_docker_refusing_a_reference_is_a_failed_step_not_a_lost_daemon(example: Path) -> None:
    """The SDK raises DockerException('invalid reference format') before talking to the daemon: exit 1 on that
    image, not exit 3 "lost the Docker daemon"; a transport failure still is exit 3."""
    import requests
    from docker.errors import DockerException

    import dataclasses

    from bakery.build import BuildJob, ClassicEngine
    from bakery.config import load_project
    from bakery.definitions import load_fleet
    from bakery.errors import DaemonUnavailable, StepFailed
    from bakery.render import render

    project = load_project(cwd=example, environ={})
    fleet = load_fleet(project)
    spec = fleet.select(["nginx:1.22"])[0]

    class Api:
        def __init__(self, exc: Exception):
            self.exc = exc

        def build(self, **_kw):
            raise self.exc

    class Client:
        def __init__(self, exc: Exception):
            self.api = Api(exc)

    recipe = render(project, spec)
    recipe = dataclasses.replace(recipe, files={**recipe.files, "Dockerfile": b"FROM parent\nRUN true\n"})

    def job() -> BuildJob:
        return BuildJob(name="nginx:1.22", recipe=recipe, tag="x", parent_ref="parent", labels={}, no_cache=False,
                        on_line=lambda _ln: None)

    with pytest.raises(StepFailed, match=r"^nginx:1.22: docker build failed: .*invalid reference format"):
        ClassicEngine(Client(DockerException("invalid tag 'x:1+y': invalid reference format"))).build(job())
    with pytest.raises(DaemonUnavailable, match="lost the Docker daemon"):
        ClassicEngine(Client(requests.ConnectionError("connection reset"))).build(job())


@pytest.mark.parametrize("text, expected", [
    ("id=tok,env=TOKEN", "id=tok,env=TOKEN"),
    ("id=npmrc,src=~/.npmrc", "id=npmrc,src=~/.npmrc"),
    ("id=k,file=key.pem", "id=k,src=key.pem"),
    ("tok", "use id=ID,env=VARIABLE or id=ID,src=FILE"),
    ("id=tok", "name exactly one source"),
    ("id=tok,env=A,src=b", "name exactly one source"),
    ("id=a b,env=A", "id 'a b' must be"),
    ("id=tok,env=A-B", "env 'A-B' is not an environment variable name"),
])
def test_build_secret_flags_parse_or_say_why(text: str, expected: str) -> None:
    """`--secret` takes the Docker CLI's syntax; a malformed one is bad input naming the flag, not a build error."""
    from bakery.build import parse_secret
    from bakery.errors import EXIT_INPUT, InputError

    try:
        assert parse_secret(text).cli_arg == expected
    except InputError as exc:
        assert exc.exit_code == EXIT_INPUT
        assert str(exc).startswith(f"--secret {text!r}: ") and expected in str(exc)
