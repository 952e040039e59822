"""Promotion's copy against the real registries: blobs in parallel, the parent's layers mounted in the target
from the parent promoted before, the result checked with skopeo as an independent witness."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

UPSTREAM = "docker.io/library/debian:bookworm-slim"


def bakery(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bakery", *args], capture_output=True, text=True, cwd=cwd, timeout=900)


def test_a_child_promoted_after_its_parent_mounts_the_parents_layers(make_project, stack):
    root = make_project(fleet=None, config={"environments": {"staging": {"gates": {"scan": False}}}})
    tdir = root / "templates" / "layers"
    tdir.mkdir(parents=True)
    # several layers per image, so that the copy has blobs to move side by side
    (tdir / "Dockerfile.j2").write_text(
        "ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\n"
        "RUN head -c 300000 /dev/urandom > /opt/{{ name }}-1\n"
        "RUN head -c 200000 /dev/urandom > /opt/{{ name }}-2\n")
    for name, parent in (("root", UPSTREAM), ("leaf", "root:1.0")):
        (root / "base-images" / f"{name}.yaml").write_text(
            f"name: {name}\ntemplate: layers\nversions:\n  '1.0':\n    parent: {parent}\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "fleet"],
                   cwd=root, check=True)
    built = bakery("build", "root", "leaf", "--no-scan", "--format", "json", cwd=root)
    assert built.returncode == 0, built.stderr[-3000:]
    results = {r["ref"]: r for r in json.loads(built.stdout)["results"]}

    first = bakery("promote", "root:1.0", "--to", "staging", "--format", "json", cwd=root)
    assert first.returncode == 0, first.stderr
    root_copy = json.loads(first.stdout)["copy"]
    assert root_copy["blobs_copied"] == 4 and root_copy["blobs_mounted"] == 0  # debian + 2 layers + config

    second = bakery("promote", "leaf:1.0", "--to", "staging", "--format", "json", cwd=root)
    assert second.returncode == 0, second.stderr
    out = json.loads(second.stdout)
    leaf_copy = out["copy"]
    # root's three layers are mounted from the staging repository of root: only leaf's own two layers and
    # its config travel
    assert leaf_copy["blobs_mounted"] == 3, leaf_copy
    assert leaf_copy["blobs_copied"] == 3, leaf_copy
    assert 400_000 < leaf_copy["bytes_copied"] < root_copy["bytes_copied"]
    # skopeo, an independent client, reads the promoted image byte for byte under its digest
    staging_repo = results["leaf:1.0"]["repository"].replace(stack.registry("dev"), stack.registry("staging"))
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds",
                          f"{stack.user}:{stack.password}", f"docker://{staging_repo}@{results['leaf:1.0']['digest']}"],
                         capture_output=True, text=True, timeout=60)
    assert raw.returncode == 0, raw.stderr
    layers = json.loads(raw.stdout)["layers"]
    copied = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds",
                             f"{stack.user}:{stack.password}", f"docker://{staging_repo}@{results['leaf:1.0']['digest']}",
                             "dir:" + str(root / "witness")], capture_output=True, text=True, timeout=120)
    assert copied.returncode == 0, copied.stderr  # every blob is there and matches its digest
    assert len(layers) == 5
