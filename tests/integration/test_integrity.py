"""Integrity under concurrency and faults (issue 10), against the real stack.

A delaying / cutting TCP proxy of our own (``faultproxy``) sits in front of a real registry (or moto) to
widen race windows and cut answers; everything else is the real thing: `bakery` processes, dockerd,
Distribution registries, the SQLite or S3 (moto) ledger.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from bakery import ledger as ledger_mod
from bakery.config import load_project
from bakery.model import LABEL_BUILD_TAG, LABEL_NAME, LABEL_VERSION
from bakery.registry import RegistryClient
from faultproxy import FaultProxy, Rule
from tiny import push_tiny, write_tiny_fleet

pytestmark = pytest.mark.integration

BAKERY = str(Path(sys.executable).parent / "bakery")
BUILD_TAG = "3.11-20260302.1"


def bakery(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "GITHUB_ACTOR": "octo-releaser", **(env or {})}
    return subprocess.run([BAKERY, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=environ)


def push_image(stack, host_repo: str, tag: str, *, marker: str, name: str = "python", version: str = "3.11",
               build_tag: str | None = None) -> str:
    """A small real image labelled as the fleet's NAME:VERSION (BUILD_TAG), pushed to HOST/REPO:TAG outside
    bakery; returns its digest."""
    return push_tiny(stack, host_repo, [tag], marker=marker,
                     labels={LABEL_NAME: name, LABEL_VERSION: version, LABEL_BUILD_TAG: build_tag or tag})


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
        write_tiny_fleet(root, {"app": ("docker.io/library/debian:bookworm-slim", "one")})
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
        write_tiny_fleet(root, {"app": ("docker.io/library/debian:bookworm-slim", "one")})
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
        # no ledger.url: the default .bakery/ledger.db is relative to the project root, one file for all ten
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


# ----------------------------------------------------------------------------------------------------------
# D2 / D10: write-ahead promotions — a promotion that moved tags is always recorded, once.


def _staging_behind(proxy_port: int, ledger: dict | None = None) -> dict:
    cfg = {"environments": {
        "dev": {"aliases": ["{version}"], "gates": {"require_previous": False}},
        "staging": {"registry": None, "aliases": ["{version}", "staging"], "gates": {"scan": False}},
        "prod": {"aliases": ["{version}", "prod"], "gates": {"scan": False, "soak": "1h"}},
    }}
    if ledger:
        cfg["ledger"] = ledger
    return cfg


def _project_behind_proxy(make_project, stack, proxy: FaultProxy, ledger: dict | None = None) -> tuple[Path, str]:
    ns = f"w{os.urandom(4).hex()}"
    cfg = _staging_behind(proxy.port, ledger)
    cfg["environments"]["staging"]["registry"] = f"127.0.0.1:{proxy.port}/{ns}"
    cfg["environments"]["dev"]["registry"] = f"{stack.registry('dev')}/{ns}"
    root = make_project(fleet=None, config=cfg)
    return root, ns


def _publish_python(root: Path, stack, ns: str, marker: str = "one", build_tag: str = BUILD_TAG) -> str:
    digest = push_image(stack, f"{stack.registry('dev')}/{ns}/python", build_tag, marker=marker)
    project = load_project(root / "bakery.yaml", cwd=root)
    ledger_mod.open_ledger(project).record(ledger_mod.Event(
        kind="publish", image="python:3.11", digest=digest, build_tag=build_tag, from_env=None, to_env="dev",
        actor="builder"))
    return digest


def _wait_for_tag(client: RegistryClient, repo: str, tag: str, digest: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while client.head_manifest(repo, tag) != digest:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{tag} never appeared"
        time.sleep(0.05)


def _promote_bg(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([BAKERY, "promote", "python:3.11", "--to", "staging", *args], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, GITHUB_ACTOR="octo-releaser"))


def _rerun_records_it_and_prod_soak_passes(root: Path, stack, ns: str, digest: str, *, via: str = "promote") -> None:
    # The rerun (another actor; `promote` again, or `status`) records the promotion the first run made: once,
    # marked recovered, the first run's actor and time; then prod's soak gate counts from that arrival.
    if via == "status":
        status = bakery("status", "--format", "json", cwd=root, env={"GITHUB_ACTOR": "night-owl"})
        assert status.returncode == 0, status.stderr
    rerun = bakery("promote", "python:3.11", "--to", "staging", "--format", "json", cwd=root,
                   env={"GITHUB_ACTOR": "night-owl"})
    assert rerun.returncode == 0, rerun.stderr
    if via == "promote":
        assert "recovered" in json.loads(rerun.stdout)["message"]
    evs = events(root / "bakery.yaml")
    promotes = [e for e in evs if e.kind == "promote" and e.to_env == "staging"]
    assert len(promotes) == 1, promotes
    assert promotes[0].details.get("recovered") is True and promotes[0].actor == "octo-releaser"
    intent = next(e for e in evs if e.kind == "intent")
    assert promotes[0].time == intent.time
    for tag in (BUILD_TAG, "3.11", "staging"):
        assert stack.client("staging").head_manifest(f"{ns}/python", tag) == digest
    later = ledger_mod.now() + __import__("datetime").timedelta(hours=2)
    prod = bakery("promote", "python:3.11", "--to", "prod", "--format", "json", cwd=root,
                  env={"BAKERY_NOW": later.isoformat().replace("+00:00", "Z")})
    assert prod.returncode == 0, prod.stdout + prod.stderr
    soak = next(g for g in json.loads(prod.stdout)["gates"] if g["name"] == "soak")
    assert soak["passed"], soak
    audit = bakery("audit", "--format", "json", cwd=root)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_a_promotion_killed_while_the_ledger_is_locked_is_recorded_by_the_rerun(make_project, stack, tmp_path):
    import sqlite3

    with FaultProxy(stack.ports["staging"]) as proxy:
        root, ns = _project_behind_proxy(make_project, stack, proxy)
        digest = _publish_python(root, stack, ns)
        proxy.add(Rule("delay", method="PUT", path=r"/manifests/(3\.11|staging)$", seconds=1.0))
        proc = _promote_bg(root)
        client = stack.client("staging")
        _wait_for_tag(client, f"{ns}/python", BUILD_TAG, digest, proc)
        # Another writer holds the ledger while the aliases are written; the process is killed while it waits.
        blocker = sqlite3.connect(str(root / ".bakery" / "ledger.db"), timeout=60, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            _wait_for_tag(client, f"{ns}/python", "staging", digest, proc)
            time.sleep(1.0)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        proxy.clear()
        assert not [e for e in events(root / "bakery.yaml") if e.kind == "promote"]
        _rerun_records_it_and_prod_soak_passes(root, stack, ns, digest)


def test_a_promotion_whose_s3_ledger_dies_after_the_tags_is_recorded_by_the_rerun(make_project, stack,
                                                                                   moto_endpoint, s3_ledger):
    moto_port = int(moto_endpoint.rsplit(":", 1)[1])
    with FaultProxy(stack.ports["staging"]) as proxy, FaultProxy(moto_port) as s3proxy:
        ledger = {**s3_ledger, "endpoint_url": f"http://127.0.0.1:{s3proxy.port}"}
        root, ns = _project_behind_proxy(make_project, stack, proxy, ledger)
        digest = _publish_python(root, stack, ns)
        proxy.add(Rule("delay", method="PUT", path=r"/manifests/(3\.11|staging)$", seconds=1.0))
        proc = _promote_bg(root)
        _wait_for_tag(stack.client("staging"), f"{ns}/python", BUILD_TAG, digest, proc)
        s3proxy.add(Rule("refuse"))  # the S3 endpoint dies between the tag write and the record
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 3, out + err
        assert "build tag and aliases written" in err and "run the same command again" in err, err
        assert "Traceback" not in err
        s3proxy.clear()
        proxy.clear()
        audit = bakery("audit", "--format", "json", cwd=root)  # read-only: says what is missing, records nothing
        assert audit.returncode == 1, audit.stdout + audit.stderr
        assert [(d["kind"], d["env"], d["tag"], d["registry"]) for d in json.loads(audit.stdout)["disagreements"]] \
            == [("unrecorded-promotion", "staging", BUILD_TAG, digest)]
        _rerun_records_it_and_prod_soak_passes(root, stack, ns, digest, via="status")


def test_concurrent_identical_promotions_write_one_promote_row(make_project, stack):
    with FaultProxy(stack.ports["staging"]) as proxy:
        root, ns = _project_behind_proxy(make_project, stack, proxy)
        digest = _publish_python(root, stack, ns)
        proxy.add(Rule("delay", method="PUT", path="/manifests/", seconds=1.0))
        with cf.ThreadPoolExecutor(5) as pool:
            procs = list(pool.map(lambda _i: bakery("promote", "python:3.11", "--to", "staging", cwd=root),
                                  range(5)))
        assert [p.returncode for p in procs] == [0] * 5, [p.stderr for p in procs]
        promotes = [e for e in events(root / "bakery.yaml") if e.kind == "promote"]
        assert [e.digest for e in promotes] == [digest]


# ----------------------------------------------------------------------------------------------------------
# D4: the ledger and the named image win over a registry tag that moved and over labels.


def test_an_image_of_another_family_under_a_build_tag_is_refused(make_project, stack):
    root = make_project(fleet=None, config=_staging_behind(0))
    ns = yaml.safe_load((root / "bakery.yaml").read_text())["environments"]["dev"]["registry"].rsplit("/", 1)[1]
    cfg = yaml.safe_load((root / "bakery.yaml").read_text())
    cfg["environments"]["staging"]["registry"] = f"{stack.registry('staging')}/{ns}"
    (root / "bakery.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _publish_python(root, stack, ns)
    # nginx's published image copied (outside bakery) into the python repository under its build tag.
    nginx = push_image(stack, f"{stack.registry('dev')}/{ns}/nginx", "1.22-20260302.1", marker="nginx",
                       name="nginx", version="1.22")
    dev = stack.client("dev")
    dev.copy_image(dev, f"{ns}/nginx", nginx, f"{ns}/python")
    m = dev.get_manifest(f"{ns}/nginx", nginx)
    dev.put_manifest(f"{ns}/python", "1.22-20260302.1", m.body, m.media_type)
    proc = bakery("promote", "python:1.22-20260302.1", "--to", "staging", "--format", "json", cwd=root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert nginx in proc.stdout and "not of python" in proc.stdout
    assert stack.client("staging").list_tags(f"{ns}/python") == []
    assert stack.client("staging").list_tags(f"{ns}/nginx") == []


def test_a_build_tag_swapped_in_staging_is_not_promoted_to_prod(make_project, stack):
    root = make_project(fleet=None, config=_staging_behind(0))
    cfg = yaml.safe_load((root / "bakery.yaml").read_text())
    ns = cfg["environments"]["dev"]["registry"].rsplit("/", 1)[1]
    cfg["environments"]["staging"]["registry"] = f"{stack.registry('staging')}/{ns}"
    cfg["environments"]["prod"]["gates"] = {"scan": False}
    (root / "bakery.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    first = _publish_python(root, stack, ns)
    assert bakery("promote", "python:3.11", "--to", "staging", cwd=root).returncode == 0
    # Someone moves staging's build tag to another image (Distribution has no tag immutability).
    other = push_image(stack, f"{stack.registry('dev')}/{ns}/python", "scratch", marker="swapped")
    staging, dev = stack.client("staging"), stack.client("dev")
    staging.copy_image(dev, f"{ns}/python", other, f"{ns}/python")
    m = dev.get_manifest(f"{ns}/python", other)
    staging.put_manifest(f"{ns}/python", BUILD_TAG, m.body, m.media_type)
    proc = bakery("promote", f"python:{BUILD_TAG}", "--to", "prod", "--format", "json", cwd=root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert first in proc.stdout and other in proc.stdout  # both digests named
    assert stack.client("prod").list_tags(f"{ns}/python") == []
    audit = bakery("audit", "--format", "json", cwd=root)
    assert audit.returncode == 1
    found = json.loads(audit.stdout)["disagreements"]
    assert any(d["env"] == "staging" and d["tag"] == BUILD_TAG and d["registry"] == other
               and d["ledger"] == first for d in found), found


# ----------------------------------------------------------------------------------------------------------
# D5 / D6 / D7: protocol faults are retried, exhausted retries say what the target holds, --debug keeps the
# exit code, and a refused login is called an authentication failure.


def _project_with_cut_target(make_project, stack, proxy: FaultProxy) -> tuple[Path, str]:
    """staging = an unauthenticated registry (the stack's dev registry, another namespace) behind the proxy."""
    ns = f"f{os.urandom(4).hex()}"
    cfg = _staging_behind(proxy.port)
    cfg["environments"]["dev"]["registry"] = f"{stack.registry('dev')}/{ns}"
    cfg["environments"]["staging"]["registry"] = f"127.0.0.1:{proxy.port}/{ns}-staging"
    root = make_project(fleet=None, config=cfg)
    return root, ns


def test_responses_cut_mid_headers_are_retried_without_noise(make_project, stack):
    with FaultProxy(stack.ports["dev"]) as proxy:
        root, ns = _project_with_cut_target(make_project, stack, proxy)
        digest = _publish_python(root, stack, ns)
        cuts = [proxy.add(Rule("cut", method="POST", path="/blobs/uploads/", keep=100, times=1)),  # before Location
                proxy.add(Rule("cut", method="POST", path="/blobs/uploads/", keep=260, times=1)),  # inside Location
                proxy.add(Rule("cut", method="HEAD", path="/manifests/3.11$", keep=150, times=1)),
                proxy.add(Rule("cut", method="PUT", path="/manifests/", keep=30, times=1))]
        proc = bakery("promote", "python:3.11", "--to", "staging", cwd=root)
        assert proc.returncode == 0, proc.stderr
        assert all(r.hits == 1 for r in cuts), proxy.seen
        assert "Traceback" not in proc.stderr and "urllib3" not in proc.stderr and "WARNING" not in proc.stderr
        client = RegistryClient(f"127.0.0.1:{stack.ports['dev']}", insecure=True)
        for tag in (BUILD_TAG, "3.11", "staging"):
            assert client.head_manifest(f"{ns}-staging/python", tag) == digest


def test_no_tag_is_written_while_a_read_of_the_target_is_in_flight(make_project, stack):
    """Distribution's filesystem driver rewrites a manifest's revision link on every PUT of it, and answers 500 to
    a read of that manifest racing the write (seen once in ~30 repeat promotions, each costing a 0.5 s retry).
    A promotion reads what its aliases name alongside the build tag's check, and writes nothing until every
    read is answered. Widened: the proxy holds each alias read 0.5 s; the build tag's PUT arrives after."""
    with FaultProxy(stack.ports["dev"]) as proxy:
        root, ns = _project_with_cut_target(make_project, stack, proxy)
        digest = _publish_python(root, stack, ns)
        held = proxy.add(Rule("delay", method="HEAD", path=r"/manifests/(3\.11|staging)$", seconds=0.5))
        proc = bakery("promote", "python:3.11", "--to", "staging", cwd=root)
        assert proc.returncode == 0, proc.stderr
        lines = list(zip(proxy.seen, proxy.stamps))
        reads = [t for line, t in lines if line.startswith("HEAD ") and line.endswith(" delay")]
        put = [t for line, t in lines if line.startswith("PUT ") and line.split()[1].endswith(f"/manifests/{BUILD_TAG}")]
        assert held.hits >= 2 and len(put) == 1, proxy.seen
        assert put[0] >= max(reads) + 0.5, proxy.seen  # every alias read was answered before the write
        client = RegistryClient(f"127.0.0.1:{stack.ports['dev']}", insecure=True)
        for tag in (BUILD_TAG, "3.11", "staging"):
            assert client.head_manifest(f"{ns}-staging/python", tag) == digest


@pytest.mark.parametrize("debug", [False, True])
def test_exhausted_retries_exit_3_and_say_what_the_target_holds(make_project, stack, debug):
    with FaultProxy(stack.ports["dev"]) as proxy:
        root, ns = _project_with_cut_target(make_project, stack, proxy)
        _publish_python(root, stack, ns)
        proxy.add(Rule("cut", method="PUT", path=r"/manifests/(3\.11|staging)$", keep=30))  # every alias write
        proc = bakery(*(["--debug"] if debug else []), "promote", "python:3.11", "--to", "staging", cwd=root)
        assert proc.returncode == 3, proc.stderr
        assert f"build tag {BUILD_TAG} written, aliases not" in proc.stderr
        if not debug:
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            assert "Traceback" not in proc.stderr


def test_status_calls_a_refused_login_an_authentication_failure(make_project, stack):
    root = make_project(fleet=None, config=_staging_behind(0) | {"environments": {
        "dev": {"gates": {"require_previous": False}}, "staging": {"gates": {"scan": False}},
        "prod": {"gates": {"scan": False}}}})
    ns = yaml.safe_load((root / "bakery.yaml").read_text())["environments"]["dev"]["registry"].rsplit("/", 1)[1]
    _publish_python(root, stack, ns)
    assert bakery("promote", "python:3.11", "--to", "staging", cwd=root).returncode == 0
    proc = bakery("status", "--format", "json", cwd=root, env={"BAKERY_TEST_PASSWORD": "wrong"})
    assert proc.returncode == 3, proc.stderr
    rows = json.loads(proc.stdout)["images"]
    staging = [r for r in rows if r["env"] == "staging"]
    assert staging and all(r["failure"] == "authentication" and "authentication failed" in r["note"]
                           and "unreachable" not in r["note"] for r in staging), staging
    table = bakery("status", cwd=root, env={"BAKERY_TEST_PASSWORD": "wrong"})
    assert table.returncode == 3 and "refused our credentials" in table.stderr


def test_a_build_tag_moved_right_after_it_was_written_stops_before_the_aliases(make_project, stack):
    """The build tag is read back after it is written: another writer's image there is recorded and refused
    (exit 1, both digests), and no alias moves."""
    with FaultProxy(stack.ports["dev"]) as proxy:
        root, ns = _project_with_cut_target(make_project, stack, proxy)
        digest = _publish_python(root, stack, ns)
        other = push_image(stack, f"{stack.registry('dev')}/{ns}/python", "other", marker="other")
        # The read-back (a HEAD of the build tag after its PUT) waits; meanwhile someone overwrites the tag.
        proxy.add(Rule("delay", method="HEAD", path=rf"/manifests/{BUILD_TAG}$", seconds=3,
                       after=rf"^PUT \S+/manifests/{BUILD_TAG} "))
        proc = _promote_bg(root)
        upstream = RegistryClient(f"127.0.0.1:{stack.ports['dev']}", insecure=True)
        _wait_for_tag(upstream, f"{ns}-staging/python", BUILD_TAG, digest, proc)
        dev = stack.client("dev")
        upstream.copy_image(dev, f"{ns}/python", other, f"{ns}-staging/python")
        m = dev.get_manifest(f"{ns}/python", other)
        upstream.put_manifest(f"{ns}-staging/python", BUILD_TAG, m.body, m.media_type)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, out + err
        assert digest in err and other in err and "aliases not moved" in err, err
        assert sorted(upstream.list_tags(f"{ns}-staging/python")) == [BUILD_TAG]  # no alias written
        evs = events(root / "bakery.yaml")
        assert not [e for e in evs if e.kind == "promote"]
        found = [e for e in evs if e.kind == "gate" and e.details.get("found")]
        assert [e.details["found"] for e in found] == [other]


def test_promoting_an_earlier_build_again_is_not_recovered_before_its_aliases_move(make_project, stack):
    """A promoted, then B, then A again and killed before A's aliases move: A's build tag is an earlier
    promotion's, so status records nothing; the rerun promotes and records it."""
    with FaultProxy(stack.ports["dev"]) as proxy:
        root, ns = _project_with_cut_target(make_project, stack, proxy)
        a = _publish_python(root, stack, ns, marker="a")
        assert bakery("promote", f"python:{BUILD_TAG}", "--to", "staging", cwd=root).returncode == 0
        b = _publish_python(root, stack, ns, marker="b", build_tag="3.11-20260302.2")
        assert bakery("promote", "python:3.11-20260302.2", "--to", "staging", cwd=root).returncode == 0
        proxy.add(Rule("delay", method="PUT", path=r"/manifests/(3\.11|staging)$", seconds=60))
        proc = subprocess.Popen([BAKERY, "promote", f"python:{BUILD_TAG}", "--to", "staging"], cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        def intents_of_a() -> int:
            return len([e for e in events(root / "bakery.yaml") if e.kind == "intent" and e.digest == a])

        deadline = time.monotonic() + 120
        while intents_of_a() < 2:  # the first promotion's and this one's
            alive = proc.poll() is None
            assert alive, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)  # the copy is a no-op (A is there); the alias PUT is held by the proxy
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proxy.clear()
        assert bakery("status", "--format", "json", cwd=root).returncode == 0
        promotes = [e.digest for e in events(root / "bakery.yaml") if e.kind == "promote"]
        assert promotes == [a, b]  # nothing recovered: staging still runs B
        rerun = bakery("promote", f"python:{BUILD_TAG}", "--to", "staging", "--format", "json", cwd=root)
        assert rerun.returncode == 0 and json.loads(rerun.stdout)["action"] == "promoted", rerun.stdout
        assert [e.digest for e in events(root / "bakery.yaml") if e.kind == "promote"] == [a, b, a]
        client = RegistryClient(f"127.0.0.1:{stack.ports['dev']}", insecure=True)
        assert client.head_manifest(f"{ns}-staging/python", "3.11") == a
