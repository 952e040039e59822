"""The BuildKit engine against the real daemon and the stack's registries: `RUN --mount=type=secret`,
`RUN --mount=type=cache`, multi-stage recipes, and the classic engine still selectable."""

from __future__ import annotations

import hashlib
import io
import json
import secrets as pysecrets
import subprocess
import tarfile
import uuid
from pathlib import Path

import requests

from bakery.model import LABEL_FINGERPRINT, OCI

UPSTREAM = "docker.io/library/debian:bookworm-slim"
MANIFEST_TYPES = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def bakery(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bakery", *args], capture_output=True, text=True, cwd=cwd, timeout=900)


def registry_digest(host: str, repo: str, tag: str) -> str | None:
    resp = requests.head(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10)
    return resp.headers.get("Docker-Content-Digest") if resp.status_code == 200 else None


def write_recipe(root: Path, name: str, dockerfile: str, variables: dict[str, str] | None = None) -> None:
    tdir = root / "templates" / name
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "Dockerfile.j2").write_text(dockerfile)
    body = "".join(f"      {k}: {v!r}\n" for k, v in (variables or {}).items())
    (root / "base-images" / f"{name}.yaml").write_text(
        f"name: {name}\ntemplate: {name}\nversions:\n  '1.0':\n    parent: {UPSTREAM}\n"
        + (f"    variables:\n{body}" if body else ""))
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", name],
                   cwd=root, check=True)


def saved_image_bytes(image: str) -> bytes:
    """Every byte of the image as `docker save` writes it: each layer (decompressed), config and history."""
    raw = subprocess.run(["docker", "save", image], capture_output=True, check=True, timeout=300).stdout
    out = [raw]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar.getmembers():
            if member.name.endswith("layer.tar"):
                data = tar.extractfile(member)
                assert data is not None
                out.append(data.read())
    return b"".join(out)


def test_a_secret_reaches_its_run_step_and_nowhere_else(make_project, stack, monkeypatch, tmp_path):
    root = make_project(fleet=None, config={"build": {"engine": "buildkit",
                                                      "secrets": {"key": {"file": str(tmp_path / "key.txt")}}}})
    token, key = f"tok-{pysecrets.token_hex(12)}", f"key-{pysecrets.token_hex(12)}"
    (tmp_path / "key.txt").write_text(key)
    monkeypatch.setenv("APP_TOKEN", token)
    write_recipe(root, "app", (
        "ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\n"
        # the step really reads both secrets: their hashes (not the values) stay in the image (the nonce keeps
        # BuildKit from reusing a cached step: secrets are not part of its cache key)
        "RUN --mount=type=secret,id=tok --mount=type=secret,id=key \\\n"
        f"    cat /run/secrets/tok && echo && cat /run/secrets/key && echo {uuid.uuid4().hex} \\\n"
        " && sha256sum /run/secrets/tok /run/secrets/key | cut -c1-64 > /etc/secret-hashes\n"))
    proc = bakery("--debug", "build", "app", "--no-scan", "--format", "json", "--secret", "id=tok,env=APP_TOKEN",
                  cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)["results"][0]
    image = f"{result['repository']}@{result['digest']}"
    run = subprocess.run(["docker", "run", "--rm", image, "cat", "/etc/secret-hashes"], capture_output=True,
                         text=True, timeout=120)
    assert run.stdout.split() == [hashlib.sha256(token.encode()).hexdigest(), hashlib.sha256(key.encode()).hexdigest()]
    # Not in any layer, the config or the history of the image...
    everything = saved_image_bytes(image)
    history = subprocess.run(["docker", "history", "--no-trunc", image], capture_output=True, text=True).stdout
    # A step that prints the secrets and then fails: its log tail is shown, the values masked.
    write_recipe(root, "leaky", (
        "ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\n"
        "RUN --mount=type=secret,id=tok --mount=type=secret,id=key \\\n"
        f"    cat /run/secrets/tok /run/secrets/key && echo {uuid.uuid4().hex} && exit 3\n"))
    leaky = bakery("build", "leaky", "--no-scan", "--format", "json", "--secret", "id=tok,env=APP_TOKEN", cwd=root)
    assert leaky.returncode == 1
    assert "last" in leaky.stderr and "********" in leaky.stderr, leaky.stderr[-2000:]
    for value in (token, key):
        assert value.encode() not in everything
        assert value not in history
        # ...nor in bakery's output...
        assert value not in proc.stdout + proc.stderr + leaky.stdout + leaky.stderr
        # ...nor in anything bakery keeps (the ledger, rendered recipes, reports).
        for path in (root / ".bakery").rglob("*"):
            if path.is_file():
                assert value.encode() not in path.read_bytes(), path


def test_a_missing_secret_source_is_bad_input(make_project, stack, monkeypatch):
    root = make_project(fleet=None)
    write_recipe(root, "app", "ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\nRUN true\n")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    proc = bakery("build", "app", "--no-scan", "--secret", "id=tok,env=NOT_SET_ANYWHERE", cwd=root)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: --secret id=tok: environment variable NOT_SET_ANYWHERE is not set"
    proc = bakery("build", "app", "--no-scan", "--secret", "tok", cwd=root)
    assert proc.returncode == 2 and "use id=ID,env=VARIABLE or id=ID,src=FILE" in proc.stderr
    # classic cannot mount secrets: said up front, not after a failed build
    proc = bakery("build", "app", "--no-scan", "--engine", "classic", "--secret", "id=tok,env=HOME", cwd=root)
    assert proc.returncode == 2 and "need the BuildKit engine" in proc.stderr


MULTI_STAGE = (
    "ARG BASE_IMAGE={{ parent }}\n"
    "FROM ${BASE_IMAGE} AS compile\n"
    "RUN echo compiled-{{ marker }} > /artifact\n"
    "FROM ${BASE_IMAGE}\n"
    "COPY --from=compile /artifact /opt/artifact\n"
    # a cache mount outlives the build: the second image built on it counts two runs
    "RUN --mount=type=cache,target=/var/cache/{{ marker }} \\\n"
    "    echo {{ step }} >> /var/cache/{{ marker }}/runs && wc -l < /var/cache/{{ marker }}/runs > /opt/cache-runs\n")


def test_multi_stage_with_a_cache_mount_builds_pushes_and_keeps_its_cache(make_project, stack):
    root = make_project(fleet=None)
    marker = f"m{uuid.uuid4().hex[:12]}"
    write_recipe(root, "one", MULTI_STAGE.replace("{{ step }}", "one"), {"marker": marker})
    write_recipe(root, "two", MULTI_STAGE.replace("{{ step }}", "two"), {"marker": marker})
    results = []
    for name in ("one", "two"):
        proc = bakery("build", name, "--no-scan", "--format", "json", cwd=root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(proc.stdout)["results"][0])
    for n, r in enumerate(results, start=1):
        host, _, repo = r["repository"].partition("/")
        assert registry_digest(host, repo, r["build_tag"]) == r["digest"]
        assert r["image_id"].startswith("sha256:")
        labels = stack.client("dev").labels(repo, r["digest"])
        assert labels[LABEL_FINGERPRINT] == r["fingerprint"]
        assert labels[OCI + "base.digest"] == r["parent"].split("@", 1)[1]
        run = subprocess.run(["docker", "run", "--rm", f"{r['repository']}@{r['digest']}", "cat", "/opt/artifact",
                              "/opt/cache-runs"], capture_output=True, text=True, timeout=120)
        assert run.stdout.split() == [f"compiled-{marker}", str(n)], run.stderr
    # the local tag points at the image bakery reported
    local = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", f"{results[1]['repository']}:1.0"],
                           capture_output=True, text=True).stdout.strip()
    assert local == results[1]["image_id"]


def test_the_classic_engine_stays_selectable(make_project, stack, monkeypatch):
    root = make_project(fleet=None)
    write_recipe(root, "plain", "ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\nRUN echo classic > /opt/m\n")
    write_recipe(root, "mounts", MULTI_STAGE.replace("{{ step }}", "x"), {"marker": "classic"})
    monkeypatch.setenv("BAKERY_BUILD_ENGINE", "classic")
    proc = bakery("build", "plain", "mounts", "--no-scan", "--no-push", "--format", "json", cwd=root)
    assert proc.returncode == 1
    status = {r["ref"]: r for r in json.loads(proc.stdout)["results"]}
    assert status["plain:1.0"]["status"] == "built"
    assert status["mounts:1.0"]["status"] == "failed"
    assert "classic builder cannot build" in status["mounts:1.0"]["error"]
    # the flag wins over the environment; a bad value names its source
    proc = bakery("build", "mounts", "--no-scan", "--no-push", "--engine", "buildkit", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.setenv("BAKERY_BUILD_ENGINE", "kit")
    proc = bakery("build", "plain", "--no-scan", cwd=root)
    assert proc.returncode == 2
    assert "BAKERY_BUILD_ENGINE" in proc.stderr and "'kit'" in proc.stderr and "Traceback" not in proc.stderr
