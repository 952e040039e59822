"""AMIs end to end against moto in server mode on loopback: a real Packer 1.6.6 amazon-ebs build (no
provisioner), publish with tags, promotion across two regions and two accounts (copy_image, explicit
tags, launch permission), ledger, rollback, gc, and source-AMI change detection.

moto differences handled here (see bakery/ami.py): images moto creates have RootDeviceType "standard",
so the source AMI is one of moto's built-in EBS AMIs (``amzn-ami-hvm-2017.09.1.*``) and the filter has
no root-device-type; copies are available at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from bakery import ami, packer, render
from bakery.config import load_project
from bakery.definitions import load_fleet
from bakery.ledger import open_ledger
from bakery.model import LABEL_FINGERPRINT, LABEL_NAME, LABEL_VERSION, ImageKey
from bakery.promote import promote, rollback
from bakery.store import store_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV") or REPO / ".venv") / "bin"
DEV_ACCOUNT, STAGING_ACCOUNT, PROD_ACCOUNT = "123456789012", "210987654321", "333344445555"
SOURCE_NAME = "amzn-ami-hvm-2017.09.1.*-x86_64-gp2"  # moto's built-in EBS AMI ami-760aaa0f
KEY = ImageKey("ami-test", "1")




@pytest.fixture
def moto_url(moto_endpoint: str) -> str:
    if shutil.which("packer") is None:
        pytest.skip("packer is not installed (apt-get install -y packer)")
    return moto_endpoint


@pytest.fixture
def project_dir(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", method="POST"), timeout=10).close()
    for k in list(os.environ):
        if k.startswith(("BAKERY_", "AWS_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    root = tmp_path / "project"
    (root / "base-images").mkdir(parents=True)
    shutil.copytree(REPO / "templates" / "packer-ami", root / "templates" / "packer-ami")
    (root / "base-images" / "ami-test.yaml").write_text(yaml.safe_dump({
        "name": "ami-test", "template": "packer-ami",
        "packer": {"kind": "amazon-ebs",
                   "source_ami_filter": {"owners": ["137112412989", "self"],
                                         "filters": {"name": SOURCE_NAME, "architecture": "x86_64"}}},
        "variables": {"region": "us-east-1", "instance_type": "t3.micro", "communicator": "none",
                      "ssh_username": "admin"},
        "versions": {"1": {"parent": "docker.io/library/debian:bookworm-slim"}},
    }, sort_keys=False))
    (root / "bakery.yaml").write_text(yaml.safe_dump({
        "environments": {
            "dev": {"registry": "127.0.0.1:5401/bakery",
                    "aws": {"account": DEV_ACCOUNT, "regions": ["us-east-1"]}},
            "staging": {"registry": "127.0.0.1:5402/bakery",
                        "aws": {"account": STAGING_ACCOUNT, "regions": ["us-east-1", "eu-west-1"]}},
            "prod": {"registry": "127.0.0.1:5403/bakery", "gates": {"approvers": ["alice"]},
                     "aws": {"account": PROD_ACCOUNT, "regions": ["eu-west-1"]}},
        },
        "aws": {"endpoint_url": moto_url, "region": "us-east-1"},
    }, sort_keys=False))
    monkeypatch.chdir(root)
    return root


def _bake(project, n: int) -> ami.AmiRecord:
    """Render, build with real Packer against moto, publish to dev."""
    spec = load_fleet(project).specs[KEY]
    recipe = render.render(project, spec)
    fp = f"sha256:{n:064x}"
    labels = {LABEL_NAME: KEY.name, LABEL_VERSION: KEY.version, LABEL_FINGERPRINT: fp}
    lines: list[str] = []
    out = packer.build(project, recipe, parent_ref="", labels=labels, image_tag="", on_line=lines.append)
    assert out.ok and out.kind == "amazon-ebs"
    assert out.source_ami == "ami-760aaa0f"
    assert set(out.ami_ids) == {"us-east-1"}
    assert any("amazon-ebs.ami-test" in ln for ln in lines)  # progress was streamed
    return ami.publish_ami(project, KEY, out.ami_ids["us-east-1"], "us-east-1", fp)


def _ec2(project, region: str):
    return ami.client(project, region)


def _tags(project, region: str, ami_id: str) -> dict[str, str]:
    img = _ec2(project, region).describe_images(ImageIds=[ami_id])["Images"][0]
    return ami.tags_dict(img.get("Tags"))


def _exists(project, region: str, ami_id: str) -> bool:
    return bool(_ec2(project, region).describe_images(Owners=["self"], Filters=[
        {"Name": "image-id", "Values": [ami_id]}])["Images"])


def test_build_publish_promote_rollback_gc(project_dir: Path) -> None:
    project = load_project(cwd=project_dir)
    first = _bake(project, 1)
    dev_ami = first.amis["us-east-1"]
    tags = _tags(project, "us-east-1", dev_ami)
    assert tags["bakery:name"] == "ami-test"
    assert tags["bakery:version"] == "1"
    assert tags["bakery:fingerprint"] == f"sha256:{1:064x}"
    assert tags["bakery:build-tag"] == first.build_tag and first.build_tag.endswith(".1")
    assert tags["bakery:source-ami"] == "ami-760aaa0f"
    (pub,) = open_ledger(project).events(image=str(KEY))
    assert (pub.kind, pub.to_env, pub.digest) == ("publish", "dev", f"ami:us-east-1:{dev_ami}")
    assert pub.details["source_ami"] == "ami-760aaa0f" and pub.details["amis"] == {"us-east-1": dev_ami}

    assert ami.ami_key(project, "ami-test:1") == KEY  # the store layer recognises AMI images by this
    assert store_for(project, "staging", "ami-test:1").kind == "ami"
    dry = promote(project, "ami-test:1", "staging", dry_run=True)
    assert dry.action == "would-promote" and not dry.copy and {g.name for g in dry.gates} == {
        "previous", "soak", "scan", "approval"}
    assert all(g.passed for g in dry.gates) and ami.current_ami(project, KEY, "staging") is None

    # promote build 1 to staging: two regions, another account (the one promote, over the AMI store)
    states: list[tuple[str, str, str]] = []
    outcome = promote(project, "ami-test:1", "staging", on_progress=lambda *a: states.append(a))
    assert outcome.action == "promoted" and outcome.extra["kind"] == "ami"
    copied = outcome.extra["amis"]
    assert set(copied) == {"us-east-1", "eu-west-1"}
    assert ("eu-west-1", copied["eu-west-1"], "available") in states
    for region, copy_id in copied.items():
        assert copy_id != dev_ami
        t = _tags(project, region, copy_id)
        assert t["bakery:build-tag"] == first.build_tag
        assert t["bakery:fingerprint"] == f"sha256:{1:064x}"
        assert t["bakery:env"] == "staging" and t["bakery:origin"] == first.origin
        assert STAGING_ACCOUNT in ami.launch_permissions(project, region, copy_id)
    assert ami.current_ami(project, KEY, "staging").amis == copied
    again = promote(project, "ami-test:1", "staging")
    assert again.action == "up-to-date" and again.copy is None  # idempotent: no second copy
    assert ami.current_ami(project, KEY, "staging").amis == copied

    # build 2, promote it; then roll staging back to build 1 (no rebuild, no copy)
    second = _bake(project, 2)
    assert second.build_tag.endswith(".2") and second.origin != first.origin
    promoted = promote(project, "ami-test:1", "staging").extra["amis"]
    assert ami.current_ami(project, KEY, "staging").origin == second.origin
    back = rollback(project, "ami-test:1", "staging")
    assert back.digest == first.origin and back.extra["amis"] == copied
    assert ami.current_ami(project, KEY, "staging").origin == first.origin
    kinds = [e.kind for e in open_ledger(project).events(image=str(KEY), env="staging") if e.kind != "gate"]
    assert kinds == ["promote", "promote", "rollback"]

    # prod needs an approver: refused, recorded, nothing copied
    refused = promote(project, "ami-test:1", "prod")
    assert refused.action == "refused" and "approval" in refused.message
    gate = open_ledger(project).events(image=str(KEY), env="prod")[-1]
    assert gate.kind == "gate" and gate.details["passed"] is False
    assert ami.current_ami(project, KEY, "prod") is None

    # build 3; gc dev keeping 1: build 2 goes (with its snapshot); build 1 stays (staging runs it), 3 is newest
    third = _bake(project, 3)
    snap2 = [bd["Ebs"]["SnapshotId"] for bd in _ec2(project, "us-east-1").describe_images(
        ImageIds=[second.amis["us-east-1"]])["Images"][0]["BlockDeviceMappings"]]
    from bakery.gc import gc

    dry = gc(project, "dev", 1, dry_run=True)
    assert [i.ref for i in dry.deleted] == [second.amis["us-east-1"]]
    assert _exists(project, "us-east-1", second.amis["us-east-1"])
    report = gc(project, "dev", 1)
    assert [i.ref for i in report.deleted] == [second.amis["us-east-1"]]
    assert {i.ref: i.reason for i in report.kept} == {dev_ami: "current in staging",
                                                       third.amis["us-east-1"]: "current in dev"}
    assert not _exists(project, "us-east-1", second.amis["us-east-1"])
    assert _exists(project, "us-east-1", dev_ami) and _exists(project, "us-east-1", third.amis["us-east-1"])
    left = {s["SnapshotId"] for s in _ec2(project, "us-east-1").describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert snap2 and not set(snap2) & left
    # staging's copies are untouched by dev's gc; the promoted build 2 copies stay until staging's own gc
    assert all(_exists(project, r, a) for r, a in promoted.items())
    st = gc(project, "staging", 1)  # build 1 is current there, build 2 the newest arrival: both stay
    assert st.deleted == [] and {i.ref for i in st.kept} == {*copied.values(), *promoted.values()}


def test_source_ami_change_detection(project_dir: Path) -> None:
    project = load_project(cwd=project_dir)
    spec = load_fleet(project).specs[KEY]
    _bake(project, 1)
    drift = ami.source_drift(project, spec)
    assert not drift.changed and drift.built_from == "ami-760aaa0f"
    # a newer source AMI appears under the definition's owner/name filter
    ec2 = _ec2(project, "us-east-1")
    time.sleep(1.1)  # moto's CreationDate has one-second resolution
    inst = ec2.run_instances(ImageId="ami-760aaa0f", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    newer = ec2.create_image(InstanceId=inst, Name="amzn-ami-hvm-2017.09.1.20991231-x86_64-gp2")["ImageId"]
    drift = ami.source_drift(project, spec)
    assert drift.changed and drift.newest == newer
    assert "ami-760aaa0f" in drift.reason() and newer in drift.reason()


def test_plan_reads_an_ami_from_its_store(project_dir: Path) -> None:
    """`bakery plan` on an amazon-ebs definition: never published → definition; published from the newest source
    AMI → up to date; a newer source AMI → upstream. The AMI is judged by its store (no registry read, no scan)."""
    from bakery.plan import make_plan

    project = load_project(cwd=project_dir)
    fleet = load_fleet(project)
    plan = make_plan(project, fleet, ["ami-test:1"])
    item = plan.items[KEY]
    assert [(r.kind, r.detail) for r in item.reasons] == [("definition", "never published")]
    assert item.upstream_digest == "ami-760aaa0f" and plan.requests == 0
    rec = _bake(project, 1)
    plan = make_plan(project, fleet, ["ami-test:1"])
    item = plan.items[KEY]
    assert item.reason == "up to date" and not item.error, item.describe()
    assert plan.notes == [] and item.vulns is None  # an AMI is not sent to the scanner
    assert item.to_json()["published"] is None and plan.requests == 0
    ec2 = _ec2(project, "us-east-1")
    time.sleep(1.1)  # moto's CreationDate has one-second resolution
    inst = ec2.run_instances(ImageId="ami-760aaa0f", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    newer = ec2.create_image(InstanceId=inst, Name="amzn-ami-hvm-2017.09.1.20991231-x86_64-gp2")["ImageId"]
    plan = make_plan(project, fleet, ["ami-test:1"])
    item = plan.items[KEY]
    assert [r.kind for r in item.reasons] == ["upstream"] and plan.rebuild == [item]
    assert item.reasons[0].detail == f"source AMI moved {rec.source_ami} → {newer}"


def test_cli_gc_and_amis_json(project_dir: Path) -> None:
    project = load_project(cwd=project_dir)
    rec = _bake(project, 1)
    _bake(project, 2)
    env = {k: v for k, v in os.environ.items()}
    out = subprocess.run([str(VENV_BIN / "bakery"), "gc", "--env", "dev", "--keep", "1", "--dry-run", "--format",
                          "json"], capture_output=True, text=True, env=env, cwd=project_dir, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [i["ref"] for i in data["deleted"]] == [rec.amis["us-east-1"]] and data["dry_run"] is True
    assert _exists(project, "us-east-1", rec.amis["us-east-1"])
    out = subprocess.run([str(VENV_BIN / "bakery"), "amis", "--format", "json"], capture_output=True, text=True,
                         env=env, cwd=project_dir, timeout=60)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["env"] == "dev" and row["build_tag"].endswith(".2")
    bad = subprocess.run([str(VENV_BIN / "bakery"), "gc", "--env", "nope", "--keep", "1"], capture_output=True,
                         text=True, env=env, cwd=project_dir, timeout=60)
    assert bad.returncode == 2 and "unknown environment 'nope'" in bad.stderr


def test_bakery_build_bakes_and_publishes_an_ami(make_project, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`bakery build` on an amazon-ebs definition: Packer against moto, then the AMI is published to dev."""
    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", method="POST"), timeout=10).close()
    root = make_project(fleet=None, config={
        "environments": {"dev": {"aws": {"account": DEV_ACCOUNT, "regions": ["us-east-1", "eu-west-1"]}}},
        "aws": {"endpoint_url": moto_url, "region": "us-east-1"}})
    shutil.copytree(REPO / "templates" / "packer-ami", root / "templates" / "packer-ami")
    definition = yaml.safe_load((REPO / "examples" / "aws" / "base-images" / "ami-debian.yaml").read_text())
    definition["packer"]["source_ami_filter"] = {"owners": ["137112412989"], "filters": {"name": SOURCE_NAME}}
    (root / "base-images" / "ami-debian.yaml").write_text(yaml.safe_dump(definition))
    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(k, v)
    proc = subprocess.run([str(VENV_BIN / "bakery"), "build", "ami-debian:12", "--format", "json"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (r,) = json.loads(proc.stdout)["results"]
    assert r["digest"].startswith("ami:us-east-1:ami-") or r["digest"].startswith("ami:eu-west-1:ami-")
    project = load_project(cwd=root)
    rec = ami.current_ami(project, "ami-debian:12", "dev")
    assert rec is not None and rec.origin == r["digest"]
    assert set(rec.amis) == {"us-east-1", "eu-west-1"}  # Packer's ami_regions copy, found by its tags
    assert rec.source_ami == "ami-760aaa0f"
    for region, ami_id in rec.amis.items():
        tags = _tags(project, region, ami_id)
        assert tags["bakery:env"] == "dev" and tags["bakery:build-tag"] == rec.build_tag
        assert tags["bakery:fingerprint"] == r["fingerprint"]
    # The CLI hands AMI images to the AMI promotion: copy to staging's regions, status, rollback.
    bakery = str(VENV_BIN / "bakery")
    promoted = subprocess.run([bakery, "promote", "ami-debian:12", "--to", "staging", "--format", "json"],
                              cwd=root, capture_output=True, text=True, timeout=300)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    out = json.loads(promoted.stdout)
    assert out["kind"] == "ami" and out["origin"] == r["digest"] and out["env"] == "staging"
    assert out["amis"] and all(a.startswith("ami-") for a in out["amis"].values())
    status = subprocess.run([bakery, "status", "ami-debian:12", "--format", "json"], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    envs = {row["env"]: row["origin"] for row in json.loads(status.stdout)["images"]}
    assert envs == {"dev": r["digest"], "staging": r["digest"]}
    again = subprocess.run([bakery, "promote", "ami-debian:12", "--to", "staging", "--format", "json"],
                           cwd=root, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["already"] is True
    nothing_before = subprocess.run([bakery, "rollback", "ami-debian:12", "--env", "staging"], cwd=root,
                                    capture_output=True, text=True, timeout=120)
    assert nothing_before.returncode == 1 and "no earlier AMI" in nothing_before.stderr
