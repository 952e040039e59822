"""Drift: what is deployed, against what an environment has promoted.

Sources of deployed references (``bakery drift --env ENV SOURCE…``):

* a path (file or directory): Kubernetes manifests (multi-document YAML, rendered Helm or kustomize output;
  containers, initContainers and ephemeralContainers of Pods, Deployments, StatefulSets, DaemonSets,
  ReplicaSets, Jobs, CronJobs and Lists of them), Compose files (``services.*.image``) and Terraform state
  (``terraform show -json`` output or a ``.tfstate``: ``image``/``ami``/``image_id``/``image_uri`` attributes of
  resources, and the images in ECS ``container_definitions``);
* ``ec2:tag:KEY=VALUE``: the AMIs of the running EC2 instances with that tag (boto3; ``aws.endpoint_url`` and
  ``aws.region`` of bakery.yaml);
* ``docker:`` (or ``docker:label=KEY[=VALUE]``): the containers running on the Docker daemon of the environment
  (``DOCKER_HOST``), all or those with the label.

Every reference is classified against the ledger: ``current``, ``behind by N builds`` (with the fixable
findings that the current build fixes), ``rolled back``, ``ahead by N builds``, ``not promoted to ENV``,
``not from bakery``, ``mutable reference (no digest)`` and ``not an image reference``. Anything but ``current`` is drift.

Inputs are untrusted: every file is read size-bounded by bakery.contain, each YAML document by bakery's one
strict loader (bakery.yamlsafe: plain data only, aliases within a node budget), and only the known fields are
followed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


from bakery import ami, scan, secrets, yamlsafe
from bakery.contain import decode_text, read_file
from bakery import ledger as ledger_mod
from bakery.dashboard import drift_dir, publish_order, slug
from bakery.errors import EnvironmentFailure, InputError
from bakery.ledger import Event
from bakery.ref import Ref

if TYPE_CHECKING:
    from bakery.config import Project

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_VALUES = 2_000_000  # values of one manifest file after alias expansion
MAX_FILES = 5000
YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIXES = (".json", ".tfstate")


_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}
_TF_IMAGE_KEYS = {"image", "ami", "image_id", "image_uri", "container_image"}


# ------------------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class Deployed:
    """One reference to an image found in a source."""

    source: str  # kubernetes | compose | terraform | ec2 | docker
    where: str  # file and object, instance, container
    reference: str  # as written: repo[:tag][@digest], or an AMI ID
    digest: str = ""  # a content digest known for it (a container's image), when the reference has none


@dataclass
class Verdict:
    deployed: Deployed
    status: str  # current | behind | rolled back | ahead | not promoted | not from bakery | mutable
    label: str  # what the user reads: "behind by 2 builds"
    image: str = ""
    build_tag: str = ""
    digest: str = ""
    current_build_tag: str = ""
    current_digest: str = ""
    behind: int = 0
    fixes: list[str] = field(default_factory=list)  # fixable findings the current build no longer has

    @property
    def drifted(self) -> bool:
        return self.status != "current"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.deployed.source, "where": self.deployed.where, "reference": self.deployed.reference,
                "status": self.label, "kind": self.status, "drifted": self.drifted, "image": self.image or None,
                "build_tag": self.build_tag or None, "digest": self.digest or None,
                "current_build_tag": self.current_build_tag or None, "current_digest": self.current_digest or None,
                "behind": self.behind, "fixes": list(self.fixes),
                "detail": ("fixes: " + ", ".join(self.fixes)) if self.fixes else None}


@dataclass
class Report:
    env: str
    time: dt.datetime
    sources: list[str]
    findings: list[Verdict]

    @property
    def drifted(self) -> list[Verdict]:
        return [f for f in self.findings if f.drifted]

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[f.status] = counts.get(f.status, 0) + 1
        return {"env": self.env, "time": self.time.strftime("%Y-%m-%dT%H:%M:%SZ"), "sources": list(self.sources),
                "references": [f.to_json() for f in self.findings], "drifted": len(self.drifted),
                "counts": counts, "ok": not self.drifted}

    def rows(self) -> list[list[str]]:
        return [[f.deployed.source, f.deployed.where, f.deployed.reference, f.image or "-", f.build_tag or "-",
                 f.label + (f" (fixes {len(f.fixes)}: {', '.join(f.fixes[:3])}{'…' if len(f.fixes) > 3 else ''})"
                            if f.fixes else "")] for f in self.findings]

    def headline(self) -> str:
        if not self.findings:
            return f"{self.env}: no image references found in {', '.join(self.sources)}"
        return (f"{self.env}: {len(self.drifted)} of {len(self.findings)} deployed references drifted"
                if self.drifted else f"{self.env}: all {len(self.findings)} deployed references are current")

    def to_markdown(self) -> str:
        lines = [f"## bakery drift — {self.env}", "", f"**{self.headline()}**", ""]
        if self.findings:
            lines += ["| source | where | reference | image | build | status |", "|---|---|---|---|---|---|"]
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in self.rows()]
        return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ").replace("`", "'")[:300]


# ------------------------------------------------------------------------------------------------ sources
@dataclass(frozen=True)
class Source:
    kind: str  # path | ec2 | docker
    text: str
    path: Path | None = None
    tag_key: str = ""
    tag_value: str = ""


def parse_source(text: str, cwd: Path | None = None) -> Source:
    """A SOURCE argument, parsed once (bad ones are input errors that say what is accepted)."""
    if text.startswith("ec2:"):
        rest = text[4:]
        if not rest.startswith("tag:") or "=" not in rest[4:] or not rest[4:].partition("=")[0]:
            raise InputError(f"source {text!r}: expected ec2:tag:KEY=VALUE (e.g. ec2:tag:Environment=prod)")
        key, _, value = rest[4:].partition("=")
        return Source("ec2", text, tag_key=key, tag_value=value)
    if text in ("docker:", "docker://"):
        return Source("docker", text)
    if text.startswith("docker:"):
        rest = text[7:]
        if not rest.startswith("label=") or not rest[6:] or rest[6:].startswith("="):
            raise InputError(f"source {text!r}: expected docker: or docker:label=KEY[=VALUE]")
        key, _, value = rest[6:].partition("=")
        return Source("docker", text, tag_key=key, tag_value=value)
    if re.match(r"^[a-z][a-z0-9+.-]*:", text) and not Path(text).exists():
        raise InputError(f"source {text!r}: unknown scheme (a path, ec2:tag:KEY=VALUE or docker:)")
    path = Path(text) if cwd is None or Path(text).is_absolute() else cwd / text
    if not path.exists():
        raise InputError(f"source {text!r}: no such file or directory")
    return Source("path", text, path=path)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    out = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES + JSON_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if len(out) > MAX_FILES:
        raise InputError(f"{path}: more than {MAX_FILES} manifest files")
    return out


def _read(path: Path, display: str) -> str:
    """A regular file, size-bounded, UTF-8 (bakery.contain's reader: a FIFO or device is never opened)."""
    return decode_text(read_file(path, display, limit=MAX_FILE_BYTES), display)


def from_path(source: Source) -> list[Deployed]:
    assert source.path is not None
    out: list[Deployed] = []
    for f in _files(source.path):
        display = source.text if source.path.is_file() else str(Path(source.text) / f.relative_to(source.path))
        text = _read(f, display)
        if f.suffix in JSON_SUFFIXES:
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise InputError(f"{display}: not JSON: {exc}") from None
            if isinstance(data, dict) and ("values" in data or "resources" in data):
                out.extend(terraform_refs(data, display))
            elif isinstance(data, dict) and "kind" in data:
                out.extend(kubernetes_refs([data], display))
            continue
        # bakery's one YAML loader: plain values only, duplicate keys refused, aliases expanded within a budget
        docs = [d for d in yamlsafe.parse_all(text, display, max_nodes=MAX_MANIFEST_VALUES) if d is not None]
        if len(docs) == 1 and isinstance(docs[0], dict) and isinstance(docs[0].get("services"), dict) \
                and "kind" not in docs[0]:
            out.extend(compose_refs(docs[0], display))
        else:
            out.extend(kubernetes_refs(docs, display))
    return out


def _pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = doc.get("kind")
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    if kind == "Pod":
        yield "", spec
    elif kind in _WORKLOAD_KINDS:
        tpl = spec.get("template")
        if isinstance(tpl, dict) and isinstance(tpl.get("spec"), dict):
            yield "", tpl["spec"]
    elif kind == "CronJob":
        job = spec.get("jobTemplate")
        job_spec = job.get("spec") if isinstance(job, dict) else None
        tpl = job_spec.get("template") if isinstance(job_spec, dict) else None
        if isinstance(tpl, dict) and isinstance(tpl.get("spec"), dict):
            yield "", tpl["spec"]
    elif kind == "PodTemplate":
        tpl = doc.get("template")
        if isinstance(tpl, dict) and isinstance(tpl.get("spec"), dict):
            yield "", tpl["spec"]


def kubernetes_refs(docs: Iterable[Any], display: str) -> list[Deployed]:
    out: list[Deployed] = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "List" or str(doc.get("kind", "")).endswith("List"):
            out.extend(kubernetes_refs(doc.get("items") or [], display))
            continue
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        obj = f"{doc.get('kind')}/{meta.get('name', '?')}"
        if meta.get("namespace"):
            obj = f"{meta['namespace']}/{obj}"
        for _, pod in _pod_specs(doc):
            for field_name in ("initContainers", "containers", "ephemeralContainers"):
                containers = pod.get(field_name)
                if not isinstance(containers, list):
                    continue
                for c in containers:
                    if isinstance(c, dict) and isinstance(c.get("image"), str) and c["image"].strip():
                        label = f"{'init:' if field_name == 'initContainers' else ''}{c.get('name', '?')}"
                        out.append(Deployed("kubernetes", f"{display} {obj} {label}", c["image"].strip()))
    return out


def compose_refs(doc: dict[str, Any], display: str) -> list[Deployed]:
    out = []
    for name, service in sorted((doc.get("services") or {}).items(), key=lambda kv: str(kv[0])):
        if isinstance(service, dict) and isinstance(service.get("image"), str) and service["image"].strip():
            out.append(Deployed("compose", f"{display} service {name}", service["image"].strip()))
    return out


def _tf_values(value: Any, path: str, out: list[tuple[str, str]], depth: int = 0) -> None:
    """(attribute path, reference) for every image-like attribute under a resource's values (JSON: no aliases)."""
    if depth > 32:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _TF_IMAGE_KEYS and isinstance(v, str) and v.strip():
                out.append((f"{path}.{k}" if path else k, v.strip()))
            elif k == "container_definitions" and isinstance(v, str):
                try:
                    _tf_values(json.loads(v), f"{path}.{k}" if path else k, out, depth + 1)
                except ValueError:
                    pass
            else:
                _tf_values(v, f"{path}.{k}" if path else str(k), out, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _tf_values(v, f"{path}[{i}]", out, depth + 1)


def terraform_refs(data: dict[str, Any], display: str) -> list[Deployed]:
    found: list[tuple[str, str]] = []
    if isinstance(data.get("values"), dict):  # terraform show -json
        def module(m: Any) -> None:
            if not isinstance(m, dict):
                return
            for r in m.get("resources") or []:
                if isinstance(r, dict) and r.get("mode", "managed") == "managed":
                    attrs: list[tuple[str, str]] = []
                    _tf_values(r.get("values"), "", attrs)
                    found.extend((f"{r.get('address')}.{a}", v) for a, v in attrs)
            for child in m.get("child_modules") or []:
                module(child)
        module(data["values"].get("root_module"))
    for r in data.get("resources") or []:  # a .tfstate (version 4)
        if not isinstance(r, dict) or r.get("mode", "managed") != "managed":
            continue
        address = ".".join(str(x) for x in (r.get("module"), r.get("type"), r.get("name")) if x)
        for i, inst in enumerate(r.get("instances") or []):
            attrs = []
            _tf_values(inst.get("attributes") if isinstance(inst, dict) else None, "", attrs)
            key = inst.get("index_key") if isinstance(inst, dict) else None
            where = f"{address}[{json.dumps(key) if key is not None else i}]" if len(r.get("instances")) > 1 \
                else address
            found.extend((f"{where}.{a}", v) for a, v in attrs)
    return [Deployed("terraform", f"{display} {a}", v) for a, v in found]


def from_ec2(project: Project, source: Source) -> list[Deployed]:
    from botocore.exceptions import BotoCoreError, ClientError

    aws = project.config.aws
    client = ami.client(project, aws.region)
    out = []
    try:
        pages = client.get_paginator("describe_instances").paginate(Filters=[
            {"Name": f"tag:{source.tag_key}", "Values": [source.tag_value]},
            {"Name": "instance-state-name", "Values": ["running"]}])
        for page in pages:
            for res in page.get("Reservations", []):
                for inst in res.get("Instances", []):
                    name = next((t["Value"] for t in inst.get("Tags", []) if t.get("Key") == "Name"), "")
                    where = f"{inst['InstanceId']}" + (f" ({name})" if name else "") + f" {aws.region}"
                    out.append(Deployed("ec2", where, inst.get("ImageId", "")))
    except (BotoCoreError, ClientError) as exc:
        raise EnvironmentFailure(f"{source.text}: cannot list EC2 instances: {exc}") from None
    return out


def from_docker(source: Source) -> list[Deployed]:
    try:
        import docker

        client = docker.from_env(timeout=30)
        filters = {"label": f"{source.tag_key}={source.tag_value}" if source.tag_value else source.tag_key} \
            if source.tag_key else None
        containers = client.api.containers(filters=filters)
    except Exception as exc:  # noqa: BLE001 - the SDK raises several types for an unreachable daemon
        raise EnvironmentFailure(f"{source.text}: Docker daemon unreachable: {exc}") from None
    out = []
    for c in containers:
        name = (c.get("Names") or ["?"])[0].lstrip("/")
        ref = str(c.get("Image") or "")
        digest = ""
        if "@" not in ref:  # started by tag or ID: what runs is the image ID; its registry digests say
            try:
                attrs = client.api.inspect_image(c.get("ImageID"))
                running = Ref.try_parse(ref)
                repo_digests = [Ref.try_parse(d) for d in attrs.get("RepoDigests") or []]
                digests = [r.digest for r in repo_digests if r and r.digest and running and r.name == running.name]
                digest = digests[0] if len(digests) == 1 else ""
            except Exception:  # noqa: BLE001 - image removed under a running container
                digest = ""
        out.append(Deployed("docker", f"container {name}", ref, digest=digest))
    return out


def collect(project: Project, sources: list[Source]) -> list[Deployed]:
    out: list[Deployed] = []
    for s in sources:
        if s.kind == "path":
            out.extend(from_path(s))
        elif s.kind == "ec2":
            out.extend(from_ec2(project, s))
        else:
            out.extend(from_docker(s))
    return out


# ------------------------------------------------------------------------------------------------ classify
class LedgerView:
    """The ledger, indexed for classification."""

    def __init__(self, project: Project, events: list[Event]):
        self.project = project
        self.events = events
        self.by_digest: dict[str, Event] = {}
        self.ami_origin: dict[str, str] = {}
        self.by_image: dict[str, list[Event]] = {}
        for e in events:
            self.by_digest[e.digest] = e
            self.by_image.setdefault(e.image, []).append(e)
            amis = e.details.get("amis") if isinstance(e.details, dict) else None
            if isinstance(amis, dict):
                for ami_id in amis.values():
                    if isinstance(ami_id, str):
                        self.ami_origin[ami_id] = e.digest
            if ami.is_ami_digest(e.digest):
                self.ami_origin.setdefault(ami.parse_origin(e.digest)[1], e.digest)
        self._scans: dict[str, Any] = {}

    def scan_of(self, digest: str) -> Any:
        if digest not in self._scans:
            summaries = [e.scan for e in self.events if e.digest == digest and e.scan]
            image_id = str((summaries[-1] or {}).get("image_id") or "") if summaries else ""
            self._scans[digest] = scan.load_stored(self.project, image_id) if image_id.startswith("sha256:") else None
        return self._scans[digest]


def fixes(view: LedgerView, deployed: str, current: str) -> list[str]:
    """Fixable findings of the deployed build that the current build no longer has, worst first."""
    old, new = view.scan_of(deployed), view.scan_of(current)
    if old is None or new is None:
        return []
    still = {(f.id, f.package) for f in new.findings}
    gone = [f for f in old.findings if f.fixed and (f.id, f.package) not in still]
    gone.sort(key=lambda f: (-f.rank, f.id))
    out = []
    for f in gone:
        item = f"{f.id} ({f.severity}, {f.package})"
        if item not in out:
            out.append(item)
    return out


def classify(view: LedgerView, env: str, d: Deployed) -> Verdict:
    ref = d.reference
    digest = d.digest
    parsed: Ref | None = None
    if _AMI.match(ref):
        digest = view.ami_origin.get(ref, "")
        if not digest:
            return Verdict(d, "not from bakery", "not from bakery")
    else:
        parsed = Ref.try_parse(ref)
        if parsed is None:
            return Verdict(d, "invalid", "not an image reference")
        digest = parsed.digest or digest
    if not digest:
        name, tag = (parsed.family, parsed.tag or "") if parsed else ("", "")
        ev = next((e for e in reversed(view.events) if tag and e.build_tag == tag and e.name == name), None)
        image = ev.image if ev else (f"{name}:{tag}" if f"{name}:{tag}" in view.by_image else "")
        return Verdict(d, "mutable", "mutable reference (no digest)", image=image,
                       build_tag=ev.build_tag if ev else "")
    ev = view.by_digest.get(digest)
    if ev is None:
        return Verdict(d, "not from bakery", "not from bakery", digest=digest)
    image = ev.image
    evs = view.by_image.get(image, [])
    build_tag = next((e.build_tag for e in evs if e.digest == digest and e.build_tag), ev.build_tag)
    out = Verdict(d, "current", "current", image=image, build_tag=build_tag, digest=digest)
    cur = ledger_mod.current(evs, image, env)
    if cur is None:
        out.status, out.label = "not promoted", f"not promoted to {env}"
        return out
    out.current_build_tag, out.current_digest = cur.build_tag, cur.digest
    if cur.digest == digest:
        return out
    if any(e.kind == "rollback" and e.to_env == env and e.details.get("previous_digest") == digest for e in evs):
        out.status, out.label = "rolled back", f"rolled back (to {cur.build_tag})"
        out.fixes = fixes(view, digest, cur.digest)
        return out
    order = publish_order(evs, image)
    if digest in order and cur.digest in order:
        n = order.index(cur.digest) - order.index(digest)
        if n > 0:
            out.status, out.behind = "behind", n
            out.label = f"behind by {n} build{'s' if n != 1 else ''} (current: {cur.build_tag})"
            out.fixes = fixes(view, digest, cur.digest)
            return out
        out.status, out.label = "ahead", f"ahead by {-n} build{'s' if n != -1 else ''} (promoted: {cur.build_tag})"
        return out
    out.status, out.label = "behind", f"differs from the promoted build {cur.build_tag}"
    return out


def check(project: Project, env: str, sources: list[Source], *, now: dt.datetime | None = None,
          deployed: list[Deployed] | None = None) -> Report:
    project.config.env(env)  # an unknown environment is an input error
    now = now or ledger_mod.now()
    refs = deployed if deployed is not None else collect(project, sources)
    view = LedgerView(project, ledger_mod.open_ledger(project).events())
    return Report(env=env, time=now, sources=[s.text for s in sources], findings=[classify(view, env, d) for d in refs])


def save(project: Project, report: Report) -> Path:
    """The latest report of the environment, for the dashboard (``.bakery/drift/last-ENV.json``)."""
    d = drift_dir(project)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"last-{slug(report.env)}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(secrets.mask(json.dumps(report.to_json(), indent=1)))
    tmp.replace(path)
    return path
