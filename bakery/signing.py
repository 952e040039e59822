"""Signing keys and DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1).

Keys are ECDSA P-256. A signer is one of:

* a PEM private key in a file (``signing.key: path/to/key.pem`` or ``file:path``),
* a PEM private key in an environment variable (``env:VARNAME``; CI secrets),
* an AWS KMS asymmetric key (``awskms:///alias/NAME`` or ``awskms:///KEY_ID``; boto3, ``aws.endpoint_url``).

Verification is offline: the public keys each environment trusts are ``environments.ENV.trusted_keys``
(PEM files or inline PEM). A key's id is the sha256 of its DER SubjectPublicKeyInfo, in hex.

The envelope: ``{"payloadType", "payload": base64, "signatures": [{"keyid", "sig": base64(DER)}]}``; what is
signed is the pre-authentication encoding ``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP
body`` (LEN as ASCII decimal), never the raw payload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bakery import secrets
from bakery.errors import EnvironmentFailure, InputError, StepFailed, ValidationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from bakery.config import Project

INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
KMS_RAW_LIMIT = 4096  # AWS KMS signs at most 4 KB with MessageType=RAW


class SignatureError(StepFailed):
    """An envelope is malformed, unsigned, or not signed by a trusted key (exit 1)."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def keyid_of(public_key: ec.EllipticCurvePublicKey) -> str:
    from cryptography.hazmat.primitives import serialization  # start-up: cryptography only where keys are used

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def public_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _require_p256(key: Any, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) or \
            not isinstance(key.curve, ec.SECP256R1):
        curve = getattr(getattr(key, "curve", None), "name", type(key).__name__)
        raise InputError(f"{what}: not an ECDSA P-256 key ({curve}); bakery signs with ECDSA P-256 only")


# ------------------------------------------------------------------------------------------------------------
# Signers


class Signer(Protocol):
    keyid: str
    description: str  # where the key lives, never the key

    def sign(self, data: bytes) -> bytes:
        """An ECDSA P-256 / SHA-256 signature (DER) over ``data``."""
        ...

    def public_key(self) -> ec.EllipticCurvePublicKey: ...


@dataclass
class PemSigner:
    key: ec.EllipticCurvePrivateKey
    description: str

    @property
    def keyid(self) -> str:
        return keyid_of(self.key.public_key())

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    @classmethod
    def from_pem(cls, pem: bytes, description: str) -> PemSigner:
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            reason = "it is encrypted (bakery reads unencrypted keys; keep them in a secret store)" \
                if "encrypted" in str(exc).lower() or "password" in str(exc).lower() else "not a PEM private key"
            raise InputError(f"{description}: {reason}") from None
        _require_p256(key, description)
        return cls(key, description)  # type: ignore[arg-type]


class KmsSigner:
    """An AWS KMS ECC_NIST_P256 key. The PAE is sent whole (MessageType=RAW) up to 4 KB, else its SHA-256
    (MessageType=DIGEST): both are ECDSA_SHA_256 over the same bytes, so the signature verifies the same way."""

    def __init__(self, key_id: str, client: Any, description: str):
        self.key_id = key_id
        self.client = client
        self.description = description
        self._public: ec.EllipticCurvePublicKey | None = None

    def public_key(self) -> ec.EllipticCurvePublicKey:
        if self._public is None:
            der = self._call("get_public_key", lambda: self.client.get_public_key(KeyId=self.key_id))["PublicKey"]
            from cryptography.hazmat.primitives import serialization

            key = serialization.load_der_public_key(der)
            _require_p256(key, self.description)
            self._public = key  # type: ignore[assignment]
        assert self._public is not None
        return self._public

    @property
    def keyid(self) -> str:
        return keyid_of(self.public_key())

    def sign(self, data: bytes) -> bytes:
        if len(data) <= KMS_RAW_LIMIT:
            kwargs = {"Message": data, "MessageType": "RAW"}
        else:
            kwargs = {"Message": hashlib.sha256(data).digest(), "MessageType": "DIGEST"}
        out = self._call("sign", lambda: self.client.sign(KeyId=self.key_id, SigningAlgorithm="ECDSA_SHA_256",
                                                          **kwargs))
        return bytes(out["Signature"])

    def _call(self, op: str, fn: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NotFoundException", "InvalidKeyUsageException", "KMSInvalidStateException",
                        "DisabledException"):
                raise InputError(f"{self.description}: KMS {op}: {code}") from None
            raise EnvironmentFailure(f"{self.description}: KMS {op} failed: {code or exc}") from None
        except BotoCoreError as exc:
            raise EnvironmentFailure(f"{self.description}: KMS unreachable during {op}: {exc}") from None


def load_signer(spec: str, project: Project, *, field: str = "signing.key") -> Signer:
    """The signer named by ``spec``: ``env:VAR``, ``awskms:///alias/NAME``, ``file:PATH`` or a path."""
    spec = spec.strip()
    where = f"{project.rel(project.config_file) if project.config_file else 'bakery.yaml'}: {field}"
    if spec.startswith("env:"):
        var = spec[4:]
        value = os.environ.get(var)
        if not value:
            raise InputError(f"{where}: environment variable {var} is not set (it should hold a PEM private key)")
        secrets.register(value)
        return PemSigner.from_pem(value.encode(), f"{where} (${var})")
    if spec.startswith("awskms://"):
        rest = spec[len("awskms://"):]
        endpoint, _, key_id = rest.partition("/")
        if not key_id:
            raise InputError(f"{where}: {spec!r}: use awskms:///alias/NAME or awskms:///KEY_ID")
        import boto3

        aws = project.config.aws
        url = f"http://{endpoint}" if endpoint and "://" not in endpoint else (aws.endpoint_url or None)
        client = boto3.client("kms", region_name=aws.region, endpoint_url=url)
        return KmsSigner(key_id, client, f"{where} ({spec})")
    path = project.path(spec[5:] if spec.startswith("file:") else spec)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{where}: {spec}: cannot read the key file ({exc.strerror or exc}); "
                         f"`bakery dev up` creates a development key") from None
    return PemSigner.from_pem(pem, f"{where} ({spec})")


def project_signer(project: Project) -> Signer | None:
    """The configured signer (``signing.key``), or None when signing is not configured."""
    spec = project.config.signing.key
    return load_signer(spec, project) if spec else None


def generate_key(path: Path) -> Path:
    """Write a new unencrypted ECDSA P-256 private key (mode 0600) and its public key (``.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path = path.with_suffix(".pub")
    public_path.write_bytes(public_pem(key.public_key()))
    return public_path


# ------------------------------------------------------------------------------------------------------------
# Public keys


@dataclass(frozen=True)
class PublicKey:
    key: ec.EllipticCurvePublicKey
    source: str  # file name or "inline", for messages

    @property
    def keyid(self) -> str:
        return keyid_of(self.key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            return True
        except InvalidSignature:
            return False


def load_public_key(pem: bytes, source: str) -> PublicKey:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        try:  # a private key file also gives its public key
            key = serialization.load_pem_private_key(pem, password=None).public_key()
        except (ValueError, TypeError):
            raise InputError(f"{source}: not a PEM public key") from None
    _require_p256(key, source)
    return PublicKey(key, source)  # type: ignore[arg-type]


def trusted_keys(project: Project, env: str) -> list[PublicKey]:
    """The public keys ``env`` trusts (``environments.ENV.trusted_keys``); every entry is checked, and every
    problem is reported as ``FILE: FIELD: what``."""
    entries = project.config.env(env).trusted_keys
    display = project.rel(project.config_file) if project.config_file else "bakery.yaml"
    keys: list[PublicKey] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        field = f"environments.{env}.trusted_keys[{i}]"
        try:
            if entry.lstrip().startswith("-----BEGIN"):
                keys.append(load_public_key(entry.encode(), f"{display}: {field}: inline key"))
            else:
                path = project.path(entry)
                try:
                    pem = path.read_bytes()
                except OSError as exc:
                    raise InputError(f"{display}: {field}: {entry}: cannot read ({exc.strerror or exc})") from None
                keys.append(load_public_key(pem, f"{display}: {field}: {entry}"))
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        raise ValidationError(problems)
    return keys


def key_file(path: str) -> PublicKey:
    """``--key FILE``: a PEM public (or private) key."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"--key {path}: cannot read ({exc.strerror or exc})") from None
    return load_public_key(pem, f"--key {path}")


# ------------------------------------------------------------------------------------------------------------
# DSSE


def sign_envelope(signer: Signer, payload: bytes, payload_type: str = INTOTO_PAYLOAD_TYPE) -> dict[str, Any]:
    signature = signer.sign(pae(payload_type, payload))
    return {"payloadType": payload_type, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": signer.keyid, "sig": base64.b64encode(signature).decode()}]}


def envelope_bytes(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Verified:
    payload_type: str
    payload: bytes
    keyid: str
    key_source: str

    def json(self) -> Any:
        return json.loads(self.payload)


def parse_envelope(raw: bytes) -> dict[str, Any]:
    try:
        env = json.loads(raw)
    except ValueError:
        raise SignatureError("not a DSSE envelope (not JSON)") from None
    if not isinstance(env, dict) or not isinstance(env.get("payloadType"), str) or \
            not isinstance(env.get("payload"), str):
        raise SignatureError("not a DSSE envelope (no payloadType/payload)")
    return env


def verify_envelope(raw: bytes | dict[str, Any], keys: list[PublicKey]) -> Verified:
    """The payload, if at least one signature verifies with one of ``keys``; else :class:`SignatureError`
    saying whether the envelope is unsigned, signed by an unknown key, or its signature does not verify."""
    env = raw if isinstance(raw, dict) else parse_envelope(raw)
    try:
        payload = base64.b64decode(env["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("DSSE payload is not base64") from None
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise SignatureError("unsigned (the envelope has no signatures)")
    message = pae(env["payloadType"], payload)
    bad_known = False
    for s in sigs:
        if not isinstance(s, dict) or not isinstance(s.get("sig"), str):
            continue
        try:
            signature = base64.b64decode(s["sig"], validate=True)
        except (binascii.Error, ValueError):
            continue
        for key in keys:  # the keyid is a hint; every trusted key is tried
            if key.verify(signature, message):
                return Verified(env["payloadType"], payload, key.keyid, key.source)
            if s.get("keyid") == key.keyid:
                bad_known = True
    if bad_known:
        raise SignatureError("signature does not verify (the attestation was changed after signing)")
    ids = ", ".join(str(s.get("keyid", "?"))[:16] for s in sigs if isinstance(s, dict))
    raise SignatureError(f"not signed by a trusted key (signed by keyid {ids or '?'})")
