"""DSSE signing and verification, checked against an independent implementation (securesystemslib), and the
in-toto Statements bakery writes."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from bakery import attest, signing
from bakery.config import load_project
from bakery.errors import InputError, ValidationError
from bakery.policy import IgnoreRule, decide, EffectivePolicy
from bakery.scan import Finding, ScanResult

DIGEST = "sha256:" + "ab" * 32


def _project(tmp_path: Path, extra: str = "", environ: dict[str, str] | None = None):
    (tmp_path / "bakery.yaml").write_text(extra)
    return load_project(tmp_path / "bakery.yaml", cwd=tmp_path, environ=environ or {})


def _key(tmp_path: Path, name: str = "key.pem") -> Path:
    path = tmp_path / name
    signing.generate_key(path)
    return path


def test_envelope_verifies_with_securesystemslib(tmp_path: Path) -> None:
    project = _project(tmp_path)
    signer = signing.load_signer(str(_key(tmp_path)), project)
    stmt = attest.statement("provenance", "reg/x", DIGEST, {"k": "v"})
    env = signing.sign_envelope(signer, json.dumps(stmt).encode())
    # the second implementation: securesystemslib's DSSE, given only the public key and our keyid
    key = SSlibKey.from_crypto(signer.public_key(), keyid=signer.keyid)
    ssl_env = Envelope.from_dict(json.loads(json.dumps(env)))  # from_dict consumes its argument
    assert key.keyid in ssl_env.verify([key], 1)
    assert json.loads(ssl_env.payload)["subject"][0]["digest"]["sha256"] == "ab" * 32
    # and bakery verifies what securesystemslib signs
    other = CryptoSigner.generate_ecdsa()
    theirs = Envelope(payload=b'{"x":1}', payload_type=signing.INTOTO_PAYLOAD_TYPE, signatures={})
    theirs.sign(other)
    pub = signing.PublicKey(other.public_key.to_crypto() if hasattr(other.public_key, "to_crypto")
                            else serialization.load_pem_public_key(other.public_key.keyval["public"].encode()),
                            "sslib")
    assert signing.verify_envelope(theirs.to_dict(), [pub]).payload == b'{"x":1}'


def test_pae_is_the_dsse_encoding() -> None:
    assert signing.pae("t", b"ab") == b"DSSEv1 1 t 2 ab"
    assert signing.pae("application/vnd.in-toto+json", b"") == b"DSSEv1 28 application/vnd.in-toto+json 0 "


def test_tampered_foreign_and_unsigned_envelopes_are_refused(tmp_path: Path) -> None:
    project = _project(tmp_path)
    signer = signing.load_signer(str(_key(tmp_path)), project)
    trusted = [signing.PublicKey(signer.public_key(), "trusted")]
    env = signing.sign_envelope(signer, b'{"a":1}')
    assert signing.verify_envelope(env, trusted).keyid == signer.keyid
    tampered = dict(env, payload=base64.b64encode(b'{"a":2}').decode())
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.verify_envelope(tampered, trusted)
    foreign = signing.load_signer(str(_key(tmp_path, "other.pem")), project)
    with pytest.raises(signing.SignatureError, match="not signed by a trusted key"):
        signing.verify_envelope(signing.sign_envelope(foreign, b'{"a":1}'), trusted)
    with pytest.raises(signing.SignatureError, match="unsigned"):
        signing.verify_envelope(dict(env, signatures=[]), trusted)
    with pytest.raises(signing.SignatureError, match="not a DSSE envelope"):
        signing.verify_envelope(b"\x00garbage", trusted)


def test_signer_from_env_var_and_bad_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path)
    pem = _key(tmp_path).read_text()
    monkeypatch.setenv("SIGN_PEM", pem)
    s = signing.load_signer("env:SIGN_PEM", project)
    sig = s.sign(b"m")
    s.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA256()))
    monkeypatch.delenv("SIGN_PEM")
    with pytest.raises(InputError, match="SIGN_PEM is not set"):
        signing.load_signer("env:SIGN_PEM", project)
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "p384.pem").write_bytes(p384)
    with pytest.raises(InputError, match="not an ECDSA P-256 key"):
        signing.load_signer("p384.pem", project)
    with pytest.raises(InputError, match="cannot read the key file"):
        signing.load_signer("missing.pem", project)
    # the key's bytes never appear in a message
    (tmp_path / "junk.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(InputError) as err:
        signing.load_signer("junk.pem", project)
    assert "not-a-key" not in str(err.value)


def test_trusted_keys_are_validated_per_entry(tmp_path: Path) -> None:
    key = _key(tmp_path)
    (tmp_path / "bad.pub").write_text("nope")
    project = _project(tmp_path, f"""
environments:
  dev: {{registry: 127.0.0.1:5501/b}}
  prod:
    registry: 127.0.0.1:5503/b
    trusted_keys: [{key.with_suffix('.pub').name}, bad.pub, missing.pub]
    gates: {{require_attestations: [provenance, sbom]}}
""")
    with pytest.raises(ValidationError) as err:
        signing.trusted_keys(project, "prod")
    assert [p.split(": ", 2)[1] for p in err.value.problems] == ["environments.prod.trusted_keys[1]",
                                                                   "environments.prod.trusted_keys[2]"]
    assert "bad.pub: not a PEM public key" in err.value.problems[0]


def test_config_requires_keys_with_attestations_and_refuses_inline_private_keys(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs trusted_keys"):
        _project(tmp_path, "environments:\n  prod: {registry: 127.0.0.1:5503/b, gates: {require_attestations: [scan]}}\n")
    with pytest.raises(ValidationError, match="require_attestations"):
        _project(tmp_path, "environments:\n  prod: {registry: 127.0.0.1:5503/b, trusted_keys: [k.pub], "
                           "gates: {require_attestations: [sbom, bogus]}}\n")
    with pytest.raises(ValidationError, match="must not be written into bakery.yaml"):
        _project(tmp_path, "signing: {key: '-----BEGIN PRIVATE KEY-----'}\n")
    assert _project(tmp_path, "", {"BAKERY_SIGNING_KEY": "awskms:///alias/bakery"}).config.signing.key == \
        "awskms:///alias/bakery"


# ---------------------------------------------------------------------------------------------- statements


def _scan(findings: list[Finding]) -> ScanResult:
    now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.timezone.utc)
    return ScanResult(image="img", image_id="sha256:" + "cd" * 32, digest=DIGEST, trivy_version="0.59.1",
                      db_updated_at=now - dt.timedelta(hours=5), scanned_at=now, findings=findings,
                      db_sha256="sha256:" + "ef" * 32, trivy_seconds=1.5, os="debian 12.15")


def test_vex_has_one_statement_per_ignored_vulnerability_and_none_for_expired() -> None:
    today = dt.date(2026, 11, 30)
    f1 = Finding("CVE-2026-0001", "zlib1g", "1.2", "1.3", "HIGH", pkg_type="debian")
    f2 = Finding("CVE-2026-0002", "libc6", "2.36", "2.37", "CRITICAL", pkg_type="debian")
    f3 = Finding("CVE-2026-0003", "bash", "5.2", "5.3", "HIGH", pkg_type="debian")
    rules = (IgnoreRule("CVE-2026-0001", "vulnerable_code_not_in_execute_path: no zlib in the app",
                        until=dt.date(2026, 12, 31)),
             IgnoreRule("CVE-2026-0002", "accepted until the rebuild"),
             IgnoreRule("CVE-2026-0003", "old entry", until=dt.date(2026, 11, 1)))
    decision = decide(_scan([f1, f2, f3]), EffectivePolicy("HIGH", True, rules), today=today, images=("img",))
    now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.timezone.utc)
    stmt = attest.vex(repository="127.0.0.1:5501/b/python", digest=DIGEST, decision=decision, author="bakery",
                      now=now)
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == "https://openvex.dev/ns/v0.2.0"
    sts = stmt["predicate"]["statements"]
    assert [s["vulnerability"]["name"] for s in sts] == ["CVE-2026-0001", "CVE-2026-0002"]
    # OpenVEX v0.2.0: a not_affected statement has exactly one of justification / impact_statement, and no
    # field outside the spec's list (its JSON schema has additionalProperties: false)
    allowed = {"@id", "version", "vulnerability", "timestamp", "last_updated", "products", "status", "supplier",
               "status_notes", "justification", "impact_statement", "action_statement", "action_statement_timestamp"}
    for s in sts:
        assert set(s) <= allowed and s["status"] == "not_affected"
        assert ("justification" in s) != ("impact_statement" in s)
        assert set(s["products"][0]) <= {"@id", "identifiers", "hashes", "subcomponents"}
    assert sts[0]["justification"] == "vulnerable_code_not_in_execute_path"
    assert "no zlib in the app" in sts[0]["status_notes"] and "valid until 2026-12-31" in sts[0]["status_notes"]
    assert sts[1]["impact_statement"] == "accepted until the rebuild"
    assert sts[0]["products"][0]["hashes"] == {"sha-256": "ab" * 32}
    assert sts[0]["products"][0]["@id"].startswith("pkg:oci/python@sha256%3A")
    assert set(stmt["predicate"]) >= {"@context", "@id", "author", "timestamp", "version", "statements"}
    # nothing waived: no document (OpenVEX requires at least one statement)
    nothing = decide(_scan([f3]), EffectivePolicy("HIGH", True, rules[2:]), today=today, images=("img",))
    assert attest.vex(repository="r/x", digest=DIGEST, decision=nothing, author="bakery", now=now) is None


def test_scan_statement_has_findings_gate_trivy_and_db_identity() -> None:
    f = Finding("CVE-2026-0009", "openssl", "3.0", "3.1", "CRITICAL", pkg_type="debian")
    result = _scan([f])
    decision = decide(result, EffectivePolicy("HIGH", True, ()), today=dt.date(2026, 11, 30), images=("img",))
    stmt = attest.scan(repository="r/x", digest=DIGEST, result=result, decision=decision)
    p = stmt["predicate"]
    assert p["scanner"]["version"] == "0.59.1"
    assert p["scanner"]["db"] == {"uri": "trivy-db", "version": "sha256:" + "ef" * 32,
                                  "lastUpdate": "2026-11-30T07:00:00Z"}
    assert p["scanner"]["result"][0]["id"] == "CVE-2026-0009"
    assert p["gate"]["passed"] is False and p["gate"]["failing"] == ["CVE-2026-0009"]
    assert p["gate"]["db_age_seconds"] == 5 * 3600
    assert p["metadata"] == {"scanStartedOn": "2026-11-30T12:00:00Z", "scanFinishedOn": "2026-11-30T12:00:01.500000Z"}


def test_provenance_records_dirty_revision_and_ci_identity_without_secrets() -> None:
    t = dt.datetime(2026, 11, 30, 12, tzinfo=dt.timezone.utc)
    environ = {"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "42", "GITHUB_REPOSITORY": "o/r",
               "GITHUB_SERVER_URL": "https://github.com", "GITHUB_WORKFLOW_REF": "o/r/.github/workflows/n.yml@refs/heads/main",
               "GITHUB_ACTOR": "alice", "GITHUB_TOKEN": "ghs_secret_value", "AWS_SECRET_ACCESS_KEY": "topsecret"}
    stmt = attest.provenance(repository="r/x", digest=DIGEST, image="python:3.11", definition_file="base-images/python.yaml",
                             revision="a" * 40 + "-dirty", source="https://user:tok3n@git.example/r.git",
                             recipe_digest="sha256:" + "11" * 32, parent_reference="r/base@sha256:" + "22" * 32,
                             parent_digest="sha256:" + "22" * 32, fingerprint="fp", builder="docker",
                             builder_version="20.10", started=t, finished=t + dt.timedelta(seconds=3),
                             environ=environ)
    text = json.dumps(stmt)
    assert "ghs_secret_value" not in text and "topsecret" not in text and "tok3n" not in text
    bd = stmt["predicate"]["buildDefinition"]
    assert bd["externalParameters"]["source"]["dirty"] is True
    assert {"uri": "git+https://git.example/r.git", "digest": {"gitCommit": "a" * 40},
            "annotations": {"dirty": True}} in bd["resolvedDependencies"]
    rd = stmt["predicate"]["runDetails"]
    assert rd["builder"]["id"] == "https://github.com/o/r/.github/workflows/n.yml@refs/heads/main"
    assert rd["metadata"]["invocationId"] == "https://github.com/o/r/actions/runs/42"


def test_promotion_approver_is_self_asserted_outside_ci() -> None:
    now = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)
    kw = dict(repository="r/x", digest=DIGEST, image="x:1", build_tag="1-20261130.1", from_env="staging",
              to_env="prod", source="s@" + DIGEST, target="t", gates=[], approved_by="alice", now=now)
    local = attest.promotion(**kw, environ={})["predicate"]["approver"]
    assert local == {"actor": "alice", "source": "command line (--approved-by)", "self_asserted": True}
    ci = attest.promotion(**kw, environ={"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "7", "GITHUB_ACTOR": "bob",
                                         "BAKERY_CI_ENVIRONMENT": "prod", "GITHUB_REPOSITORY": "o/r"})
    appr = ci["predicate"]["approver"]
    assert appr["actor"] == "bob" and appr["environment"] == "prod" and appr["self_asserted"] is False
    assert appr["claimed"] == "alice"


def test_dev_up_creates_a_development_key_only_under_the_state_directory(tmp_path: Path) -> None:
    from bakery.devstack import ensure_dev_key

    project = _project(tmp_path, "signing: {key: .bakery/dev/signing.pem}\n")
    made = ensure_dev_key(project)
    assert made is not None and (tmp_path / ".bakery/dev/signing.pem").stat().st_mode & 0o777 == 0o600
    pub = signing.load_public_key((tmp_path / ".bakery/dev/signing.pub").read_bytes(), "pub")
    assert pub.keyid == signing.load_signer(".bakery/dev/signing.pem", project).keyid
    assert ensure_dev_key(project) is None  # an existing key is never replaced
    elsewhere = _project(tmp_path, "signing: {key: keys/prod.pem}\n")
    assert ensure_dev_key(elsewhere) is None and not (tmp_path / "keys").exists()
    assert ensure_dev_key(_project(tmp_path, "signing: {key: 'env:SIGNING_PEM'}\n")) is None


def test_ami_store_must_be_an_s3_url(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"signing.ami_store: not s3://BUCKET\[/PREFIX\]"):
        _project(tmp_path, "signing: {ami_store: 'http://bucket/x'}\n")
    assert _project(tmp_path, "signing: {ami_store: 's3://my-bucket/att'}\n").config.signing.ami_store == \
        "s3://my-bucket/att"


def test_an_empty_signing_override_turns_signing_off(tmp_path: Path) -> None:
    """CI passes BAKERY_SIGNING_KEY from a repository variable that may be unset: then nothing is signed."""
    project = _project(tmp_path, "signing: {key: .bakery/dev/signing.pem}\n", {"BAKERY_SIGNING_KEY": ""})
    assert project.config.signing.key is None and signing.project_signer(project) is None


def test_the_sbom_artifact_has_the_one_shape_trivy_finds() -> None:
    """trivy 0.59 finds an SBOM in the referrers only with: artifactType = the layer's mediaType =
    application/vnd.cyclonedx+json (no parameters), the empty config, exactly one layer, subject = the image, and
    an index entry that carries artifactType too (ENVIRONMENT.md)."""
    from bakery import evidence

    subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DIGEST, "size": 10}
    body, entry = evidence._manifest(subject, evidence.sbom_item(b'{"bomFormat":"CycloneDX"}'), "2026-11-30T00:00:00Z")
    m = json.loads(body)
    assert m["artifactType"] == "application/vnd.cyclonedx+json" == entry["artifactType"]
    assert [layer["mediaType"] for layer in m["layers"]] == ["application/vnd.cyclonedx+json"]
    assert m["config"] == {"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                           "size": 2}
    assert m["subject"] == subject and entry["digest"] == "sha256:" + __import__("hashlib").sha256(body).hexdigest()
    assert evidence.referrers_tag(DIGEST) == "sha256-" + "ab" * 32
