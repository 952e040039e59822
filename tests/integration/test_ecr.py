"""ECR as a registry kind, against moto in server mode on loopback (as far as moto implements ECR).

moto stores manifests without blobs, so images are put straight into the dev repository with put_image;
`docker push` to moto is impossible (see ENVIRONMENT.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import requests
import yaml

from bakery import secrets
from bakery.config import load_project
from bakery.ecr import EcrRegistry

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
OCI = "application/vnd.oci.image.manifest.v1+json"







@pytest.fixture
def ecr(moto_endpoint, monkeypatch, tmp_path):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    for k in list(os.environ):
        if k.startswith("BAKERY_"):
            monkeypatch.delenv(k)
    requests.post(moto_endpoint + "/moto-api/reset", timeout=10)
    config = {
        "aws": {"endpoint_url": moto_endpoint, "region": "us-east-1"},
        "environments": {
            "dev": {"registry": f"{HOST}/dev", "kind": "ecr", "aliases": ["{version}"],
                    "gates": {"require_previous": False}},
            "staging": {"registry": f"{HOST}/staging", "kind": "ecr", "aliases": ["{version}", "staging"],
                        "gates": {"scan": False}},
            "prod": {"registry": f"{HOST}/prod", "kind": "ecr", "aliases": ["{version}", "prod"],
                     "gates": {"scan": False}},
        },
    }
    (tmp_path / "bakery.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    client = boto3.client("ecr", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_repository(repositoryName="dev/python", imageTagMutability="MUTABLE")
    return client


def put_dev(client, build_tag: str, marker: str) -> tuple[str, bytes]:
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + hashlib.sha256(marker.encode()).hexdigest(), "size": 100},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + hashlib.sha256(marker.encode() + b"l").hexdigest(), "size": 1000}],
    }, indent=3).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    for tag in (build_tag, "3.11"):
        client.put_image(repositoryName="dev/python", imageManifest=body.decode(), imageManifestMediaType=OCI,
                         imageTag=tag, imageDigest=digest)
    return digest, body


def bakery(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "bakery"), *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))


def tags_of(client, repo: str) -> dict[str, str]:
    out = {}
    for d in client.describe_images(repositoryName=repo)["imageDetails"]:
        for t in d.get("imageTags") or []:
            out[t] = d["imageDigest"]
    return out


def test_promotion_inside_one_account_re_puts_the_same_manifest(ecr):
    digest, body = put_dev(ecr, "3.11-20260302.1", "one")
    proc = bakery("promote", "python:3.11", "--to", "staging", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["action"] == "promoted" and out["digest"] == digest
    assert out["copy"]["bytes_copied"] == 0  # nothing leaves the account
    repo = ecr.describe_repositories(repositoryNames=["staging/python"])["repositories"][0]
    # Build tags immutable; only the aliases are excluded (ECR accepts exclusions only with *_WITH_EXCLUSION).
    assert repo["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert sorted(f["filter"] for f in repo["imageTagMutabilityExclusionFilters"]) == ["3.11", "staging"]
    assert tags_of(ecr, "staging/python") == {"3.11-20260302.1": digest, "3.11": digest, "staging": digest}
    got = ecr.batch_get_image(repositoryName="staging/python", imageIds=[{"imageTag": "staging"}],
                              acceptedMediaTypes=[OCI])["images"][0]
    assert got["imageManifest"].encode() == body

    again = bakery("promote", "python:3.11", "--to", "staging", "--format", "json")
    assert again.returncode == 0 and json.loads(again.stdout)["action"] == "up-to-date"

    proc = bakery("promote", "python:3.11", "--to", "prod", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert tags_of(ecr, "prod/python")["prod"] == digest


def test_new_build_moves_aliases_but_never_a_build_tag(ecr):
    first, _ = put_dev(ecr, "3.11-20260302.1", "one")
    assert bakery("promote", "python:3.11", "--to", "staging").returncode == 0
    second, _ = put_dev(ecr, "3.11-20260302.2", "two")
    assert bakery("promote", "python:3.11", "--to", "staging").returncode == 0
    tags = tags_of(ecr, "staging/python")
    assert tags == {"3.11-20260302.1": first, "3.11-20260302.2": second, "3.11": second, "staging": second}

    # dev is mutable here: the old build tag now names another manifest; promoting it is refused.
    third, _ = put_dev(ecr, "3.11-20260302.1", "three")
    proc = bakery("promote", "python:3.11-20260302.1", "--to", "staging", "--format", "json")
    assert proc.returncode == 1 and "immutable" in json.loads(proc.stdout)["message"]
    assert tags_of(ecr, "staging/python")["3.11-20260302.1"] == first

    # Rollback moves the aliases back in ECR too.
    proc = bakery("rollback", "python:3.11", "--env", "staging", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert tags_of(ecr, "staging/python")["staging"] == first


def test_ecr_refuses_to_move_an_immutable_tag_itself(ecr):
    put_dev(ecr, "3.11-20260302.1", "one")
    assert bakery("promote", "python:3.11", "--to", "staging").returncode == 0
    project = load_project("bakery.yaml")
    reg = EcrRegistry.for_env(project, "staging")
    other = json.dumps({"schemaVersion": 2, "mediaType": OCI, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "e" * 64, "size": 1},
        "layers": []}).encode()
    reg.ensure_repository("staging/other")
    reg.put_manifest("staging/other", "v1", other, OCI)
    with pytest.raises(Exception, match="immutable"):
        reg.put_manifest("staging/other", "v1", other.replace(b'"size": 1', b'"size": 2'), OCI)


def test_authorization_token_is_decoded_and_masked(ecr):
    reg = EcrRegistry.for_env(load_project("bakery.yaml"), "staging")
    host, user, password = reg.authorization()
    assert user == "AWS" and password
    assert secrets.mask(f"token {password}") == f"token {secrets.MASK}"
    raw = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    assert base64.b64decode(raw).decode() == f"{user}:{password}"
