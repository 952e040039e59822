"""The GitHub workflows (this repository's and the ones `bakery init` writes) are valid and pass zizmor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bakery.scaffold import scaffold

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKFLOWS = ["ci.yml", "nightly.yml", "promote.yml"]


def _tool(name: str) -> str:
    path = BIN / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (it comes with the [test] extra)")
    return found


def _check(directory: Path) -> None:
    files = [str(directory / w) for w in WORKFLOWS]
    schema = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *files],
                            capture_output=True, text=True, timeout=120)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    audit = subprocess.run([_tool("zizmor"), "--offline", "--no-progress", "--color", "never", str(directory)],
                           capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_repository_workflows_are_valid() -> None:
    _check(REPO / ".github" / "workflows")


def test_scaffolded_workflows_are_valid(tmp_path: Path) -> None:
    scaffold(tmp_path / "repo")
    _check(tmp_path / "repo" / ".github" / "workflows")


def test_zizmor_catches_an_unpinned_action(tmp_path: Path) -> None:
    """The check above can fail: an unpinned action with persisted credentials is reported."""
    bad = (REPO / ".github" / "workflows" / "promote.yml").read_text().replace(
        "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2", "actions/checkout@v4").replace(
        "          persist-credentials: false\n", "          fetch-depth: 1\n")
    wdir = tmp_path / ".github" / "workflows"
    wdir.mkdir(parents=True)
    (wdir / "promote.yml").write_text(bad)
    audit = subprocess.run([_tool("zizmor"), "--offline", "--no-progress", "--color", "never", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert audit.returncode != 0
    assert "unpinned" in audit.stdout or "artipacked" in audit.stdout


def test_every_action_is_pinned_by_full_sha() -> None:
    import re

    for name in WORKFLOWS:
        for line in (REPO / ".github" / "workflows" / name).read_text().splitlines():
            m = re.search(r"uses:\s*(\S+)", line)
            if m and not m.group(1).startswith("./"):
                assert re.search(r"@[0-9a-f]{40}$", m.group(1)), f"{name}: {line.strip()}"


def test_nightly_is_scheduled_fans_out_per_level_and_summarises() -> None:
    wf = _load(REPO / ".github" / "workflows" / "nightly.yml")
    assert wf["on"]["schedule"][0]["cron"]
    assert "workflow_dispatch" in wf["on"]
    jobs = wf["jobs"]
    assert "plan" in jobs and "summary" in jobs
    levels = [j for j in jobs if j.startswith("level")]
    assert len(levels) >= 3
    for i, name in enumerate(sorted(levels)):
        assert f"fromJSON(needs.plan.outputs.level{i})" in str(jobs[name]["strategy"]["matrix"])
        assert jobs[name]["strategy"]["fail-fast"] is False
    assert any("--format github-matrix" in str(s.get("run", "")) for s in jobs["plan"]["steps"])
    assert any("bakery nightly --summarize" in str(s.get("run", "")) for s in jobs["summary"]["steps"])
    assert wf["permissions"] == {}


def test_promote_uses_the_target_github_environment() -> None:
    wf = _load(REPO / ".github" / "workflows" / "promote.yml")
    inputs = wf["on"]["workflow_dispatch"]["inputs"]
    assert {"image", "environment"} <= set(inputs)
    assert "prod" in inputs["environment"]["options"]
    job = wf["jobs"]["promote"]
    assert job["environment"] == "${{ inputs.environment }}"
    runs = " ".join(str(s.get("run", "")) for s in job["steps"])
    assert "bakery promote" in runs and "${{" not in runs  # inputs reach the shell through env only


def test_ci_runs_on_pull_requests() -> None:
    wf = _load(REPO / ".github" / "workflows" / "ci.yml")
    assert "pull_request" in wf["on"]
    runs = " ".join(str(s.get("run", "")) for j in wf["jobs"].values() for s in j["steps"])
    for needle in ("render --check", "make unit", "make integration", "bakery plan", "build --changed",
                   "make lint"):
        assert needle in runs, needle
