"""The fleet view on the real stack: `bakery report html` opened in a real headless Chromium (Debian's package,
driven by Playwright), `bakery drift` against containers on the real Docker daemon and EC2 instances in moto.

The data is real: the fixture fleet `tree` is built, scanned (trivy, offline fixture DB), published and
promoted by bakery itself, twice, with a nightly report each time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from bakery.trivydb import build_db

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("BAKERY_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
CHROMIUM = "/usr/bin/chromium"
ADVISORIES = """\
os: debian 12
advisories:
  - id: CVE-2099-9001
    package: bakery-fixture
    fixed: "1.0-2"
    severity: MEDIUM
    title: "bakery-fixture: <b>fixable</b> finding (fixture)"
"""


def bakery(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bakery", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bakery {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _ledger_digests(image: str, env: str) -> list[str]:
    events = json.loads(bakery("history", image, "--format", "json").stdout)["events"]
    return [e["digest"] for e in events if e.get("to_env") == env and e.get("kind") in ("publish", "promote")]


@pytest.fixture
def fleet(make_project) -> Path:
    """tree built twice (left:1 and leaf-a:1 rebuilt with the fixture package fixed), left:1's first build in
    prod, its second in staging: staging is one build ahead of prod."""
    root = make_project(fleet="tree")
    (root / "advisories.yaml").write_text(ADVISORIES)
    build_db(root / "advisories.yaml", root / ".bakery" / "trivy")
    bakery("nightly")
    for env in ("staging", "prod"):
        bakery("promote", "left:1", "--to", env)
    path = root / "base-images" / "left.yaml"
    path.write_text(path.read_text().replace('fixture_version: "1.0-1"', 'fixture_version: "1.0-2"'))
    report = json.loads(bakery("nightly", "--format", "json", "--force", "left:1").stdout)
    assert "left:1" in report["rebuilt"], report
    bakery("promote", "left:1", "--to", "staging")
    return root


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (scripts/setup-host.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _run_container(client, image: str, label: str, name: str):
    return client.containers.run(image, ["sleep", "600"], detach=True, name=name, labels={"bakery.test": label},
                                 entrypoint=[])


def test_drift_on_docker_and_the_dashboard_in_a_browser(fleet: Path, stack, browser) -> None:
    import docker

    client = docker.from_env(timeout=120)
    dev = yaml.safe_load((fleet / "bakery.yaml").read_text())["environments"]["dev"]["registry"]
    left_builds = _ledger_digests("left:1", "dev")
    assert len(left_builds) == 2
    label = uuid.uuid4().hex[:12]
    containers = []
    try:
        history = json.loads(bakery("history", "left:1", "--format", "json").stdout)["events"]
        newest_tag = next(e["build_tag"] for e in history if e["digest"] == left_builds[1])
        refs = (f"{dev}/left@{left_builds[0]}", f"{dev}/left@{left_builds[1]}", stack.base_ref,
                f"{dev}/left:{newest_tag}")  # the last one by tag: what runs is its image, found by digest
        for n, ref in enumerate(refs):
            client.images.pull(ref)
            containers.append(_run_container(client, ref, label, f"bakery-fleet-{label}-{n}"))
        proc = bakery("drift", "--env", "staging", f"docker:label=bakery.test={label}", "--format", "json",
                      check=False)
        assert proc.returncode == 1, proc.stderr
        rows = {r["where"]: r for r in json.loads(proc.stdout)["references"]}
        assert {w: r["status"] for w, r in rows.items()} == {
            f"container bakery-fleet-{label}-0": f"behind by 1 build (current: {rows[f'container bakery-fleet-{label}-1']['build_tag']})",
            f"container bakery-fleet-{label}-1": "current",
            f"container bakery-fleet-{label}-2": "not from bakery",
            f"container bakery-fleet-{label}-3": "current",
        }
        assert rows[f"container bakery-fleet-{label}-3"]["digest"] == left_builds[1]
        assert rows[f"container bakery-fleet-{label}-0"]["fixes"] == ["CVE-2099-9001 (MEDIUM, bakery-fixture)"]
    finally:
        for c in containers:
            c.remove(force=True)

    site = ARTIFACTS / "dashboard"
    shutil.rmtree(site, ignore_errors=True)
    bakery("report", "html", "--out", str(site))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((site / "index.html").as_uri())
    assert page.locator("#matrix thead th.env").all_inner_texts() == ["dev", "staging", "prod"]
    rows = page.locator("#matrix tbody tr")
    assert sorted(r.split("\t")[0].split("\n")[0] for r in rows.all_inner_texts()) == sorted(
        ["leaf-a:1", "leaf-b:1", "left:1", "right:1", "root:1"])
    left = page.locator("#matrix tbody tr", has=page.locator("a", has_text="left:1"))
    assert "staging is 1 build ahead of prod" in left.inner_text()
    prod_cell = left.locator('td[data-env="prod"]')
    assert "gate passed" in prod_cell.inner_text() and "M 1/1f" in prod_cell.inner_text()
    assert "behind by 1 build" in page.locator("table.drift").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-index.png"), full_page=True)
    # the filter box (the one script) hides rows that do not match
    page.fill("#filter", "leaf-b")
    assert page.locator("#matrix tbody tr:visible").count() == 1
    page.fill("#filter", "")
    left.locator("a", has_text="left:1").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "left:1"
    polylines = page.locator("svg#trend polyline")
    assert polylines.count() == 4
    medium = page.locator('svg#trend polyline[data-severity="MEDIUM"]').get_attribute("points") or ""
    assert len(medium.split()) == 2  # two recorded nightly runs
    box = page.locator("svg#trend").bounding_box()
    assert box and box["width"] > 100 and box["height"] > 50
    assert "<b>fixable</b>" in page.locator("table.findings").inner_text()  # shown as text, never as markup
    assert page.locator("table.timeline tbody tr").count() >= 5
    page.screenshot(path=str(ARTIFACTS / "dashboard-image.png"), full_page=True)
    assert errors == []


@pytest.fixture
def aws_project(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    urllib.request.urlopen(urllib.request.Request(moto_endpoint + "/moto-api/reset", method="POST"),
                           timeout=10).close()
    for k in list(os.environ):
        if k.startswith(("BAKERY_", "AWS_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    root = tmp_path / "project"
    (root / "base-images").mkdir(parents=True)
    (root / "bakery.yaml").write_text(yaml.safe_dump({
        "environments": {"dev": {"registry": "127.0.0.1:5699/bakery",
                                 "aws": {"account": "123456789012", "regions": ["us-east-1"]}}},
        "aws": {"endpoint_url": moto_endpoint, "region": "us-east-1"}}))
    monkeypatch.chdir(root)
    return root


def test_drift_on_ec2_instances_selected_by_tag(aws_project: Path) -> None:
    from bakery import ami
    from bakery.config import load_project
    from bakery.model import ImageKey

    project = load_project(aws_project / "bakery.yaml", cwd=aws_project)
    ec2 = ami.client(project, "us-east-1")
    builder = ec2.run_instances(ImageId="ami-760aaa0f", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    key = ImageKey("vm", "12")
    amis = []
    for n in (1, 2):  # two builds published by bakery
        ami_id = ec2.create_image(InstanceId=builder, Name=f"vm-12-build-{n}")["ImageId"]
        ami.publish_ami(project, key, ami_id, "us-east-1", f"sha256:{n:064x}", f"12-2026110{n}.1")
        amis.append(ami_id)

    def launch(image: str, tags: dict[str, str]) -> str:
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=spec)["Instances"][0][
            "InstanceId"]

    old = launch(amis[0], {"Environment": "dev", "Name": "web-old"})
    new = launch(amis[1], {"Environment": "dev", "Name": "web-new"})
    foreign = launch("ami-760aaa0f", {"Environment": "dev"})
    launch(amis[0], {"Environment": "other"})
    stopped = launch(amis[0], {"Environment": "dev"})
    ec2.stop_instances(InstanceIds=[stopped])
    proc = bakery("drift", "--env", "dev", "ec2:tag:Environment=dev", "--format", "json", check=False)
    assert proc.returncode == 1, proc.stderr
    got = {r["where"].split(" ", 1)[0]: (r["reference"], r["status"]) for r in json.loads(proc.stdout)["references"]}
    assert got[old][0] == amis[0] and got[old][1].startswith("behind by 1 build")
    assert got[new] == (amis[1], "current")
    assert got[foreign] == ("ami-760aaa0f", "not from bakery")
    assert set(got) == {old, new, foreign}  # not the other environment's, not the stopped one
