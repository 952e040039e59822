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

    dev = stack.client("dev")

    def layers(ref: str) -> list[str]:
        repo = results[ref]["repository"].partition("/")[2]
        return [d["digest"] for d in dev.get_manifest(repo, results[ref]["digest"]).json()["layers"]]

    root_layers = layers("root:1.0")  # the upstream's layer(s) and root's two
    first = bakery("promote", "root:1.0", "--to", "staging", "--format", "json", cwd=root)
    assert first.returncode == 0, first.stderr
    root_copy = json.loads(first.stdout)["copy"]
    # root's own two layers and its config are new (the upstream's layers may be mounted from a repository of
    # staging an earlier promotion left them in)
    assert root_copy["blobs_copied"] >= 3
    assert root_copy["blobs_copied"] + root_copy["blobs_mounted"] == len(root_layers) + 1

    second = bakery("promote", "leaf:1.0", "--to", "staging", "--format", "json", cwd=root)
    assert second.returncode == 0, second.stderr
    out = json.loads(second.stdout)
    leaf_copy = out["copy"]
    # root's three layers are mounted from the staging repository of root: only leaf's own two layers and
    # its config travel
    assert leaf_copy["blobs_mounted"] == len(root_layers), leaf_copy
    assert leaf_copy["blobs_copied"] == 3, leaf_copy
    assert 400_000 < leaf_copy["bytes_copied"] < 2_000_000
    # skopeo, an independent client, reads the promoted image byte for byte under its digest
    staging_repo = results["leaf:1.0"]["repository"].replace(stack.registry("dev"), stack.registry("staging"))
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds",
                          f"{stack.user}:{stack.password}", f"docker://{staging_repo}@{results['leaf:1.0']['digest']}"],
                         capture_output=True, text=True, timeout=60)
    assert raw.returncode == 0, raw.stderr
    witness = [d["digest"] for d in json.loads(raw.stdout)["layers"]]
    copied = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds",
                             f"{stack.user}:{stack.password}", f"docker://{staging_repo}@{results['leaf:1.0']['digest']}",
                             "dir:" + str(root / "witness")], capture_output=True, text=True, timeout=120)
    assert copied.returncode == 0, copied.stderr  # every blob is there and matches its digest
    assert witness[:len(root_layers)] == root_layers and len(witness) == len(root_layers) + 2


def test_a_blob_seen_in_one_repository_is_mounted_into_the_next(make_project, stack):
    """The blob-location hints: after one copy into staging, copying the same image into another repository of
    staging mounts every blob (no bytes), and a stale hint (the repository is gone) falls back to a copy."""
    import uuid

    from bakery.registry import blob_locations

    dev, staging = stack.client("dev"), stack.client("staging")
    ns = f"t{uuid.uuid4().hex[:10]}"
    # an image of its own in dev: a random layer and a config
    import hashlib
    import os

    layer = os.urandom(300_000)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {"Labels": {"n": ns}}}).encode()
    blobs = {}
    for body in (layer, config):
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        blobs[digest] = len(body)
        (Path(os.environ.get("TMPDIR", "/tmp")) / f"{ns}.blob").write_bytes(body)
        dev.push_blob_file(f"{ns}/src", digest, Path(os.environ.get("TMPDIR", "/tmp")) / f"{ns}.blob")
    layer_d, config_d = list(blobs)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d,
                                      "size": blobs[config_d]},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": layer_d, "size": blobs[layer_d]}]}).encode()
    digest = dev.put_manifest(f"{ns}/src", "1", manifest, "application/vnd.oci.image.manifest.v1+json")

    first = staging.copy_image(dev, f"{ns}/src", digest, f"{ns}/one")
    assert (first.blobs_copied, first.blobs_mounted) == (2, 0)
    assert set(blob_locations().known(staging.host, layer_d)) >= {f"{ns}/one"}
    second = staging.copy_image(dev, f"{ns}/src", digest, f"{ns}/two")
    assert (second.blobs_copied, second.blobs_mounted, second.bytes_copied) == (0, 2, 0)
    # a hint naming a repository that never held the blob: the mount is refused, the blob copied, the hint dropped
    blob_locations().update([(staging.host, layer_d, f"{ns}/nowhere")])
    staging.delete_manifest(f"{ns}/one", digest)
    third = staging.copy_image(dev, f"{ns}/src", digest, f"{ns}/three")
    assert third.blobs_copied + third.blobs_mounted == 2
    assert f"{ns}/nowhere" not in blob_locations().known(staging.host, layer_d, limit=10)
    # skopeo reads what was mounted
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds",
                          f"{stack.user}:{stack.password}", f"docker://{stack.registry('staging')}/{ns}/two@{digest}"],
                         capture_output=True, text=True, timeout=60)
    assert raw.returncode == 0 and json.loads(raw.stdout)["layers"][0]["digest"] == layer_d, raw.stderr




def test_a_stale_blob_location_costs_one_read_and_no_upload_session(make_project, stack, monkeypatch):
    """A blob-location hint is only a hint (the repository may be gone: deleted, emptied, a registry wiped): it is
    asked first (a HEAD, as skopeo does), so a stale one opens and cancels no upload session; the copy is the one
    it would be without the hint (every blob sent), and the hint is forgotten. A live hint is still mounted."""
    import hashlib
    import os
    import uuid

    from bakery.registry import RegistryClient, blob_locations

    dev, staging = stack.client("dev"), stack.client("staging")
    ns = f"t{uuid.uuid4().hex[:10]}"
    layer = os.urandom(200_000)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {"Labels": {"n": ns}}}).encode()
    digests = []
    for body in (layer, config):
        digests.append("sha256:" + hashlib.sha256(body).hexdigest())
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{ns}.blob"
        path.write_bytes(body)
        dev.push_blob_file(f"{ns}/src", digests[-1], path)
    layer_d, config_d = digests
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d,
                                      "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": layer_d, "size": len(layer)}]}).encode()
    digest = dev.put_manifest(f"{ns}/src", "1", manifest, "application/vnd.oci.image.manifest.v1+json")
    blob_locations().update([(staging.host, d, f"{ns}/gone") for d in digests])  # never held them
    calls: list[tuple[str, str]] = []
    real_send = RegistryClient._send

    def send(self, method, path, **kwargs):
        if self.host == staging.host:
            calls.append((method, path.split("?", 1)[0]))
        return real_send(self, method, path, **kwargs)

    monkeypatch.setattr(RegistryClient, "_send", send)
    first = staging.copy_image(dev, f"{ns}/src", digest, f"{ns}/one")
    assert (first.blobs_copied, first.blobs_mounted, first.bytes_copied) == (2, 0, len(layer) + len(config))
    assert not [c for c in calls if c[0] == "DELETE"], calls  # no upload session cancelled
    assert sorted(p for m, p in calls if m == "HEAD" and f"/{ns}/gone/" in p) == sorted(
        f"/v2/{ns}/gone/blobs/{d}" for d in digests)  # one read per stale hint
    assert len([c for c in calls if c[0] == "POST"]) == 2  # the two uploads, no mount attempt
    assert all(f"{ns}/gone" not in blob_locations().known(staging.host, d, limit=10) for d in digests)
    # a live hint (the first copy's repository): mounted, no bytes
    calls.clear()
    second = staging.copy_image(dev, f"{ns}/src", digest, f"{ns}/two")
    assert (second.blobs_copied, second.blobs_mounted, second.bytes_copied) == (0, 2, 0)
    assert not [c for c in calls if c[0] == "DELETE" or c[0] == "PUT" and "/blobs/" in c[1]], calls


def test_a_promotion_starts_without_pydantic_or_docker(make_project, stack, cli_probe):
    """Once its configuration was validated, `bakery promote` runs on the cached view: what it imports is the
    registry client over http.client, not the models or requests (the start-up that separates it from skopeo)."""

    root = make_project(fleet=None, config={"environments": {"staging": {"gates": {"scan": False}}}})
    tdir = root / "templates" / "layers"
    tdir.mkdir(parents=True)
    (tdir / "Dockerfile.j2").write_text("ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\nLABEL x=y\n")
    (root / "base-images" / "app.yaml").write_text(
        f"name: app\ntemplate: layers\nversions:\n  '1.0':\n    parent: {UPSTREAM}\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "app"],
                   cwd=root, check=True)
    assert bakery("build", "app", "--no-scan", cwd=root).returncode == 0
    out, modules = cli_probe(["promote", "app:1.0", "--to", "staging", "--format", "json"], root, timeout=300)
    result = json.loads(out.stdout)
    assert result["action"] == "promoted", out.stderr
    assert "http" in modules  # the probe sees what was imported (top-level names: bakery.transport is http.client)
    heavy = {"pydantic", "docker", "jinja2", "rich", "boto3", "yaml", "cryptography", "botocore", "requests",
             "urllib3"}  # requests (~50 ms): bakery.transport is http.client
    assert not modules & heavy, sorted(modules & heavy)
