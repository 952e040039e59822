"""Integrity under concurrency and faults (issue 10), against the real stack.

A delaying / cutting TCP proxy of our own (``faultproxy``) sits in front of a real registry (or moto) to
widen race windows and cut answers; everything else is the real thing: `bakery` processes, dockerd,
Distribution registries, the SQLite or S3 (moto) ledger.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import requests
import yaml

from bakery import ledger as ledger_mod
from bakery.config import load_project
from bakery.model import LABEL_BUILD_TAG, LABEL_NAME, LABEL_VERSION
from faultproxy import FaultProxy, Rule

pytestmark = pytest.mark.integration

BAKERY = str(Path(sys.executable).parent / "bakery")
BUILD_TAG = "3.11-20260302.1"


def bakery(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, GITHUB_ACTOR="octo-releaser", **(env or {}))
    return subprocess.run([BAKERY, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=environ)


def write_tiny_fleet(root: Path, name: str = "app", marker: str = "one") -> None:
    tdir = root / "templates" / "tiny"
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "Dockerfile.j2").write_text("ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\n"
                                        "RUN echo {{ marker }} > /etc/marker\n")
    (root / "base-images" / f"{name}.yaml").write_text(
        f"name: {name}\ntemplate: tiny\nversions:\n  '1.0':\n    parent: docker.io/library/debian:bookworm-slim\n"
        f"    variables:\n      marker: {marker}\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "fleet"],
                   cwd=root, check=True)


def push_image(stack, host_repo: str, tag: str, *, marker: str, name: str = "python", version: str = "3.11",
               build_tag: str | None = None) -> str:
    """A small real image FROM the stack's base, pushed to HOST/REPO:TAG outside bakery; returns its digest."""
    import docker

    dockerfile = f"FROM {stack.base_ref}\nRUN echo {marker} > /marker\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    client = docker.from_env(timeout=600)
    labels = {LABEL_NAME: name, LABEL_VERSION: version, LABEL_BUILD_TAG: build_tag or tag}
    image_id = None
    for item in client.api.build(fileobj=buf, custom_context=True, tag=f"{host_repo}:{tag}", labels=labels, rm=True,
                                 forcerm=True, pull=False, decode=True):
        assert "error" not in item, item
        image_id = (item.get("aux") or {}).get("ID") or image_id
    digest = None
    for item in client.api.push(host_repo, tag, stream=True, decode=True):
        assert "error" not in item, item
        digest = (item.get("aux") or {}).get("Digest") or digest
    client.api.remove_image(f"{host_repo}:{tag}", noprune=True)
    assert digest and image_id
    return digest


def events(config: Path) -> list[ledger_mod.Event]:
    project = load_project(config, cwd=config.parent)
    return ledger_mod.open_ledger(project).events()


# ----------------------------------------------------------------------------------------------------------
# D1: concurrent builds of one image each get their own build tag.


def _concurrent_builds(root: Path, count: int) -> list[dict]:
    def one(_i: int) -> subprocess.CompletedProcess[str]:
        return bakery("build", "app", "--no-scan", "--format", "json", cwd=root)

    with cf.ThreadPoolExecutor(count) as pool:
        procs = list(pool.map(one, range(count)))
    results = []
    for p in procs:
        assert p.returncode == 0, p.stderr
        assert "Traceback" not in p.stderr
        results.extend(json.loads(p.stdout)["results"])
    return results


def _assert_distinct_tags(stack, root: Path, results: list[dict], count: int) -> None:
    tags = [r["build_tag"] for r in results]
    assert len(set(tags)) == count, sorted(tags)
    client = stack.client("dev")
    for r in results:
        _host, _, repo = r["repository"].partition("/")
        assert client.head_manifest(repo, r["build_tag"]) == r["digest"], r
    recorded: dict[str, set[str]] = {}
    for e in events(root / "bakery.yaml"):
        if e.kind == "publish":
            recorded.setdefault(e.build_tag, set()).add(e.digest)
    assert all(len(d) == 1 for d in recorded.values()), recorded  # one digest per build tag in the ledger
    assert set(recorded) == set(tags)


def test_concurrent_builds_of_one_image_get_distinct_build_tags(make_project, stack):
    with FaultProxy(stack.ports["dev"]) as proxy:
        # Every manifest PUT waits: all ten builds have listed the tags before the first one lands.
        proxy.add(Rule("delay", method="PUT", path="/manifests/", seconds=1.5))
        ns = f"c{os.urandom(4).hex()}"
        root = make_project(fleet=None, config={"environments": {"dev": {"registry": f"127.0.0.1:{proxy.port}/{ns}"}}})
        write_tiny_fleet(root)
        results = _concurrent_builds(root, 10)
        _assert_distinct_tags(stack, root, results, 10)


@pytest.fixture
def s3_ledger(moto_endpoint, monkeypatch) -> dict:
    """An S3 ledger on moto (bucket `ledger`, reset first): the `ledger:` section of a bakery.yaml."""
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    requests.post(moto_endpoint + "/moto-api/reset", timeout=10)
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket="ledger")
    return {"url": "s3://ledger/bakery", "endpoint_url": moto_endpoint}


def test_concurrent_builds_share_an_s3_ledger_and_still_get_distinct_tags(make_project, stack, s3_ledger):
    with FaultProxy(stack.ports["dev"]) as proxy:
        proxy.add(Rule("delay", method="PUT", path="/manifests/", seconds=1.5))
        ns = f"c{os.urandom(4).hex()}"
        root = make_project(fleet=None, config={"ledger": s3_ledger, "environments": {
            "dev": {"registry": f"127.0.0.1:{proxy.port}/{ns}"}}})
        write_tiny_fleet(root)
        results = _concurrent_builds(root, 10)
        _assert_distinct_tags(stack, root, results, 10)


# ----------------------------------------------------------------------------------------------------------
# D3: concurrent promotions of different digests onto one build tag: exactly one wins, nothing else moves.


def _source_configs(root: Path, stack, proxy_port: int, count: int) -> list[tuple[Path, str]]:
    """``count`` bakery.yaml files sharing one ledger and one staging (behind the proxy), each with its own dev
    namespace where python:BUILD_TAG is a different image."""
    base = yaml.safe_load((root / "bakery.yaml").read_text())
    ns = base["environments"]["staging"]["registry"].rsplit("/", 1)[1]
    out = []
    for i in range(count):
        cfg = json.loads(json.dumps(base))
        cfg["environments"]["dev"]["registry"] = f"{stack.registry('dev')}/{ns}-src{i}"
        cfg["environments"]["dev"]["gates"] = {"require_previous": False}
        cfg["environments"]["staging"].update({"registry": f"127.0.0.1:{proxy_port}/{ns}",
                                                 "aliases": ["{version}", "staging"], "gates": {"scan": False}})
        cfg["ledger"] = {"url": str(root / ".bakery" / "ledger.db")}
        path = root / f"source{i}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        digest = push_image(stack, f"{stack.registry('dev')}/{ns}-src{i}/python", BUILD_TAG, marker=f"src{i}")
        out.append((path, digest))
    return out


def test_concurrent_promotions_of_different_digests_onto_one_build_tag(make_project, stack):
    root = make_project(fleet=None)
    with FaultProxy(stack.ports["staging"]) as proxy:
        sources = _source_configs(root, stack, proxy.port, 10)
        proxy.add(Rule("delay", method="PUT", path="/manifests/", seconds=1.0))

        def one(src: tuple[Path, str]) -> subprocess.CompletedProcess[str]:
            return bakery("--config", str(src[0]), "promote", f"python:{BUILD_TAG}", "--to", "staging",
                          "--format", "json", cwd=root)

        with cf.ThreadPoolExecutor(len(sources)) as pool:
            procs = list(pool.map(one, sources))
        codes = [p.returncode for p in procs]
        assert codes.count(0) == 1, [(p.returncode, p.stderr) for p in procs]
        assert all(c == 1 for c in codes if c != 0), [(p.returncode, p.stderr) for p in procs]
        winner = sources[codes.index(0)][1]
        ns = yaml.safe_load((root / "bakery.yaml").read_text())["environments"]["staging"]["registry"].rsplit("/")[-1]
        client = stack.client("staging")
        assert sorted(client.list_tags(f"{ns}/python")) == sorted([BUILD_TAG, "3.11", "staging"])
        for tag in (BUILD_TAG, "3.11", "staging"):
            assert client.head_manifest(f"{ns}/python", tag) == winner
        promotes = [e for e in events(sources[0][0]) if e.kind == "promote"]
        assert [e.digest for e in promotes] == [winner]
        for p in procs:
            if p.returncode == 1:
                assert winner in p.stdout + p.stderr  # both digests named
