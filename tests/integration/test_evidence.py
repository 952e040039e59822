"""Signed evidence that travels with the digest, against the real stack: real builds of the `tree` fleet, real
trivy (SBOM, scan), real registries (Distribution 2.8: no referrers API, so the `sha256-HEX` tag schema), skopeo
as the hand copy, securesystemslib as the second DSSE implementation, moto's KMS as the cloud key."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from bakery import signing
from bakery.config import load_project
from bakery.registry import OCI_INDEX, OCI_MANIFEST, RegistryClient, sha256_digest
from bakery.trivydb import build_db

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FIXTURES = REPO / "tests" / "fixtures" / "fleets" / "tree"
DSSE = "application/vnd.dsse.envelope.v1+json"
PROD_GATES = {"require_attestations": ["provenance", "sbom", "scan", "vex"], "soak": "0s"}


def bakery(*args: str, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    environ.update(env or {})
    proc = subprocess.run([str(BIN / "bakery"), *args], capture_output=True, text=True, timeout=600, env=environ)
    if check and proc.returncode != 0:
        raise AssertionError(f"bakery {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def as_json(proc: subprocess.CompletedProcess[str]) -> dict:
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON (exit {proc.returncode}): {proc.stdout}\n{proc.stderr}") from None


@pytest.fixture
def signed(make_project, stack) -> Path:
    """The `tree` fleet with a signing key, prod requiring all four attestations signed by it, and one policy
    ignore entry for the fixture's finding in left:1 (plus an expired one, which must give no VEX statement)."""
    root = make_project(fleet="tree", config={
        "signing": {"key": ".bakery/keys/signing.pem"},
        "scanner": {"trivy": str(BIN / "trivy")},
        "policy": {"ignore": [
            {"id": "CVE-2099-9001", "reason": "vulnerable_code_not_in_execute_path: fixture", "until": "2099-12-31"},
            {"id": "CVE-2099-0001", "reason": "expired entry", "until": "2020-01-01"}]},
        "environments": {"dev": {"trusted_keys": [".bakery/keys/signing.pub"]},
                         "staging": {"trusted_keys": [".bakery/keys/signing.pub"]},
                         "prod": {"trusted_keys": [".bakery/keys/signing.pub"], "gates": PROD_GATES}},
    })
    signing.generate_key(root / ".bakery" / "keys" / "signing.pem")
    signing.generate_key(root / ".bakery" / "keys" / "foreign.pem")
    build_db(FIXTURES / "advisories-fixture.yaml", root / ".bakery" / "trivy")
    return root


def _project(root: Path):
    return load_project(root / "bakery.yaml", cwd=root)


def _client(stack, env: str) -> RegistryClient:
    return stack.client(env)


def _repo(root: Path, env: str, name: str) -> str:
    return _project(root).config.env(env).repository(name)


def _index(client: RegistryClient, repo: str, digest: str) -> dict:
    return client.get_manifest(repo, digest.replace(":", "-")).json()


def _envelope(client: RegistryClient, repo: str, entry: dict) -> bytes:
    m = client.get_manifest(repo, entry["digest"]).json()
    return client.get_blob(repo, m["layers"][0]["digest"])


def _payload(raw: bytes) -> dict:
    return json.loads(base64.b64decode(json.loads(raw)["payload"]))


def _by_kind(client: RegistryClient, repo: str, digest: str) -> dict[str, dict]:
    kinds = {}
    for e in _index(client, repo, digest)["manifests"]:
        kinds.setdefault(e["annotations"]["dev.bakery.attestation"], []).append(e)
    return kinds


def _put_index(client: RegistryClient, repo: str, digest: str, entries: list[dict]) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    client.put_manifest(repo, digest.replace(":", "-"), body, OCI_INDEX)


def test_publish_attaches_signed_evidence_that_promotion_carries_and_prod_verifies(signed: Path, stack) -> None:
    root = signed
    out = as_json(bakery("build", "root:1", "left:1", "--format", "json", check=True))
    left = next(r for r in out["results"] if r["ref"] == "left:1")
    digest = left["digest"]
    dev, repo = _client(stack, "dev"), _repo(root, "dev", "left")

    # Stored by digest in the same repository, as the referrers tag schema: an index at sha256-HEX whose entries
    # carry artifactType, each an artifact manifest whose subject is the image.
    index = _index(dev, repo, digest)
    kinds = _by_kind(dev, repo, digest)
    assert set(kinds) == {"provenance", "sbom", "scan", "vex", "sbom-document"}
    for e in index["manifests"]:
        m = dev.get_manifest(repo, e["digest"]).json()
        assert m["subject"]["digest"] == digest and m["artifactType"] == e["artifactType"]
        assert m["config"]["mediaType"] == "application/vnd.oci.empty.v1+json" and len(m["layers"]) == 1

    # A second implementation (securesystemslib) verifies every envelope with the public key alone.
    pub = signing.load_public_key((root / ".bakery/keys/signing.pub").read_bytes(), "pub")
    key = SSlibKey.from_crypto(pub.key, keyid=pub.keyid)
    statements = {}
    for kind in ("provenance", "sbom", "scan", "vex"):
        env = Envelope.from_dict(json.loads(_envelope(dev, repo, kinds[kind][0])))
        assert pub.keyid in env.verify([key], 1)
        stmt = json.loads(env.payload)
        assert stmt["_type"] == "https://in-toto.io/Statement/v1"
        assert stmt["subject"][0]["digest"] == {"sha256": digest[7:]}
        statements[kind] = stmt
    prov = statements["provenance"]["predicate"]
    assert prov["buildDefinition"]["externalParameters"]["definition"] == "base-images/left.yaml"
    assert prov["buildDefinition"]["externalParameters"]["source"]["dirty"] is False
    deps = {d.get("name") or "source": d for d in prov["buildDefinition"]["resolvedDependencies"]}
    root_digest = next(r for r in out["results"] if r["ref"] == "root:1")["digest"]
    assert deps["parent"]["digest"] == {"sha256": root_digest[7:]}
    assert deps["source"]["digest"]["gitCommit"] == subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert statements["scan"]["predicate"]["scanner"]["version"].startswith("0.59")
    assert [r["id"] for r in statements["scan"]["predicate"]["scanner"]["result"]] == ["CVE-2099-9001"]
    vex = statements["vex"]["predicate"]["statements"]
    assert [s["vulnerability"]["name"] for s in vex] == ["CVE-2099-9001"]  # the expired entry gives none
    assert vex[0]["justification"] == "vulnerable_code_not_in_execute_path"
    assert statements["sbom"]["predicate"]["bomFormat"] == "CycloneDX"

    # trivy itself finds the SBOM in the registry.
    trivy = subprocess.run([str(BIN / "trivy"), "image", "--sbom-sources", "oci", "--scanners", "vuln",
                            "--skip-db-update", "--cache-dir", str(root / ".bakery/trivy"), "--format", "json",
                            f"{stack.registry('dev')}/{repo}@{digest}"], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "TRIVY_INSECURE": "true", "TRIVY_NON_SSL": "true"})
    assert "Found SBOM in the OCI referrers" in trivy.stderr, trivy.stderr

    ok = as_json(bakery("verify", f"left@{digest}", "--env", "dev", "--format", "json"))
    assert ok["passed"] and [c["kind"] for c in ok["checks"]] == ["provenance", "sbom", "scan", "vex"]

    # Promotion carries the evidence byte for byte and adds its own signed attestation.
    assert bakery("promote", "left:1", "--to", "staging", check=True).returncode == 0
    staging, srepo = _client(stack, "staging"), _repo(root, "staging", "left")
    for e in index["manifests"]:
        assert staging.get_manifest(srepo, e["digest"]).body == dev.get_manifest(repo, e["digest"]).body
    promo = _by_kind(staging, srepo, digest)["promotion"]
    predicate = _payload(_envelope(staging, srepo, promo[0]))["predicate"]
    assert predicate["from"] == "dev" and predicate["to"] == "staging"
    assert predicate["approver"]["self_asserted"] is True  # no CI run: never presented as verified
    assert as_json(bakery("verify", "left:1", "--env", "staging", "--format", "json"))["passed"]

    # prod's gate checks the evidence; the promotion passes it, and prod verifies.
    done = as_json(bakery("promote", "left:1", "--to", "prod", "--format", "json"))
    assert done["action"] == "promoted", done
    gate = next(g for g in done["gates"] if g["name"] == "attestations")
    assert gate["passed"]
    proc = bakery("verify", "left:1", "--env", "prod")
    assert proc.returncode == 0 and "verified" in proc.stdout
    listed = as_json(bakery("attestations", "left:1", "--env", "prod", "--format", "json"))
    assert sorted(r["kind"] for r in listed["attestations"]) == sorted(
        ["provenance", "sbom", "scan", "vex", "sbom-document", "promotion", "promotion"])

    # The dashboard's matrix says what each environment's digest carries, as its store lists it.
    site = root / "site"
    bakery("report", "html", "--out", str(site), check=True)
    page = (site / "index.html").read_text()
    assert "att. promotion, provenance, sbom, sbom-document, scan, vex" in page  # prod: two promotions, one kind
    assert "att. provenance, sbom, sbom-document, scan, vex" in page  # dev: what publish attached
    assert "att. unknown" not in page

    # No secret in any of it (staging and prod use basic auth).
    prepo = _repo(root, "prod", "left")
    for e in _index(_client(stack, "prod"), prepo, digest)["manifests"]:
        body = _envelope(_client(stack, "prod"), prepo, e)
        assert stack.password not in body.decode() and stack.password not in json.dumps(
            _payload(body) if e["artifactType"] == DSSE else {})

    # A foreign key: nothing verifies.
    foreign = bakery("verify", "left:1", "--env", "prod", "--key", str(root / ".bakery/keys/foreign.pub"))
    assert foreign.returncode == 1 and "provenance: not signed by a trusted key" in foreign.stdout


def test_a_rebuild_that_gives_the_same_image_keeps_its_evidence(make_project, stack) -> None:
    """Issue 14: a warm rebuild of unchanged inputs is the published digest itself. Its evidence is the build's
    that made it (the provenance's claims — revision, recipe, parent, fingerprint — are this rebuild's too): kept
    byte for byte, nothing added. A digest published before signing was configured gets its attestations from
    the first rebuild that signs."""
    root = make_project(fleet="tree", config={"scanner": {"trivy": str(BIN / "trivy")},
                                              "environments": {"dev": {"trusted_keys": [".bakery/keys/signing.pub"]}}})
    signing.generate_key(root / ".bakery" / "keys" / "signing.pem")
    build_db(FIXTURES / "advisories-none.yaml", root / ".bakery" / "trivy")
    dev, repo = _client(stack, "dev"), _repo(root, "dev", "root")
    unsigned = as_json(bakery("build", "root:1", "--format", "json", check=True))["results"][0]
    digest = unsigned["digest"]
    assert dev.head_manifest(repo, digest.replace(":", "-")) is None  # no signing key: no evidence
    sign = {"BAKERY_SIGNING__KEY": ".bakery/keys/signing.pem"}
    first = as_json(bakery("build", "root:1", "--format", "json", env=sign, check=True))["results"][0]
    assert (first["digest"], first["build_tag"], first["reused"]) == (digest, unsigned["build_tag"], True)
    assert set(_by_kind(dev, repo, digest)) == {"provenance", "sbom", "scan", "sbom-document"}
    index = dev.get_manifest(repo, digest.replace(":", "-")).body
    assert as_json(bakery("verify", f"root@{digest}", "--env", "dev", "--format", "json", env=sign))["passed"]
    again = as_json(bakery("build", "root:1", "--format", "json", env=sign, check=True))["results"][0]
    assert (again["digest"], again["reused"]) == (digest, True)
    assert dev.get_manifest(repo, digest.replace(":", "-")).body == index  # nothing attached twice


def test_tampered_missing_and_hand_copied_evidence_fail(signed: Path, stack) -> None:
    root = signed
    out = as_json(bakery("build", "root:1", "--format", "json", check=True))
    digest = out["results"][0]["digest"]
    dev, repo = _client(stack, "dev"), _repo(root, "dev", "root")
    assert as_json(bakery("verify", f"root@{digest}", "--env", "dev", "--format", "json"))["passed"]
    entries = _index(dev, repo, digest)["manifests"]

    # A digest copied into prod by hand (skopeo, as an operator would): no evidence, no signed promotion.
    prod_repo = _repo(root, "prod", "root")
    subprocess.run(["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                    "--dest-tls-verify=false", "--dest-creds", f"{stack.user}:{stack.password}",
                    f"docker://{stack.registry('dev')}/{repo}@{digest}",
                    f"docker://{stack.registry('prod')}/{prod_repo}:1-handmade"], check=True, capture_output=True)
    hand = as_json(bakery("verify", f"root@{digest}", "--env", "prod", "--format", "json"))
    assert not hand["passed"]
    reasons = {c["kind"]: c["reason"] for c in hand["checks"]}
    assert reasons["provenance"].startswith("missing") and "no signed promotion into prod" in reasons["promotion"]

    # Tampered: the scan envelope's payload says the gate passed with no findings... but was changed after signing.
    scan_entry = next(e for e in entries if e["annotations"]["dev.bakery.attestation"] == "scan")
    raw = json.loads(_envelope(dev, repo, scan_entry))
    stmt = json.loads(base64.b64decode(raw["payload"]))
    stmt["predicate"]["gate"]["reason"] = "tampered"
    raw["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    forged = json.dumps(raw).encode()
    dev.push_blob(repo, forged)
    manifest = dev.get_manifest(repo, scan_entry["digest"]).json()
    manifest["layers"][0].update(digest=sha256_digest(forged), size=len(forged))
    mbody = json.dumps(manifest).encode()
    dev.put_manifest(repo, sha256_digest(mbody), mbody, OCI_MANIFEST)
    swapped = [dict(e, digest=sha256_digest(mbody), size=len(mbody)) if e is scan_entry else e for e in entries]
    _put_index(dev, repo, digest, swapped)
    bad = bakery("verify", f"root@{digest}", "--env", "dev")
    assert bad.returncode == 1 and "scan: signature does not verify" in bad.stdout, bad.stdout

    # Missing SBOM: the signed SBOM is gone from the list.
    _put_index(dev, repo, digest, [e for e in entries if e["annotations"]["dev.bakery.attestation"] != "sbom"])
    gone = as_json(bakery("verify", f"root@{digest}", "--env", "dev", "--format", "json"))
    assert {c["kind"]: c["passed"] for c in gone["checks"]} == {"provenance": True, "sbom": False, "scan": True,
                                                                 "vex": True}

    # Hostile listings are data (the registry itself refuses an index of garbage or unknown digests): a manifest
    # with two layers is reported, not a crash.
    two = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": DSSE,
                      "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(b"{}"),
                                 "size": 2},
                      "layers": [manifest["layers"][0], manifest["layers"][0]],
                      "subject": manifest["subject"]}).encode()
    dev.put_manifest(repo, sha256_digest(two), two, OCI_MANIFEST)
    hostile = [{"mediaType": OCI_MANIFEST, "digest": sha256_digest(two), "size": len(two), "artifactType": DSSE,
                "annotations": {"dev.bakery.attestation": "sbom"}}]
    _put_index(dev, repo, digest, [e for e in entries if e["annotations"]["dev.bakery.attestation"] != "sbom"]
               + hostile)
    proc = bakery("verify", f"root@{digest}", "--env", "dev", "--format", "json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    sbom = next(c for c in as_json(proc)["checks"] if c["kind"] == "sbom")
    assert not sbom["passed"] and "exactly one layer" in sbom["reason"]

    # The plain CycloneDX document (what trivy reads) swapped for another: the signed SBOM no longer covers it.
    doc = next(e for e in entries if e["artifactType"] == "application/vnd.cyclonedx+json")
    dm = dev.get_manifest(repo, doc["digest"]).json()
    other_bom = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": []}).encode()
    dev.push_blob(repo, other_bom)
    dm["layers"][0].update(digest=sha256_digest(other_bom), size=len(other_bom))
    dbody = json.dumps(dm).encode()
    dev.put_manifest(repo, sha256_digest(dbody), dbody, OCI_MANIFEST)
    _put_index(dev, repo, digest, [dict(e, digest=sha256_digest(dbody), size=len(dbody)) if e is doc else e
                                   for e in entries])
    swapped_doc = bakery("verify", f"root@{digest}", "--env", "dev")
    assert swapped_doc.returncode == 1 and "is not the signed SBOM" in swapped_doc.stdout, swapped_doc.stdout

    # An attestation about another digest, listed under this one.
    _put_index(dev, repo, digest, entries)
    other = as_json(bakery("build", "left:1", "--format", "json", check=True))
    left_digest = next(r for r in other["results"]
                       if r["ref"] == "left:1")["digest"]
    lrepo = _repo(root, "dev", "left")
    foreign_prov = next(e for e in _index(dev, lrepo, left_digest)["manifests"]
                        if e["annotations"]["dev.bakery.attestation"] == "provenance")
    envelope = _envelope(dev, lrepo, foreign_prov)
    dev.push_blob(repo, envelope)
    m = dev.get_manifest(repo, next(e for e in entries if e["annotations"]["dev.bakery.attestation"]
                                    == "provenance")["digest"]).json()
    m["layers"][0].update(digest=sha256_digest(envelope), size=len(envelope))
    body = json.dumps(m).encode()
    dev.put_manifest(repo, sha256_digest(body), body, OCI_MANIFEST)
    _put_index(dev, repo, digest, [dict(e, digest=sha256_digest(body), size=len(body))
                                   if e["annotations"]["dev.bakery.attestation"] == "provenance" else e
                                   for e in entries])
    about = bakery("verify", f"root@{digest}", "--env", "dev")
    assert about.returncode == 1 and "provenance: signed, but about another digest" in about.stdout


def test_prod_gate_refuses_missing_and_stale_evidence(make_project, stack) -> None:
    root = make_project(fleet="tree", config={
        "scanner": {"trivy": str(BIN / "trivy")},
        "environments": {"staging": {"gates": {"scan": False}},
                         "prod": {"trusted_keys": [".bakery/keys/signing.pub"],
                                  "gates": {**PROD_GATES, "scan": False, "max_scan_age": "24h"}}},
    })
    signing.generate_key(root / ".bakery" / "keys" / "signing.pem")
    build_db(FIXTURES / "advisories-none.yaml", root / ".bakery" / "trivy")
    # Built without a signing key: nothing attached, and prod's gate says what is missing.
    bakery("build", "root:1", check=True)
    bakery("promote", "root:1", "--to", "staging", check=True)
    refused = as_json(bakery("promote", "root:1", "--to", "prod", "--format", "json"))
    assert refused["action"] == "refused"
    gate = next(g for g in refused["gates"] if g["name"] == "attestations")
    assert not gate["passed"] and "provenance: missing" in gate["reason"] and "vex: missing" in gate["reason"]

    # With a key: the next build is signed; two days later its scan attestation is too old for prod.
    config = (root / "bakery.yaml").read_text() + "signing: {key: .bakery/keys/signing.pem}\n"
    (root / "bakery.yaml").write_text(config)
    (root / "base-images" / "root.yaml").write_text(
        (root / "base-images" / "root.yaml").read_text().replace('marker: "m1"', 'marker: "m2"'))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qam", "m2"],
                   cwd=root, check=True)
    bakery("build", "root:1", check=True)
    bakery("promote", "root:1", "--to", "staging", check=True)
    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).isoformat()
    stale = as_json(bakery("promote", "root:1", "--to", "prod", "--format", "json", env={"BAKERY_NOW": later}))
    gate = next(g for g in stale["gates"] if g["name"] == "attestations")
    assert stale["action"] == "refused" and "scan: newest signed scan is 2d0h old" in gate["reason"], gate
    assert as_json(bakery("promote", "root:1", "--to", "prod", "--format", "json"))["action"] == "promoted"



def test_gc_deletes_the_evidence_of_a_deleted_digest(signed: Path, stack) -> None:
    root = signed
    first = as_json(bakery("build", "root:1", "--format", "json", check=True))
    old = first["results"][0]["digest"]
    (root / "base-images" / "root.yaml").write_text(
        (root / "base-images" / "root.yaml").read_text().replace('marker: "m1"', 'marker: "m3"'))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qam", "m3"],
                   cwd=root, check=True)
    second = as_json(bakery("build", "root:1", "--format", "json", check=True))
    new = second["results"][0]["digest"]
    dev, repo = _client(stack, "dev"), _repo(root, "dev", "root")
    old_entries = _index(dev, repo, old)["manifests"]
    new_index = _index(dev, repo, new)
    report = as_json(bakery("gc", "--env", "dev", "--keep", "1", "--format", "json"))
    assert [i for i in report["deleted"] if i["identity"] == old]
    assert dev.head_manifest(repo, old.replace(":", "-")) is None
    assert not any(dev.manifest_exists(repo, e["digest"]) for e in old_entries)
    assert _index(dev, repo, new) == new_index
    assert all(dev.manifest_exists(repo, e["digest"]) for e in new_index["manifests"])
    assert as_json(bakery("verify", f"root@{new}", "--env", "dev", "--format", "json"))["passed"]


def test_kms_signer_against_moto_verifies_independently(moto_endpoint: str, tmp_path: Path) -> None:
    import boto3
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(moto_endpoint + "/moto-api/reset", method="POST")).close()
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint, aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/bakery-test", TargetKeyId=key_id)
    (tmp_path / "bakery.yaml").write_text(f"aws: {{endpoint_url: '{moto_endpoint}'}}\n"
                                          f"signing: {{key: 'awskms:///alias/bakery-test'}}\n")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    project = load_project(tmp_path / "bakery.yaml", cwd=tmp_path, environ={})
    signer = signing.project_signer(project)
    assert signer is not None
    payload = json.dumps({"_type": "https://in-toto.io/Statement/v1", "subject": [], "predicate": {}}).encode()
    env = signing.sign_envelope(signer, payload)
    key = SSlibKey.from_crypto(signer.public_key(), keyid=signer.keyid)
    assert signer.keyid in Envelope.from_dict(json.loads(json.dumps(env))).verify([key], 1)  # from_dict consumes
    pub = signing.PublicKey(signer.public_key(), "kms")
    assert signing.verify_envelope(env, [pub]).payload == payload


def test_a_stale_scan_redone_at_promotion_is_signed_and_satisfies_the_gate(signed: Path, stack) -> None:
    root = signed
    out = as_json(bakery("build", "root:1", "--format", "json", check=True))
    digest = out["results"][0]["digest"]
    bakery("promote", "root:1", "--to", "staging", check=True)
    staging, srepo = _client(stack, "staging"), _repo(root, "staging", "root")
    before = _by_kind(staging, srepo, digest)["scan"]
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)
    done = as_json(bakery("promote", "root:1", "--to", "prod", "--format", "json", env={"BAKERY_NOW": later.isoformat()}))
    gates = {g["name"]: g for g in done["gates"]}
    assert "re-scanned (stale)" in gates["scan"]["reason"]
    assert done["action"] == "promoted" and gates["attestations"]["passed"], gates["attestations"]
    after = _by_kind(staging, srepo, digest)["scan"]
    assert len(after) == len(before) + 1
    fresh = _payload(_envelope(staging, srepo, after[-1]))["predicate"]["metadata"]["scanFinishedOn"]
    assert fresh.startswith(later.strftime("%Y-%m-%dT"))
    # prod received both scans, byte for byte
    prod, prepo = _client(stack, "prod"), _repo(root, "prod", "root")
    assert {e["digest"] for e in _by_kind(prod, prepo, digest)["scan"]} == {e["digest"] for e in after}


def test_ami_builds_carry_signed_provenance_and_promotions_in_s3(make_project, moto_endpoint: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import urllib.request

    import boto3
    import yaml

    if shutil.which("packer") is None:
        pytest.skip("packer is not installed (apt-get install -y packer)")
    urllib.request.urlopen(urllib.request.Request(moto_endpoint + "/moto-api/reset", method="POST")).close()
    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(k, v)
    root = make_project(fleet=None, config={
        "signing": {"key": ".bakery/keys/signing.pem", "ami_store": "s3://bakery-evidence/attestations"},
        "environments": {"dev": {"aws": {"account": "123456789012", "regions": ["us-east-1"]}},
                         "staging": {"aws": {"account": "210987654321", "regions": ["eu-west-1"]},
                                     "trusted_keys": [".bakery/keys/signing.pub"],
                                     "gates": {"require_attestations": ["provenance", "sbom", "scan", "vex"]}}},
        "aws": {"endpoint_url": moto_endpoint, "region": "us-east-1"}})
    signing.generate_key(root / ".bakery" / "keys" / "signing.pem")
    boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint).create_bucket(Bucket="bakery-evidence")
    shutil.copytree(REPO / "templates" / "packer-ami", root / "templates" / "packer-ami")
    definition = yaml.safe_load((REPO / "examples" / "aws" / "base-images" / "ami-debian.yaml").read_text())
    definition["packer"]["source_ami_filter"] = {"owners": ["137112412989"],
                                                 "filters": {"name": "amzn-ami-hvm-2017.09.1.*-x86_64-gp2"}}
    (root / "base-images" / "ami-debian.yaml").write_text(yaml.safe_dump(definition))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "ami"],
                   cwd=root, check=True)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    built = as_json(bakery("build", "ami-debian:12", "--format", "json", env=env))
    origin = built["results"][0]["digest"]
    assert origin.startswith("ami:")
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint)
    region, ami_id = origin.split(":")[1:]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bakery-evidence")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith(f"attestations/ami/{region}/{ami_id}/provenance-")
    body = s3.get_object(Bucket="bakery-evidence", Key=keys[0])["Body"].read()
    pub = signing.load_public_key((root / ".bakery/keys/signing.pub").read_bytes(), "pub")
    sslib = Envelope.from_dict(json.loads(body))
    assert pub.keyid in sslib.verify([SSlibKey.from_crypto(pub.key, keyid=pub.keyid)], 1)
    assert json.loads(sslib.payload)["subject"][0]["name"] == origin

    dev = as_json(bakery("verify", "ami-debian:12", "--env", "dev", "--key", str(root / ".bakery/keys/signing.pub"),
                         "--format", "json", env=env))
    assert dev["passed"] and {c["kind"]: c["reason"] for c in dev["checks"]}["sbom"].startswith("not applicable")
    promoted = bakery("promote", "ami-debian:12", "--to", "staging", "--format", "json", env=env)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert any(g["name"] == "attestations" and g["passed"] for g in json.loads(promoted.stdout)["gates"])
    staging = as_json(bakery("verify", "ami-debian:12", "--env", "staging", "--format", "json", env=env))
    assert staging["passed"] and {c["kind"] for c in staging["checks"]} >= {"provenance", "promotion"}

    # Tampered in S3 (the original replaced by an edited copy): refused, naming it.
    raw = json.loads(body)
    stmt = json.loads(base64.b64decode(raw["payload"]))
    stmt["predicate"]["buildDefinition"]["externalParameters"]["definition"] = "elsewhere.yaml"
    raw["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    s3.delete_object(Bucket="bakery-evidence", Key=keys[0])
    s3.put_object(Bucket="bakery-evidence", Key=keys[0], Body=json.dumps(raw).encode())
    bad = bakery("verify", "ami-debian:12", "--env", "staging", env=env)
    assert bad.returncode == 1 and "provenance: signature does not verify" in bad.stdout, bad.stdout
