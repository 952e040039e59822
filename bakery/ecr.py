"""Amazon ECR as a registry kind, through boto3.

Promotion inside one ECR account re-puts the manifest (``put_image``) in the target repository: no blob
moves, the manifest bytes and digest stay the same. Repositories are created with
``imageTagMutability=IMMUTABLE``; when the environment has moving alias tags they are listed as exclusion
filters (``IMMUTABLE_WITH_EXCLUSION`` + ``imageTagMutabilityExclusionFilters``, which ECR only accepts
together) so that only they can move, while every build tag stays immutable.
For a source outside ECR, blobs go through the OCI API with credentials from ``get_authorization_token``.

``Environment.registry`` is ``ACCOUNT.dkr.ecr.REGION.amazonaws.com[/namespace]``; the boto3 endpoint is
``aws.endpoint_url`` (moto in tests) and the region is ``environments.ENV.aws.regions[0]`` or ``aws.region``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

from bakery import secrets
from bakery.errors import AuthenticationFailed, ImmutableTagError, RegistryError, RegistryUnavailable
from bakery.ref import is_digest
from bakery.registry import MANIFEST_TYPES, CopyStats, Manifest, RegistryClient, media_type_of

if TYPE_CHECKING:
    from bakery.config import Project

ALREADY_EXISTS = ("ImageAlreadyExistsException", "ImageTagAlreadyExistsException")  # moto, AWS
NOT_FOUND = ("ImageNotFoundException", "RepositoryNotFoundException")


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


class EcrRegistry:
    """The subset of the registry interface promotion needs, on ECR."""

    def __init__(self, host: str, *, region: str, endpoint_url: str | None = None, registry_id: str | None = None,
                 client: Any = None):
        self.host = host
        self.region = region
        self.endpoint_url = endpoint_url
        self.registry_id = registry_id or host.split(".", 1)[0]
        if client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            client = boto3.client("ecr", region_name=region, endpoint_url=endpoint_url,
                                  config=BotoConfig(retries={"max_attempts": 6, "mode": "standard"},
                                                    connect_timeout=10, read_timeout=60))
        self.ecr = client
        self._no_layer_urls = False

    def __repr__(self) -> str:
        return f"EcrRegistry({self.host!r}, region={self.region!r})"

    @classmethod
    def for_env(cls, project: Project, env_name: str) -> EcrRegistry:
        cfg = project.config
        env = cfg.env(env_name)
        region = env.aws.regions[0] if env.aws and env.aws.regions else cfg.aws.region
        registry_id = env.aws.account if env.aws else None
        return cls(env.host, region=region, endpoint_url=cfg.aws.endpoint_url, registry_id=registry_id)

    # -- plumbing --------------------------------------------------------------------------------------------

    def _call(self, op: str, **kw: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            return getattr(self.ecr, op)(**kw)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = err.get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = secrets.mask(err.get("Message", ""))
            if code in ("UnrecognizedClientException", "AccessDeniedException", "ExpiredTokenException",
                        "InvalidSignatureException"):
                raise AuthenticationFailed(f"ECR {self.host}: {op}: authentication failed ({code})") from None
            if status and (status >= 500 or status == 429):
                raise RegistryUnavailable(f"ECR {self.host}: {op}: {code or status} (after retries)") from None
            raise _EcrError(f"ECR {self.host}: {op}: {code}: {message}", code=code, status=status) from None
        except EndpointConnectionError:
            raise RegistryUnavailable(f"ECR {self.host}: {op}: endpoint unreachable") from None
        except BotoCoreError as exc:
            raise RegistryUnavailable(f"ECR {self.host}: {op}: {secrets.mask(str(exc))}") from None

    @staticmethod
    def _image_id(reference: str) -> dict[str, str]:
        return {"imageDigest": reference} if is_digest(reference) else {"imageTag": reference}

    def _once(self) -> Any:
        """A client without retries, for calls whose failure is an answer (moto: not implemented)."""
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client("ecr", region_name=self.region, endpoint_url=self.endpoint_url,
                            config=BotoConfig(retries={"max_attempts": 1, "mode": "standard"},
                                              connect_timeout=10, read_timeout=30))

    # -- repositories and auth -------------------------------------------------------------------------------

    def ensure_repository(self, repo: str, aliases: list[str] | None = None) -> None:
        """Create ``repo`` with immutable tags (aliases excluded) if it does not exist; keep its exclusions
        up to date with ``aliases``."""
        filters = [{"filterType": "WILDCARD", "filter": a} for a in sorted(set(aliases or []))]
        try:
            kw: dict[str, Any] = {"repositoryName": repo, "imageTagMutability": "IMMUTABLE"}
            if filters:
                kw["imageTagMutability"] = "IMMUTABLE_WITH_EXCLUSION"
                kw["imageTagMutabilityExclusionFilters"] = filters
            self._call("create_repository", **kw)
            return
        except _EcrError as exc:
            if exc.code != "RepositoryAlreadyExistsException":
                raise
        if not filters:
            return
        repos = self._call("describe_repositories", repositoryNames=[repo])["repositories"]
        have = {f.get("filter") for f in (repos[0].get("imageTagMutabilityExclusionFilters") or [])}
        if not {f["filter"] for f in filters} <= have:
            merged = [{"filterType": "WILDCARD", "filter": f} for f in sorted(have | {x["filter"] for x in filters})
                      if f]
            self._call("put_image_tag_mutability", repositoryName=repo, imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
                       imageTagMutabilityExclusionFilters=merged)

    def repository_settings(self, repo: str) -> dict[str, Any]:
        return self._call("describe_repositories", repositoryNames=[repo])["repositories"][0]

    def authorization(self) -> tuple[str, str, str]:
        """(endpoint host, user, password) from ``get_authorization_token``; the password is masked from then on."""
        data = self._call("get_authorization_token")["authorizationData"][0]
        user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        secrets.register(password)
        endpoint = data.get("proxyEndpoint") or f"https://{self.host}"
        return endpoint.split("://", 1)[-1].rstrip("/"), user, password

    def oci_client(self):
        """A :class:`bakery.registry.RegistryClient` for this ECR registry's OCI endpoint (real AWS only)."""
        host, user, password = self.authorization()
        return RegistryClient(host, credentials=(user, password))

    # -- registry interface ----------------------------------------------------------------------------------

    def head_manifest(self, repo: str, reference: str) -> str | None:
        try:
            out = self._call("describe_images", repositoryName=repo, imageIds=[self._image_id(reference)])
        except _EcrError as exc:
            if exc.code in NOT_FOUND:
                return None
            raise
        details = out.get("imageDetails") or []
        return details[0]["imageDigest"] if details else None

    def get_manifest(self, repo: str, reference: str) -> Manifest:
        out = self._call("batch_get_image", repositoryName=repo, imageIds=[self._image_id(reference)],
                         acceptedMediaTypes=list(MANIFEST_TYPES))
        images = out.get("images") or []
        if not images:
            failures = out.get("failures") or [{}]
            raise RegistryError(f"ECR {self.host}: {repo}:{reference}: {failures[0].get('failureCode', 'not found')}",
                                404)
        img = images[0]
        body = img["imageManifest"].encode()
        media_type = img.get("imageManifestMediaType") or media_type_of(body, None)
        return Manifest(body=body, media_type=media_type, digest=img["imageId"].get("imageDigest") or _digest(body))

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        kw: dict[str, Any] = {"repositoryName": repo, "imageManifest": body.decode(),
                              "imageManifestMediaType": media_type, "imageDigest": _digest(body)}
        if not is_digest(reference):
            kw["imageTag"] = reference
        try:
            out = self._call("put_image", **kw)
        except _EcrError as exc:
            if exc.code in ALREADY_EXISTS:
                current = self.head_manifest(repo, reference)
                if current == _digest(body):
                    return current
                raise ImmutableTagError(f"ECR {self.host}/{repo}:{reference} is immutable and points at "
                                        f"{(current or '?')[:19]}…") from None
            raise
        return out["image"]["imageId"]["imageDigest"]

    def list_tags(self, repo: str) -> list[str]:
        tags: list[str] = []
        token = None
        while True:
            kw: dict[str, Any] = {"repositoryName": repo, "filter": {"tagStatus": "TAGGED"}}
            if token:
                kw["nextToken"] = token
            try:
                out = self._call("list_images", **kw)
            except _EcrError as exc:
                if exc.code in NOT_FOUND:
                    return tags
                raise
            tags.extend(i["imageTag"] for i in out.get("imageIds", []) if i.get("imageTag"))
            token = out.get("nextToken")
            if not token:
                return tags

    def labels(self, repo: str, reference: str) -> dict[str, str]:
        """Image labels, read from the config blob through the layer download URL (not available in moto)."""
        import requests

        m = self.get_manifest(repo, reference)
        if m.is_index:
            children = m.children()
            if not children:
                return {}
            m = self.get_manifest(repo, children[0].digest)
        config = m.json().get("config") or {}
        if not config.get("digest"):
            return {}
        if self._no_layer_urls:
            return {}
        try:
            url = self._once().get_download_url_for_layer(repositoryName=repo,
                                                           layerDigest=config["digest"])["downloadUrl"]
            body = requests.get(url, timeout=30).content
            return dict((json.loads(body).get("config") or {}).get("Labels") or {})
        except Exception:  # noqa: BLE001 - labels are a convenience; without them the tags are searched
            self._no_layer_urls = True  # moto: not implemented (HTTP 500); do not ask again
            return {}

    def copy_image(self, src: Any, src_repo: str, digest: str, dst_repo: str) -> CopyStats:
        """Put ``src_repo@digest`` into ``dst_repo`` by digest, without a tag. From ECR in the same account:
        re-put the manifest(s); from elsewhere: blobs and manifest through the OCI API."""
        started = time.monotonic()
        if not isinstance(src, EcrRegistry):
            stats = self.oci_client().copy_image(src, src_repo, digest, dst_repo)
            return stats
        if src.registry_id != self.registry_id or src.region != self.region:
            raise RegistryError(f"ECR promotion copies inside one account and region; {src.host} → {self.host} "
                                f"needs an OCI copy (not supported by this adapter)")
        stats = CopyStats()
        m = src.get_manifest(src_repo, digest)
        if m.digest != digest:
            raise RegistryError(f"ECR {src.host}/{src_repo}@{digest}: source manifest digest is {m.digest}")
        for child in m.children():  # an index: its image manifests first, by digest
            self._copy(src, src_repo, child.digest, dst_repo, stats)
        # The top manifest is written together with the build tag (one atomic put_image): inside one account
        # no blob moves, so nothing can be left half-copied, and a tag-less put_image is what moto cannot do
        # on a repository with exclusion filters.
        stats.blobs_skipped += len(m.blobs())
        stats.seconds = round(time.monotonic() - started, 3)
        return stats

    def _copy(self, src: EcrRegistry, src_repo: str, digest: str, dst_repo: str, stats: CopyStats) -> None:
        if self.head_manifest(dst_repo, digest) == digest:
            stats.manifests_skipped += 1
            return
        m = src.get_manifest(src_repo, digest)
        written = self.put_manifest(dst_repo, digest, m.body, m.media_type)
        if written != digest:
            raise RegistryError(f"ECR {self.host}/{dst_repo}: manifest stored as {written}, expected {digest}")
        stats.manifests_copied += 1
        stats.blobs_skipped += len(m.blobs())  # same account: ECR shares the layers, nothing is sent


class _EcrError(RegistryError):
    def __init__(self, message: str, *, code: str, status: int | None):
        super().__init__(message, status)
        self.code = code

