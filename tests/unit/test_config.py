"""Invalid bakery.yaml files and BAKERY_* overrides: exact error line, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

GOOD_DEF = (Path(__file__).resolve().parents[1] / "fixtures" / "minimal-definition.yaml").read_text()
C = "bakery.yaml"
ENV_DEV = "environments:\n  dev: {registry: '127.0.0.1:5001/b'%s}\n"

CONFIG_CASES: list[tuple[str, str, list[str]]] = [
    ("unknown-key-suggests", "defintions: base-images\n", [f"{C}: defintions: unknown key (did you mean 'definitions'?)"]),
    ("unknown-nested-key-suggests", ENV_DEV % ", gate: {}", [
        f"{C}: environments.dev.gate: unknown key (did you mean 'gates'?)"]),
    ("unknown-key-lists-allowed", "build: {zzz: 1}\n", [f"{C}: build.zzz: unknown key (allowed: engine, jobs, push, secrets, timeout)"]),
    ("bad-registry", "environments:\n  dev: {registry: 'HTTP://x'}\n", [
        f"{C}: environments.dev.registry: not a registry reference host[:port][/namespace]: 'HTTP://x'"]),
    ("missing-registry", "environments:\n  dev: {aliases: []}\n", [
        f"{C}: environments.dev.registry: required key is missing"]),
    ("bad-severity", "policy: {severity: SEVERE}\n", [
        f"{C}: policy.severity: must be one of 'UNKNOWN', 'LOW', 'MEDIUM', 'HIGH' or 'CRITICAL', got 'SEVERE'"]),
    ("bad-duration", ENV_DEV % ", gates: {soak: 3 days}", [
        f"{C}: environments.dev.gates.soak: not a duration: '3 days' (use e.g. 90s, 15m, 24h, 7d)"]),
    ("bad-tag-scheme-field", "tags: {build: '{version}-{date}'}\n", [
        f"{C}: tags.build: tag template '{{version}}-{{date}}': unknown field {{date}} (fields: dd, fingerprint, fp, "
        f"mm, n, name, variant, version, yyyy, yyyymmdd)"]),
    ("tag-scheme-without-fields", "tags: {build: latest}\n", [
        f"{C}: tags.build: tag scheme 'latest' has no fields: every build would get the same tag"]),
    ("no-environments", "environments: {}\n", [
        f"{C}: environments: at least one environment is required (the first is where builds are pushed)"]),
    ("bad-environment-name", "environments:\n  Dev: {registry: '127.0.0.1:5001/b'}\n", [
        f"{C}: environments: environment name 'Dev' must be lowercase letters, digits and '-'"]),
    ("bad-engine", "build: {engine: kit}\n", [
        f"{C}: build.engine: must be one of 'auto', 'buildkit' or 'classic', got 'kit'"]),
    ("secret-two-sources", "build: {secrets: {tok: {env: A, file: b}}}\n", [
        f"{C}: build.secrets.tok: name exactly one source: env (a variable) or file (a path)"]),
    ("secret-bad-env-name", "build: {secrets: {tok: {env: 'A B'}}}\n", [
        f"{C}: build.secrets.tok.env: not an environment variable name: 'A B'"]),
    ("secret-bad-id", "build: {secrets: {'a b': {env: A}}}\n", [
        f"{C}: build.secrets: secret id 'a b' must be letters, digits, '_', '.', '-' (as in RUN --mount=id=...)"]),
    ("jobs-zero", "build: {jobs: 0}\n", [f"{C}: build.jobs: must be >= 1, got int 0"]),
    ("jobs-too-many", "build: {jobs: 65}\n", [f"{C}: build.jobs: must be <= 64, got int 65"]),
    ("jobs-not-int", "build: {jobs: many}\n", [f"{C}: build.jobs: must be an integer, got 'many'"]),
    ("mirrors-not-mapping", "mirrors: [a]\n", [f"{C}: mirrors: must be a mapping, got a list"]),
    ("push-not-bool", "build: {push: maybe}\n", [f"{C}: build.push: must be true or false, got 'maybe'"]),
    ("bad-auth-shorthand", "dev_stack: {auth: {dev: ONLYONE}}\n", [
        f"{C}: dev_stack.auth: auth.dev: use {{username_env: VAR, password_env: VAR}} or 'USER_VAR:PASSWORD_VAR', "
        f"not 'ONLYONE'"]),
    ("mirror-injection", 'mirrors: {docker.io: "127.0.0.1:5800/x\\nRUN touch /pwned #"}\n', [
        f"{C}: mirrors.docker.io: not a registry reference host[:port][/namespace]: "
        f"'127.0.0.1:5800/x\\nRUN touch /pwned #'"]),
    ("mirror-with-space", "mirrors: {docker.io: 'x y'}\n", [
        f"{C}: mirrors.docker.io: not a registry reference host[:port][/namespace]: 'x y'"]),
    ("mirror-port-out-of-range", "mirrors: {docker.io: '127.0.0.1:70000'}\n", [
        f"{C}: mirrors.docker.io: port 70000 is out of range (1..65535): '127.0.0.1:70000'"]),
    ("mirror-not-a-string", "mirrors: {docker.io: 5000}\n", [f"{C}: mirrors.docker.io: must be a string, got int 5000"]),
    ("mirror-bad-host", "mirrors: {'docker io': '127.0.0.1:5000'}\n", [
        f"{C}: mirrors: mirror key 'docker io' must be an upstream registry host[:port] (e.g. docker.io)"]),
    ("registry-port-out-of-range", "environments:\n  dev: {registry: '127.0.0.1:99999/b'}\n", [
        f"{C}: environments.dev.registry: port 99999 is out of range (1..65535): '127.0.0.1:99999/b'"]),
    ("dev-stack-port-out-of-range", "dev_stack: {ports: {mirror: 0}}\n", [
        f"{C}: dev_stack.ports.mirror: must be >= 1, got int 0"]),
    ("yaml-syntax-error", "build: {jobs: 0\n", [f"{C}: line 2: invalid YAML: did not find expected ',' or '}}'"]),
    ("top-level-list", "- a\n", [f"{C}: (top level): must be a mapping of settings"]),
]

ENV_CASES: list[tuple[str, dict[str, str], list[str]]] = [
    ("jobs-shortcut-not-int", {"BAKERY_JOBS": "lots"}, ["BAKERY_JOBS (environment): build.jobs: must be an integer, got 'lots'"]),
    ("engine-shortcut", {"BAKERY_BUILD_ENGINE": "kit"},
     ["BAKERY_BUILD_ENGINE (environment): build.engine: must be one of 'auto', 'buildkit' or 'classic', got 'kit'"]),
    ("jobs-out-of-range", {"BAKERY_BUILD__JOBS": "100"}, [
        "BAKERY_BUILD__JOBS (environment): build.jobs: must be <= 64, got int 100"]),
    ("bad-registry", {"BAKERY_ENVIRONMENTS__DEV__REGISTRY": "bad reg!"}, [
        "BAKERY_ENVIRONMENTS__DEV__REGISTRY (environment): environments.dev.registry: not a registry reference "
        "host[:port][/namespace]: 'bad reg!'"]),
    ("bad-mirror", {"BAKERY_MIRRORS": '{docker.io: "127.0.0.1:5000/x\\nRUN id"}'}, [
        "BAKERY_MIRRORS (environment): mirrors.docker.io: not a registry reference host[:port][/namespace]: "
        "'127.0.0.1:5000/x\\nRUN id'"]),
    ("unknown-field-suggests", {"BAKERY_SCANNER__TIMOUT": "5"}, [
        "BAKERY_SCANNER__TIMOUT (environment): scanner.timout: unknown key (did you mean 'timeout'?)"]),
    ("bad-severity", {"BAKERY_POLICY__SEVERITY": "huge"}, [
        "BAKERY_POLICY__SEVERITY (environment): policy.severity: must be one of 'UNKNOWN', 'LOW', 'MEDIUM', 'HIGH' "
        "or 'CRITICAL', got 'HUGE'"]),
]


@pytest.mark.parametrize(("config", "expected"), [pytest.param(c, e, id=i) for i, c, e in CONFIG_CASES])
def test_invalid_config(make_project, bakery, config: str, expected: list[str]) -> None:
    project = make_project({"base-images/a.yaml": GOOD_DEF}, config=config)
    result = bakery("config", cwd=project)
    assert "Traceback" not in result.err + result.out
    assert result.errors == [f"error: {line}" for line in expected], result.err
    assert result.code == 2


@pytest.mark.parametrize(("env", "expected"), [pytest.param(v, e, id=i) for i, v, e in ENV_CASES])
def test_invalid_override(make_project, bakery, env: dict[str, str], expected: list[str]) -> None:
    project = make_project({"base-images/a.yaml": GOOD_DEF})
    result = bakery("list", cwd=project, env=env)
    assert "Traceback" not in result.err + result.out
    assert result.errors == [f"error: {line}" for line in expected], result.err
    assert result.code == 2


def test_missing_config_file(make_project, bakery) -> None:
    project = make_project({"base-images/a.yaml": GOOD_DEF})
    result = bakery("--config", "nope.yaml", "config", cwd=project)
    assert result.errors == ["error: nope.yaml: configuration file not found"]
    assert result.code == 2


def test_override_applies(make_project, bakery) -> None:
    """A valid override wins over bakery.yaml (defaults < file < environment)."""
    import json

    project = make_project({"base-images/a.yaml": GOOD_DEF}, config="build: {jobs: 3}\n")
    result = bakery("config", "--format", "json", cwd=project, env={"BAKERY_JOBS": "5"})
    assert result.code == 0, result.err
    assert json.loads(result.out)["build"]["jobs"] == 5
    result = bakery("config", "--format", "json", cwd=project)
    assert json.loads(result.out)["build"]["jobs"] == 3


@pytest.mark.parametrize(("flag", "expected"), [
    pytest.param("--mirror=x y", "--mirror: not a registry reference host[:port][/namespace]: 'x y'", id="mirror"),
    pytest.param("--mirror=127.0.0.1:5000/x\nRUN id", "--mirror: not a registry reference host[:port][/namespace]: "
                 "'127.0.0.1:5000/x\\nRUN id'", id="mirror-newline"),
    pytest.param("--dev-registry=127.0.0.1:99999/bakery", "--dev-registry: port 99999 is out of range (1..65535): "
                 "'127.0.0.1:99999/bakery'", id="dev-registry-port"),
    pytest.param("--dev-registry=127.0.0.1:65534/bakery", "--dev-registry: port 65534 leaves no room for staging and "
                 "prod on ports 65535 and 65536 (ports end at 65535)", id="dev-registry-derived-port"),
    pytest.param("--dev-registry=Bad Registry", "--dev-registry: 'Bad Registry' is not HOST[:PORT][/NAMESPACE]",
                 id="dev-registry-syntax"),
])
def test_init_refuses_bad_registries(tmp_path: Path, bakery, flag: str, expected: str) -> None:
    result = bakery("init", "new", flag, cwd=tmp_path)
    assert "Traceback" not in result.err
    assert result.errors == [f"error: {expected}"], result.err
    assert result.code == 2
    assert not (tmp_path / "new").exists()


def test_init_with_highest_usable_port_loads(tmp_path: Path, bakery) -> None:
    assert bakery("init", "new", "--dev-registry=127.0.0.1:65533/bakery", cwd=tmp_path).code == 0
    assert bakery("list", cwd=tmp_path / "new").code == 0
