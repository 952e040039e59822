"""Signed evidence next to an image, by digest, in the same repository — stored, listed, copied, verified, deleted.

Storage follows OCI image-spec 1.1: every attestation is an artifact manifest whose ``subject`` is the image
manifest, with the empty config (``application/vnd.oci.empty.v1+json``) and ONE layer:

* a signed attestation: artifactType and layer ``application/vnd.dsse.envelope.v1+json`` (a DSSE envelope of an
  in-toto Statement v1), annotated with its predicate type (``in-toto.io/predicate-type``) and kind;
* the SBOM for other tools: artifactType and layer ``application/vnd.cyclonedx+json`` — the exact shape trivy
  reads with ``--sbom-sources oci``.

The registry lists them through the referrers API (``GET /v2/REPO/referrers/DIGEST``) when it implements it;
otherwise bakery maintains the referrers tag schema: an image index at tag ``sha256-HEX`` whose entries carry
``artifactType``. Promotion copies the artifact manifests byte for byte with bakery's own client (skopeo drops
``artifactType``); gc deletes them with the image.

Verification trusts nothing in the index or the annotations: every envelope is fetched by digest, its signature
checked against the environment's public keys, its Statement's subject compared with the digest.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bakery import attest, secrets
from bakery.errors import InputError, RegistryError, StepFailed
from bakery.ledger import now as clock
from bakery.model import Published
from bakery.registries import registry_for
from bakery.registry import OCI_INDEX, OCI_MANIFEST, RegistryClient, sha256_digest
from bakery.signing import (INTOTO_PAYLOAD_TYPE, PublicKey, SignatureError, Signer, envelope_bytes, project_signer,
                            sign_envelope, trusted_keys, verify_envelope)
from bakery.signing import key_file as load_key_file

if TYPE_CHECKING:
    from bakery.config import Project

log = logging.getLogger("bakery.evidence")

DSSE_TYPE = "application/vnd.dsse.envelope.v1+json"
CYCLONEDX_TYPE = "application/vnd.cyclonedx+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
EMPTY_DIGEST = sha256_digest(EMPTY_BLOB)
ANN_PREDICATE = "in-toto.io/predicate-type"
ANN_KIND = "dev.bakery.attestation"
ANN_CREATED = "org.opencontainers.image.created"
KINDS = ("provenance", "sbom", "scan", "vex", "promotion")


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag for a subject digest: ``sha256-HEX``."""
    return digest.replace(":", "-", 1)


def _client(reg: Any, what: str) -> RegistryClient:
    if not isinstance(reg, RegistryClient):
        raise StepFailed(f"{what}: attestations are stored in OCI registries; {type(reg).__name__} is not one "
                         f"(ECR evidence is not implemented yet)")
    return reg


# ------------------------------------------------------------------------------------------------------------
# Listing


@dataclass(frozen=True)
class Artifact:
    """One entry of the referrers list (as the index says: not trusted until verified)."""

    digest: str
    size: int
    artifact_type: str
    annotations: dict[str, str]

    @property
    def kind(self) -> str:
        return self.annotations.get(ANN_KIND, "")

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "artifactType": self.artifact_type,
                "kind": self.kind or None, "predicateType": self.annotations.get(ANN_PREDICATE),
                "created": self.annotations.get(ANN_CREATED)}


def _entries(index: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in index.get("manifests") or [] if isinstance(m, dict) and isinstance(m.get("digest"), str)]


def _artifact(entry: dict[str, Any]) -> Artifact:
    return Artifact(digest=entry["digest"], size=int(entry.get("size") or 0),
                    artifact_type=str(entry.get("artifactType") or ""),
                    annotations={str(k): str(v) for k, v in (entry.get("annotations") or {}).items()})


def list_artifacts(reg: Any, repo: str, digest: str) -> tuple[list[Artifact], str]:
    """The artifacts that refer to ``digest`` and where the list came from (``referrers-api`` or ``tag``)."""
    client = _client(reg, f"{repo}@{digest}")
    api = client.referrers(repo, digest)
    if api is not None:
        return [_artifact(e) for e in _entries(api.json())], "referrers-api"
    tag = referrers_tag(digest)
    if client.head_manifest(repo, tag) is None:
        return [], "tag"
    index = client.get_manifest(repo, tag)
    return [_artifact(e) for e in _entries(index.json())], "tag"


# ------------------------------------------------------------------------------------------------------------
# Storing


@dataclass(frozen=True)
class Item:
    """What to store: one blob under an artifactType."""

    kind: str
    artifact_type: str
    body: bytes
    annotations: dict[str, str] = field(default_factory=dict)


def _manifest(subject: dict[str, Any], item: Item, created: str) -> tuple[bytes, dict[str, Any]]:
    ann = {ANN_CREATED: created, ANN_KIND: item.kind, **item.annotations}
    layer = {"mediaType": item.artifact_type, "digest": sha256_digest(item.body), "size": len(item.body),
             "annotations": dict(ann)}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": item.artifact_type,
                "config": {"mediaType": EMPTY_TYPE, "digest": EMPTY_DIGEST, "size": len(EMPTY_BLOB)},
                "layers": [layer], "subject": subject, "annotations": ann}
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    entry = {"mediaType": OCI_MANIFEST, "digest": sha256_digest(body), "size": len(body),
             "artifactType": item.artifact_type, "annotations": ann}
    return body, entry


def attach(reg: Any, repo: str, digest: str, items: list[Item], *, now: dt.datetime | None = None) -> list[Artifact]:
    """Store ``items`` as artifacts referring to ``repo@digest`` and list them (referrers API or tag schema)."""
    client = _client(reg, f"{repo}@{digest}")
    image = client.get_manifest(repo, digest)
    subject = {"mediaType": image.media_type, "digest": image.digest, "size": len(image.body)}
    created = attest.iso(now or dt.datetime.now(dt.timezone.utc))
    client.push_blob(repo, EMPTY_BLOB)
    entries = []
    for item in items:
        client.push_blob(repo, item.body)
        body, entry = _manifest(subject, item, created)
        written = client.put_manifest(repo, entry["digest"], body, OCI_MANIFEST)
        if written != entry["digest"]:
            raise RegistryError(f"{client.host}: {repo}: attestation written as {written}, expected {entry['digest']}")
        entries.append(entry)
    _add_to_index(client, repo, digest, entries)
    return [_artifact(e) for e in entries]


def _add_to_index(client: RegistryClient, repo: str, digest: str, entries: list[dict[str, Any]],
                  verbatim: bytes | None = None) -> None:
    """Referrers tag schema: add ``entries`` to the index at ``sha256-HEX`` (a registry with the referrers API
    keeps its own list). ``verbatim``: the source's index bytes, written as they are when the target has none."""
    if client.referrers(repo, digest) is not None:
        return
    tag = referrers_tag(digest)
    old = client.get_manifest(repo, tag) if client.head_manifest(repo, tag) is not None else None
    if old is None and verbatim is not None:
        client.put_manifest(repo, tag, verbatim, OCI_INDEX)
        old = client.get_manifest(repo, tag)
    current = _entries(old.json()) if old is not None else []
    have = {e["digest"] for e in current}
    new = [e for e in entries if e["digest"] not in have]
    if not new and old is not None:
        return
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": current + new}
    body = json.dumps(index, separators=(",", ":")).encode()
    client.put_manifest(repo, tag, body, OCI_INDEX)
    if old is not None and old.digest != sha256_digest(body):
        try:  # the replaced index is garbage now (the spec lets the client delete it)
            client.delete_manifest(repo, old.digest)
        except RegistryError as exc:
            log.debug("old referrers index %s not deleted: %s", old.digest, exc)


def signed_item(kind: str, signer: Signer, stmt: dict[str, Any]) -> Item:
    # belt and braces: a registered secret (registry password, token) never reaches a signed statement
    payload = secrets.mask(json.dumps(stmt, sort_keys=True, separators=(",", ":"))).encode()
    env = sign_envelope(signer, payload)
    return Item(kind=kind, artifact_type=DSSE_TYPE, body=envelope_bytes(env),
                annotations={ANN_PREDICATE: stmt["predicateType"]})


def sbom_item(bom: bytes) -> Item:
    """The CycloneDX document itself, in the one shape trivy finds (no parameters, one layer)."""
    return Item(kind="sbom-document", artifact_type=CYCLONEDX_TYPE, body=bom)


# ------------------------------------------------------------------------------------------------------------
# Copying and deleting


def lookup(src: Any, src_repo: str, digest: str) -> tuple[list[Artifact], str] | None:
    """What :func:`carry` will copy: the artifacts referring to ``src_repo@digest`` and where the list came from
    (:func:`list_artifacts`); None for a registry that carries none (ECR). A read only: a promotion asks it while
    the image is copied."""
    if not isinstance(src, RegistryClient):
        return None
    return list_artifacts(src, src_repo, digest)


def copy(src: Any, src_repo: str, dst: Any, dst_repo: str, digest: str,
         found: tuple[list[Artifact], str] | None = None) -> int:
    """Copy every artifact referring to ``digest`` from ``src`` to ``dst``, manifests byte for byte (their digests
    stay), then list them in ``dst``. Returns the number of artifacts. ``found``: :func:`lookup`'s answer when
    the caller asked it already."""
    s = _client(src, f"{src_repo}@{digest}")
    d = _client(dst, f"{dst_repo}@{digest}")
    artifacts, how = found if found is not None else list_artifacts(s, src_repo, digest)
    if not artifacts:
        return 0
    for a in artifacts:
        d.copy_image(s, src_repo, a.digest, dst_repo)
    verbatim = None
    if how == "tag":
        verbatim = s.get_manifest(src_repo, referrers_tag(digest)).body
    entries = [{"mediaType": OCI_MANIFEST, "digest": a.digest, "size": a.size, "artifactType": a.artifact_type,
                "annotations": a.annotations} for a in artifacts]
    _add_to_index(d, dst_repo, digest, entries, verbatim=verbatim)
    return len(artifacts)


def delete(reg: Any, repo: str, digest: str) -> list[str]:
    """Delete the artifacts referring to ``digest`` and their index tag; returns the deleted digests (none on ECR,
    which carries none)."""
    if not isinstance(reg, RegistryClient):
        return []
    client = reg
    artifacts, how = list_artifacts(client, repo, digest)
    gone = []
    for a in artifacts:
        if client.delete_manifest(repo, a.digest):
            gone.append(a.digest)
    index = client.head_manifest(repo, referrers_tag(digest))
    if index is not None and client.delete_manifest(repo, index):
        gone.append(index)
    return gone


# ------------------------------------------------------------------------------------------------------------
# Verifying


@dataclass
class Check:
    kind: str
    passed: bool
    reason: str
    artifact: str = ""
    keyid: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "passed": self.passed, "reason": self.reason, "artifact": self.artifact or None,
                "keyid": self.keyid or None, **({"details": self.details} if self.details else {})}


@dataclass
class Report:
    image: str  # repository@digest
    digest: str
    required: list[str]
    listing: str  # referrers-api | tag
    checks: list[Check] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    sbom_document: bool = False

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        return [f"{c.kind}: {c.reason}" for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "digest": self.digest, "required": self.required, "passed": self.passed,
                "listing": self.listing, "checks": [c.to_json() for c in self.checks],
                "sbom_document": self.sbom_document, "artifacts": [a.to_json() for a in self.artifacts]}


@dataclass
class _Seen:
    kind: str
    statement: dict[str, Any] | None
    artifact: str
    keyid: str = ""
    error: str = ""


def _unverified_kind(envelope_raw: bytes, fallback: str) -> str:
    """Which kind an envelope claims to be (for naming what is wrong with one that does not verify)."""
    try:
        import base64

        payload = json.loads(base64.b64decode(json.loads(envelope_raw)["payload"]))
        return attest.KIND_OF.get(payload.get("predicateType"), fallback)
    except Exception:  # noqa: BLE001 - hostile bytes: the annotation is all there is
        return fallback


MAX_ENVELOPE = 64 * 1024 * 1024  # an envelope bigger than this is refused unread (an SBOM is a few MB)


def _inspect(client: RegistryClient, repo: str, digest: str, a: Artifact, keys: list[PublicKey]) -> _Seen:
    """Fetch one listed attestation by digest and check it; whatever is wrong becomes the error (hostile bytes
    are data: never an exception out of here but for an unreachable registry)."""
    kind = a.kind or "unknown"
    try:
        m = client.get_manifest(repo, a.digest)  # verified against its digest by the client
        data = m.json()
        subject = (data.get("subject") or {}).get("digest")
        layers = data.get("layers") or []
        if len(layers) != 1 or not isinstance(layers[0], dict) or not isinstance(layers[0].get("digest"), str):
            return _Seen(kind, None, a.digest, error="malformed: an attestation manifest has exactly one layer")
        if int(layers[0].get("size") or 0) > MAX_ENVELOPE:
            return _Seen(kind, None, a.digest, error=f"envelope larger than {MAX_ENVELOPE} bytes: not read")
        raw = client.get_blob(repo, layers[0]["digest"])
    except RegistryError as exc:
        return _Seen(kind, None, a.digest, error=f"listed but unreadable ({exc})")
    except (ValueError, TypeError, AttributeError):
        return _Seen(kind, None, a.digest, error="malformed attestation manifest")
    if subject != digest:
        return _Seen(_unverified_kind(raw, kind), None, a.digest,
                     error=f"its manifest's subject is {subject}, not this digest")
    hexd = digest.split(":", 1)[1]
    return check_envelope(raw, lambda s: (s.get("digest") or {}).get("sha256") == hexd, keys, kind, a.digest)


def check_envelope(raw: bytes, about: Any, keys: list[PublicKey], kind: str, where: str) -> _Seen:
    """One envelope: signed by one of ``keys``, an in-toto Statement v1, and ``about(subject)`` true for one of
    its subjects; its kind from the (verified) predicateType."""
    kind = _unverified_kind(raw, kind)
    try:
        verified = verify_envelope(raw, keys)
        stmt = verified.json()
    except SignatureError as exc:
        return _Seen(kind, None, where, error=str(exc))
    except ValueError:
        return _Seen(kind, None, where, error="signed payload is not JSON")
    if verified.payload_type != INTOTO_PAYLOAD_TYPE:
        return _Seen(kind, None, where, error=f"signed payload is {verified.payload_type!r}, not an in-toto "
                                              f"Statement")
    if not isinstance(stmt, dict) or stmt.get("_type") != attest.STATEMENT_TYPE:
        return _Seen(kind, None, where, error="signed payload is not an in-toto Statement v1")
    kind = attest.KIND_OF.get(stmt.get("predicateType"), "unknown")
    subjects = [s for s in stmt.get("subject") or [] if isinstance(s, dict) and isinstance(s.get("digest"), dict)]
    if not any(about(s) for s in subjects):
        others = ", ".join(str(s.get("name") or "")[-40:] + "@" + ",".join(
            f"{k}:{str(v)[:12]}…" for k, v in s["digest"].items()) for s in subjects) or "nothing"
        return _Seen(kind, None, where, keyid=verified.keyid, error=f"signed, but about another digest ({others})")
    return _Seen(kind, stmt, where, keyid=verified.keyid)


def verify(reg: Any, repo: str, digest: str, keys: list[PublicKey], required: list[str], *,
           max_scan_age: dt.timedelta | None = None, now: dt.datetime | None = None,
           promoted_to: str | None = None, image: str = "") -> Report:
    """Check the evidence of ``repo@digest`` against ``keys``: one check per required kind (plus a promotion into
    ``promoted_to`` when given). Offline but for the registry reads; trusts neither index nor annotations."""
    client = _client(reg, f"{repo}@{digest}")
    now = now or dt.datetime.now(dt.timezone.utc)
    artifacts, how = list_artifacts(client, repo, digest)
    report = Report(image=image or f"{client.host}/{repo}@{digest}", digest=digest, required=list(required),
                    listing=how, artifacts=artifacts)
    report.sbom_document = any(a.artifact_type == CYCLONEDX_TYPE for a in artifacts)
    seen = [_inspect(client, repo, digest, a, keys) for a in artifacts if a.artifact_type == DSSE_TYPE]
    report.checks = judge(seen, required, promoted_to=promoted_to, max_scan_age=max_scan_age, now=now)
    documents = [a for a in artifacts if a.artifact_type == CYCLONEDX_TYPE]
    signed = [s for s in seen if s.kind == "sbom" and s.statement is not None]
    if documents and signed:
        _match_sbom_documents(client, repo, digest, documents, signed, report)
    return report


def _match_sbom_documents(client: RegistryClient, repo: str, digest: str, documents: list[Artifact],
                          signed: list[_Seen], report: Report) -> None:
    """The unsigned CycloneDX document other tools (trivy) read must say what a signed SBOM says: one that
    differs (swapped after publishing) fails the sbom check."""
    boms = [(s.statement or {}).get("predicate") for s in signed]
    for doc in documents:
        try:
            m = client.get_manifest(repo, doc.digest).json()
            layer = m["layers"][0]
            if len(m["layers"]) != 1 or (m.get("subject") or {}).get("digest") != digest or \
                    int(layer.get("size") or 0) > MAX_ENVELOPE:
                raise ValueError("not one layer about this digest")
            bom = json.loads(client.get_blob(repo, layer["digest"]))
        except (RegistryError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            bom = None
        if bom is None or bom not in boms:
            for c in report.checks:
                if c.kind == "sbom" and c.passed:
                    c.passed = False
                    c.reason = (f"the CycloneDX document other tools read ({doc.digest[:19]}…) is not the signed "
                                f"SBOM")
            return


def judge(seen: list[_Seen], required: list[str], *, promoted_to: str | None, max_scan_age: dt.timedelta | None,
          now: dt.datetime) -> list[Check]:
    """One check per required kind (plus a promotion into ``promoted_to``) from what was seen."""
    checks: list[Check] = []
    wanted = list(required) + (["promotion"] if promoted_to and "promotion" not in required else [])
    for kind in wanted:
        good = [s for s in seen if s.kind == kind and s.statement is not None]
        bad = [s for s in seen if s.kind == kind and s.statement is None]
        if kind == "promotion" and promoted_to:
            good = [s for s in good if _predicate(s).get("to") == promoted_to]
        if not good and kind == "vex" and not bad and _nothing_waived(seen):
            checks.append(Check(kind, True, "nothing to state: the signed scan waived no finding"))
            continue
        if not good:
            if bad:
                checks.append(Check(kind, False, bad[-1].error, bad[-1].artifact, bad[-1].keyid))
            elif kind == "promotion" and promoted_to:
                checks.append(Check(kind, False, f"no signed promotion into {promoted_to} (copied by hand?)"))
            else:
                checks.append(Check(kind, False, "missing (no signed attestation of this digest)"))
            continue
        checks.append(_judge(kind, good, max_scan_age, now))
    return checks


def _nothing_waived(seen: list[_Seen]) -> bool:
    """The newest valid signed scan passed and ignored nothing (so there is no VEX document to require)."""
    scans = [s for s in seen if s.kind == "scan" and s.statement is not None]
    if not scans:
        return False
    gate = _predicate(max(scans, key=_finished)).get("gate")
    return isinstance(gate, dict) and gate.get("ignored") == [] and gate.get("passed") is True


def _finished(s: _Seen) -> dt.datetime:
    """When a scan attestation's scan finished (the oldest possible time when it does not say)."""
    try:
        return attest.parse_time(_predicate(s)["metadata"]["scanFinishedOn"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def _predicate(s: _Seen) -> dict[str, Any]:
    p = (s.statement or {}).get("predicate")
    return p if isinstance(p, dict) else {}


def _judge(kind: str, good: list[_Seen], max_scan_age: dt.timedelta | None, now: dt.datetime) -> Check:
    if kind != "scan":
        s = good[-1]
        details: dict[str, Any] = {}
        if kind == "promotion":
            p = _predicate(s)
            details = {"from": p.get("from"), "to": p.get("to"), "time": p.get("time"), "approver": p.get("approver")}
        return Check(kind, True, f"signed by {s.keyid[:16]}", s.artifact, s.keyid, details)

    newest = max(good, key=_finished)
    when = _finished(newest)
    pred = _predicate(newest)
    gate = pred.get("gate") if isinstance(pred.get("gate"), dict) else {}
    scanner = pred.get("scanner") if isinstance(pred.get("scanner"), dict) else {}
    age = now - when
    details = {"scanned": attest.iso(when) if when.year > 1 else None, "age_seconds": int(age.total_seconds()),
               "passed": gate.get("passed"), "trivy": scanner.get("version")}
    if when.year == 1:
        return Check(kind, False, "scan attestation has no scanFinishedOn time", newest.artifact, newest.keyid)
    if gate.get("passed") is not True:
        return Check(kind, False, f"the signed scan says the gate failed ({gate.get('reason', 'no reason')})",
                     newest.artifact, newest.keyid, details)
    if max_scan_age is not None and age > max_scan_age:
        return Check(kind, False, f"newest signed scan is {_human(age)} old, older than max_scan_age "
                                  f"({_human(max_scan_age)})", newest.artifact, newest.keyid, details)
    return Check(kind, True, f"passed, {_human(age)} old, signed by {newest.keyid[:16]}", newest.artifact,
                 newest.keyid, details)


def _human(delta: dt.timedelta) -> str:
    s = int(delta.total_seconds())
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    if s >= 60:
        return f"{s // 60}m"
    return f"{s}s"


# ------------------------------------------------------------------------------------------------------------
# The project's view: which keys an environment trusts, what it requires

DEFAULT_REQUIRED = ["provenance", "sbom", "scan", "vex"]


def required_for(project: Project, env: str) -> list[str]:
    return list(project.config.env(env).gates.require_attestations)


def keys_for(project: Project, env: str, key_file: str | None = None) -> list[PublicKey]:
    if key_file:
        return [load_key_file(key_file)]
    keys = trusted_keys(project, env)
    if not keys:
        raise InputError(f"environments.{env}.trusted_keys is empty: configure the public keys {env} trusts, "
                         f"or name one with --key FILE")
    return keys


# ------------------------------------------------------------------------------------------------------------
# Hooks: publish, the promotion gate, promotion


@dataclass
class BuildFacts:
    """What the build knows that the provenance records."""

    definition_file: str
    revision: str
    source: str
    recipe_digest: str
    parent_reference: str
    parent_digest: str
    fingerprint: str
    builder: str
    builder_version: str
    started: dt.datetime
    finished: dt.datetime


def attest_publish(project: Project, published: Published, *, image_id: str, facts: BuildFacts,
                   scan: tuple[Any, Any] | None, signer: Signer | None = None,
                   now: dt.datetime | None = None) -> list[Artifact]:
    """Sign and attach provenance, SBOM (+ the plain CycloneDX document trivy reads), scan and VEX to a freshly
    published image. No signer configured: nothing is attached (the prod gate will say so)."""
    signer = signer or project_signer(project)
    if signer is None:
        log.info("signing.key is not configured: %s carries no attestations", published.pinned)
        return []
    now = now or dt.datetime.now(dt.timezone.utc)
    env = project.config.env(published.env)
    if env.kind == "ecr":
        log.warning("%s: ECR environments carry no attestations yet (README: Signed evidence)", published.pinned)
        return []
    repo = env.repository(published.key.name)
    repository, digest = published.repository, published.digest
    sbom_path = project.state_dir / "sbom" / f"{digest.replace(':', '-')}.cdx.json"
    from bakery import scan as scan_mod  # only where a build attests (cold start of a promotion: not needed)

    scan_mod.write_sbom(project, image_id, sbom_path)
    bom_bytes = sbom_path.read_bytes()
    statements = [
        ("provenance", attest.provenance(repository=repository, digest=digest, image=str(published.key),
                                         definition_file=facts.definition_file, revision=facts.revision,
                                         source=facts.source, recipe_digest=facts.recipe_digest,
                                         parent_reference=facts.parent_reference, parent_digest=facts.parent_digest,
                                         fingerprint=facts.fingerprint, builder=facts.builder,
                                         builder_version=facts.builder_version, started=facts.started,
                                         finished=facts.finished)),
        ("sbom", attest.sbom(repository=repository, digest=digest, bom=json.loads(bom_bytes))),
    ]
    if scan is not None:
        result, decision = scan
        statements.append(("scan", attest.scan(repository=repository, digest=digest, result=result,
                                               decision=decision)))
        vex = attest.vex(repository=repository, digest=digest, decision=decision, now=now,
                         author=f"bakery policy ({project.rel(project.config_file) if project.config_file else 'bakery.yaml'})")
        if vex is not None:  # nothing waived: no VEX document (the signed scan says so: ignored == [])
            statements.append(("vex", vex))
    items = [sbom_item(bom_bytes)] + [signed_item(kind, signer, stmt) for kind, stmt in statements]
    return attach(registry_for(project, published.env), repo, digest, items, now=now)


def attest_scan(project: Project, reg: Any, repo: str, repository: str, digest: str, result: Any, decision: Any,
                now: dt.datetime | None = None) -> Artifact | None:
    """A fresh signed scan attestation (the promotion's scan gate ran it); None without a signer."""
    signer = project_signer(project)
    if signer is None:
        return None
    stmt = attest.scan(repository=repository, digest=digest, result=result, decision=decision)
    return attach(reg, repo, digest, [signed_item("scan", signer, stmt)], now=now)[0]


def gate(project: Project, reg: Any, repo: str, pub: Published, to_env: str, *, now: dt.datetime,
         fresh_scan: tuple[Any, Any] | None = None) -> tuple[bool, str, dict[str, Any]]:
    """The ``attestations`` gate of ``to_env`` on ``repo@digest`` in the source registry: (passed, reason, details).
    Every required kind must be signed by one of ``to_env``'s trusted keys and be about this digest; the newest
    signed scan must have passed and be younger than ``max_scan_age``. ``fresh_scan``: the scan gate's result,
    signed and attached first when it was just run, or when the signed scans are too old and it is within
    ``max_scan_age`` (a stored scan nobody signed)."""
    env = project.config.env(to_env)
    required = list(env.gates.require_attestations)
    keys = keys_for(project, to_env)

    def check() -> Report:
        return verify(reg, repo, pub.digest, keys, required, max_scan_age=env.gates.max_scan_age_delta, now=now)

    if fresh_scan is not None and not getattr(fresh_scan[0], "cached", False):
        attest_scan(project, reg, repo, pub.repository, pub.digest, *fresh_scan, now=now)
    report = check()
    if not report.passed and fresh_scan is not None and any(c.kind == "scan" and not c.passed
                                                            for c in report.checks):
        attest_scan(project, reg, repo, pub.repository, pub.digest, *fresh_scan, now=now)
        report = check()
    details = {"required": required, "checks": [c.to_json() for c in report.checks]}
    if report.passed:
        return True, f"{', '.join(required)} signed by a trusted key", details
    return False, "; ".join(report.failures()), details


def carry(project: Project, src: Any, src_repo: str, dst: Any, dst_repo: str, digest: str,
          promotion: Any = None, found: tuple[list[Artifact], str] | None = None) -> dict[str, Any]:
    """Promotion: copy the digest's attestations byte for byte, then add the promotion's own signed attestation
    (``promotion``: the Promotion being made; None adds none). ECR: nothing is carried yet (README). ``found``:
    :func:`lookup`'s answer when the caller asked it already (while the image was copied)."""
    if not isinstance(src, RegistryClient) or not isinstance(dst, RegistryClient):
        return {}
    copied = copy(src, src_repo, dst, dst_repo, digest, found)
    added = attest_promotion(project, dst, dst_repo, promotion, clock()) if promotion is not None else None
    return {"attestations_copied": copied, "promotion_attestation": added.digest if added else None}


def attest_promotion(project: Project, reg: Any, repo: str, promotion: Any, now: dt.datetime) -> Artifact | None:
    """The promotion's own signed attestation on the target; None without a signer."""
    signer = project_signer(project)
    if signer is None:
        log.info("signing.key is not configured: the promotion of %s is not attested", promotion.image)
        return None
    stmt = attest.promotion(repository=promotion.target, digest=promotion.digest, image=promotion.image,
                            build_tag=promotion.build_tag, from_env=promotion.from_env, to_env=promotion.to_env,
                            source=promotion.source, target=promotion.target,
                            gates=[g.to_json() for g in promotion.gates], approved_by=promotion.approved_by, now=now)
    return attach(reg, repo, promotion.digest, [signed_item("promotion", signer, stmt)], now=now)[0]


def envelope_row(raw: bytes, row: dict[str, Any]) -> dict[str, Any]:
    """A listing row for one envelope: its key ids and claimed kind (nothing verified)."""
    try:
        env_ = json.loads(raw)
        row["keyids"] = [s.get("keyid") for s in env_.get("signatures") or [] if isinstance(s, dict)]
        row["kind"] = _unverified_kind(raw, row.get("kind") or "unknown")
    except (ValueError, AttributeError, TypeError) as exc:
        row["error"] = f"unreadable: {exc}"
    return row


def list_rows(reg: Any, repo: str, digest: str) -> tuple[list[dict[str, Any]], str]:
    """What ``repo@digest`` carries, as the index says, plus each envelope's key ids (unverified)."""
    client = _client(reg, f"{repo}@{digest}")
    artifacts, how = list_artifacts(client, repo, digest)
    rows = []
    for a in artifacts:
        row = a.to_json()
        if a.artifact_type == DSSE_TYPE:
            try:
                m = client.get_manifest(repo, a.digest).json()
                row = envelope_row(client.get_blob(repo, m["layers"][0]["digest"]), row)
            except (RegistryError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                row["error"] = f"unreadable: {exc}"
        rows.append(row)
    return rows, how
