"""`bakery drift` on files: Kubernetes manifests, Compose and Terraform state against a real ledger and scan store.
(EC2 against moto and containers on a real Docker daemon are in tests/integration/test_fleet.py.)"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from test_dashboard import NOW, _digest, fleet  # noqa: F401 - the shared fleet fixture

from bakery import dashboard
from bakery.config import load_project
from bakery.drift import Source, from_path, parse_source
from bakery.errors import InputError
from bakery.ledger import Event, SqliteLedger

REG = "127.0.0.1:5997/t/app"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


K8S = f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  template:
    spec:
      initContainers:
        - {{name: migrate, image: "{REG}@{_digest(1)}"}}
      containers:
        - {{name: app, image: "{REG}@{_digest(3)}"}}
        - {{name: sidecar, image: "busybox:1.36"}}
        - {{name: pinned-by-alias, image: "127.0.0.1:5997/t/app:1"}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: nightly}}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - {{name: job, image: "{REG}@{_digest(2)}"}}
---
# an empty document and a kind without pods
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg}}
data: {{image: "not-a-container@{_digest(5)}"}}
"""


def test_every_container_of_every_workload_is_found(tmp_path: Path) -> None:
    f = write(tmp_path / "rendered.yaml", K8S)
    refs = from_path(Source("path", "rendered.yaml", path=f))
    assert [(r.where.split(" ", 1)[1], r.reference.rsplit("/", 1)[-1]) for r in refs] == [
        ("shop/Deployment/web init:migrate", f"app@{_digest(1)}"),
        ("shop/Deployment/web app", f"app@{_digest(3)}"),
        ("shop/Deployment/web sidecar", "busybox:1.36"),
        ("shop/Deployment/web pinned-by-alias", "app:1"),
        ("CronJob/nightly job", f"app@{_digest(2)}"),
    ]


def test_drift_classifies_against_the_ledger_and_exits_1(fleet: Path, bakery) -> None:  # noqa: F811
    # prod runs build 1 (the ledger); staging build 3
    write(fleet / "deploy" / "k8s.yaml", K8S)
    write(fleet / "deploy" / "compose.yml", f"""\
        services:
          app: {{image: "{REG}@{_digest(1)}"}}
          other: {{image: "{REG}@sha256:{'e' * 64}"}}
          templated: {{image: "${{IMAGE}}"}}
        """)
    r = bakery("drift", "--env", "prod", "deploy", "--format", "json", cwd=fleet)
    assert r.code == 1, r.err
    data = json.loads(r.out)
    got = {(x["where"].split(" ", 1)[1], x["status"]) for x in data["references"]}
    assert got == {
        ("shop/Deployment/web init:migrate", "current"),
        ("shop/Deployment/web app", "ahead by 2 builds (promoted: 1-20261101.1)"),
        ("shop/Deployment/web sidecar", "mutable reference (no digest)"),
        ("shop/Deployment/web pinned-by-alias", "mutable reference (no digest)"),
        ("CronJob/nightly job", "ahead by 1 build (promoted: 1-20261101.1)"),
        ("service app", "current"),
        ("service other", "not from bakery"),
        ("service templated", "not an image reference"),
    }
    assert data["drifted"] == 6
    images = {x["where"].rsplit(" ", 1)[1]: x["image"] for x in data["references"]}
    assert images["pinned-by-alias"] == "app:1" and images["sidecar"] is None  # a tag still names its image
    # against staging (build 3), build 1 is behind by 2, and build 3 no longer has the fixable CRITICAL of build 1
    r = bakery("drift", "--env", "staging", "deploy/compose.yml", "--format", "json", cwd=fleet)
    app = next(x for x in json.loads(r.out)["references"] if x["where"].endswith("service app"))
    assert app["status"].startswith("behind by 2 builds") and app["build_tag"] == "1-20261101.1"
    assert app["fixes"] == ["CVE-2026-0001 (CRITICAL, openssl)", "CVE-2026-0003 (HIGH, curl)"]
    # the dashboard shows the latest report of each environment
    project = load_project(fleet / "bakery.yaml", cwd=fleet)
    model = dashboard.gather(project, now=NOW, live=False)
    assert sorted(d.env for d in model.drift) == ["prod", "staging"]
    img = next(i for i in model.images if i.image == "app:1")
    assert any(row.status.startswith("behind by 2") for row in img.drift)


def test_everything_current_exits_0_and_markdown(fleet: Path, bakery) -> None:  # noqa: F811
    write(fleet / "c.yml", f"services:\n  app: {{image: '{REG}@{_digest(1)}'}}\n")
    r = bakery("drift", "--env", "prod", "c.yml", "--format", "markdown", "--no-save", cwd=fleet)
    assert r.code == 0, r.err
    assert "all 1 deployed references are current" in r.out and "| compose |" in r.out
    assert not (fleet / ".bakery" / "drift").exists()


def test_rolled_back_build_is_named(fleet: Path, bakery) -> None:  # noqa: F811
    project = load_project(fleet / "bakery.yaml", cwd=fleet)
    led = SqliteLedger(project.state_dir / "ledger.db")
    led.record(Event(kind="rollback", image="app:1", digest=_digest(1), build_tag="1-20261101.1", from_env="staging",
                     to_env="staging", details={"previous_digest": _digest(3)}, time=NOW))
    led.close()
    write(fleet / "c.yml", f"services:\n  app: {{image: '{REG}@{_digest(3)}'}}\n")
    r = bakery("drift", "--env", "staging", "c.yml", "--format", "json", cwd=fleet)
    assert r.code == 1
    assert json.loads(r.out)["references"][0]["status"] == "rolled back (to 1-20261101.1)"


def test_terraform_state_and_show_json(fleet: Path, bakery) -> None:  # noqa: F811
    project = load_project(fleet / "bakery.yaml", cwd=fleet)
    led = SqliteLedger(project.state_dir / "ledger.db")
    origin = "ami:us-east-1:ami-0aaaaaaaaaaaaaaaa"
    for env in ("dev", "prod"):
        led.record(Event(kind="publish" if env == "dev" else "promote", image="vm:12", digest=origin,
                         build_tag="12-20261101.1", from_env=None if env == "dev" else "dev", to_env=env,
                         details={"amis": {"us-east-1": "ami-0aaaaaaaaaaaaaaaa"}}, time=NOW))
    led.close()
    state = {"version": 4, "resources": [
        {"mode": "managed", "type": "aws_instance", "name": "web", "instances": [
            {"index_key": 0, "attributes": {"ami": "ami-0aaaaaaaaaaaaaaaa"}},
            {"index_key": 1, "attributes": {"ami": "ami-0bbbbbbbbbbbbbbbb"}}]},
        {"mode": "data", "type": "aws_ami", "name": "x", "instances": [{"attributes": {"image_id": "ami-0ccc0000"}}]},
        {"mode": "managed", "type": "aws_ecs_task_definition", "name": "t", "instances": [{"attributes": {
            "container_definitions": json.dumps([{"name": "app", "image": f"{REG}@{_digest(1)}"}])}}]}]}
    show = {"format_version": "1.0", "values": {"root_module": {"child_modules": [{"resources": [
        {"address": "module.k.kubernetes_deployment.app", "mode": "managed", "values": {"spec": [{"template": [
            {"spec": [{"container": [{"image": f"{REG}@{_digest(3)}"}]}]}]}]}}]}]}}}
    write(fleet / "tf" / "terraform.tfstate", json.dumps(state))
    write(fleet / "tf" / "show.json", json.dumps(show))
    r = bakery("drift", "--env", "prod", "tf", "--format", "json", cwd=fleet)
    rows = {x["where"].split(" ", 1)[1]: x["status"] for x in json.loads(r.out)["references"]}
    assert rows == {
        "module.k.kubernetes_deployment.app.spec[0].template[0].spec[0].container[0].image":
            "ahead by 2 builds (promoted: 1-20261101.1)",
        "aws_instance.web[0].ami": "current",
        "aws_instance.web[1].ami": "not from bakery",
        "aws_ecs_task_definition.t.container_definitions[0].image": "current",
    }


@pytest.mark.parametrize("source, message", [
    ("nope.yaml", "source 'nope.yaml': no such file or directory"),
    ("ec2:Environment=prod", "expected ec2:tag:KEY=VALUE"),
    ("s3://bucket/x", "unknown scheme"),
])
def test_bad_sources_are_input_errors(fleet: Path, bakery, source: str, message: str) -> None:  # noqa: F811
    r = bakery("drift", "--env", "prod", source, cwd=fleet)
    assert r.code == 2 and message in r.err and "Traceback" not in r.err


def test_hostile_yaml_is_an_input_error_not_a_crash(fleet: Path, bakery, tmp_path: Path) -> None:  # noqa: F811
    write(fleet / "bad.yaml", "kind: Pod\nspec: {containers: [\n")
    r = bakery("drift", "--env", "prod", "bad.yaml", cwd=fleet)
    assert r.code == 2 and r.errors and "bad.yaml" in r.errors[0] and "invalid YAML" in r.errors[0]
    write(fleet / "obj.yaml", "!!python/object/apply:os.system ['echo pwned']\n")
    r = bakery("drift", "--env", "prod", "obj.yaml", cwd=fleet)
    assert r.code == 2 and "is not allowed (only plain values, lists and mappings)" in r.err
    # a billion-laughs document: bakery's one YAML loader refuses it (alias expansion is bounded), briefly
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    write(fleet / "laughs.yaml", "kind: Pod\nspec: {containers: []}\nx:\n" + textwrap.indent(laughs, "  "))
    r = bakery("drift", "--env", "prod", "laughs.yaml", "--format", "json", cwd=fleet)
    assert r.code == 2 and "values after expanding aliases" in r.err and len(r.err) < 1000
    big = fleet / "big.yaml"
    big.write_bytes(b"#" * (17 * 1024 * 1024))
    r = bakery("drift", "--env", "prod", "big.yaml", cwd=fleet)
    assert r.code == 2 and "more than" in r.err


def test_parse_source_schemes(tmp_path: Path) -> None:
    assert parse_source("ec2:tag:Environment=prod") == Source("ec2", "ec2:tag:Environment=prod",
                                                              tag_key="Environment", tag_value="prod")
    assert parse_source("docker:").kind == "docker"
    assert parse_source("docker:label=app=web") == Source("docker", "docker:label=app=web", tag_key="app",
                                                          tag_value="web")
    with pytest.raises(InputError, match="docker:label=KEY"):
        parse_source("docker:app=web")
    with pytest.raises(InputError):
        parse_source("unknown-env-file.yaml", cwd=tmp_path)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_docker_daemon_or_ec2_endpoint_is_exit_3(fleet: Path, bakery) -> None:  # noqa: F811
    r = bakery("drift", "--env", "prod", "docker:", cwd=fleet, env={"DOCKER_HOST": f"tcp://127.0.0.1:{_closed_port()}"})
    assert r.code == 3 and r.errors and "Docker daemon unreachable" in r.errors[0]
    env = {"BAKERY_AWS__ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_MAX_ATTEMPTS": "1"}
    r = bakery("drift", "--env", "prod", "ec2:tag:Environment=prod", cwd=fleet, env=env)
    assert r.code == 3 and r.errors and "cannot list EC2 instances" in r.errors[0]
