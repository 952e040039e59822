"""Packer as a builder: version check, `packer validate`, `packer build -machine-readable`, output parsing.

A definition whose template directory holds a ``*.pkr.hcl.j2`` is built by Packer. The rendered recipe
(``*.pkr.hcl`` and ``*.pkrvars.hcl``) stays deterministic; everything that changes per build (the parent
pinned by digest, labels, tags, AMI name) is passed in a JSON var file holding only the ``bakery_*``
variables the template declares:

==========================  ================================================================
``bakery_parent``           docker: the parent image pinned by digest (``repo@sha256:…``)
``bakery_changes``          docker: ``["LABEL k=\"v\"", …]`` for the builder's ``changes``
``bakery_labels``           map of the image labels (name, version, fingerprint, build tag…)
``bakery_image_tag``        ``repository:build-tag`` the image gets in the local daemon
``bakery_build_tag``        the immutable build tag
``bakery_source_ami``       amazon-ebs: the source AMI resolved from the definition's filter
``bakery_ami_name``         amazon-ebs: a unique AMI name (``NAME-BUILDTAG``)
``bakery_tags``             amazon-ebs: AMI tags (``bakery:name``, ``bakery:version``…)
``bakery_region``           amazon-ebs: the build region (first region of the first environment)
``bakery_ami_regions``      amazon-ebs: further regions of the first environment
``bakery_aws_endpoint``     amazon-ebs: ``aws.endpoint_url`` (moto) or ``""`` for AWS itself
==========================  ================================================================

Supported Packer: 1.6 and later (1.6.6 is the one tested here); older versions are refused (exit 3).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery import ami as ami_mod
from bakery import tools
from bakery.validation import PACKER_KINDS
from bakery.errors import EXIT_ENVIRONMENT, EXIT_INPUT, EnvironmentFailure, InputError, StepFailed, ToolFailed
from bakery.model import LABEL_BUILD_TAG, LABEL_FINGERPRINT, LABEL_NAME, LABEL_VARIANT, LABEL_VERSION, Recipe

if TYPE_CHECKING:
    from bakery.config import Project

log = logging.getLogger("bakery.packer")

MIN_VERSION = (1, 6, 0)
TESTED_VERSIONS = ("1.6.6",)
KINDS = PACKER_KINDS  # the builders bakery drives (definitions are checked against them at load time)
VALIDATE_TIMEOUT = 120.0
# Environment for every Packer run: no phoning home, no colour, no prompts.
PACKER_ENV = {"CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1", "PACKER_LOG": "0"}
# AMI tags bakery writes; the labels they come from.
AMI_TAGS = {"bakery:name": LABEL_NAME, "bakery:version": LABEL_VERSION, "bakery:variant": LABEL_VARIANT,
            "bakery:fingerprint": LABEL_FINGERPRINT, "bakery:build-tag": LABEL_BUILD_TAG}

_VARIABLE_RE = re.compile(r'^\s*variable\s+"([A-Za-z_][A-Za-z0-9_-]*)"', re.M)
_SOURCE_RE = re.compile(r'^\s*source\s+"([a-z0-9-]+)"', re.M)
_CONTAINER_RE = re.compile(r"Container ID: ([0-9a-f]{12,64})")
_ON_LINE_RE = re.compile(r"on (\S+?) line (\d+)")


class PackerFailed(StepFailed):
    """``packer build`` failed; ``result`` holds what was parsed (errors, log tail)."""

    def __init__(self, message: str, result: PackerResult):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Artifact:
    """One artifact Packer reported (``artifact,N,…`` lines)."""

    target: str  # the build that made it: docker.debian, amazon-ebs.base
    builder_id: str = ""
    id: str = ""
    string: str = ""
    files: tuple[str, ...] = ()


@dataclass
class MachineOutput:
    """What ``-machine-readable`` output says: artifacts, errors, and the human lines."""

    artifacts: list[Artifact] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ui: list[str] = field(default_factory=list)
    container_ids: list[str] = field(default_factory=list)


@dataclass
class PackerResult:
    """The outcome of one Packer build, in bakery's terms."""

    template: str  # templates/NAME/FILE.pkr.hcl.j2, for messages
    kind: str  # docker | amazon-ebs
    ok: bool = False
    artifacts: list[Artifact] = field(default_factory=list)
    image_id: str = ""  # docker: sha256:… in the local daemon
    image_tag: str = ""  # docker: repository:tag given to it
    ami_ids: dict[str, str] = field(default_factory=dict)  # amazon-ebs: region -> ami-…
    source_ami: str = ""  # amazon-ebs: the source AMI the build started from
    build_tag: str = ""  # amazon-ebs: the build tag bakery gave the AMI (its name is NAME-BUILDTAG)
    parent_ref: str = ""
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    packer_version: str = ""
    log_tail: list[str] = field(default_factory=list)

    @property
    def amis(self) -> dict[str, str]:
        """Alias of ``ami_ids``."""
        return self.ami_ids

    def to_json(self) -> dict[str, Any]:
        return {"template": self.template, "kind": self.kind, "ok": self.ok, "image_id": self.image_id,
                "build_tag": self.build_tag,
                "image_tag": self.image_tag, "ami_ids": dict(self.ami_ids), "source_ami": self.source_ami,
                "parent": self.parent_ref, "errors": list(self.errors), "seconds": round(self.seconds, 3),
                "packer_version": self.packer_version,
                "artifacts": [{"target": a.target, "builder_id": a.builder_id, "id": a.id} for a in self.artifacts]}


# ---------------------------------------------------------------------------------------------- parsing

def unescape(data: str) -> str:
    """Undo Packer's machine-readable escaping (commas and newlines)."""
    return data.replace("%!(PACKER_COMMA)", ",").replace("\\r", "\r").replace("\\n", "\n")


def parse_line(line: str) -> tuple[str, str, str, list[str]] | None:
    """``timestamp,target,type,data…`` → (timestamp, target, type, data fields), or None."""
    parts = line.rstrip("\r\n").split(",")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    return parts[0], parts[1], parts[2], [unescape(p) for p in parts[3:]]


def parse_machine_readable(lines: list[str] | str) -> MachineOutput:
    """Parse ``packer build -machine-readable`` stdout into artifacts, errors and UI lines."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    out = MachineOutput()
    pending: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, str]] = []
    ui_errors: list[str] = []
    for raw in lines:
        parsed = parse_line(raw)
        if parsed is None:
            continue
        _ts, target, kind, data = parsed
        if kind == "ui" and len(data) >= 2:
            text = data[1]
            out.ui.append(text)
            for m in _CONTAINER_RE.finditer(text):
                if m.group(1) not in out.container_ids:
                    out.container_ids.append(m.group(1))
            if data[0] == "error" and not target:
                msg = _first_error_line(text)
                if msg and not msg.startswith(("==>", "-->")) and msg not in ui_errors:
                    ui_errors.append(msg)
        elif kind == "error" and data:
            msg = " ".join(" ".join(data).split())  # one line
            text = f"{target}: {msg}" if target else msg
            if text not in out.errors:
                out.errors.append(text)
        elif kind == "artifact" and len(data) >= 2:
            key = (target, data[0])
            if key not in pending:
                pending[key] = {"files": []}
                order.append(key)
            entry = pending[key]
            field_name = data[1]
            value = ",".join(data[2:])
            if field_name == "file" and len(data) >= 4:
                entry["files"].append(",".join(data[3:]))
            elif field_name in ("builder-id", "id", "string"):
                entry[field_name] = value
    for key in order:
        entry = pending[key]
        out.artifacts.append(Artifact(target=key[0], builder_id=entry.get("builder-id", ""), id=entry.get("id", ""),
                                      string=entry.get("string", ""), files=tuple(entry["files"])))
    # A build error comes twice (ui "Build 'x' errored after …: msg" and "TARGET,error,msg"): the targeted
    # lines are the precise ones; UI errors only when there are none (template errors have no target).
    if not out.errors:
        out.errors = ui_errors
    return out


def _first_error_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def ami_ids(artifact_id: str) -> dict[str, str]:
    """``us-east-1:ami-1,eu-west-1:ami-2`` → {region: ami}."""
    out: dict[str, str] = {}
    for part in artifact_id.split(","):
        region, _, ami = part.strip().partition(":")
        if ami.startswith("ami-"):
            out[region] = ami
    return out


def declared_variables(files: dict[str, bytes]) -> set[str]:
    """Names of the ``variable "x"`` blocks in the rendered ``*.pkr.hcl`` files."""
    names: set[str] = set()
    for rel, data in files.items():
        if rel.endswith(".pkr.hcl"):
            names.update(_VARIABLE_RE.findall(data.decode(errors="replace")))
    return names


def builder_kind(recipe: Recipe) -> str:
    """The Packer builder: ``packer.kind`` from the definition, else the one ``source`` type of the template."""
    spec = recipe.spec
    settings = spec.packer or {}
    kind = settings.get("kind")
    sources: set[str] = set()
    for rel, data in recipe.files.items():
        if rel.endswith(".pkr.hcl"):
            sources.update(_SOURCE_RE.findall(data.decode(errors="replace")))
    if kind is None:
        if len(sources) != 1:
            found = ", ".join(sorted(sources)) or "none"
            raise InputError(f"{template_label(recipe)}: cannot tell the Packer builder (sources: {found}); "
                             f"set packer.kind in {spec.source_file}")
        kind = next(iter(sources))
    if kind not in KINDS:
        raise InputError(f"{spec.source_file}: packer.kind: {kind!r} is not supported (one of {', '.join(KINDS)})")
    return str(kind)


def template_label(recipe: Recipe) -> str:
    """``templates/NAME/FILE.pkr.hcl.j2`` (the first Packer template of the recipe), for messages."""
    names = sorted(n for n in recipe.files if n.endswith(".pkr.hcl"))
    first = names[0] if names else "*.pkr.hcl"
    return f"templates/{recipe.spec.template}/{first}.j2"


def label_changes(labels: dict[str, str]) -> list[str]:
    """Docker ``changes`` lines that set ``labels`` (values quoted the Dockerfile way)."""
    out = []
    for k in sorted(labels):
        v = str(labels[k]).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
        out.append(f'LABEL {k}="{v}"')
    return out


def ami_tags(labels: dict[str, str]) -> dict[str, str]:
    """The ``bakery:*`` AMI tags from the image labels (empty values left out)."""
    return {tag: labels[label] for tag, label in AMI_TAGS.items() if labels.get(label)}


def split_image_tag(image_tag: str) -> tuple[str, str]:
    """``host:5000/ns/name:tag`` → (``host:5000/ns/name``, ``tag``)."""
    slash = image_tag.rfind("/")
    colon = image_tag.rfind(":")
    if colon > slash:
        return image_tag[:colon], image_tag[colon + 1:]
    return image_tag, "latest"


# ---------------------------------------------------------------------------------------------- version

_version_cache: dict[str, str] = {}


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def check_version(text: str, binary: str = "packer") -> str:
    """The version string from ``packer version`` output, or EnvironmentFailure when unsupported."""
    ver = parse_version(text)
    if ver is None:
        raise EnvironmentFailure(f"{binary}: cannot read the Packer version from {text.strip()[:80]!r}")
    if ver < MIN_VERSION:
        raise EnvironmentFailure(f"{binary}: Packer {'.'.join(map(str, ver))} is not supported "
                                 f"(need >= {'.'.join(map(str, MIN_VERSION))}; tested: {', '.join(TESTED_VERSIONS)})")
    return ".".join(map(str, ver))


def packer_version(project: Project) -> str:
    """Run ``packer version`` once per binary; refuse versions older than 1.6 (exit 3)."""
    binary = project.config.packer.binary
    if binary not in _version_cache:
        res = tools.run(binary, ["version"], timeout=60, env=PACKER_ENV, failure_exit_code=EXIT_ENVIRONMENT,
                        hint=" (install Packer: apt-get install -y packer)")
        version = check_version(res.stdout + res.stderr, binary)
        if version not in TESTED_VERSIONS:
            log.warning("Packer %s is untested (tested: %s)", version, ", ".join(TESTED_VERSIONS))
        _version_cache[binary] = version
    return _version_cache[binary]


# ---------------------------------------------------------------------------------------------- running

def _one_line_error(recipe: Recipe, text: str, step: str) -> str:
    """``templates/x/y.pkr.hcl.j2: packer validate: Error: … (line N)`` from Packer's multi-line error."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    label = template_label(recipe)
    headline = next((ln for ln in lines if ln.startswith("Error")), lines[0] if lines else "failed")
    where = ""
    for ln in lines:
        m = _ON_LINE_RE.search(ln)
        if m:
            fname = Path(m.group(1)).name
            label = f"templates/{recipe.spec.template}/{fname}.j2" if fname.endswith((".pkr.hcl", ".pkrvars.hcl")) \
                else label
            where = f" (line {m.group(2)})"
            break
    detail = ""
    idx = lines.index(headline) if headline in lines else -1
    for ln in lines[idx + 1:]:
        if _ON_LINE_RE.search(ln) or re.match(r"^\d+:", ln) or ln.startswith("See ") or "packer.io/docs" in ln \
                or ln == "(source code not available)":  # Packer 1.6's filler when it cannot quote the line
            continue
        detail = ln
        break
    msg = f"{label}: {step}: {headline}{where}"
    if detail and detail not in headline:
        msg += f": {detail}"
    return msg


def _var_files(workdir: Path) -> list[str]:
    return [f"-var-file={p.name}" for p in sorted(workdir.glob("*.pkrvars.hcl"))
            if not p.name.endswith(".auto.pkrvars.hcl")]


def _bakery_vars(project: Project, recipe: Recipe, kind: str, *, parent_ref: str, labels: dict[str, str],
                 image_tag: str, source_ami: str) -> dict[str, Any]:
    build_tag = labels.get(LABEL_BUILD_TAG) or split_image_tag(image_tag)[1]
    values: dict[str, Any] = {
        "bakery_parent": parent_ref,
        "bakery_changes": label_changes(labels),
        "bakery_labels": dict(labels),
        "bakery_image_tag": image_tag,
        "bakery_build_tag": build_tag,
    }
    if kind == "amazon-ebs":
        env = project.config.environments[project.config.first_env]
        regions = list(env.aws.regions) if env.aws else [project.config.aws.region]
        values.update({
            "bakery_source_ami": source_ami,
            "bakery_ami_name": f"{recipe.spec.key.name}-{build_tag}",
            "bakery_tags": {**ami_tags(labels), "bakery:build-tag": build_tag, "bakery:source-ami": source_ami},
            "bakery_region": regions[0],
            "bakery_ami_regions": regions[1:],
            "bakery_aws_endpoint": project.config.aws.endpoint_url or "",
        })
    return values


def validate(project: Project, recipe: Recipe, workdir: Path, var_args: list[str]) -> None:
    """``packer validate``; bad syntax or an unset variable is bad input (exit 2)."""
    try:
        tools.run(project.config.packer.binary, ["validate", *var_args, "."], cwd=workdir, timeout=VALIDATE_TIMEOUT,
                  env=PACKER_ENV, failure_exit_code=EXIT_INPUT)
    except ToolFailed as exc:
        raise InputError(_one_line_error(recipe, exc.stderr + "\n" + exc.stdout, "packer validate")) from None


def prepare(recipe: Recipe, workdir: Path) -> None:
    """Write the recipe's files into ``workdir`` (a private copy: the rendered tree stays exactly the recipe)."""
    for rel, data in recipe.files.items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def build(project: Project, recipe: Recipe, *, parent_ref: str, labels: dict[str, str], image_tag: str,
          on_line: Callable[[str], None] | None = None, source_ami: str = "") -> PackerResult:
    """Validate and build one Packer recipe.

    docker: the committed image ends up in the local daemon tagged ``image_tag`` (its labels checked);
    amazon-ebs: ``ami_ids`` per region, built from ``source_ami`` (resolved from the definition's
    ``packer.source_ami_filter`` when not given). Raises :class:`PackerFailed` (exit 1) when Packer fails,
    :class:`InputError` (exit 2) for a template Packer rejects.
    """
    started = time.monotonic()
    kind = builder_kind(recipe)
    label = template_label(recipe)
    version = packer_version(project)
    if kind == "amazon-ebs" and not source_ami:
        if parent_ref.startswith("ami-"):
            source_ami = parent_ref
        else:
            source_ami = ami_mod.newest_source_ami(project, recipe.spec)
    if kind == "amazon-ebs" and not labels.get(LABEL_BUILD_TAG):
        tag = ami_mod.next_build_tag(project, recipe.spec, labels.get(LABEL_FINGERPRINT, ""))
        labels = {**labels, LABEL_BUILD_TAG: tag}
    result = PackerResult(template=label, kind=kind, parent_ref=parent_ref, source_ami=source_ami,
                          packer_version=version, image_tag=image_tag if kind == "docker" else "",
                          build_tag=labels.get(LABEL_BUILD_TAG, "") if kind == "amazon-ebs" else "")
    values = _bakery_vars(project, recipe, kind, parent_ref=parent_ref, labels=labels, image_tag=image_tag,
                          source_ami=source_ami)
    declared = declared_variables(recipe.files)
    values = {k: v for k, v in values.items() if k in declared}
    project.state_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="packer-", dir=project.state_dir))
    lines: list[str] = []
    try:
        prepare(recipe, workdir)
        var_args = _var_files(workdir)
        if values:
            (workdir / "bakery.vars.json").write_text(json.dumps(values, indent=2, sort_keys=True))
            var_args.append("-var-file=bakery.vars.json")
        validate(project, recipe, workdir, var_args)
        if kind == "docker" and not ({"bakery_changes", "bakery_labels"} & declared):
            raise InputError(f"{label}: a docker Packer template must declare variable \"bakery_changes\" (and use "
                             f"it in the source's changes) so the image carries bakery's labels")
        if kind == "docker" and parent_ref:
            _ensure_local(parent_ref)

        def feed(line: str) -> None:
            lines.append(line)
            parsed = parse_line(line)
            if parsed and parsed[2] == "ui" and len(parsed[3]) >= 2 and on_line is not None:
                for text in parsed[3][1].splitlines():
                    if text.strip():
                        on_line(text.rstrip())

        try:
            res = tools.run(project.config.packer.binary,
                            ["build", "-machine-readable", "-color=false", "-on-error=cleanup", *var_args, "."],
                            cwd=workdir, timeout=project.config.packer.timeout, env=PACKER_ENV, check=False,
                            on_line=feed, process_group=True)
            code, stderr = res.returncode, res.stderr
        except BaseException:  # a timeout, Ctrl-C: Packer may not have cleaned up its container
            _remove_containers(parse_machine_readable(lines).container_ids)
            raise
        parsed_out = parse_machine_readable(lines)
        result.artifacts = parsed_out.artifacts
        result.errors = parsed_out.errors
        result.log_tail = [u for u in parsed_out.ui if u.strip()][-30:]
        result.seconds = time.monotonic() - started
        if code != 0 or not parsed_out.artifacts:
            _remove_containers(parsed_out.container_ids)
            first = _build_error(parsed_out, stderr, code)
            result.errors = result.errors or [first]
            if first.startswith("Error") and ("line" in first or "variable" in first.lower()):
                raise InputError(_one_line_error(recipe, first, "packer build"))
            raise PackerFailed(f"{label}: packer build failed: {first}", result)
        if kind == "docker":
            _finish_docker(result, labels, image_tag)
        else:
            for art in result.artifacts:
                result.ami_ids.update(ami_ids(art.id))
            if not result.ami_ids:
                raise PackerFailed(f"{label}: packer build reported no AMI (artifacts: "
                                   f"{', '.join(a.id for a in result.artifacts) or 'none'})", result)
        result.ok = True
        result.seconds = time.monotonic() - started
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _build_error(out: MachineOutput, stderr: str, code: int) -> str:
    for err in out.errors:
        if err.strip():
            return err.strip().splitlines()[0]
    last = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()]
    if last:
        return last[-1].strip()
    return f"exit status {code}, no artifact" if code else "no artifact reported"


def _docker_client():
    try:
        import docker

        return docker.from_env(timeout=120)
    except Exception as exc:  # noqa: BLE001 - docker raises DockerException on a missing daemon
        raise EnvironmentFailure(f"docker daemon unreachable: {exc}") from None


def _ensure_local(reference: str) -> None:
    """The docker builder runs with ``pull = false``: make sure the parent is in the daemon (pull by digest)."""
    client = _docker_client()
    try:
        client.images.get(reference)
        return
    except Exception:  # noqa: BLE001 - ImageNotFound: pull it below
        pass
    try:
        client.images.pull(reference)
    except Exception as exc:  # noqa: BLE001 - docker raises APIError/NotFound with the registry's message
        raise StepFailed(f"cannot pull the parent {reference} for Packer: {str(exc).splitlines()[0][:200]}") from None


def _remove_containers(ids: list[str]) -> None:
    """Remove containers a failed or killed Packer build left behind (Packer normally cleans up)."""
    if not ids:
        return
    import docker.errors  # the docker SDK only when Packer's docker builder ran (start-up time)

    client = _docker_client()
    for cid in ids:
        try:
            client.api.remove_container(cid, force=True, v=True)
            log.info("removed leftover Packer container %s", cid[:12])
        except docker.errors.NotFound:  # already gone is the normal case
            pass
        except Exception as exc:  # noqa: BLE001 - best effort cleanup
            log.warning("could not remove Packer container %s: %s", cid[:12], exc)


def _finish_docker(result: PackerResult, labels: dict[str, str], image_tag: str) -> None:
    image_id = next((a.id for a in result.artifacts if a.id.startswith("sha256:")), "")
    if not image_id:
        raise PackerFailed(f"{result.template}: packer build reported no docker image id (artifacts: "
                           f"{', '.join(a.id for a in result.artifacts) or 'none'})", result)
    result.image_id = image_id
    client = _docker_client()
    image = client.images.get(image_id)
    have = image.labels or {}
    missing = sorted(k for k, v in labels.items() if have.get(k) != v)
    if missing:
        raise PackerFailed(f"{result.template}: the built image lacks bakery labels {', '.join(missing)}: use "
                           f"var.bakery_changes in the docker source's changes", result)
    if image_tag:
        repo, tag = split_image_tag(image_tag)
        image.tag(repo, tag)


__all__ = ["Artifact", "MachineOutput", "PackerFailed", "PackerResult", "ami_ids", "ami_tags", "build",
           "builder_kind", "check_version", "declared_variables", "label_changes", "packer_version",
           "parse_machine_readable", "split_image_tag"]

