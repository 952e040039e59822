"""The schema of a definition file (`base-images/*.yaml`): its pydantic models and the checks that depend on
the file alone. bakery.definitions runs a file through :func:`check` when it has not seen its bytes before
(it keeps the outcome, see ``bakery.definitions.load_fleet``): pydantic is imported only then.
"""

from __future__ import annotations

from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from bakery.config import IgnoreEntry
from bakery.errors import InputError
from bakery.model import SEVERITIES
from bakery.text import show
from bakery.validation import format_errors, packer_settings_problems
from bakery.yamlsafe import decode, parse


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyOverride(_Strict):
    severity: str | None = None
    fixable_only: bool | None = None
    ignore: list[dict[str, Any]] = Field(default_factory=list)


class VariantDef(_Strict):
    variables: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    description: str = ""


class VersionDef(_Strict):
    parent: str
    template: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    variants: dict[str, VariantDef | None] = Field(default_factory=dict)
    packer: dict[str, Any] | None = None
    description: str = ""


class DefinitionFile(_Strict):
    """The schema of one `base-images/*.yaml` file (`bakery schema` prints it as JSON Schema)."""

    name: str = Field(description="Image family name: lowercase letters, digits, '.', '_' and '-'.")
    description: str = ""
    template: str = Field(description="Directory under templates/ holding Dockerfile.j2 or *.pkr.hcl.j2.")
    variables: dict[str, Any] = Field(default_factory=dict, description="Template variables for every version.")
    policy: PolicyOverride | None = None
    packer: dict[str, Any] | None = None
    versions: dict[str, VersionDef] = Field(min_length=1, description="PEP 440 version → its definition.")


def json_schema() -> dict[str, Any]:
    schema = DefinitionFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bakery image definition"
    return schema


def check_policy(display: str, d: DefinitionFile) -> list[str]:
    """A definition's own ``policy`` is checked when it is loaded (by `list`, `render`, `plan`), not at scan."""
    if d.policy is None:
        return []
    out = []
    sev = d.policy.severity
    if sev is not None and str(sev).upper() not in SEVERITIES:
        out.append(f"{display}: policy.severity: {show(sev)} is not one of {', '.join(SEVERITIES)}")
    for i, raw in enumerate(d.policy.ignore):
        try:
            IgnoreEntry.model_validate(raw)
        except pydantic.ValidationError as err:
            out += format_errors(display, IgnoreEntry, err, prefix=("policy", f"ignore[{i}]"))
    return out


def check_packer(display: str, d: DefinitionFile) -> list[str]:
    """``packer`` settings of the definition and its versions, checked at load time (not at build)."""
    out = packer_settings_problems(display, "packer", d.packer)
    for v, vd in d.versions.items():
        out += packer_settings_problems(display, f"versions.{v}.packer", vd.packer)
        merged = {**(d.packer or {}), **(vd.packer or {})} if isinstance(d.packer or {}, dict) and isinstance(
            vd.packer or {}, dict) else {}
        if merged.get("kind") == "amazon-ebs" and merged.get("source_ami_filter") is None:
            out.append(f"{display}: versions.{v}: packer.source_ami_filter: an amazon-ebs definition needs "
                       f"{{owners: [...], filters: {{name: ...}}}}")
    return list(dict.fromkeys(out))


def check(raw: bytes, display: str) -> tuple[list[str], dict[str, Any] | None, list[str]]:
    """One definition file's bytes → (problems of reading it: YAML, shape, schema; the validated definition as
    plain data, None when it is not valid; problems of its policy and packer settings). A function of the bytes and
    the name shown, nothing else: what bakery.definitions may keep, keyed by them."""
    try:
        loaded = parse(decode(raw, display), display)
    except InputError as exc:
        return [str(exc)], None, []
    data, problems = loaded.data, list(loaded.problems)
    if data is None:
        return problems or [f"{display}: (top level): file is empty"], None, []
    if not isinstance(data, dict):
        return problems + [f"{display}: (top level): must be a mapping with name, template and versions"], None, []
    try:
        d = DefinitionFile.model_validate(data)
    except pydantic.ValidationError as err:
        return problems + format_errors(display, DefinitionFile, err), None, []
    data = d.model_dump()
    data["validated_ignore"] = validated_ignores(d)
    return problems, data, check_policy(display, d) + check_packer(display, d)


def validated_ignores(d: DefinitionFile) -> list[dict[str, Any]] | None:
    """The definition's own ignore entries as validated (bakery.config.IgnoreEntry's fields, ``until`` as an ISO
    date), as plain data a scan applies without validating them again; None when one is invalid (check_policy
    names it)."""
    out = []
    for raw in d.policy.ignore if d.policy else []:
        try:
            e = IgnoreEntry.model_validate(raw)
        except pydantic.ValidationError:
            return None
        out.append({"id": e.id, "reason": e.reason, "until": e.until.isoformat() if e.until else None,
                    "image": e.image, "package": e.package})
    return out
