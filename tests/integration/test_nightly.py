"""`bakery nightly`, `bakery plan` and `bakery build --changed` on a real stack, with real builds.

The fixture fleet `tree` (tests/fixtures/fleets/tree): root:1 → left:1 → leaf-a:1 and root:1 → right:1 → leaf-b:1,
five images in three levels whose templates build in about a second.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from bakery.trivydb import build_db

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fleets" / "tree"
ALL = {"root:1", "left:1", "right:1", "leaf-a:1", "leaf-b:1"}


def bakery(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bakery", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bakery {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def nightly(*args: str, check: bool = True) -> tuple[dict, subprocess.CompletedProcess[str]]:
    proc = bakery("nightly", "--format", "json", *args, check=check)
    return json.loads(proc.stdout), proc


def plan(*args: str) -> dict:
    return json.loads(bakery("plan", "--format", "json", *args).stdout)


def by_ref(report: dict) -> dict[str, dict]:
    return {i["ref"]: i for i in report["images"]}


@pytest.fixture
def tree(make_project) -> Path:
    root = make_project(fleet="tree")
    build_db(FIXTURES / "advisories-none.yaml", root / ".bakery" / "trivy")
    return root


def edit(root: Path, image: str, old: str, new: str) -> None:
    path = root / "base-images" / f"{image}.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_nightly_rebuilds_exactly_what_changed(tree: Path, stack) -> None:
    first, _ = nightly()
    assert set(first["rebuilt"]) == ALL and first["ok"]
    assert by_ref(first)["root:1"]["why"] == "definition: never published"

    # Nothing changed: nothing rebuilt, quickly, and it says so.
    started = time.monotonic()
    noop, proc = nightly()
    assert noop["rebuilt"] == [] and noop["nothing_to_do"] and noop["ok"]
    assert noop["summary"].startswith("nothing to do")
    assert time.monotonic() - started < 10
    noop_plan = plan()
    assert noop_plan["rebuild"] == []
    fast, full = _fast_and_full_plans(tree)
    assert fast == full and fast["rebuild"] == []
    # a no-op reads one tag list per image (build tags are immutable: their manifests and labels are known) and
    # resolves the one upstream tag
    assert noop_plan["requests"] == len(ALL) + 1

    # One leaf's variables: exactly that image.
    edit(tree, "leaf-b", 'marker: "m1"', 'marker: "m2"')
    assert plan()["rebuild"] == ["leaf-b:1"]
    report, _ = nightly()
    assert report["rebuilt"] == ["leaf-b:1"]
    assert by_ref(report)["leaf-b:1"]["reason"] == "definition"
    out = subprocess.run(["docker", "run", "--rm", f"{stack.registry('dev')}/{_ns(tree)}/leaf-b:1",
                          "cat", "/etc/bakery-leaf-b"], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "leaf-b m2"

    # The laptop path: `bakery build --changed` uses the same plan.
    edit(tree, "right", 'marker: "m1"', 'marker: "m3"')
    built = json.loads(bakery("build", "--changed", "--format", "json").stdout)
    assert {r["ref"] for r in built["results"]} == {"right:1", "leaf-b:1"}
    assert all(r["status"] == "pushed" for r in built["results"])
    assert plan()["rebuild"] == []

    # The upstream digest moves (a new base under the same tag in the mirror): the whole tree.
    new_base = stack.push_new_base(marker=f"nightly-{uuid.uuid4().hex[:8]}")
    p = plan()
    items = {i["ref"]: i for i in p["images"]}
    assert items["root:1"]["reason"] == "upstream"
    fast, full = _fast_and_full_plans(tree)
    assert fast == full and fast["rebuild"] == [k for lv in p["levels"] for k in lv]
    # the workflow's one plan for both outputs: the matrix on stdout, the same plan as JSON in the file
    matrix = bakery("plan", "--format", "github-matrix", "--max-levels", "2", "--json-out", str(tree / "p.json"))
    both = json.loads((tree / "p.json").read_text())
    assert {**both, "seconds": 0} == {**p, "seconds": 0}
    assert json.loads(matrix.stdout) == json.loads(bakery("plan", "--format", "github-matrix", "--max-levels",
                                                          "2").stdout)
    assert json.loads(matrix.stdout)["rebuild"] == both["rebuild"] == [k for lv in p["levels"] for k in lv]
    assert new_base.split("@")[1].split(":")[1][:12] in items["root:1"]["reasons"][0]["detail"]
    assert p["levels"] == [["root:1"], ["left:1", "right:1"], ["leaf-a:1", "leaf-b:1"]]
    # A plan scoped to a leaf sees that its ancestors must be rebuilt first (and leaves the other branch out).
    scoped = plan("leaf-a:1")
    assert scoped["levels"] == [["root:1"], ["left:1"], ["leaf-a:1"]]
    assert {i["ref"]: i["reason"] for i in scoped["images"]} == {
        "root:1": "upstream", "left:1": "parent", "leaf-a:1": "parent"}
    report, _ = nightly()
    assert set(report["rebuilt"]) == ALL
    assert {i["ref"]: i["reason"] for i in report["images"]} == {
        "root:1": "upstream", "left:1": "parent", "right:1": "parent", "leaf-a:1": "parent", "leaf-b:1": "parent"}
    assert nightly()[0]["nothing_to_do"]


def test_a_plan_reads_each_repository_once(tree: Path) -> None:
    """The versions and variants of a family share one repository: a plan lists its tags once, not once per image
    (nothing is published here: each list is a 404, still one request per repository)."""
    edit(tree, "leaf-a", 'versions:\n', 'versions:\n  "2":\n    parent: left:1\n    variants: {slim: {}}\n')
    p = plan("--no-patches")
    refs = {i["ref"] for i in p["images"]}
    assert {"leaf-a:1", "leaf-a:2", "leaf-a:2-slim"} <= refs and len(refs) == len(ALL) + 2
    assert all(i["reasons"][0]["detail"] == "never published" for i in p["images"])
    assert p["requests"] == len(ALL) + 1  # five repositories, one upstream tag


def _fast_and_full_plans(root: Path) -> tuple[dict, dict]:
    """The plan as bakery makes it, and as it is made without its shortcuts: every tag list through requests (no
    lean GET), one tag list per image (no shared lists), every definition validated (no kept outcome)."""
    from bakery import store
    from bakery.config import load_project
    from bakery.definitions import load_fleet
    from bakery.plan import make_plan

    def one() -> dict:
        project = load_project(root / "bakery.yaml", cwd=root)
        made = make_plan(project, load_fleet(project)).to_json()
        made.pop("seconds")
        made.pop("requests")
        return made

    fast = one()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store.TagLists, "get", lambda self, reg, host, repo: (reg.list_tags(repo), True))
        mp.setenv("BAKERY_CACHE_DIR", str(root / ".cold-cache"))
        full = one()
    return fast, full


def _ns(root: Path) -> str:
    import yaml

    return yaml.safe_load((root / "bakery.yaml").read_text())["environments"]["dev"]["registry"].split("/", 1)[1]


def test_fixable_finding_in_a_mid_level_image_rebuilds_its_subtree(tree: Path) -> None:
    assert set(nightly()[0]["rebuilt"]) == ALL
    # A new DB (newer than every build) knows a fix for a package only left:1 (and what is built on it) has.
    build_db(FIXTURES / "advisories-fixture.yaml", tree / ".bakery" / "trivy",
             updated_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1))
    time.sleep(1.1)
    p = plan()
    items = {i["ref"]: i for i in p["images"]}
    assert p["rebuild"] == ["left:1", "leaf-a:1"]
    assert items["left:1"]["reason"] == "patches"
    assert "CVE-2099-9001 in bakery-fixture 1.0-1 (fixed in 1.0-2)" in items["left:1"]["fixable"]
    assert items["right:1"]["reason"] == "up to date" and items["right:1"]["vulns"]["MEDIUM"] == 0
    report, _ = nightly("--format", "json")
    assert report["rebuilt"] == ["left:1", "leaf-a:1"]
    left = by_ref(report)["left:1"]
    assert left["reason"] == "patches" and left["vulns_before"]["MEDIUM"] == 1
    assert left["vulns_after"] is not None
    md = (tree / ".bakery" / "nightly" / "last.md").read_text()
    assert "| `left:1` | patches |" in md and "M:1" in md
    # Built after the DB knew of the fix: rebuilding again would not help, so the next night does nothing.
    assert nightly()[0]["nothing_to_do"]


def test_failure_in_one_branch_leaves_the_other_published(tree: Path, monkeypatch) -> None:
    edit(tree, "right", 'fail: "no"', 'fail: "yes"')
    summary = tree / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    report, proc = nightly(check=False)
    assert proc.returncode == 1
    status = {i["ref"]: i["status"] for i in report["images"]}
    assert status == {"root:1": "rebuilt", "left:1": "rebuilt", "leaf-a:1": "rebuilt", "right:1": "failed",
                      "leaf-b:1": "skipped"}
    assert set(report["failed"]) == {"right:1", "leaf-b:1"} and not report["ok"]
    text = summary.read_text()
    assert "### Failed" in text and "`right:1`" in text
    p = plan()
    assert p["rebuild"] == ["right:1", "leaf-b:1"]
    published = {i["ref"]: i["published"] for i in p["images"]}
    assert published["leaf-a:1"]["build_tag"] and published["right:1"] is None


def test_two_concurrent_nightly_runs(tree: Path) -> None:
    env = dict(os.environ)
    first = subprocess.Popen(["bakery", "nightly", "--format", "json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    lock = tree / ".bakery" / "nightly.lock"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    second = bakery("nightly", check=False)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 1
    assert f"nightly already running (pid {first.pid} by " in second.stderr and "--wait" in second.stderr
    assert set(json.loads(out)["rebuilt"]) == ALL
    # --wait waits for the holder instead: afterwards it finds nothing to do.
    third = subprocess.Popen(["bakery", "nightly", "--wait", "--format", "json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    out3, err3 = third.communicate(timeout=300)
    assert third.returncode == 0, err3
    assert json.loads(out3)["nothing_to_do"]


def _tree(make_project, config: dict) -> Path:
    root = make_project(fleet="tree", config=config)
    build_db(FIXTURES / "advisories-none.yaml", root / ".bakery" / "trivy")
    return root


def test_a_promotion_refused_by_a_gate_says_why_in_the_report(make_project, stack) -> None:
    root = _tree(make_project, {"environments": {"prod": {"gates": {"soak": "24h"}}}})
    report, proc = nightly("leaf-a:1", "--promote-to", "prod", check=False)
    assert proc.returncode == 1, proc.stderr
    leaf = by_ref(report)["leaf-a:1"]
    assert leaf["status"] == "rebuilt"
    assert [(p["to"], p["action"]) for p in leaf["promotions"]] == [("staging", "promoted"), ("prod", "refused")]
    assert leaf["result"].startswith("rebuilt; promote to prod refused: soak ("), leaf["result"]
    assert stack.client("staging").head_manifest(f"{_ns(root)}/leaf-a", leaf["build_tag"]) == leaf["digest"]
    md = (root / ".bakery" / "nightly" / "last.md").read_text()
    assert f"- `leaf-a:1`: {leaf['result']}" in md


def test_an_aborted_promotion_keeps_what_was_promoted_in_the_report(make_project, stack) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: prod is down
        s.bind(("127.0.0.1", 0))
        down = s.getsockname()[1]
    root = _tree(make_project, {"environments": {"prod": {"registry": f"127.0.0.1:{down}/x"}}})
    proc = bakery("nightly", "leaf-a:1", "--promote-to", "prod", check=False)
    assert proc.returncode == 3, proc.stderr
    data = json.loads((root / ".bakery" / "nightly" / "last.json").read_text())
    assert data["aborted"] and not data["ok"]
    steps = {i["ref"]: [(p["to"], p["action"]) for p in i["promotions"]] for i in data["images"]}
    first = next(ref for ref, s in steps.items() if s)
    assert steps[first] == [("staging", "promoted"), ("prod", "aborted")]
    img = by_ref(data)[first]
    name = first.split(":")[0]
    assert stack.client("staging").head_manifest(f"{_ns(root)}/{name}", img["build_tag"]) == img["digest"]
    assert "staging: promoted" in (root / ".bakery" / "nightly" / "last.md").read_text()


def test_a_dry_run_does_not_masquerade_as_the_last_run(tree: Path, monkeypatch) -> None:
    summary = tree / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    report, _ = nightly("--dry-run")
    assert report["summary"].startswith("dry run: 5 of 5 images would be rebuilt"), report["summary"]
    d = tree / ".bakery" / "nightly"
    assert sorted(p.name for p in d.iterdir()) == ["dry-run.json", "dry-run.md"]
    assert "dry run" in (d / "dry-run.md").read_text()
    assert not summary.exists()
