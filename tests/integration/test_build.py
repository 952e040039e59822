"""`bakery build` against the real engine and the stack's registries: what a user would check."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from bakery.model import LABEL_FINGERPRINT, OCI
from tiny import write_tiny_fleet

EXAMPLE = ["base", "python", "python-web", "nginx"]
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json"])


def bakery(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bakery", *args], capture_output=True, text=True, cwd=cwd, timeout=900)


def registry_digest(host: str, repo: str, tag: str) -> str | None:
    """Docker-Content-Digest as the registry reports it (what `curl -sI` would show)."""
    resp = requests.head(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10)
    return resp.headers.get("Docker-Content-Digest") if resp.status_code == 200 else None


def test_example_fleet_builds_pushes_and_the_registry_agrees(make_project, stack):
    root = make_project()
    proc = bakery("build", *EXAMPLE, "--no-scan", "--format", "json", "-j", "2", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["ok"] is True
    results = {r["ref"]: r for r in out["results"]}
    assert set(results) == {"base:12", "python:3.11", "python:3.11-full", "python-web:1.0", "nginx:1.22"}
    client = stack.client("dev")
    for ref, r in results.items():
        assert r["status"] == "pushed"
        host, _, repo = r["repository"].partition("/")
        assert host == stack.registry("dev")
        # The digest bakery reported is the one the registry serves, under the build tag and every alias.
        assert registry_digest(host, repo, r["build_tag"]) == r["digest"], ref
        for tag in r["tags"]:
            assert registry_digest(host, repo, tag) == r["digest"], (ref, tag)
        labels = client.labels(repo, r["digest"])
        assert labels[LABEL_FINGERPRINT] == r["fingerprint"]
        assert labels[OCI + "version"] == ref.split(":", 1)[1]
        assert len(labels[OCI + "revision"]) == 40
        assert labels[OCI + "created"].endswith("Z")
    # Children are pinned to exactly the parent digest that was just pushed.
    base = results["base:12"]
    for child in ("python:3.11", "python:3.11-full", "nginx:1.22"):
        assert results[child]["parent"] == f"{base['repository']}@{base['digest']}"
        repo = results[child]["repository"].partition("/")[2]
        assert client.labels(repo, results[child]["digest"])[OCI + "base.digest"] == base["digest"]
    assert results["python-web:1.0"]["parent"].endswith("@" + results["python:3.11"]["digest"])
    assert results["base:12"]["parent"].startswith(stack.registry("mirror") + "/library/debian@sha256:")
    assert results["base:12"]["build_tag"].startswith("12-") and results["base:12"]["build_tag"].endswith(".1")
    # The hardened base: non-root user, no apt lists left.
    image = f"{base['repository']}@{base['digest']}"
    run = subprocess.run(["docker", "run", "--rm", image, "sh", "-c", "id -u; ls /var/lib/apt/lists | wc -l"],
                         capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["10001", "0"], run.stderr
    # A second build of the same inputs with a warm cache is the same image: nothing new is published.
    again = bakery("build", "nginx", "--no-scan", "--format", "json", cwd=root)
    assert again.returncode == 0, again.stderr[-2000:]
    second = json.loads(again.stdout)["results"][0]
    first = results["nginx:1.22"]
    assert (second["build_tag"], second["digest"], second["reused"]) == (first["build_tag"], first["digest"], True)
    host, _, repo = first["repository"].partition("/")
    assert registry_digest(host, repo, first["build_tag"]) == first["digest"]


def test_an_immutable_tag_is_never_overwritten(make_project, stack):
    # A scheme without {n} must hold a fingerprint (bakery refuses `{version}-{yyyymmdd}` at load time): the same
    # recipe rebuilt gets the same build tag, and a rebuild without the cache a second later is another image
    # (new layer, new org.opencontainers.image.created label), so another digest → refused, registry unchanged.
    root = make_project(fleet=None, config={"tags": {"build": "{version}-{fp}"}})
    write_tiny_fleet(root, {"app": ("docker.io/library/debian:bookworm-slim", "one")})
    first = bakery("build", "app", "--no-scan", "--format", "json", cwd=root)
    assert first.returncode == 0, first.stderr
    r1 = json.loads(first.stdout)["results"][0]
    time.sleep(1.1)  # not a timing assertion: the next build's `created` label must differ
    second = bakery("build", "app", "--no-scan", "--no-cache", "--format", "json", cwd=root)
    assert second.returncode == 1
    r2 = json.loads(second.stdout)["results"][0]
    assert r2["status"] == "refused"
    assert "immutable" in r2["error"] and r1["build_tag"] in r2["error"]
    host, _, repo = r1["repository"].partition("/")
    assert registry_digest(host, repo, r1["build_tag"]) == r1["digest"]
    assert "refusing to overwrite" in second.stderr


def test_a_warm_rebuild_of_the_same_inputs_is_the_same_image_and_publishes_nothing(make_project, stack):
    """Issue 14: unchanged recipe, parents and revision + a warm cache = the published image itself (its `created`
    label is kept): no new build tag, no push, no ledger record, no rescan. Anything that changes the image — a
    build without the cache, a new commit — is published under the next build tag as before."""
    from bakery import ledger as ledger_mod
    from bakery.config import load_project
    from bakery.trivydb import build_db

    root = make_project(fleet=None)
    build_db(Path(__file__).parent.parent / "fixtures" / "fleets" / "tree" / "advisories-none.yaml",
             root / ".bakery" / "trivy")
    write_tiny_fleet(root, {"root": ("docker.io/library/debian:bookworm-slim", "root"), "leaf": ("root:1.0", "leaf")})
    led = ledger_mod.open_ledger(load_project(root / "bakery.yaml", cwd=root, environ={}))

    def build(*extra: str) -> dict[str, dict]:
        proc = bakery("build", "--all", "--format", "json", *extra, cwd=root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {r["ref"]: r for r in json.loads(proc.stdout)["results"]}

    first = build()
    kinds = [e.kind for e in led.events()]
    again = build()
    for ref in ("root:1.0", "leaf:1.0"):
        assert (again[ref]["build_tag"], again[ref]["digest"], again[ref]["reused"]) == \
            (first[ref]["build_tag"], first[ref]["digest"], True), ref
        assert again[ref]["scan"]["cached"] is True and again[ref]["timings"]["trivy"] == 0.0
        assert first[ref]["reused"] is False
    assert [e.kind for e in led.events()] == kinds  # no reservation, no publish: nothing new happened
    host, _, repo = first["leaf:1.0"]["repository"].partition("/")
    assert registry_digest(host, repo, "1.0") == first["leaf:1.0"]["digest"]  # the alias still names it
    # Without the cache the image is new: the next build tag, recorded; the first build tag is untouched.
    fresh = build("--no-cache")
    for ref in ("root:1.0", "leaf:1.0"):
        assert fresh[ref]["reused"] is False and fresh[ref]["digest"] != first[ref]["digest"]
        assert fresh[ref]["build_tag"] == first[ref]["build_tag"][:-2] + ".2", ref
        host, _, repo = first[ref]["repository"].partition("/")
        assert registry_digest(host, repo, first[ref]["build_tag"]) == first[ref]["digest"]
    publishes = [e for e in led.events() if e.kind == "publish"]
    assert sorted((e.image, e.build_tag) for e in publishes) == sorted(
        [(r, first[r]["build_tag"]) for r in first] + [(r, fresh[r]["build_tag"]) for r in fresh])
    # The alias moved back by hand (as a rollback would) is pointed again by the next build that reuses .2.
    client = stack.client("dev")
    host, _, repo = first["leaf:1.0"]["repository"].partition("/")
    old = client.get_manifest(repo, first["leaf:1.0"]["digest"])
    client.put_manifest(repo, "1.0", old.body, old.media_type)
    kinds = [e.kind for e in led.events()]
    third = build()
    assert {r: (third[r]["build_tag"], third[r]["reused"]) for r in third} == \
        {r: (fresh[r]["build_tag"], True) for r in fresh}
    assert registry_digest(host, repo, "1.0") == fresh["leaf:1.0"]["digest"]
    assert [e.kind for e in led.events()] == kinds
    # A new commit (the revision label) is a new image too, built from the warm cache.
    (root / "README.md").write_text("another commit\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "x"],
                   cwd=root, check=True)
    moved = build()
    assert {r["reused"] for r in moved.values()} == {False}
    assert moved["root:1.0"]["build_tag"] == first["root:1.0"]["build_tag"][:-2] + ".3"
    # --fresh (the nightly matrix's patches rebuilds): that image gets a new created label, so a new build;
    # the others are reused as before
    patched = build("--fresh", "leaf:1.0")
    assert (patched["root:1.0"]["reused"], patched["root:1.0"]["build_tag"]) == (True, moved["root:1.0"]["build_tag"])
    assert patched["leaf:1.0"]["reused"] is False
    assert patched["leaf:1.0"]["build_tag"] == first["leaf:1.0"]["build_tag"][:-2] + ".4"
    assert patched["leaf:1.0"]["digest"] != moved["leaf:1.0"]["digest"]
    # an image --fresh names must be among those built: exit 2, nothing built
    proc = bakery("build", "root:1.0", "--fresh", "leaf", "--format", "json", cwd=root)
    assert proc.returncode == 2 and "--fresh" in proc.stderr and "leaf:1.0" in proc.stderr, proc.stderr
    assert proc.stdout.strip() == ""


def test_a_build_opens_the_ledger_once_per_worker_not_per_image_and_step(make_project, stack, monkeypatch):
    """Issue 14: each image read and wrote the ledger through a new connection (an S3 ledger: a new boto3 client,
    ~8 ms) three times — the probe of the newest build, the reservation, the publish record."""
    from bakery import build as build_mod, ledger as ledger_mod, publish as publish_mod
    from bakery.config import load_project
    from bakery.definitions import load_fleet

    root = make_project(fleet=None)
    write_tiny_fleet(root, {"root": ("docker.io/library/debian:bookworm-slim", "root"), "leaf": ("root:1.0", "leaf")})
    opened = []

    def counting(project):
        opened.append(project)
        return ledger_mod.open_ledger(project)

    monkeypatch.setattr(build_mod, "open_ledger", counting)
    monkeypatch.setattr(publish_mod, "open_ledger", counting)
    project = load_project(root / "bakery.yaml", cwd=root, environ={})
    fleet = load_fleet(project)
    for _ in range(2):  # a first build, then a rebuild that reuses both images
        specs = [s for level in fleet.levels() for s in level]
        results = build_mod.build(project, fleet, specs, build_mod.BuildOptions(jobs=1, scan=False))
        assert [r.status.value for r in results] == ["pushed", "pushed"], [r.error for r in results]
    assert [r.reused for r in results] == [True, True]
    assert len(opened) == 2  # one per run: -j 1 builds in one worker thread


def test_an_alias_shaped_like_a_build_tag_never_moves_one(make_project, stack):
    """dev's second alias renders to the day's first build tag: the second build of the day must not move it."""
    root = make_project(fleet=None, config={"environments": {"dev": {"aliases": ["{version}",
                                                                                 "{version}-{yyyymmdd}.1"]}}})
    write_tiny_fleet(root, {"app": ("docker.io/library/debian:bookworm-slim", "one")})
    first = bakery("build", "app", "--no-scan", "--format", "json", cwd=root)
    assert first.returncode == 0, first.stderr
    r1 = json.loads(first.stdout)["results"][0]
    assert r1["build_tag"].endswith(".1")
    write_tiny_fleet(root, {"app": ("docker.io/library/debian:bookworm-slim", "two")})
    second = bakery("build", "app", "--no-scan", "--format", "json", cwd=root)
    assert second.returncode == 1
    r2 = json.loads(second.stdout)["results"][0]
    assert r2["status"] == "refused" and "form of a build tag" in r2["error"], r2
    host, _, repo = r1["repository"].partition("/")
    assert registry_digest(host, repo, r1["build_tag"]) == r1["digest"]
    assert registry_digest(host, repo, "1.0") == r1["digest"]  # nothing written: the check comes first
    assert sorted(stack.client("dev").list_tags(repo)) == sorted([r1["build_tag"], "1.0"])


def test_a_pushed_child_needs_a_published_parent(make_project, stack):
    root = make_project(fleet=None)
    write_tiny_fleet(root, {"root": ("docker.io/library/debian:bookworm-slim", "root"), "leaf": ("root:1.0", "leaf")})
    assert bakery("build", "root", "--no-push", "--no-scan", cwd=root).returncode == 0
    proc = bakery("build", "leaf", "--no-scan", "--format", "json", cwd=root)
    assert proc.returncode == 1
    result = json.loads(proc.stdout)["results"][0]
    assert result["status"] == "failed" and "parent root:1.0 is not published" in result["error"], result
    ns = yaml.safe_load((root / "bakery.yaml").read_text())["environments"]["dev"]["registry"].split("/")[1]
    assert stack.client("dev").list_tags(f"{ns}/leaf") == []
    # On a laptop, without pushing, the local parent is what the child builds on.
    assert bakery("build", "leaf", "--no-push", "--no-scan", cwd=root).returncode == 0


def test_a_failed_build_stops_only_its_descendants(make_project, stack):
    root = make_project(fleet=None)
    upstream = "docker.io/library/debian:bookworm-slim"
    write_tiny_fleet(root, {
        "root": (upstream, "root"),
        "broken": ("root:1.0", "fail"),
        "orphan": ("broken:1.0", "never"),
        "sibling": ("root:1.0", "sibling"),
    })
    proc = bakery("build", "--all", "--no-scan", "--format", "json", cwd=root)
    assert proc.returncode == 1
    status = {r["ref"]: r for r in json.loads(proc.stdout)["results"]}
    assert status["root:1.0"]["status"] == "pushed"
    assert status["sibling:1.0"]["status"] == "pushed"
    assert status["broken:1.0"]["status"] == "failed"
    assert "exit" in status["broken:1.0"]["error"] or "returned a non-zero code" in status["broken:1.0"]["error"]
    assert status["orphan:1.0"]["status"] == "skipped"
    assert "broken:1.0" in status["orphan:1.0"]["error"]
    # The log of the failed build is shown to the user.
    assert "about to fail" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing was pushed for the failed image or its child.
    client = stack.client("dev")
    ns = status["root:1.0"]["repository"].split("/")[1]
    assert client.list_tags(f"{ns}/broken") == []
    assert client.list_tags(f"{ns}/orphan") == []


def test_build_without_daemon_is_an_environment_error(make_project, monkeypatch):
    root = make_project(fleet=None)
    write_tiny_fleet(root, {"app": ("docker.io/library/debian:bookworm-slim", "x")})
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    proc = bakery("build", "app", "--no-scan", cwd=root)
    assert proc.returncode == 3
    assert "Docker daemon" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown image 'nope'"),
    ([], "name the images to build"),
])
def test_build_bad_input_exits_2(make_project, args, message):
    root = make_project()
    proc = bakery("build", *args, "--no-scan", cwd=root)
    assert proc.returncode == 2
    assert message in proc.stderr
