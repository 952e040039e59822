"""The S3 ledger against moto in server mode on loopback: one object per event, conditional writes,
two concurrent writers losing nothing, secrets masked, the CLI reading it."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests

from bakery import ledger, secrets
from bakery.config import Config, Ledger as LedgerCfg, Project
from bakery.errors import EnvironmentFailure

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
UTC = dt.timezone.utc
D = "sha256:" + "c" * 64


def _free_port() -> int:
    """A loopback port nothing listens on: an unreachable S3 endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]







@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    requests.post(moto_endpoint + "/moto-api/reset", timeout=10)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="audit")
    return client


def _project(tmp_path: Path, endpoint: str, url: str = "s3://audit/bakery/ledger") -> Project:
    return Project(root=tmp_path, config=Config(ledger=LedgerCfg(url=url, endpoint_url=endpoint)), config_file=None)


def _ev(i: int = 0, image: str = "python:3.11", **kw) -> ledger.Event:
    base = dict(kind="promote", image=image, digest=D, build_tag="3.11-20260101.1", from_env="dev",
                to_env="staging", actor="ci", time=dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC) + dt.timedelta(seconds=i))
    base.update(kw)
    return ledger.Event(**base)


def test_one_object_per_event_and_round_trip(s3, moto_endpoint, tmp_path):
    led = ledger.open_ledger(_project(tmp_path, moto_endpoint))
    assert isinstance(led, ledger.S3Ledger)
    first = _ev(0, gates=[{"name": "scan", "passed": True, "reason": "ok"}], scan={"counts": {"HIGH": 0}})
    led.record(first)
    led.record(_ev(1, kind="gate", to_env="prod", from_env="staging"))
    led.record(_ev(2, image="node:20"))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="audit")["Contents"]]
    assert len(keys) == 3 and all(k.startswith("bakery/ledger/events/") and k.endswith(".json") for k in keys)
    assert any(k.startswith("bakery/ledger/events/python/3.11/") for k in keys)
    events = led.events()
    assert [e.image for e in events] == ["python:3.11", "python:3.11", "node:20"]
    assert events[0] == first
    assert [e.kind for e in led.events(image="python:3.11")] == ["promote", "gate"]
    assert [e.kind for e in led.events(env="prod")] == ["gate"]


def test_a_colliding_id_never_overwrites_a_record(s3, moto_endpoint, tmp_path):
    led = ledger.open_ledger(_project(tmp_path, moto_endpoint))
    a = _ev(0, actor="writer-a")
    b = _ev(0, actor="writer-b")
    b.id = a.id  # the same key: the conditional write must refuse to replace a's object
    led.record(a)
    led.record(b)
    events = led.events()
    assert sorted(e.actor for e in events) == ["writer-a", "writer-b"]
    assert len({e.id for e in events}) == 2


WRITER = """
import datetime as dt, sys
from pathlib import Path
from bakery import ledger
from bakery.config import Config, Ledger as LedgerCfg, Project
name, endpoint, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
project = Project(root=Path("."), config=Config(ledger=LedgerCfg(url="s3://audit/shared", endpoint_url=endpoint)),
                  config_file=None)
led = ledger.open_ledger(project)
sys.stdin.readline()  # start together
t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)  # the same instant for everyone: worst case for ids
for i in range(n):
    led.record(ledger.Event(kind="gate", image="python:3.11", digest="sha256:" + "d" * 64, build_tag=f"b{i}",
                            from_env="dev", to_env="staging", actor=name, time=t, details={"i": i}))
"""


def test_two_concurrent_writers_lose_nothing(s3, moto_endpoint, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    n = 40
    procs = [subprocess.Popen([sys.executable, str(script), name, moto_endpoint, str(n)], stdin=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("alpha", "beta")]
    time.sleep(1.5)  # both imported and connected
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    led = ledger.open_ledger(_project(tmp_path, moto_endpoint, "s3://audit/shared"))
    events = led.events()
    assert len(events) == 2 * n
    for name in ("alpha", "beta"):
        assert sorted(e.details["i"] for e in events if e.actor == name) == list(range(n))
    # Each writer's own records stay in the order it wrote them.
    assert [e.details["i"] for e in events if e.actor == "alpha"] == list(range(n))


def test_secrets_are_masked_in_s3_objects(s3, moto_endpoint, tmp_path):
    secret = "s3-ledger-secret-value-42"
    secrets.register(secret)
    led = ledger.open_ledger(_project(tmp_path, moto_endpoint))
    led.record(_ev(0, details={"error": f"registry said no to password {secret}"}))
    for obj in s3.list_objects_v2(Bucket="audit")["Contents"]:
        body = s3.get_object(Bucket="audit", Key=obj["Key"])["Body"].read().decode()
        assert secret not in body and secrets.MASK in body


def test_cli_history_reads_the_s3_ledger(s3, moto_endpoint, tmp_path):
    (tmp_path / "bakery.yaml").write_text(
        f"ledger:\n  url: s3://audit/cli\n  endpoint_url: {moto_endpoint}\n")
    project = _project(tmp_path, moto_endpoint, "s3://audit/cli")
    ledger.open_ledger(project).record(_ev(0, kind="publish", from_env=None, to_env="dev"))
    ledger.open_ledger(project).record(_ev(1))
    proc = subprocess.run([str(BIN / "bakery"), "history", "python:3.11", "--format", "json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert [e["kind"] for e in json.loads(proc.stdout)["events"]] == ["publish", "promote"]


def test_unreachable_s3_endpoint_is_an_environment_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    led = ledger.open_ledger(_project(tmp_path, f"http://127.0.0.1:{_free_port()}"))
    with pytest.raises(EnvironmentFailure, match="ledger s3://audit/bakery/ledger"):
        led.events()
    (tmp_path / "bakery.yaml").write_text(
        f"ledger:\n  url: s3://audit/x\n  endpoint_url: http://127.0.0.1:{_free_port()}\n")
    proc = subprocess.run([str(BIN / "bakery"), "history"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))
    assert proc.returncode == 3 and proc.stderr.startswith("error: ledger s3://audit/x") and "Traceback" not in proc.stderr
