"""Tiny real images for the integration tests: a fleet of one-line definitions bakery builds in about a second
each, and images built and pushed outside bakery (as another tool or a person would)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path


def write_tiny_fleet(root: Path, images: dict[str, tuple[str, str]]) -> None:
    """images: name -> (parent, marker); the marker "fail" makes the build fail. Committed, so the revision is
    clean."""
    tdir = root / "templates" / "tiny"
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "Dockerfile.j2").write_text(
        "ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\n"
        "{% if marker == 'fail' %}\nRUN echo about to fail && exit 7\n{% else %}\n"
        "RUN echo {{ marker }} > /etc/marker\n{% endif %}\n")
    for name, (parent, marker) in images.items():
        (root / "base-images" / f"{name}.yaml").write_text(
            f"name: {name}\ntemplate: tiny\nversions:\n  '1.0':\n    parent: {parent}\n"
            f"    variables:\n      marker: {marker}\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "fleet"],
                   cwd=root, check=True)


def push_tiny(stack, host_repo: str, tags: list[str], *, marker: str, labels: dict[str, str] | None = None) -> str:
    """A small real image FROM the stack's base (with ``labels``), pushed to HOST/REPO under every tag of ``tags``
    by the Docker engine, not bakery, then removed locally; returns its manifest digest."""
    import docker

    dockerfile = f"FROM {stack.base_ref}\nRUN echo {marker} > /marker\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    client = docker.from_env(timeout=600)
    image_id = None
    for item in client.api.build(fileobj=buf, custom_context=True, labels=labels or {}, rm=True, forcerm=True,
                                 pull=False, decode=True):
        assert "error" not in item, item
        image_id = (item.get("aux") or {}).get("ID") or image_id
    assert image_id
    digest = ""
    for tag in tags:
        client.api.tag(image_id, host_repo, tag)
        for item in client.api.push(host_repo, tag, stream=True, decode=True):
            assert "error" not in item, item
            digest = (item.get("aux") or {}).get("Digest") or digest
    client.api.remove_image(image_id, force=True)
    assert digest
    return digest
