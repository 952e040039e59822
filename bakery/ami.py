"""Machine images (AMIs) through boto3: publish, promote (copy_image), rollback, source-AMI change detection.

Identity. An AMI build is identified through promotion by its *origin*: ``ami:REGION:AMI-ID`` of the AMI
Packer made for the first environment. That string is the ledger ``digest`` of every publish, promote
and rollback event of the build, so the promotion gates ("was it in the previous environment?", scan
age, soak) work exactly as for containers. The environment's own copies (one AMI per region) are in the
event's ``details["amis"]``.

Promotion never rebuilds: ``copy_image`` from the previous environment's AMI into each target region,
wait until ``available``, copy the ``bakery:*`` tags explicitly (copy_image copies none), grant launch
permission to the target environment's account (``modify_image_attribute``; snapshots get
``createVolumePermission``), then record the event. Rollback re-points the environment's current
record to the previous build's AMIs (they must still exist).

Where moto differs from AWS (tests run against moto in server mode):
- images that moto creates (register/copy/create_image) have ``RootDeviceType: standard``, so Packer
  refuses them as a *source* AMI: build from moto's built-in ``ebs`` AMIs and leave
  ``root-device-type`` out of test filters;
- ``register_image`` ignores ``TagSpecifications`` and ``copy_image`` copies no tags (AWS does not
  copy tags either): bakery always tags explicitly with ``create_tags``;
- ``CreationDate`` has one-second resolution and every built-in AMI shares the server's start time:
  the newest source AMI is chosen by (CreationDate, Name, ImageId);
- copies are ``available`` at once (AWS: minutes), so the wait loop returns on its first poll;
- one set of credentials owns every region: "another account" is the account given launch permission.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery import aws
from bakery.configview import Project
from bakery.errors import BakeryError, InputError, StepFailed
from bakery.ledger import Event, arrival_order, open_ledger
from bakery.ledger import now as ledger_now
from bakery.model import Held, ImageKey, ImageSpec, Published, Reason, StoredBuild
from bakery.ref import FleetRef, split_image
from bakery.tags import Scheme, ref_image
from bakery.tags import next_build_tag as next_tag

if TYPE_CHECKING:
    from bakery.config import Environment
    from bakery.plan import Judging, PlanItem

# boto3/botocore are imported where they are used: ~0.3 s of start-up that `bakery list/render/plan` never need.

ORIGIN_PREFIX = "ami:"
TAG_ENV = "bakery:env"
TAG_ORIGIN = "bakery:origin"
TAG_SOURCE = "bakery:source-ami"
WAIT_TIMEOUT = 1800.0
POLL_SECONDS = 5.0

Progress = Callable[[str, str, str], None]  # (region, ami id, state)

log = logging.getLogger("bakery.ami")


@dataclass(frozen=True)
class AmiRecord:
    """What the ledger says an environment runs for one image: the build's origin and its AMIs per region."""

    image: str  # NAME:VERSION
    env: str
    origin: str  # ami:REGION:AMI-ID of the first build
    build_tag: str
    amis: dict[str, str] = field(default_factory=dict)  # region -> ami id in this environment
    fingerprint: str = ""
    source_ami: str = ""
    account: str = ""
    event_kind: str = ""
    time: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "env": self.env, "origin": self.origin, "build_tag": self.build_tag,
                "amis": dict(self.amis), "fingerprint": self.fingerprint, "source_ami": self.source_ami,
                "account": self.account, "event": self.event_kind,
                "time": self.time.isoformat().replace("+00:00", "Z") if self.time else None}


def ami_key(project: Project, ref: str, *, specs: dict[ImageKey, ImageSpec] | None = None,
            events: list[Event] | None = None) -> ImageKey | None:
    """The image key when ``ref`` (NAME:VERSION[-VARIANT] or NAME:BUILD_TAG) names an AMI image (amazon-ebs
    definition or AMI records in the ledger), else None: how the store layer (bakery.store.artifact_kind)
    tells the kinds apart. ``specs``/``events``: the fleet's specs and the ledger's events when the caller
    has them (status asks for every image)."""
    image = ref_image(project.config.tags.build, ref)
    if image is None:
        return None
    name, version = split_image(image)
    if specs is None:
        try:
            # Loading the fleet (YAML, models, template checks) only to learn that no definition builds this
            # image as an AMI costs a short command most of its time: a definition that does has both words.
            mentioned = definitions_mention(project.definitions_dir, b"amazon-ebs", name.encode())
            if mentioned:
                from bakery.definitions import load_fleet  # start-up: only when a definition may be an AMI

                specs = load_fleet(project).specs
            else:
                specs = {}
        except BakeryError:  # definitions are optional here; the ledger decides then
            specs = {}
    for key, spec in specs.items():
        if key.name == name and key.tag_version == version:
            return key if is_ami_spec(spec) else None
    if events is None:
        events = open_ledger(project).events(image=image)
    if any(e.image == image and is_ami_digest(e.digest) for e in events):
        return ImageKey(name, version)
    return None


def definitions_mention(directory: Path, *needles: bytes) -> bool:
    """Whether a definition file under ``directory`` contains every one of ``needles`` (a quick pre-check, no
    parsing: a definition of image NAME built by amazon-ebs has both words in its text)."""
    try:
        files = [p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    except OSError:
        return True
    for path in files:
        try:
            text = path.read_bytes()
            if all(n in text for n in needles):
                return True
        except OSError:
            return True  # unreadable: let the full load say what is wrong
    return False


def origin(region: str, ami_id: str) -> str:
    return f"{ORIGIN_PREFIX}{region}:{ami_id}"


def is_ami_digest(digest: str) -> bool:
    return digest.startswith(ORIGIN_PREFIX)


def parse_origin(value: str) -> tuple[str, str]:
    """``ami:us-east-1:ami-123`` → (region, ami id)."""
    if not is_ami_digest(value) or value.count(":") != 2:
        raise InputError(f"not an AMI reference: {value!r} (expected ami:REGION:AMI-ID)")
    _, region, ami_id = value.split(":")
    return region, ami_id


# ---------------------------------------------------------------------------------------------- AWS plumbing

def client(project: Project, region: str, service: str = "ec2") -> Any:
    """A boto3 client for ``region`` (``aws.endpoint_url`` when set: moto or another endpoint)."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(service, region_name=region, endpoint_url=project.config.aws.endpoint_url or None,
                        config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10,
                                          read_timeout=60))


_call = aws.call  # one mapping of boto3 failures onto exit codes (bakery.aws)


def aws_target(project: Project, env_name: str) -> tuple[str, list[str]]:
    """(account, regions) of an environment; the global ``aws.region`` when it names none."""
    env: Environment = project.config.env(env_name)
    if env.aws is not None and env.aws.regions:
        return env.aws.account, list(env.aws.regions)
    return (env.aws.account if env.aws else ""), [project.config.aws.region]


def tags_dict(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


def describe(project: Project, region: str, ami_id: str) -> dict[str, Any] | None:
    ec2 = client(project, region)
    from botocore.exceptions import ClientError

    try:
        images = ec2.describe_images(ImageIds=[ami_id]).get("Images", [])
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))  # InvalidAMIID.NotFound / .Malformed
        if code.endswith((".NotFound", ".Malformed")):
            return None
        raise
    return images[0] if images else None


def _tag(project: Project, region: str, ami_id: str, tags: dict[str, str], *, snapshots: bool = True) -> None:
    ec2 = client(project, region)
    items = [{"Key": k, "Value": str(v)} for k, v in sorted(tags.items()) if v != ""]
    resources = [ami_id]
    if snapshots:
        image = _call(f"describe {ami_id} in {region}", lambda: describe(project, region, ami_id)) or {}
        resources += [bd["Ebs"]["SnapshotId"] for bd in image.get("BlockDeviceMappings", [])
                      if bd.get("Ebs", {}).get("SnapshotId")]
    if items:
        _call(f"tag {ami_id} in {region}", lambda: ec2.create_tags(Resources=resources, Tags=items))


def _grant(project: Project, region: str, ami_id: str, account: str) -> None:
    """Launch permission on the AMI and create-volume permission on its snapshots for ``account``."""
    if not account:
        return
    ec2 = client(project, region)
    image = _call(f"describe {ami_id} in {region}", lambda: describe(project, region, ami_id)) or {}
    if image.get("OwnerId") == account:
        return
    _call(f"grant launch permission on {ami_id} to {account}",
          lambda: ec2.modify_image_attribute(ImageId=ami_id, LaunchPermission={"Add": [{"UserId": account}]}))
    for bd in image.get("BlockDeviceMappings", []):
        snap = bd.get("Ebs", {}).get("SnapshotId")
        if snap:
            _call(f"grant create-volume permission on {snap} to {account}",
                  lambda snap=snap: ec2.modify_snapshot_attribute(
                      SnapshotId=snap, Attribute="createVolumePermission", OperationType="add",
                      UserIds=[account]))


def launch_permissions(project: Project, region: str, ami_id: str) -> list[str]:
    """Accounts with launch permission on an AMI."""
    ec2 = client(project, region)
    attr = _call(f"describe launch permission of {ami_id}",
                 lambda: ec2.describe_image_attribute(ImageId=ami_id, Attribute="launchPermission"))
    return sorted(p["UserId"] for p in attr.get("LaunchPermissions", []) if "UserId" in p)


def wait_available(project: Project, region: str, ami_id: str, *, timeout: float = WAIT_TIMEOUT,
                   poll: float = POLL_SECONDS, on_progress: Progress | None = None) -> dict[str, Any]:
    """Poll until the AMI is ``available`` (reporting each state); ``failed``/``invalid`` or timeout → exit 1."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        image = _call(f"describe {ami_id} in {region}", lambda: describe(project, region, ami_id))
        state = (image or {}).get("State", "missing")
        if state != last and on_progress is not None:
            on_progress(region, ami_id, state)
        last = state
        if state == "available":
            return image or {}
        if state in ("failed", "invalid", "deregistered", "error"):
            reason = (image or {}).get("StateReason", {}).get("Message", "")
            raise StepFailed(f"AMI {ami_id} in {region} is {state}{': ' + reason if reason else ''}")
        if time.monotonic() >= deadline:
            raise StepFailed(f"AMI {ami_id} in {region} not available after {timeout:g}s (state {state})")
        time.sleep(poll)


# ---------------------------------------------------------------------------------------------- source AMIs

def source_filter(spec: ImageSpec) -> tuple[list[str], list[dict[str, Any]]]:
    """(owners, filters) from the definition's ``packer.source_ami_filter``."""
    settings = spec.packer or {}
    raw = settings.get("source_ami_filter")
    if not isinstance(raw, dict) or not raw.get("filters"):
        raise InputError(f"{spec.source_file}: packer.source_ami_filter: an amazon-ebs definition needs "
                         f"{{owners: [...], filters: {{name: ...}}}}")
    owners = raw.get("owners") or []
    if isinstance(owners, str):
        owners = [owners]
    filters_raw = raw["filters"]
    if not isinstance(filters_raw, dict):
        raise InputError(f"{spec.source_file}: packer.source_ami_filter.filters: must be a mapping name -> value")
    filters = [{"Name": str(k), "Values": [str(x) for x in (v if isinstance(v, list) else [v])]}
               for k, v in sorted(filters_raw.items())]
    return [str(o) for o in owners], filters


def build_region(project: Project, spec: ImageSpec | None = None) -> str:
    _, regions = aws_target(project, project.config.first_env)
    return regions[0]


def newest_source_ami(project: Project, spec: ImageSpec, region: str | None = None) -> str:
    """The newest AMI matching the definition's owner/name filter (by CreationDate, then Name, then id)."""
    owners, filters = source_filter(spec)
    region = region or build_region(project, spec)
    ec2 = client(project, region)
    kwargs: dict[str, Any] = {"Filters": filters}
    if owners:
        kwargs["Owners"] = owners
    images = _call(f"find the source AMI for {spec.ref} in {region}",
                   lambda: ec2.describe_images(**kwargs).get("Images", []))
    images = [i for i in images if i.get("State", "available") == "available"]
    if not images:
        shown = ", ".join(f"{f['Name']}={'|'.join(f['Values'])}" for f in filters)
        raise InputError(f"{spec.source_file}: packer.source_ami_filter: no AMI matches {shown}"
                         f"{' owned by ' + ','.join(owners) if owners else ''} in {region}")
    best = max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", ""), i["ImageId"]))
    return str(best["ImageId"])


@dataclass(frozen=True)
class SourceDrift:
    """Nightly change detection: the source AMI the dev build used against the newest one now."""

    image: str
    built_from: str  # "" when never built
    newest: str

    @property
    def changed(self) -> bool:
        return self.built_from != self.newest

    def reason(self) -> str:
        if not self.built_from:
            return f"never built (source AMI {self.newest})"
        return f"source AMI moved {self.built_from} → {self.newest}"


def source_drift(project: Project, spec: ImageSpec) -> SourceDrift:
    """Whether a newer source AMI exists than the one the first environment's current build used
    (treated by ``bakery plan`` like a moved upstream digest)."""
    newest = newest_source_ami(project, spec)
    rec = current_ami(project, spec.key, project.config.first_env)
    return SourceDrift(image=spec.ref, built_from=rec.source_ami if rec else "", newest=newest)


# ---------------------------------------------------------------------------------------------- ledger view

def _image(key: ImageKey | str) -> str:
    return str(key)


def _record(ev: Event) -> AmiRecord:
    d = ev.details or {}
    return AmiRecord(image=ev.image, env=ev.to_env, origin=ev.digest, build_tag=ev.build_tag,
                     amis=dict(d.get("amis") or {}), fingerprint=str(d.get("fingerprint", "")),
                     source_ami=str(d.get("source_ami", "")), account=str(d.get("account", "")),
                     event_kind=ev.kind, time=ev.time)


def _moves(project: Project, image: str, env: str) -> list[Event]:
    return [e for e in open_ledger(project).events(image=image, env=env)
            if e.kind in ("publish", "promote", "rollback") and is_ami_digest(e.digest)]


def running(project: Project, ref: str | None = None, env: str | None = None) -> list[AmiRecord]:
    """What each environment (or ``env``) currently runs, per AMI image of the ledger (``ref`` narrows it):
    the records behind `bakery amis`."""
    envs = [env] if env else project.config.env_order
    for e in envs:
        project.config.env(e)  # an unknown environment is bad input, named
    images = sorted({ev.image for ev in open_ledger(project).events(image=ref) if is_ami_digest(ev.digest)})
    return [rec for image in images for e in envs if (rec := current_ami(project, image, e)) is not None]


def current_ami(project: Project, key: ImageKey | str, env: str) -> AmiRecord | None:
    """What the ledger says ``env`` runs for this image (None when nothing was ever put there)."""
    moves = _moves(project, _image(key), env)
    return _record(moves[-1]) if moves else None


def history(project: Project, key: ImageKey | str, env: str) -> list[AmiRecord]:
    """Every AMI arrival in ``env`` for this image, oldest first."""
    return [_record(e) for e in _moves(project, _image(key), env)]


# ---------------------------------------------------------------------------------------------- publish

def next_build_tag(project: Project, spec: ImageSpec, fingerprint: str = "", today: dt.date | None = None) -> str:
    """The next build tag of the configured scheme for an AMI build, unique against the ledger and the
    AMIs already tagged in the build region (a build whose publish failed still holds its name)."""
    existing = {e.build_tag for e in open_ledger(project).events(image=spec.ref)}
    region = build_region(project, spec)
    ec2 = client(project, region)
    images = _call(f"list AMIs of {spec.ref} in {region}", lambda: ec2.describe_images(Owners=["self"], Filters=[
        {"Name": "tag:bakery:name", "Values": [spec.key.name]},
        {"Name": "tag:bakery:version", "Values": [spec.key.tag_version]}]).get("Images", []))
    existing |= {tags_dict(i.get("Tags")).get("bakery:build-tag", "") for i in images}
    existing |= {str(i.get("Name", "")).removeprefix(f"{spec.key.name}-") for i in images}
    return next_tag(project.config.tags.build, name=spec.key.name, version=spec.key.version,
                    variant=spec.key.variant, today=today or ledger_now().date(), existing=existing,
                    fingerprint=fingerprint)


def siblings(project: Project, env: str, key: ImageKey, build_tag: str) -> dict[str, str]:
    """region -> AMI of one build in every region of ``env`` (Packer's ``ami_regions`` copies carry its tags)."""
    _, regions = aws_target(project, env)
    out: dict[str, str] = {}
    for region in regions:
        ec2 = client(project, region)
        images = _call(f"find {key} {build_tag} in {region}", lambda ec2=ec2: ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "tag:bakery:name", "Values": [key.name]},
                                      {"Name": "tag:bakery:build-tag", "Values": [build_tag]}]).get("Images", []))
        for img in sorted(images, key=lambda i: i["ImageId"]):
            if TAG_ENV not in tags_dict(img.get("Tags")) or tags_dict(img.get("Tags")).get(TAG_ENV) == env:
                out.setdefault(region, img["ImageId"])
    return out


def publish_ami(project: Project, key: ImageKey, ami_id: str, region: str, fingerprint: str, build_tag: str = "",
                source_ami: str = "", *, ami_ids: dict[str, str] | None = None, scan: dict[str, Any] | None = None,
                env: str | None = None, spec: ImageSpec | None = None) -> AmiRecord:
    """Record a freshly built AMI for the first environment: ``bakery:*`` tags on every regional copy
    Packer made (AMI and snapshots), launch permission for the environment's account, a ``publish``
    ledger event. ``build_tag``/``source_ami`` default to the tags Packer put on the AMI; the other
    regions' copies are found by their tags when ``ami_ids`` is not given."""
    env = env or project.config.first_env
    account, _ = aws_target(project, env)
    image = _call(f"describe {ami_id} in {region}", lambda: describe(project, region, ami_id))
    if not image:
        raise StepFailed(f"{key}: AMI {ami_id} not found in {region}")
    have = tags_dict(image.get("Tags"))
    build_tag = build_tag or have.get("bakery:build-tag", "")
    source_ami = source_ami or have.get(TAG_SOURCE, "")
    fingerprint = fingerprint or have.get("bakery:fingerprint", "")
    if not build_tag:
        raise StepFailed(f"{key}: AMI {ami_id} has no bakery:build-tag tag and no build tag was given")
    amis = dict(ami_ids or {}) or siblings(project, env, key, build_tag)
    amis[region] = ami_id
    the_origin = origin(region, ami_id)
    tags = {"bakery:name": key.name, "bakery:version": key.tag_version, "bakery:fingerprint": fingerprint,
            "bakery:build-tag": build_tag, TAG_ENV: env, TAG_ORIGIN: the_origin, TAG_SOURCE: source_ami}
    for r, a in sorted(amis.items()):
        wait_available(project, r, a, poll=1.0)
        _tag(project, r, a, tags)
        _grant(project, r, a, account)
    rec_details = {"builder": "amazon-ebs", "amis": amis, "fingerprint": fingerprint, "source_ami": source_ami,
                   "account": account, "tags": tags}
    ev = Event(kind="publish", image=str(key), digest=the_origin, build_tag=build_tag, from_env=None, to_env=env,
               scan=scan, details=rec_details)
    open_ledger(project).record(ev)
    return _record(ev)


def key_name(image: str) -> str:
    return split_image(image)[0]


def is_ami_spec(spec: ImageSpec) -> bool:
    return spec.builder == "packer" and (spec.packer or {}).get("kind") == "amazon-ebs"


# ---------------------------------------------------------------------------------------------- the AMI store


class AmiStore:
    """An environment's machine images (:class:`bakery.store.ArtifactStore`): a build is its origin
    ``ami:REGION:AMI-ID``; the ledger records which build the environment runs and its AMI in each region."""

    kind = "ami"
    noun = "AMI"
    scannable = False  # no container filesystem for trivy
    uses_aliases = False  # the ledger record says which build an environment runs
    write_ahead = False  # no reservations or intents for AMIs yet (bakery.integrity covers registries)

    def where(self, name: str) -> str:
        return f"{self.env} AMIs of {name}"

    def __init__(self, project: Project, env: str):
        self.project = project
        self.env = env
        project.config.env(env)

    def _records(self, key: ImageKey | str) -> list[AmiRecord]:
        return history(self.project, key, self.env)

    def _record_of(self, key: ImageKey | str, origin_: str) -> AmiRecord | None:
        found = [r for r in self._records(key) if r.origin == origin_]
        return found[-1] if found else None

    def _published(self, key: ImageKey, rec: AmiRecord) -> Published:
        return Published(key=key, env=self.env, repository="", build_tag=rec.build_tag, digest=rec.origin,
                         created=rec.time)

    def resolve(self, ref: str) -> Published:
        r = FleetRef.parse(ref)
        if r.digest or not r.tag:
            raise InputError(f"{ref}: name an AMI image as NAME:VERSION or NAME:BUILD_TAG")
        scheme = Scheme(self.project.config.tags.build)
        version = scheme.version_of(r.tag, name=r.name)
        key = ImageKey(r.name, version or r.tag)
        if version:
            found = [x for x in self._records(key) if x.build_tag == r.tag]
            if not found:
                raise StepFailed(f"{key}: {r.tag} was never in {self.env}; promote it there first")
            return self._published(key, found[-1])
        rec = current_ami(self.project, key, self.env)
        if rec is None:
            raise StepFailed(f"{key}: no AMI in {self.env} to promote (build and publish it first)")
        return self._published(key, rec)

    def holds(self, pub: Published, aliases: list[str] | None = None) -> bool:
        if aliases is not None:  # "up to date": the environment runs this very build
            cur = current_ami(self.project, pub.key, self.env)
            return cur is not None and cur.origin == pub.digest
        rec = self._record_of(pub.key, pub.digest)
        if rec is None or not rec.amis:
            return False
        for region, ami_id in sorted(rec.amis.items()):
            found = _call(f"describe {ami_id} in {region}", lambda r=region, a=ami_id: describe(self.project, r, a))
            if not found or found.get("State") != "available":
                return False
        return True

    def conflict(self, pub: Published) -> tuple[str, dict[str, Any]] | None:
        return None  # an AMI build has no tag another build could hold

    def aliases(self, key: ImageKey, today: dt.date, *, identifying_only: bool = False) -> list[str]:
        return []  # the ledger record is the pointer

    def current(self, key: ImageKey, events: list[Event], today: dt.date) -> str | None:
        rec = current_ami(self.project, key, self.env)
        return rec.origin if rec else None

    live = current

    def history(self, key: ImageKey, events: list[Event]) -> list[Published]:
        return [self._published(key, r) for r in self._records(key)]

    def build(self, key: ImageKey, digest: str, events: list[Event], to: str | None = None) -> Published:
        if to:
            raise InputError("--to is not supported for AMI images: they roll back to the previous build")
        rec = self._record_of(key, digest)
        if rec is None:
            raise StepFailed(f"{key}: {digest} was never in {self.env}")
        return self._published(key, rec)

    def build_tag_of(self, key: ImageKey, digest: str, events: list[Event]) -> str:
        rec = self._record_of(key, digest)
        return rec.build_tag if rec else ""

    def missing_message(self, pub: Published) -> str:
        return f"{pub.key}: cannot roll {self.env} back to {pub.build_tag}: its AMIs are gone"

    def labels(self, pub: Published) -> dict[str, str]:
        return {}

    def describe(self, pub: Published | None, key: ImageKey, events: list[Event]) -> dict[str, Any]:
        rec = current_ami(self.project, key, self.env)
        return {"kind": self.kind, "env": self.env,
                **({"origin": rec.origin, "amis": dict(rec.amis), "source_ami": rec.source_ami,
                    "account": rec.account} if rec else {})}

    def copy(self, pub: Published, source: Any, aliases: list[str], *,
             on_progress: Progress | None = None, confirm: Callable[[], None] | None = None,
             promotion: Any = None) -> dict[str, Any]:
        """copy_image from the source environment's AMI into each target region (never a rebuild), wait until
        ``available``, copy the ``bakery:*`` tags (copy_image copies none), grant launch permission. (``confirm``
        reads a registry build tag back: AMIs have none, it is not called.)"""
        project, to_env = self.project, self.env
        from_env = source.env
        image = str(pub.key)
        src_rec = source._record_of(pub.key, pub.digest)
        if src_rec is None:
            raise StepFailed(f"{image}: {pub.build_tag} was never in {from_env}; promote it there first")
        account, regions = aws_target(project, to_env)
        src_region = sorted(src_rec.amis)[0] if src_rec.amis else parse_origin(src_rec.origin)[0]
        for r in (project.config.aws.region, *aws_target(project, from_env)[1]):
            if r in src_rec.amis:
                src_region = r
                break
        src_ami = src_rec.amis.get(src_region) or parse_origin(src_rec.origin)[1]
        src_image = _call(f"describe {src_ami} in {src_region}", lambda: describe(project, src_region, src_ami))
        if not src_image:
            raise StepFailed(f"{image}: the {from_env} AMI {src_ami} in {src_region} no longer exists")
        tags = {k: v for k, v in tags_dict(src_image.get("Tags")).items() if k.startswith("bakery:")}
        tags.update({"bakery:name": tags.get("bakery:name") or key_name(image), TAG_ENV: to_env,
                     TAG_ORIGIN: src_rec.origin, "bakery:build-tag": src_rec.build_tag,
                     "bakery:fingerprint": src_rec.fingerprint or tags.get("bakery:fingerprint", ""),
                     TAG_SOURCE: src_rec.source_ami or tags.get(TAG_SOURCE, "")})
        name = f"{src_image.get('Name') or key_name(image)}-{to_env}"[:128]
        copied: dict[str, str] = {}
        for region in regions:
            ec2 = client(project, region)
            resp = _call(f"copy {src_ami} ({src_region}) to {region}",
                         lambda ec2=ec2, region=region: ec2.copy_image(
                             SourceImageId=src_ami, SourceRegion=src_region, Name=name,
                             Description=f"bakery {image} {src_rec.build_tag} for {to_env}"))
            copied[region] = resp["ImageId"]
            if on_progress is not None:
                on_progress(region, resp["ImageId"], "copying")
        for region, ami_id in copied.items():
            wait_available(project, region, ami_id, timeout=self.timeout, poll=self.poll, on_progress=on_progress)
            _tag(project, region, ami_id, tags)
            _grant(project, region, ami_id, account)
        out = {"builder": "amazon-ebs", "amis": copied, "fingerprint": src_rec.fingerprint,
               "source_ami": src_rec.source_ami, "account": account, "copied_from": {src_region: src_ami},
               "tags": tags}
        if promotion is not None:  # its signed promotion attestation (S3, bakery.ami_evidence)
            from bakery import ami_evidence  # signing (cryptography): only where an AMI is attested

            attested = ami_evidence.attest_promotion(
                project, image=image, origin=src_rec.origin, build_tag=src_rec.build_tag, from_env=from_env,
                to_env=to_env, amis=copied, gates=[g.to_json() for g in promotion.gates],
                approved_by=promotion.approved_by, now=ledger_now())
            if attested:
                out["attestation"] = attested
        return out

    def evidence_gate(self, pub: Published, to_env: str, *, now: dt.datetime,
                      fresh_scan: tuple[Any, Any] | None = None) -> tuple[bool, str, dict[str, Any]]:
        """The ``attestations`` gate on the build's signed evidence in S3 (bakery.ami_evidence)."""
        from bakery import ami_evidence

        return ami_evidence.gate(self.project, pub.digest, to_env, now=now)

    def verify_evidence(self, pub: Published, keys: list[Any], required: list[str], *, promoted_to: str | None,
                        max_scan_age: dt.timedelta | None, now: dt.datetime) -> Any:
        from bakery import ami_evidence
        from bakery.evidence import Report

        report = Report(image=pub.digest, digest=pub.digest, required=list(required), listing="s3")
        report.checks = ami_evidence.verify(self.project, pub.digest, keys, required, promoted_to=promoted_to,
                                            now=now)
        return report

    def list_evidence(self, pub: Published) -> tuple[list[dict[str, Any]], str]:
        from bakery import ami_evidence

        return ami_evidence.rows(self.project, pub.digest), "s3"

    def pinned(self, ref: str) -> Published:
        return self.resolve(ref)

    timeout = WAIT_TIMEOUT
    poll = POLL_SECONDS

    def point_aliases(self, pub: Published, key: ImageKey, *, current: str | None,
                      today: dt.date) -> tuple[list[str], list[str], dict[str, Any]]:
        """A rollback re-points the environment's record (the ledger event carries the AMIs); the AMIs get the
        environment's launch permission again."""
        rec = self._record_of(key, pub.digest)
        assert rec is not None
        account, _ = aws_target(self.project, self.env)
        for region, ami_id in sorted(rec.amis.items()):
            _grant(self.project, region, ami_id, account)
        return [], [], {"builder": "amazon-ebs", "amis": dict(rec.amis), "fingerprint": rec.fingerprint,
                        "source_ami": rec.source_ami, "account": account, "rolled_back_from": current}

    # -- planning (bakery plan) --------------------------------------------------------------------------------

    requests = 0  # no registry requests

    def held(self, key: ImageKey) -> Held | None:
        """The ledger's record of what this environment runs (AMIs live in EC2, not in a registry): its build tag,
        origin, fingerprint and source AMI."""
        rec = current_ami(self.project, key, self.env)
        if rec is None:
            return None
        return Held(repository=self.where(key.name), build_tag=rec.build_tag, digest=rec.origin, image_id="",
                    labels={"bakery:fingerprint": rec.fingerprint, TAG_SOURCE: rec.source_ami})

    def upstream_ref(self, spec: ImageSpec) -> str | None:
        return None  # what an AMI is built from is its source AMI, found by judge

    def judge(self, item: PlanItem, recipe: Any, judging: Judging) -> None:
        """``definition`` when the recipe (on the upstream parent now) gives another fingerprint than the ledger
        recorded; ``upstream`` when a newer source AMI matches the definition's filter."""
        spec = item.spec
        try:
            newest = newest_source_ami(self.project, spec)
        except BakeryError as exc:
            item.error = f"cannot check the AMI: {exc}"
            return
        held = judging.currents.get(item.key)
        drift = SourceDrift(image=spec.ref, built_from=held.labels.get(TAG_SOURCE, "") if held else "",
                            newest=newest)
        item.upstream_digest = drift.newest
        if held is None:
            item.reasons.append(Reason("definition", "never published"))
            return
        fingerprint = held.labels.get("bakery:fingerprint", "")
        if recipe is not None and fingerprint:
            try:
                parent_digest = judging.resolve_upstream(spec.parent.reference)
            except BakeryError:
                parent_digest = ""
            if parent_digest and judging.fingerprint(recipe, parent_digest) != fingerprint:
                item.reasons.append(Reason("definition", "recipe changed since the published AMI"))
        if drift.changed:
            item.reasons.append(Reason("upstream", drift.reason()))

    # -- retention (bakery gc) ---------------------------------------------------------------------------------

    def stored(self, events: list[Event], only: str | None = None) -> list[StoredBuild]:
        """Every AMI of this environment (found by its ``bakery:env`` tag in each region), per image oldest first:
        by first arrival of its origin in ``events``, then CreationDate, then build tag. Nothing is asked of
        EC2 when the environment has no ``aws`` settings and ``events`` hold no AMI."""
        order = arrival_order(events)
        if self.project.config.env(self.env).aws is None and \
                not any(is_ami_digest(x) for ids in order.values() for x in ids):
            return []
        _, regions = aws_target(self.project, self.env)
        found: list[tuple[str, dict[str, Any]]] = []
        for region in regions:
            ec2 = client(self.project, region)
            images = _call(f"list {self.env} AMIs in {region}", lambda ec2=ec2: ec2.describe_images(
                Owners=["self"], Filters=[{"Name": f"tag:{TAG_ENV}", "Values": [self.env]}]).get("Images", []))
            found += [(region, i) for i in images]
        by_image: dict[str, list[tuple[str, dict[str, Any], dict[str, str]]]] = {}
        for region, img in found:
            tags = tags_dict(img.get("Tags"))
            name, version = tags.get("bakery:name"), tags.get("bakery:version")
            if not name or not version:
                continue
            key = f"{name}:{version}"
            if only and key != only and name != only:
                continue
            by_image.setdefault(key, []).append((region, img, tags))
        out: list[StoredBuild] = []
        for image, entries in sorted(by_image.items()):
            known = order.get(image, [])

            def rank(entry: tuple[str, dict[str, Any], dict[str, str]]) -> tuple[int, str, str]:
                ident = entry[2].get(TAG_ORIGIN, "")
                pos = known.index(ident) if ident in known else -1
                return pos, entry[1].get("CreationDate", ""), entry[2].get("bakery:build-tag", "")

            for region, img, tags in sorted(entries, key=rank):
                ident = tags.get(TAG_ORIGIN) or origin(region, img["ImageId"])
                snaps = [bd["Ebs"]["SnapshotId"] for bd in img.get("BlockDeviceMappings", [])
                         if bd.get("Ebs", {}).get("SnapshotId")]
                out.append(StoredBuild(kind="ami", image=image, ref=img["ImageId"], where=region,
                                       build_tag=tags.get("bakery:build-tag", ""), identity=ident, build=ident,
                                       snapshots=snaps))
        return out

    def kept_anyway(self, build: StoredBuild, doomed: list[StoredBuild]) -> str | None:
        return None  # each regional AMI goes on its own

    def delete(self, build: StoredBuild) -> None:
        """Deregister the AMI, then delete its snapshots."""
        ec2 = client(self.project, build.where)
        _call(f"deregister {build.ref} in {build.where}", lambda: ec2.deregister_image(ImageId=build.ref))
        for snap in build.snapshots:
            _call(f"delete snapshot {snap} in {build.where}",
                  lambda snap=snap: ec2.delete_snapshot(SnapshotId=snap))
        log.info("deregistered %s in %s (snapshots: %s)", build.ref, build.where, ", ".join(build.snapshots) or "none")
