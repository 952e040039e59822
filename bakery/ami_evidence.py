"""Signed evidence for AMIs: one S3 object per AMI build and attestation (``signing.ami_store``).

An AMI has no registry next to it to hold referrers, and EC2 tags are 256 characters: so its DSSE envelopes
live in S3 under the build's origin (the AMI Packer made for the first environment, which every promoted copy
keeps as its identity and its ``bakery:origin`` tag)::

    s3://BUCKET/PREFIX/ami/REGION/AMI-ID/KIND-SHA256[:16].dsse.json

Each object is written once (``If-None-Match: *``); promotion adds its own. The Statement's subject is the
origin (``name``), its ARN (``uri``) and, since an AMI has no content digest, the sha256 of the origin string.
What an AMI can carry: provenance and promotion. sbom, scan and vex are not applicable (no container filesystem
for trivy, as for the scan gate) and are reported as "not applicable", as the scan gate does for AMIs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from bakery import attest, aws, secrets
from bakery.errors import InputError
from bakery.evidence import DSSE_TYPE, BuildFacts, Check, check_envelope, envelope_row, judge, keys_for
from bakery.registry import sha256_digest
from bakery.signing import PublicKey, Signer, envelope_bytes, project_signer, sign_envelope

if TYPE_CHECKING:
    from bakery.config import Project

APPLICABLE = ("provenance", "promotion")


def store(project: Project) -> tuple[str, str] | None:
    """(bucket, prefix) of ``signing.ami_store``, or None when AMIs carry no evidence."""
    url = project.config.signing.ami_store
    if not url:
        return None
    m = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", url)
    if not m:
        raise InputError(f"signing.ami_store: not s3://BUCKET[/PREFIX]: {url!r}")
    return m.group(1), (m.group(2) or "").strip("/")


def _s3(project: Project) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", region_name=project.config.aws.region, endpoint_url=project.config.aws.endpoint_url
                        or None, config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}))


_call = aws.call  # one mapping of boto3 failures onto exit codes (bakery.aws)


def _split(origin: str) -> tuple[str, str]:
    """(region, AMI id) of an origin (bakery.ami owns the format: KIND:REGION:AMI-ID)."""
    parts = origin.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise InputError(f"{origin!r}: not an AMI build origin")
    return parts[1], parts[2]


def subject(origin: str) -> dict[str, Any]:
    region, ami_id = _split(origin)
    return {"name": origin, "uri": f"arn:aws:ec2:{region}::image/{ami_id}",
            "digest": {"sha256": hashlib.sha256(origin.encode()).hexdigest()}}


def _digest(origin: str) -> str:
    return "sha256:" + hashlib.sha256(origin.encode()).hexdigest()


def _prefix(project: Project, origin: str) -> tuple[str, str]:
    where = store(project)
    assert where is not None
    bucket, prefix = where
    region, ami_id = _split(origin)
    return bucket, "/".join(p for p in (prefix, "ami", region, ami_id) if p) + "/"


def put(project: Project, origin: str, kind: str, body: bytes) -> str:
    """Write one envelope (never overwriting); returns its s3:// URL."""
    bucket, prefix = _prefix(project, origin)
    key = f"{prefix}{kind}-{hashlib.sha256(body).hexdigest()[:16]}.dsse.json"
    s3 = _s3(project)
    _call(f"store the {kind} attestation of {origin}", lambda: s3.put_object(
        Bucket=bucket, Key=key, Body=body, ContentType=DSSE_TYPE, IfNoneMatch="*"))
    return f"s3://{bucket}/{key}"


def objects(project: Project, origin: str) -> list[tuple[str, bytes]]:
    """Every evidence object of the build: (s3 URL, bytes)."""
    bucket, prefix = _prefix(project, origin)
    s3 = _s3(project)
    out: list[tuple[str, bytes]] = []
    token: dict[str, str] = {}
    while True:
        page = _call(f"list the attestations of {origin}", lambda: s3.list_objects_v2(
            Bucket=bucket, Prefix=prefix, **token))
        for obj in page.get("Contents") or []:
            body = _call(f"read {obj['Key']}", lambda o=obj: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"]
                             .read())
            out.append((f"s3://{bucket}/{obj['Key']}", body))
        if not page.get("IsTruncated"):
            return out
        token = {"ContinuationToken": page["NextContinuationToken"]}


def _signed(signer: Signer, stmt: dict[str, Any]) -> bytes:
    payload = secrets.mask(json.dumps(stmt, sort_keys=True, separators=(",", ":"))).encode()
    return envelope_bytes(sign_envelope(signer, payload))


def _ready(project: Project) -> Signer | None:
    if store(project) is None:
        return None
    return project_signer(project)


def attest_publish(project: Project, image: str, origin: str, facts: BuildFacts) -> str | None:
    """The signed provenance of a freshly published AMI build; None when signing or the store is not set."""
    signer = _ready(project)
    if signer is None:
        return None
    stmt = attest.provenance(repository=origin, digest=_digest(origin), image=image,
                             definition_file=facts.definition_file, revision=facts.revision, source=facts.source,
                             recipe_digest=facts.recipe_digest, parent_reference=facts.parent_reference,
                             parent_digest=facts.parent_digest, fingerprint=facts.fingerprint, builder=facts.builder,
                             builder_version=facts.builder_version, started=facts.started, finished=facts.finished)
    stmt["subject"] = [subject(origin)]
    return put(project, origin, "provenance", _signed(signer, stmt))


def attest_promotion(project: Project, *, image: str, origin: str, build_tag: str, from_env: str, to_env: str,
                     amis: dict[str, str], gates: list[dict[str, Any]], approved_by: str | None,
                     now: dt.datetime) -> str | None:
    signer = _ready(project)
    if signer is None:
        return None
    target = ", ".join(f"{r}:{a}" for r, a in sorted(amis.items()))
    stmt = attest.promotion(repository=origin, digest=_digest(origin), image=image, build_tag=build_tag,
                            from_env=from_env, to_env=to_env, source=origin, target=target, gates=gates,
                            approved_by=approved_by, now=now)
    stmt["subject"] = [subject(origin)]
    return put(project, origin, "promotion", _signed(signer, stmt))


def verify(project: Project, origin: str, keys: list[PublicKey], required: list[str], *,
           promoted_to: str | None = None, now: dt.datetime | None = None) -> list[Check]:
    """Checks of the build's evidence: provenance / promotion as for images; sbom, scan, vex not applicable."""
    if store(project) is None:
        return [Check(k, False, "signing.ami_store is not configured: AMIs carry no evidence") for k in required]
    want = _digest(origin)[7:]
    seen = [check_envelope(body, lambda s: (s.get("digest") or {}).get("sha256") == want and s.get("name") == origin,
                           keys, url.rsplit("/", 1)[-1].split("-", 1)[0], url) for url, body in objects(project, origin)]
    applicable = [k for k in required if k in APPLICABLE]
    checks = judge(seen, applicable, promoted_to=promoted_to, max_scan_age=None, now=now or dt.datetime.now(
        dt.timezone.utc))
    for k in required:
        if k not in APPLICABLE:
            checks.append(Check(k, True, "not applicable: an AMI has no container filesystem for trivy"))
    return checks


def gate(project: Project, origin: str, to_env: str, *, now: dt.datetime) -> tuple[bool, str, dict[str, Any]]:
    """The ``attestations`` gate for an AMI promotion: (passed, reason, details)."""
    required = list(project.config.env(to_env).gates.require_attestations)
    checks = verify(project, origin, keys_for(project, to_env), required, now=now)
    failed = [f"{c.kind}: {c.reason}" for c in checks if not c.passed]
    details = {"required": required, "checks": [c.to_json() for c in checks]}
    if failed:
        return False, "; ".join(failed), details
    return True, f"{', '.join(k for k in required if k in APPLICABLE) or 'nothing applicable'} signed by a trusted " \
                 f"key", details


def rows(project: Project, origin: str) -> list[dict[str, Any]]:
    """`bakery attestations` for an AMI build: its S3 objects (nothing verified)."""
    if store(project) is None:
        return []
    return [envelope_row(body, {"digest": sha256_digest(body), "artifactType": DSSE_TYPE, "location": url,
                                "kind": url.rsplit("/", 1)[-1].split("-", 1)[0]})
            for url, body in objects(project, origin)]
