"""Plan decisions, the GitHub matrix, the run lock and the nightly report — pure, no daemon, no registry."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bakery import render
from bakery.config import load_project
from bakery.definitions import load_fleet
from bakery.lock import LockHeld, RunLock
from bakery.model import LABEL_FINGERPRINT, ImageKey
from bakery.nightly import NightlyReport, Outcome
from bakery.plan import LABEL_BASE_DIGEST, REASONS, Current, Plan, PlanItem, _decide, built_after

FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "fleets" / "tree"
UP1 = "sha256:" + "1" * 64
UP2 = "sha256:" + "2" * 64
UPSTREAM = "docker.io/library/debian:bookworm-slim"


@pytest.fixture
def fleet(tmp_path: Path):
    shutil.copytree(FLEET / "base-images", tmp_path / "base-images")
    shutil.copytree(FLEET / "templates", tmp_path / "templates")
    (tmp_path / "bakery.yaml").write_text("environments: {dev: {registry: '127.0.0.1:9/t'}}\n")
    project = load_project(tmp_path / "bakery.yaml", cwd=tmp_path, environ={})
    return project, load_fleet(project)


def _published(project, fleet) -> dict[ImageKey, Current]:
    """Every image published, built exactly from the current recipes on upstream UP1."""
    out: dict[ImageKey, Current] = {}
    for level in fleet.levels():
        for spec in level:
            pkey = fleet.parent_key(spec)
            base = UP1 if pkey is None else out[pkey].digest
            fp = render.fingerprint(render.render(project, spec), base)
            out[spec.key] = Current(repository=f"r/{spec.key.name}", build_tag="1-20260101.1",
                                    digest="sha256:" + fp[7:], image_id="", labels={LABEL_FINGERPRINT: fp,
                                                                                     LABEL_BASE_DIGEST: base})
    return out


def _plan(project, fleet, currents, upstream=UP1, forced=()) -> dict[str, PlanItem]:
    items = {k: PlanItem(key=k, spec=fleet.specs[k]) for k in fleet.specs}
    rebuild: set[ImageKey] = set()
    for level in fleet.levels():
        for spec in level:
            item = items[spec.key]
            _decide(project, fleet, item, render.render(project, spec), currents, {UPSTREAM: (upstream, "")}, rebuild)
            if str(spec.key) in forced:
                from bakery.plan import Reason
                item.reasons.append(Reason("forced", "--force"))
            item.reasons.sort(key=lambda r: REASONS.index(r.kind))
            if item.reasons:
                rebuild.add(spec.key)
    return {str(k): v for k, v in items.items()}


def test_nothing_changed_nothing_rebuilt(fleet) -> None:
    project, fl = fleet
    items = _plan(project, fl, _published(project, fl))
    assert {r: i.reason for r, i in items.items()} == {r: "up to date" for r in items}


def test_never_published_is_definition(fleet) -> None:
    project, fl = fleet
    items = _plan(project, fl, {})
    assert items["root:1"].reasons[0].kind == "definition"
    assert "never published" in items["root:1"].reasons[0].detail
    assert [r.kind for r in items["leaf-a:1"].reasons] == ["definition", "parent"]


def test_leaf_variable_change_rebuilds_only_that_leaf(fleet) -> None:
    project, fl = fleet
    currents = _published(project, fl)
    path = project.definitions_dir / "leaf-b.yaml"
    path.write_text(path.read_text().replace('marker: "m1"', 'marker: "m2"'))
    fl2 = load_fleet(project)
    items = _plan(project, fl2, currents)
    assert [r for r, i in items.items() if i.rebuild] == ["leaf-b:1"]
    assert items["leaf-b:1"].reason == "definition"


def test_upstream_move_rebuilds_the_whole_tree(fleet) -> None:
    project, fl = fleet
    items = _plan(project, fl, _published(project, fl), upstream=UP2)
    assert items["root:1"].reason == "upstream"
    assert "111111111111 → 222222222222" in items["root:1"].reasons[0].detail
    assert all(items[r].reason == "parent" for r in ("left:1", "right:1", "leaf-a:1", "leaf-b:1"))


def test_republished_parent_rebuilds_its_children(fleet) -> None:
    project, fl = fleet
    currents = _published(project, fl)
    currents[ImageKey("right", "1")].digest = "sha256:" + "9" * 64  # right was rebuilt by hand since
    items = _plan(project, fl, currents)
    assert [r for r, i in items.items() if i.rebuild] == ["leaf-b:1"]
    assert "republished" in items["leaf-b:1"].reasons[0].detail


def _matrix_plan(project, fl) -> Plan:
    items = _plan(project, fl, {})
    by_key = {i.key: i for i in items.values()}
    levels = [[s.key for s in level] for level in fl.levels()]
    for n, level in enumerate(levels):
        for k in level:
            by_key[k].level = n
    return Plan(items=by_key, levels=levels)


def test_github_matrix_one_include_list_per_level(fleet) -> None:
    project, fl = fleet
    m = _matrix_plan(project, fl).github_matrix()
    assert m["count"] == 3
    assert [[e["image"] for e in level["include"]] for level in m["levels"]] == [
        ["root:1"], ["left:1", "right:1"], ["leaf-a:1", "leaf-b:1"]]
    left = m["levels"][1]["include"][0]
    assert left["parent"] == "root:1" and left["slug"] == "left-1" and left["reason"] == "definition"


def test_github_matrix_names_the_images_rebuilt_for_patches_for_build_fresh(fleet) -> None:
    """A patches rebuild must get a new created label (else a warm runner gives the published image back and the
    next plan asks for the same patches again): each entry lists those of its images in ``fresh``."""
    from bakery.model import Reason

    project, fl = fleet
    plan = _matrix_plan(project, fl)
    plan.items[ImageKey("leaf-a", "1")].reasons = [Reason("patches", "1 fixable finding(s)")]
    plan.items[ImageKey("left", "1")].reasons.append(Reason("patches", "1 fixable finding(s)"))
    m = plan.github_matrix(max_levels=2)
    entries = {e["image"]: e for level in m["levels"] for e in level["include"]}
    assert entries["left:1"]["refs"] == "left:1 leaf-a:1" and entries["left:1"]["fresh"] == "left:1 leaf-a:1"
    assert entries["right:1"]["fresh"] == "" and entries["root:1"]["fresh"] == ""


def test_github_matrix_folds_deep_levels_into_subtrees(fleet) -> None:
    project, fl = fleet
    m = _matrix_plan(project, fl).github_matrix(max_levels=2)
    assert m["count"] == 2
    assert {e["image"]: e["refs"] for e in m["levels"][1]["include"]} == {"left:1": "left:1 leaf-a:1",
                                                                          "right:1": "right:1 leaf-b:1"}


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    first = RunLock(tmp_path / "nightly.lock")
    first.acquire()
    try:
        with pytest.raises(LockHeld) as err:
            RunLock(tmp_path / "nightly.lock").acquire()
        msg = str(err.value)
        assert f"nightly already running (pid {os.getpid()} by " in msg and "--wait" in msg
        assert err.value.exit_code == 1
    finally:
        first.release()
    with RunLock(tmp_path / "nightly.lock"):
        pass


def test_lock_is_released_when_the_holder_dies(tmp_path: Path) -> None:
    code = ("import sys, time; from bakery.lock import RunLock; l = RunLock(sys.argv[1]); l.acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "nightly.lock")], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=f"pid {proc.pid}"):
            RunLock(tmp_path / "nightly.lock").acquire()
        waiting = RunLock(tmp_path / "nightly.lock", wait=True, timeout=0.3)
        with pytest.raises(LockHeld, match="still running"):
            waiting.acquire()
    finally:
        proc.kill()
        proc.wait()
    started = time.monotonic()
    with RunLock(tmp_path / "nightly.lock", wait=True, timeout=10):
        assert time.monotonic() - started < 5


def test_report_lists_rebuilt_reasons_counts_and_failures() -> None:
    report = NightlyReport(
        started=dt.datetime(2026, 11, 27, 3, 17, tzinfo=dt.timezone.utc), seconds=42.0, dry_run=False,
        outcomes=[
            Outcome(ref="left:1", reason="patches", why="patches: 1 fixable finding(s)", status="rebuilt",
                    build_tag="1-20261127.1", before={"MEDIUM": 1}, after={"MEDIUM": 0}),
            Outcome(ref="right:1", reason="definition", why="definition: recipe changed", status="failed",
                    error="right:1: build failed: exit 1"),
            Outcome(ref="root:1", reason="up to date", why="", status="up to date"),
        ])
    md = report.to_markdown()
    assert "1 rebuilt, 1 failed, 1 up to date" in md
    assert "| `left:1` | patches | ✅ rebuilt | 1-20261127.1 | M:1 | 0 |" in md
    assert "### Failed" in md and "right:1: build failed" in md
    data = report.to_json()
    assert data["ok"] is False and data["rebuilt"] == ["left:1"] and data["failed"] == ["right:1"]


def test_report_nothing_to_do() -> None:
    report = NightlyReport(started=dt.datetime.now(dt.timezone.utc), seconds=0.4, dry_run=False,
                           outcomes=[Outcome(ref="root:1", reason="up to date", why="", status="up to date")])
    assert report.ok and report.nothing_to_do
    assert report.headline().startswith("nothing to do: all 1 images are up to date")


def test_summarize_the_workflow_artifacts(fleet, tmp_path: Path, monkeypatch) -> None:
    """What the nightly workflow's summary job runs: plan.json + `bakery build --format json` outputs → report."""
    import json

    from bakery.nightly import summarize

    project, fl = fleet
    items = _plan(project, fl, {})
    by_key = {i.key: i for i in items.values()}
    levels = [[s.key for s in level] for level in fl.levels()]
    for n, level in enumerate(levels):
        for k in level:
            by_key[k].level = n
    (tmp_path / "plan.json").write_text(json.dumps(Plan(items=by_key, levels=levels).to_json()))
    pushed = {"ref": "root:1", "status": "pushed", "build_tag": "1-20261127.1", "digest": "sha256:" + "a" * 64,
              "scan": {"counts": {"CRITICAL": 0, "HIGH": 0, "MEDIUM": 2, "LOW": 0, "UNKNOWN": 0}}, "seconds": 3}
    failed = {"ref": "left:1", "status": "failed", "error": "left:1: build failed: exit 1"}
    (tmp_path / "result-a.json").write_text(json.dumps({"results": [pushed], "ok": True}))
    (tmp_path / "result-b.json").write_text(json.dumps({"results": [failed], "ok": False}))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    report = summarize(project, tmp_path / "plan.json", [tmp_path / "result-a.json", tmp_path / "result-b.json"])
    status = {o.ref: o.status for o in report.outcomes}
    assert status == {"root:1": "rebuilt", "left:1": "failed", "right:1": "skipped", "leaf-a:1": "skipped",
                      "leaf-b:1": "skipped"}
    assert not report.ok
    assert "| `root:1` | definition | ✅ rebuilt | 1-20261127.1 | - | M:2 |" in (tmp_path / "summary.md").read_text()
    assert (project.state_dir / "nightly" / "last.json").is_file()


def _summarize_dir(project, fl, tmp_path: Path, currents=None, forced=()) -> Path:
    import json

    items = _plan(project, fl, currents or {}, forced=forced)
    by_key = {i.key: i for i in items.values()}
    levels = [[s.key for s in level if by_key[s.key].rebuild] for level in fl.levels()]
    levels = [level for level in levels if level]
    d = tmp_path / "nightly"
    d.mkdir()
    (d / "plan.json").write_text(json.dumps(Plan(items=by_key, levels=levels).to_json()))
    return d


def test_summarize_an_empty_or_truncated_result_file_is_a_failed_job_not_a_broken_summary(
        fleet, tmp_path: Path, bakery) -> None:
    """A matrix job that died before writing its output leaves an empty or truncated file: its image is
    reported as failed, with the reason, and the report is still written (exit 1)."""
    import json

    project, fl = fleet
    d = _summarize_dir(project, fl, tmp_path)
    pushed = {"ref": "root:1", "status": "pushed", "build_tag": "1-20261127.1", "digest": "sha256:" + "a" * 64}
    (d / "result-root-1.json").write_text(json.dumps({"results": [pushed], "ok": True}))
    (d / "result-left-1.json").write_text("")  # an environment error: nothing on stdout
    (d / "result-right-1.json").write_text('{"results": [{"ref": "right:1", "sta')  # timed out mid-write
    summary = tmp_path / "summary.md"
    res = bakery("nightly", "--summarize", str(d), "--format", "json", cwd=tmp_path,
                 env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert res.code == 1, res.err
    data = json.loads(res.out)
    images = {i["ref"]: i for i in data["images"]}
    assert images["root:1"]["status"] == "rebuilt"
    for ref, f in (("left:1", "result-left-1.json"), ("right:1", "result-right-1.json")):
        assert images[ref]["status"] == "failed"
        assert images[ref]["error"].startswith("result file empty or unreadable: the job failed before writing it")
        assert f in images[ref]["error"]
    assert images["leaf-a:1"]["status"] == "skipped" and images["leaf-b:1"]["status"] == "skipped"
    assert not data["ok"]
    md = (project.state_dir / "nightly" / "last.md").read_text()
    assert "- `left:1`: result file empty or unreadable" in md
    assert "result file empty or unreadable" in summary.read_text()

    # A file that names no planned image: still a failure of the summary, reported, not an abort.
    for f in d.glob("result-*.json"):
        f.write_text(json.dumps({"results": [{"ref": f.stem[7:].replace("-", ":"), "status": "pushed"}]}))
    (d / "result-gone.json").write_text("")
    res = bakery("nightly", "--summarize", str(d), "--format", "markdown", cwd=tmp_path)
    assert res.code == 1, res.err
    assert "- result-gone.json: result file empty or unreadable" in res.out


def test_summarize_a_failed_build_does_not_show_the_previous_tag_as_its_build(fleet, tmp_path: Path) -> None:
    import json

    from bakery.nightly import summarize

    project, fl = fleet
    d = _summarize_dir(project, fl, tmp_path, currents=_published(project, fl), forced=("right:1",))
    failed = {"ref": "right:1", "status": "failed", "build_tag": "1-20261127.1", "error": "right:1: build failed"}
    (d / "result-right-1.json").write_text(json.dumps({"results": [failed], "ok": False}))
    report = summarize(project, d / "plan.json", [d / "result-right-1.json"])
    md = report.to_markdown()
    assert "| `right:1` | forced | ❌ failed | (previous: 1-20260101.1) |" in md
    right = {i["ref"]: i for i in report.to_json()["images"]}["right:1"]
    assert right["build_tag"] is None and right["previous_build_tag"] == "1-20260101.1"
    assert "| `leaf-b:1` | parent | ❌ skipped | (previous: 1-20260101.1) |" in md
    # An image that is up to date shows its published tag: that is the current build.
    assert {o.ref: o.build_tag for o in report.outcomes}["root:1"] == "1-20260101.1"


def test_nightly_aborted_while_planning_still_writes_its_report(fleet, tmp_path: Path, bakery) -> None:
    """The registry (127.0.0.1:9) is down: exit 3, and the aborted report is written and summarised."""
    import json

    project, _ = fleet
    summary = tmp_path / "summary.md"
    res = bakery("nightly", cwd=tmp_path, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert res.code == 3, res.err
    data = json.loads((project.state_dir / "nightly" / "last.json").read_text())
    assert data["aborted"].startswith("planning failed: ") and "registry unavailable" in data["aborted"]
    assert data["images"] == [] and not data["ok"]
    assert "**nightly aborted: planning failed: " in summary.read_text()


def _synthetic_plan(parents: dict[str, str | None]) -> Plan:
    """A plan rebuilding every image of ``parents`` (name -> parent name or None): a fleet of any shape."""
    from types import SimpleNamespace

    keys = {n: ImageKey(n, "1") for n in parents}
    items = {}
    for n, p in parents.items():
        parent = SimpleNamespace(kind="bakery", key=keys[p]) if p else SimpleNamespace(kind="upstream", key=None)
        item = PlanItem(key=keys[n], spec=SimpleNamespace(parent=parent))  # type: ignore[arg-type]
        from bakery.plan import Reason

        item.reasons = [Reason("forced", "test")]
        items[keys[n]] = item
    depth: dict[str, int] = {}

    def d(n: str) -> int:
        if n not in depth:
            depth[n] = 0 if parents[n] is None else d(parents[n]) + 1  # type: ignore[arg-type]
        return depth[n]

    levels: list[list[ImageKey]] = [[] for _ in range(max(d(n) for n in parents) + 1)]
    for n in sorted(parents):
        levels[d(n)].append(keys[n])
    return Plan(items=items, levels=levels)


def _check_matrix(m: dict, parents: dict[str, str | None], max_jobs: int) -> None:
    """What a workflow relies on: every image once; no matrix over max_jobs; inside a job, parents first;
    a parent outside the job was built in an earlier stage and is named in `parent`."""
    seen: dict[str, int] = {}
    for stage, level in enumerate(m["levels"]):
        assert 0 < len(level["include"]) <= max_jobs
        for entry in level["include"]:
            refs = entry["refs"].split()
            assert entry["image"] == refs[0] and entry["images"] == len(refs)
            for pos, ref in enumerate(refs):
                assert ref not in seen, ref
                seen[ref] = stage
                parent = parents[ref.split(":")[0]]
                if parent is None:
                    continue
                pref = f"{parent}:1"
                if pref in refs:
                    assert refs.index(pref) < pos, (pref, refs)
                else:
                    assert seen.get(pref, stage) < stage, (pref, ref)
                    assert pref in entry["parent"].split()
    assert set(seen) == {f"{n}:1" for n in parents}


def test_github_matrix_shards_a_level_wider_than_github_allows() -> None:
    parents: dict[str, str | None] = {"base": None, **{f"app{i:04d}": "base" for i in range(999)}}
    m = _synthetic_plan(parents).github_matrix(max_levels=4)
    _check_matrix(m, parents, 256)
    assert m["count"] == 2 and len(m["levels"][1]["include"]) == 256
    assert sorted({e["images"] for e in m["levels"][1]["include"]}) == [3, 4]  # balanced
    assert m["levels"][1]["include"][0]["label"] == f"{m['levels'][1]['include'][0]['image']} +3"


def test_github_matrix_packs_small_images_into_fewer_jobs() -> None:
    parents: dict[str, str | None] = {"base": None, **{f"app{i:03d}": "base" for i in range(100)}}
    m = _synthetic_plan(parents).github_matrix(pack=10)
    _check_matrix(m, parents, 256)
    assert [len(level["include"]) for level in m["levels"]] == [1, 10]
    assert all(e["images"] == 10 and e["parent"] == "base:1" for e in m["levels"][1]["include"])


@pytest.mark.parametrize("max_levels, max_jobs", [(4, 256), (2, 7), (1, 3), (6, 1)])
def test_github_matrix_builds_a_fleet_of_any_depth_in_a_fixed_number_of_stages(max_levels, max_jobs) -> None:
    """12 levels deep, several roots, uneven subtrees: whatever the number of stages the workflow has."""
    parents: dict[str, str | None] = {f"r{r}": None for r in range(3)}
    for depth in range(1, 12):
        for i in range(depth * 3):
            parents[f"d{depth:02d}n{i:02d}"] = (f"d{depth - 1:02d}n{i // 2:02d}" if depth > 1 else f"r{i % 3}")
    m = _synthetic_plan(parents).github_matrix(max_levels=max_levels, max_jobs=max_jobs)
    _check_matrix(m, parents, max_jobs)
    assert m["count"] == max_levels


@pytest.mark.parametrize(("created", "after"), [
    ("2026-11-30T22:38:02Z", True),   # the second after the DB's
    ("2026-11-30T22:38:01Z", True),   # the DB's own second: the label cannot say which came first; after
    ("2026-11-30T22:38:00Z", False),  # a whole second before
    ("2026-11-30T22:38:01.100000Z", False),  # a label with sub-seconds, truly before
    ("", False), (None, False), ("yesterday", False),
])
def test_a_build_in_the_second_of_the_db_update_counts_as_built_after_it(created, after) -> None:
    """The `created` label is to the second, the DB's time is not: a nightly run in the second after a DB update
    must not see its own fresh build as older than the DB (it would rebuild it again the next night)."""
    db = dt.datetime(2026, 11, 30, 22, 38, 1, 126481, tzinfo=dt.timezone.utc)
    assert built_after(created, db) is after
