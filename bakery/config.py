"""`bakery.yaml`: the effective configuration of a bakery repository.

Precedence: built-in defaults < bakery.yaml < BAKERY_* environment variables.
Environment overrides use double underscores for nesting (``BAKERY_SCANNER__TIMEOUT=120``,
``BAKERY_ENVIRONMENTS__DEV__REGISTRY=host:5000/team``) plus a few shortcuts (``BAKERY_TRIVY``,
``BAKERY_LEDGER``, ``BAKERY_PACKER``). ``BAKERY_CONFIG`` names the file itself.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from bakery.configview import (CONFIG_FILE, NOT_OVERRIDES, PATH_SETTINGS, PROGRAM_SETTINGS, ConfigBehaviour,
                               CredentialsBehaviour, EnvironmentBehaviour, GatesBehaviour, Project, build, cache_key,
                               effective, file_problems, find_config, load_project_fast, locate, parse_duration,
                               register_secrets, require_config_file, shown_path, store)
from bakery.errors import InputError, ValidationError
from bakery.tags import validate_scheme
from bakery.text import show
from bakery.validation import format_errors, host_problem, load_yaml, tag_template_problems
from bakery.validation import registry_problem as _registry_problem
from bakery.yamlsafe import load_value

__all__ = ["CONFIG_FILE", "PATH_SETTINGS", "PROGRAM_SETTINGS", "Project", "effective", "file_problems",
           "find_config", "load_project", "parse_duration", "require_config_file"]  # from bakery.configview


def registry_problem(value: Any) -> str | None:
    """Why ``value`` is not a registry reference ``host[:port][/namespace]`` (None when it is one)."""
    return _registry_problem(value)


def _registry_ref(value: str) -> str:
    problem = registry_problem(value)
    if problem:
        raise ValueError(problem)
    return value.rstrip("/")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Credentials(CredentialsBehaviour, _Strict):
    """Where registry credentials come from. Values never appear in output."""

    username_env: str | None = None
    password_env: str | None = None
    docker_config: bool = True


class Gates(GatesBehaviour, _Strict):
    require_previous: bool = True
    scan: bool = True
    max_scan_age: str = "24h"
    soak: str = "0s"
    approvers: list[str] = Field(default_factory=list)
    # signed evidence the digest must carry (verified with the environment's trusted_keys): see bakery/evidence.py
    require_attestations: list[Literal["provenance", "sbom", "scan", "vex", "promotion"]] = Field(
        default_factory=list)

    @field_validator("require_attestations")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @field_validator("max_scan_age", "soak")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

class AwsTarget(_Strict):
    account: str = "123456789012"
    regions: list[str] = Field(default_factory=lambda: ["us-east-1"])


class Environment(EnvironmentBehaviour, _Strict):
    registry: str
    kind: Literal["registry", "ecr"] = "registry"
    tls_verify: bool | None = None  # None: verify except on loopback
    credentials: Credentials = Field(default_factory=Credentials)
    aliases: list[str] = Field(default_factory=list)
    gates: Gates = Field(default_factory=Gates)
    git_tag: bool = False
    aws: AwsTarget | None = None
    # public keys (PEM files relative to the repository, or inline PEM) whose signatures this environment trusts
    trusted_keys: list[str] = Field(default_factory=list)

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str) -> str:
        return _registry_ref(v)

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for entry in v:
            if not entry.strip():
                raise ValueError("an entry is empty (a PEM file path, or an inline PEM public key)")
        return v

    @pydantic.model_validator(mode="after")
    def _attestations_need_keys(self) -> Environment:
        if self.gates.require_attestations and not self.trusted_keys:
            raise ValueError(f"gates.require_attestations ({', '.join(self.gates.require_attestations)}) needs "
                             f"trusted_keys: the public keys whose signatures this environment accepts")
        return self


class IgnoreEntry(_Strict):
    id: str
    reason: str
    until: dt.date | None = None
    image: str | None = None
    package: str | None = None


class Policy(_Strict):
    severity: Literal["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"] = "HIGH"
    fixable_only: bool = True
    ignore: list[IgnoreEntry] = Field(default_factory=list)

    @field_validator("severity", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class Scanner(_Strict):
    trivy: str = "trivy"
    cache_dir: str = ".bakery/trivy"
    db_repository: str | None = None
    timeout: float = Field(default=600, gt=0, le=7 * 86400, allow_inf_nan=False)
    push_on_fail: bool = False
    min_version: str = "0.50.0"


class Ledger(_Strict):
    url: str = ".bakery/ledger.db"  # a path (SQLite) or s3://bucket/prefix
    endpoint_url: str | None = None  # S3-compatible endpoint (moto, MinIO)
    region: str = "us-east-1"


class Tags(_Strict):
    build: str = "{version}-{yyyymmdd}.{n}"
    aliases: list[str] = Field(default_factory=lambda: ["{version}"])

    @field_validator("build")
    @classmethod
    def _scheme(cls, v: str) -> str:
        validate_scheme(v)
        return v


class DevStack(_Strict):
    data_dir: str = ".bakery/dev"
    ports: dict[str, Annotated[int, Field(ge=1, le=65535, strict=True)]] = Field(default_factory=lambda: {"mirror": 5000, "dev": 5001, "staging": 5002,
                                                             "prod": 5003})
    # env name -> {username_env, password_env} (or the shorthand "USER_ENV:PASSWORD_ENV"): basic auth (htpasswd)
    auth: dict[str, Credentials] = Field(default_factory=dict)
    base_image: str = "library/debian:bookworm-slim"
    suite: str = "bookworm"
    runtime: Literal["auto", "process", "docker"] = "auto"  # auto: the docker-registry binary, else docker
    registry_image: str = "registry:2"  # for runtime docker

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            out = {}
            for name, value in v.items():
                if isinstance(value, str):
                    user_env, sep, password_env = value.partition(":")
                    if not (sep and user_env and password_env):
                        raise ValueError(f"auth.{name}: use {{username_env: VAR, password_env: VAR}} or "
                                         f"'USER_VAR:PASSWORD_VAR', not {value!r}")
                    value = {"username_env": user_env, "password_env": password_env}
                out[name] = value
            return out
        return v


class Signing(_Strict):
    """Where the private key that signs attestations lives (never the key itself)."""

    key: str | None = None  # PEM file path | file:PATH | env:VAR | awskms:///alias/NAME
    ami_store: str | None = None  # s3://BUCKET[/PREFIX]: where AMI builds' attestations live (bakery/ami_evidence.py)

    @field_validator("ami_store")
    @classmethod
    def _store(cls, v: str | None) -> str | None:
        if v and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$", v):
            raise ValueError(f"not s3://BUCKET[/PREFIX]: {v!r}")
        return v or None

    @field_validator("key")
    @classmethod
    def _spec(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if v.lstrip().startswith("-----BEGIN"):
            raise ValueError("a private key must not be written into bakery.yaml: name a file, env:VAR or "
                             "awskms:///alias/NAME")
        if v.startswith("env:") and not re.match(r"^env:[A-Za-z_][A-Za-z0-9_]*$", v):
            raise ValueError(f"not an environment variable name: {v!r} (use env:VARNAME)")
        if v.startswith("awskms://") and not re.match(r"^awskms://[^/]*/.+$", v):
            raise ValueError(f"not a KMS key reference: {v!r} (use awskms:///alias/NAME)")
        return v


_SECRET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BuildSecret(_Strict):
    """Where a build secret's value comes from: an environment variable or a file (never the value itself)."""

    env: str | None = None
    file: str | None = None

    @field_validator("env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError(f"not an environment variable name: {v!r}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> BuildSecret:
        if (self.env is None) == (self.file is None):
            raise ValueError("name exactly one source: env (a variable) or file (a path)")
        return self


def _secret_ids(v: dict[str, BuildSecret]) -> dict[str, BuildSecret]:
    for key in v:
        if not _SECRET_ID.match(key):
            raise ValueError(f"secret id {key!r} must be letters, digits, '_', '.', '-' (as in RUN --mount=id=...)")
    return v


class Build(_Strict):
    jobs: int = Field(default=2, ge=1, le=64)
    timeout: float = Field(default=1800, gt=0, le=7 * 86400, allow_inf_nan=False)
    push: bool = True
    # auto: BuildKit (the Docker CLI with DOCKER_BUILDKIT=1) where the daemon and a CLI support it, else the
    # classic builder of the Docker SDK (no RUN --mount, no secrets)
    engine: Literal["auto", "buildkit", "classic"] = "auto"
    # id -> {env: VAR} | {file: PATH}: exposed to `RUN --mount=type=secret,id=ID` (BuildKit only)
    secrets: Annotated[dict[str, BuildSecret], AfterValidator(_secret_ids)] = Field(default_factory=dict)


class Packer(_Strict):
    binary: str = "packer"
    timeout: float = Field(default=3600, gt=0, le=7 * 86400, allow_inf_nan=False)


class Aws(_Strict):
    endpoint_url: str | None = None
    region: str = "us-east-1"


NOTIFY_EVENTS = ("nightly_failed", "prod_vulnerability", "drift")
NotifyEvent = Literal["nightly_failed", "prod_vulnerability", "drift"]


class Webhook(_Strict):
    """A webhook bakery calls on an event. Its URL (which usually carries a token) comes from an environment
    variable only: ``url_env`` names it; the URL never appears in output."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    url_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    format: Literal["json", "slack"] = "json"
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    timeout: float = Field(default=10, gt=0, le=120)


class Notify(_Strict):
    webhooks: list[Webhook] = Field(default_factory=list)

    @field_validator("webhooks")
    @classmethod
    def _unique(cls, v: list[Webhook]) -> list[Webhook]:
        names = [w.name for w in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"webhook names must be unique: {', '.join(dupes)}")
        return v


def _default_envs() -> dict[str, Environment]:
    return {
        "dev": Environment(registry="127.0.0.1:5001/bakery", aliases=["{version}"],
                           gates=Gates(require_previous=False, scan=True)),
        "staging": Environment(registry="127.0.0.1:5002/bakery", aliases=["{version}", "staging"]),
        "prod": Environment(registry="127.0.0.1:5003/bakery", aliases=["{version}", "prod"]),
    }


class Config(ConfigBehaviour, _Strict):
    definitions: str = "base-images"
    templates: str = "templates"
    state_dir: str = ".bakery"
    environments: dict[str, Environment] = Field(default_factory=_default_envs)
    # upstream registry host -> mirror (host[:port][/namespace]); written into recipes, so validated strictly
    mirrors: dict[str, Annotated[str, AfterValidator(_registry_ref)]] = Field(
        default_factory=lambda: {"docker.io": "127.0.0.1:5000"})
    tags: Tags = Field(default_factory=Tags)
    scanner: Scanner = Field(default_factory=Scanner)
    policy: Policy = Field(default_factory=Policy)
    ledger: Ledger = Field(default_factory=Ledger)
    dev_stack: DevStack = Field(default_factory=DevStack)
    build: Build = Field(default_factory=Build)
    packer: Packer = Field(default_factory=Packer)
    aws: Aws = Field(default_factory=Aws)
    notify: Notify = Field(default_factory=Notify)
    signing: Signing = Field(default_factory=Signing)

    @field_validator("environments")
    @classmethod
    def _envs(cls, v: dict[str, Environment]) -> dict[str, Environment]:
        if not v:
            raise ValueError("at least one environment is required (the first is where builds are pushed)")
        return v

SHORTCUTS = {
    "BAKERY_TRIVY": ("scanner", "trivy"),
    "BAKERY_LEDGER": ("ledger", "url"),
    "BAKERY_PACKER": ("packer", "binary"),
    "BAKERY_JOBS": ("build", "jobs"),
    "BAKERY_BUILD_ENGINE": ("build", "engine"),
    "BAKERY_DB_REPOSITORY": ("scanner", "db_repository"),
    "BAKERY_AWS_ENDPOINT_URL": ("aws", "endpoint_url"),
    "BAKERY_SIGNING_KEY": ("signing", "key"),
}
_NOT_OVERRIDES = NOT_OVERRIDES
# BAKERY_* variables bakery or its workflows read that are not configuration overrides
_OTHER_VARIABLES = {"BAKERY_CACHE_DIR", "BAKERY_PACKAGE", "BAKERY_SKIP_INTEGRATION", "BAKERY_TEST_PORT_BASE",
                    "BAKERY_TEST_STACK_DIR"}


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    cur = data
    for key in path[:-1]:
        nxt = cur.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[key] = nxt
        cur = nxt
    cur[path[-1]] = value


def env_overrides(environ: dict[str, str]) -> list[tuple[tuple[str, ...], Any, str]]:
    out = []
    for key in sorted(environ):
        if not key.startswith("BAKERY_") or key in _NOT_OVERRIDES:
            continue
        raw = environ[key]
        try:
            value = load_value(raw, f"{key} (environment)") if raw.strip() else raw
        except InputError:
            value = raw
        if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
            value = raw
        if key in SHORTCUTS:
            path = SHORTCUTS[key]
            if path[-1] in ("trivy", "url", "binary", "db_repository", "endpoint_url", "key"):
                value = raw
            out.append((path, value, key))
        elif "__" in key[7:] or key[7:].lower() in Config.model_fields:
            path = tuple(p.lower() for p in key[7:].split("__"))
            out.append((path, value, key))
    return out


def load_project(config_path: str | os.PathLike[str] | None = None, *, cwd: Path | None = None,
                 environ: dict[str, str] | None = None) -> Project:
    """Load the configuration: explicit path, else $BAKERY_CONFIG, else bakery.yaml here or above.

    The validated configuration comes back as a view (bakery.configview): read from the cache when the same
    file and variables were validated before, else validated here and cached."""
    environ = dict(os.environ) if environ is None else environ
    cwd = (cwd or Path.cwd()).resolve()
    cached = load_project_fast(config_path, cwd=cwd, environ=environ)  # contained, file paths checked again
    if cached is not None:
        return cached
    path = locate(config_path, cwd, environ)
    key = cache_key(path, environ)
    data: Any = {}
    display = CONFIG_FILE
    if path is not None:
        display = shown_path(path, cwd)
        if path.suffix not in (".yaml", ".yml"):
            # refused before it is read: a file that is not a bakery.yaml (--config /etc/shadow) is never echoed
            raise InputError(f"{display}: not a YAML file (a configuration file's name ends in .yaml or .yml)")
        data = load_yaml(path, display=display)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InputError(f"{display}: (top level): must be a mapping of settings")
    file_data = data
    root = path.parent if path is not None else cwd
    data = _merge_overrides(data, environ)
    problems = key_problems(data, display)
    config = None
    try:
        config = Config.model_validate(data)
    except pydantic.ValidationError as err:
        problems += _attribute(format_errors(display, Config, err), err, display, environ)
    if config is not None:
        problems += semantic_problems(config, display, data)
        problems += file_problems(file_data, display, root)
    if problems:
        raise ValidationError(problems)
    assert config is not None
    warnings = tuple(variable_warnings(environ, config))
    shape, dumped = shape_of(Config), config.model_dump(mode="json")
    store(key, shape, dumped, warnings=warnings, file_data=file_data)
    view = build(shape, dumped)
    register_secrets(view)
    return Project(root=root, config=view, config_file=path, warnings=warnings)


def shape_of(annotation: Any) -> dict[str, Any]:
    """What :func:`bakery.configview.build` needs to read a model's JSON back: which values are models (and
    of which class), dicts or lists of models, or dates."""
    import typing

    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return shape_of(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"model": annotation.__name__,
                "fields": {name: shape_of(f.annotation) for name, f in annotation.model_fields.items()}}
    if annotation is dt.date:
        return {"date": True}
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is dict and len(args) == 2:
        inner = shape_of(args[1])
        return {"dict_of": inner} if inner else {}
    if origin is list and len(args) == 1:
        inner = shape_of(args[0])
        return {"list_of": inner} if inner else {}
    if len(args) == 1 and origin is not list and origin is not dict:  # X | None
        return shape_of(args[0])
    return {}


ENV_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def key_problems(data: dict[str, Any], display: str) -> list[str]:
    """Environment names and mirror hosts: every bad one, one line each (a validator would stop at the first)."""
    out = []
    envs = data.get("environments")
    if isinstance(envs, dict):
        for name in envs:
            if not isinstance(name, str) or not ENV_NAME_RE.match(name):
                out.append(f"{display}: environments: environment name {show(name)} must be lowercase letters, "
                           f"digits and '-'")
    mirrors = data.get("mirrors")
    if isinstance(mirrors, dict):
        for host in mirrors:
            if host_problem(host) is not None or not isinstance(host, str) or host != host.lower():
                out.append(f"{display}: mirrors: mirror key {show(host)} must be an upstream registry host[:port] "
                           f"(e.g. docker.io)")
    return out


def semantic_problems(config: Config, display: str, data: dict[str, Any]) -> list[str]:
    """What each field's own check cannot see: environments on distinct registries, dev-stack ports distinct and
    named after the mirror or an environment, every alias template valid."""
    import difflib

    out: list[str] = []
    registries: dict[str, str] = {}
    for name, env in config.environments.items():
        key = env.registry.rstrip("/")
        if key in registries:
            out.append(f"{display}: environments.{name}.registry: {show(env.registry)} is also the registry of "
                       f"environment {show(registries[key])}; each environment needs its own registry (promotion "
                       f"copies between them, and a gate on one would guard the other)")
        else:
            registries[key] = name
        for i, alias in enumerate(env.aliases):
            out += [f"{display}: environments.{name}.aliases[{i}]: {p}"
                    for p in tag_template_problems(alias, kind="alias")]
    for i, alias in enumerate(config.tags.aliases):
        out += [f"{display}: tags.aliases[{i}]: {p}" for p in tag_template_problems(alias, kind="alias")]
    known = ["mirror", *config.environments]
    defaults = ("mirror", *_default_envs())  # a port for a default environment this configuration lacks is unused
    seen: dict[int, str] = {}
    for name in config.dev_stack.auth:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            out.append(f"{display}: dev_stack.auth.{show(name, quote=False)}: not the mirror or an environment{hint}")
    for name, port in config.dev_stack.ports.items():
        if name not in known and name in defaults:
            continue
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            out.append(f"{display}: dev_stack.ports.{show(name, quote=False)}: not the mirror or an environment{hint}")
        if port in seen:
            out.append(f"{display}: dev_stack.ports.{show(name, quote=False)}: port {port} is also the port of "
                       f"{show(seen[port])}; each registry of the dev stack needs its own port")
        else:
            seen[port] = name
    return out


def variable_warnings(environ: dict[str, str], config: Config) -> list[str]:
    """``BAKERY_*`` variables bakery does not know: a warning with the closest known name (a typo would otherwise
    be silently ignored). Names a configuration uses for credentials are known."""
    import difflib

    credentials = set()
    for env in config.environments.values():
        credentials |= {env.credentials.username_env, env.credentials.password_env}
    for cred in config.dev_stack.auth.values():
        credentials |= {cred.username_env, cred.password_env}
    known = set(SHORTCUTS) | _NOT_OVERRIDES | _OTHER_VARIABLES
    fields = [f"BAKERY_{name.upper()}" for name in Config.model_fields]
    out = []
    for key in sorted(environ):
        if not key.startswith("BAKERY_") or key in known or key in credentials or key.startswith("BAKERY_TEST_"):
            continue
        rest = key[len("BAKERY_"):]
        if "__" in rest or rest.lower() in Config.model_fields:
            continue  # an override: checked (an unknown field is an error naming the variable)
        close = difflib.get_close_matches(key, sorted(known) + fields, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"{show(key, quote=False)}: unknown BAKERY_* variable, ignored{hint}")
    return out


def _attribute(lines: list[str], err: pydantic.ValidationError, display: str, environ: dict[str, str]) -> list[str]:
    """Name the BAKERY_* variable, not the file, when a bad value came from the environment."""
    overrides = env_overrides(environ)
    out = []
    for line, e in zip(lines, err.errors()):
        loc = tuple(str(p) for p in e["loc"])
        source = next((key for path, _, key in overrides if loc[:len(path)] == path or path[:len(loc)] == loc), None)
        if source and line.startswith(f"{display}: "):
            line = f"{source} (environment): {line[len(display) + 2:]}"
        out.append(line)
    return out


def _merge_overrides(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    import copy

    data = copy.deepcopy(data)
    for path, value, _key in env_overrides(environ):
        if path[0] == "environments" and len(path) > 2 and path[1] not in data.get("environments", {}):
            # overriding a field of a default environment: materialise the defaults first
            if "environments" not in data:
                data["environments"] = {k: v.model_dump(exclude_defaults=True) for k, v in _default_envs().items()}
        _set_path(data, path, value)
    return data
