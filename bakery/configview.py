"""The configuration as the rest of bakery reads it, without pydantic: start-up for short commands.

Validating ``bakery.yaml`` needs pydantic (``bakery.config``): its import and model building are most of a
short command's start-up (~0.1 s). The validated configuration of a given file and environment never
changes, so ``load_project`` keeps it, as plain JSON with the shape of its models, in
``$BAKERY_CACHE_DIR/config/`` (default ``~/.cache/bakery``), keyed by the file's bytes, the ``BAKERY_*``
overrides, bakery's version and the source of the models. The next command with the same inputs reads it
back into views (:class:`View`) that behave like the models — same fields, same properties and methods,
immutable — and imports neither pydantic nor yaml. Anything else (a new file, a changed variable, an
upgrade) is validated again by pydantic, with the same messages as ever.

The behaviour shared by models and views (``Environment.host``, ``Config.env()``…) lives here, in mixins
the pydantic models of ``bakery.config`` inherit: one implementation for both.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery import cachedir, contain, secrets
from bakery.errors import InputError, ValidationError
from bakery.text import show

CONFIG_FILE = "bakery.yaml"
# Environment variables that are not configuration overrides (see bakery.config.env_overrides).
NOT_OVERRIDES = frozenset({"BAKERY_CONFIG", "BAKERY_DEBUG", "BAKERY_NOW", "BAKERY_ACTOR", "BAKERY_CACHE_DIR",
                           "BAKERY_CI_ENVIRONMENT"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
CACHE_FORMAT = 1
CACHE_ENTRIES = 200  # validated configurations kept (one per file, variables and bakery version seen)


def parse_duration(value: str | int | float) -> dt.timedelta:
    """'90s', '15m', '24h', '7d', '2w' or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.timedelta(seconds=float(value))
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 24h, 7d)")
    return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


# ---------------------------------------------------------------------------------------------- behaviour
class CredentialsBehaviour:
    """Where registry credentials come from. Values never appear in output."""

    username_env: str | None
    password_env: str | None

    def resolve(self) -> tuple[str, str] | None:
        if self.username_env and self.password_env:
            user = os.environ.get(self.username_env)
            password = os.environ.get(self.password_env)
            if user and password:
                secrets.register(password)
                return user, password
        return None


class GatesBehaviour:
    max_scan_age: str
    soak: str

    @property
    def max_scan_age_delta(self) -> dt.timedelta:
        return parse_duration(self.max_scan_age)

    @property
    def soak_delta(self) -> dt.timedelta:
        return parse_duration(self.soak)


class EnvironmentBehaviour:
    registry: str
    tls_verify: bool | None

    @property
    def host(self) -> str:
        return self.registry.split("/", 1)[0]

    @property
    def namespace(self) -> str:
        return self.registry.split("/", 1)[1] if "/" in self.registry else ""

    def repository(self, name: str) -> str:
        """Repository path inside the registry for an image family (``team/python``)."""
        return f"{self.namespace}/{name}" if self.namespace else name

    def image(self, name: str) -> str:
        return f"{self.registry}/{name}"

    @property
    def insecure(self) -> bool:
        if self.tls_verify is not None:
            return not self.tls_verify
        h = self.host.split(":")[0]
        return h in ("localhost", "127.0.0.1", "::1") or h.startswith("127.")


class ConfigBehaviour:
    environments: dict[str, Any]

    @property
    def env_order(self) -> list[str]:
        return list(self.environments)

    @property
    def first_env(self) -> str:
        return self.env_order[0]

    def env(self, name: str) -> Any:
        try:
            return self.environments[name]
        except KeyError:
            raise InputError(f"unknown environment {name!r} (configured: {', '.join(self.env_order)})") from None

    def previous_env(self, name: str) -> str | None:
        order = self.env_order
        self.env(name)
        i = order.index(name)
        return order[i - 1] if i > 0 else None


BEHAVIOUR: dict[str, type] = {"Credentials": CredentialsBehaviour, "Gates": GatesBehaviour,
                              "Environment": EnvironmentBehaviour, "Config": ConfigBehaviour}


# ---------------------------------------------------------------------------------------------- views
class View:
    """An immutable model read back from the cache: its fields as attributes, its model's behaviour."""

    __slots__ = ("_fields", "_data")

    def __init__(self, fields: dict[str, Any], data: Any):
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_data", data)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_fields")[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, View):
            return self._data == other._data
        dump = getattr(other, "model_dump", None)
        return callable(dump) and dump(mode="json") == self._data

    def __hash__(self) -> int:
        return hash(json.dumps(self._data, sort_keys=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    def model_dump(self, mode: str = "python", **_kw: Any) -> Any:
        """The model's fields as data (``mode="json"``: as JSON values, the only mode views keep exactly)."""
        return json.loads(json.dumps(self._data))


_VIEW_CLASSES: dict[str, type] = {}


def _view_class(model: str) -> type:
    cls = _VIEW_CLASSES.get(model)
    if cls is None:
        bases = (View, BEHAVIOUR[model]) if model in BEHAVIOUR else (View,)
        cls = type(model, bases, {"__slots__": ()})
        _VIEW_CLASSES[model] = cls
    return cls


def build(shape: dict[str, Any], value: Any) -> Any:
    """JSON data → views, following ``shape`` (what :func:`bakery.config.shape_of` recorded of the models)."""
    if value is None:
        return None
    if "model" in shape:
        fields = {name: build(shape["fields"].get(name, {}), v) for name, v in value.items()}
        return _view_class(shape["model"])(fields, value)
    if "dict_of" in shape:
        return {k: build(shape["dict_of"], v) for k, v in value.items()}
    if "list_of" in shape:
        return [build(shape["list_of"], v) for v in value]
    if shape.get("date"):
        return dt.date.fromisoformat(value)
    return json.loads(json.dumps(value)) if isinstance(value, (dict, list)) else value


# ---------------------------------------------------------------------------------------------- project
@dataclass(frozen=True)
class Project:
    """A bakery repository: its root, its configuration and where things live."""

    root: Path
    config: Any  # bakery.config.Config, or its view read back from the cache (the same fields and behaviour)
    config_file: Path | None
    warnings: tuple[str, ...] = ()  # shown once by the CLI (e.g. an unknown BAKERY_* variable)

    @property
    def state_dir(self) -> Path:
        return self.root / self.config.state_dir

    @property
    def definitions_dir(self) -> Path:
        return self.root / self.config.definitions

    @property
    def templates_dir(self) -> Path:
        return self.root / self.config.templates

    @property
    def rendered_dir(self) -> Path:
        return self.state_dir / "rendered"

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.root / p

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def require_config_file(project: Project, environ: dict[str, str]) -> None:
    """Commands that change registries or the ledger do not run on the built-in defaults by accident."""
    if project.config_file is not None:
        return
    if any(key.startswith("BAKERY_ENVIRONMENTS") for key in environ):
        return  # configured through the environment on purpose (e.g. a CI job)
    raise InputError(f"no {CONFIG_FILE} here or above: run this in a bakery repository, or name one with "
                     f"--config / $BAKERY_CONFIG (the built-in example registries are not used for changes)")


def find_config(start: Path) -> Path | None:
    for d in [start, *start.parents]:
        candidate = d / CONFIG_FILE
        if os.path.lexists(candidate):  # a dangling symlink or a directory is named by load_project, not skipped
            return candidate
    return None


def locate(config_path: str | os.PathLike[str] | None, cwd: Path, environ: dict[str, str]) -> Path | None:
    """The configuration file: explicit path, else $BAKERY_CONFIG, else bakery.yaml here or above (None: none)."""
    if config_path is None and environ.get("BAKERY_CONFIG"):
        config_path = environ["BAKERY_CONFIG"]
    if config_path is not None:
        path = Path(config_path)
        if not path.is_absolute():
            path = cwd / path
        if not path.is_file():
            raise InputError(f"{config_path}: configuration file not found")
        return path
    path = find_config(cwd)
    if path is not None:
        # the repository's own bakery.yaml: a symlink out of the repository, a dangling one or a directory is
        # refused before anything is read
        contain.require(path.parent, path, CONFIG_FILE)
    return path


def shown_path(path: Path, cwd: Path) -> str:
    """How messages name the configuration file."""
    return show(os.path.relpath(path, cwd) if str(path).startswith(str(cwd)) else str(path), quote=False)


def effective(config: Any) -> dict[str, Any]:
    """The configuration as plain data, secrets masked (for `bakery config`)."""
    data = config.model_dump(mode="json")
    for name, env in config.environments.items():
        creds = env.credentials.resolve()
        if creds:
            data["environments"][name]["credentials"]["resolved"] = {"username": creds[0],
                                                                     "password": secrets.MASK}
    return data


# ---------------------------------------------------------------------------------------------- the cache
def cache_dir() -> Path:
    return cachedir.cache_dir("config")


def cache_key(path: Path | None, environ: dict[str, str]) -> str | None:
    """What the validated configuration depends on; None when it cannot be read (then nothing is cached)."""
    from bakery import __version__

    parts: list[Any] = [CACHE_FORMAT, __version__]
    here = Path(__file__).resolve().parent
    try:
        for module in ("config.py", "configview.py", "validation.py", "tags.py"):  # the models and their checks
            st = (here / module).stat()
            parts.append([module, st.st_size, st.st_mtime_ns])
        if path is not None:
            parts += [str(path.resolve()), cachedir.sha256(path.read_bytes()).hexdigest()]
    except OSError:
        return None
    parts.append(sorted((k, v) for k, v in environ.items() if k.startswith("BAKERY_") and k not in NOT_OVERRIDES))
    return cachedir.sha256(json.dumps(parts).encode()).hexdigest()


def load_cached(path: Path | None, key: str | None) -> tuple[Any, tuple[str, ...], dict[str, Any]] | None:
    """(configuration view, variable warnings, the file's path/program settings) stored under ``key``, or None."""
    if key is None:
        return None
    try:
        stored = json.loads((cache_dir() / f"{key}.json").read_text())
        if stored.get("format") != CACHE_FORMAT:
            return None
        file_data: dict[str, Any] = {}
        for keys, value in stored.get("file_settings") or []:
            cur = file_data
            for k in keys[:-1]:
                cur = cur.setdefault(k, {})
            cur[keys[-1]] = value
        return build(stored["shape"], stored["data"]), tuple(stored.get("warnings") or ()), file_data
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store(key: str | None, shape: dict[str, Any], data: Any, *, warnings: tuple[str, ...] = (),
          file_data: dict[str, Any] | None = None) -> None:
    """Keep a validated configuration: its data, the shape of its models, the variable warnings (a function of
    the same inputs) and the file's own path and program settings (checked again at every load: the files they
    name may have changed since)."""
    if key is None:
        return
    settings = [[list(keys), _get(file_data or {}, keys)] for keys in (*PATH_SETTINGS, *(k for k, _ in PROGRAM_SETTINGS))
                if isinstance(_get(file_data or {}, keys), str)]
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "shape": shape, "data": data, "warnings": list(warnings),
                                   "file_settings": settings}))
        tmp.replace(d / f"{key}.json")
        entries = sorted(d.glob("*.json"), key=lambda f: f.stat().st_mtime)
        for old in entries[:-CACHE_ENTRIES]:  # the oldest go: a cache of recent inputs, not an archive
            old.unlink(missing_ok=True)
    except (OSError, TypeError, ValueError):
        pass  # a cache only


def register_secrets(config: Any) -> None:
    for env in config.environments.values():
        env.credentials.resolve()  # registers secrets for masking


def load_project_fast(config_path: str | os.PathLike[str] | None = None, *, cwd: Path | None = None,
                      environ: dict[str, str] | None = None) -> Project | None:
    """The project from the cache, without pydantic or yaml; None when it must be validated. The file's path
    and program settings are checked again (what they name on disk may have changed)."""
    environ = dict(os.environ) if environ is None else environ
    cwd = (cwd or Path.cwd()).resolve()
    path = locate(config_path, cwd, environ)
    cached = load_cached(path, cache_key(path, environ))
    if cached is None:
        return None
    config, warnings, file_data = cached
    root = path.parent if path is not None else cwd
    problems = file_problems(file_data, shown_path(path, cwd) if path is not None else CONFIG_FILE, root)
    if problems:
        raise ValidationError(problems)
    register_secrets(config)
    return Project(root=root, config=config, config_file=path, warnings=warnings)


# Settings that name a place bakery reads or writes: from bakery.yaml (repository content) they must stay inside
# the repository. The same setting from a BAKERY_* variable (the CI job's operator) may point elsewhere.
PATH_SETTINGS = (("definitions",), ("templates",), ("state_dir",), ("scanner", "cache_dir"), ("dev_stack", "data_dir"),
                 ("ledger", "url"))
# Settings that name a program bakery runs: from bakery.yaml a command on PATH or an absolute path outside the
# repository, never a program inside it (a pull request could ship its own); BAKERY_TRIVY / BAKERY_PACKER may.
PROGRAM_SETTINGS = ((("scanner", "trivy"), "BAKERY_TRIVY"), (("packer", "binary"), "BAKERY_PACKER"))


def file_problems(file_data: dict[str, Any], display: str, root: Path) -> list[str]:
    out = []
    for keys in PATH_SETTINGS:
        value = _get(file_data, keys)
        if not isinstance(value, str):
            continue
        field = ".".join(keys)
        if keys == ("ledger", "url") and "://" in value:
            continue
        if not value.strip():
            out.append(f"{display}: {field}: an empty path")
        elif os.path.isabs(value) or not contain.inside(root, root / value):
            out.append(f"{display}: {field}: {show(value)} is outside the repository; a path in {CONFIG_FILE} stays "
                       f"inside it (relative, no '..' out, no symlink out); set BAKERY_{'__'.join(keys).upper()} in "
                       f"the environment to use a place outside")
    for keys, variable in PROGRAM_SETTINGS:
        value = _get(file_data, keys)
        if not isinstance(value, str):
            continue
        field = ".".join(keys)
        if not value.strip():
            out.append(f"{display}: {field}: an empty program name")
        elif "/" in value and not os.path.isabs(value):
            out.append(f"{display}: {field}: {show(value)} is a relative path; {CONFIG_FILE} names a command on PATH "
                       f"or an absolute path outside the repository (set {variable} in the environment otherwise)")
        elif os.path.isabs(value) and contain.inside(root, Path(value)):
            out.append(f"{display}: {field}: {show(value)} is inside the repository; a pull request could replace "
                       f"it, so bakery does not run a program from the repository (set {variable} in the "
                       f"environment to do so on purpose)")
    return out


def _get(data: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
