"""Property-based tests (hypothesis): generated definitions, bakery.yaml documents and raw YAML text never make
bakery crash. For every input the CLI exits 0 or 2, prints no traceback and no "internal error", prints only
its own one-line messages, finishes (hypothesis fails an example that hangs past the pytest timeout) and keeps
its memory bounded. 1,100 examples in all, in-process; derandomized so CI sees the same examples every run."""

from __future__ import annotations

import contextlib
import io
import os
import resource
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakery.errors import InputError

FUZZ = settings(max_examples=int(os.environ.get("BAKERY_TEST_FUZZ_EXAMPLES", "400")), deadline=None,
                derandomize=not os.environ.get("BAKERY_TEST_FUZZ_EXAMPLES"), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TEMPLATE = "ARG BASE_IMAGE={{ parent }}\nFROM ${BASE_IMAGE}\nRUN echo {{ user }}\n"

# Scalars an attacker or a careless user writes: near-valid names, references, escapes, numbers YAML reads oddly.
WORDS = st.sampled_from([
    "a", "base", "nginx-", "a..b", "x_", "A", "", " ", "-o", "--privileged", "..", "../evil", "/etc", "t",
    "docker.io/library/debian:12", "docker.io/x@sha256:" + "a" * 64, "127.0.0.1:0/x:1", "127.0.0.1:99999/x",
    "base:1", "a:1", "{version}", "{n}", "{version}.{n}", "{version.upper}", "{version[0]}", "{yyyymmdd:d}",
    "{foo}", "latest", "1", "3.10", "1.0+x", "2024-13-45", "2024-01-01", "nan", ".inf", "-5", "0", "65536",
    "x\nerror: forged", "\x1b[2K", "a\u202eb", "HIGH", "SEVERE", "amazon-ebs", "docker", "qemu", "s3://b/p",
    "127.0.0.1:5001/bakery", "x.io//y", "-x.io", "a.io/x", "24h", "forever", "USER:PASS",
])
SCALARS = st.one_of(WORDS, st.text(max_size=20), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                    st.booleans(), st.none())


def values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    any_keys = keys | st.integers(0, 20) | st.booleans() | st.floats(0, 10)  # YAML keys need not be strings
    return st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(any_keys, inner, max_size=4)),
                        max_leaves=12)


DEF_KEYS = st.sampled_from(["name", "template", "variables", "versions", "parent", "tags", "variants", "packer",
                            "policy", "description", "kind", "source_ami_filter", "severity", "ignore", "id",
                            "reason", "until", "user", "package", "1", "2", "slim", "templat"]) | WORDS


DEF_VALUES = values(DEF_KEYS)


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, object]:
    """Mostly-valid definitions with hostile values in random places."""
    doc: dict[str, object] = {"name": draw(st.one_of(st.just("a"), WORDS)), "template": draw(st.sampled_from(
        ["t", "t", "../evil", "/etc", "nope", ""])), "variables": {"user": draw(st.one_of(st.just("app"), WORDS))}}
    version: dict[str, object] = {"parent": draw(st.one_of(st.just("docker.io/library/debian:12"), WORDS))}
    for key in draw(st.lists(st.sampled_from(["tags", "variants", "variables", "packer", "template"]), max_size=3)):
        version[key] = draw(DEF_VALUES)
    doc["versions"] = {draw(st.one_of(st.just("1"), WORDS)): version}
    for key in draw(st.lists(DEF_KEYS, max_size=3)):
        doc[key] = draw(DEF_VALUES)
    return doc


CONFIG_KEYS = st.sampled_from(["environments", "dev", "staging", "prod", "registry", "aliases", "gates", "soak",
                               "mirrors", "docker.io", "tags", "build", "scanner", "timeout", "trivy", "policy",
                               "severity", "ignore", "dev_stack", "ports", "mirror", "state_dir", "definitions",
                               "ledger", "url", "packer", "binary", "jobs", "kind", "credentials"]) | WORDS


CONFIG_VALUES = values(CONFIG_KEYS)
ENVIRONMENTS = st.dictionaries(st.one_of(st.sampled_from(["dev", "staging", "prod"]), WORDS),
                               st.fixed_dictionaries({"registry": st.one_of(WORDS, st.just("a.io/x"))},
                                                     optional={"aliases": st.lists(WORDS, max_size=3)}), max_size=3)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, object]:
    doc: dict[str, object] = {}
    for key in draw(st.lists(CONFIG_KEYS, max_size=4)):
        doc[key] = draw(CONFIG_VALUES)
    if draw(st.booleans()):
        doc["environments"] = draw(ENVIRONMENTS)
    return doc


RAW_PIECES = st.sampled_from([
    "a: 1\n", "a: 1\n", "&x [1, 2]\n", "b: *x\n", "c: &y {k: v}\n", "d: *y\n", "<<: *y\n", "? [a]\n: 1\n",
    "!!binary YQ==\n", "!!python/object:os.system x\n", "!local x\n", "---\n", "...\n", "- a\n", "  - b\n",
    "[[[[", "]]]]", "{", "}", "'unterminated\n", "\"\\x1b\"\n", "\t", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n",
    "2024-13-45\n", "yes\n", "~\n", ".nan\n", "0x1F\n", "1e999\n", "9" * 60 + "\n", "*undefined\n", ": :\n",
])


def run_cli(root: Path, *args: str) -> tuple[int, str]:
    """bakery ARGS in-process in ROOT: (exit code, stderr + stdout)."""
    from bakery.cli import main

    err, out = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(old)
    return code, err.getvalue() + "\n" + out.getvalue()


def check(code: int, text: str, stderr_only: str | None = None) -> None:
    assert code in (0, 2), text
    assert "Traceback" not in text and "internal error" not in text, text
    assert len(text) < 200_000
    for line in (stderr_only or "").splitlines():
        assert line.startswith(("error: ", "warning: ")), line


_ROOT: list[Path] = []


def _project(definition: str, config: str = "{}\n") -> Path:
    """One project directory for all examples (its template parsed once), its two files rewritten per example."""
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="bakery-fuzz-")))
    tmp = _ROOT[0]
    (tmp / "templates" / "t").mkdir(parents=True, exist_ok=True)
    (tmp / "templates" / "t" / "Dockerfile.j2").write_text(TEMPLATE)
    (tmp / "base-images").mkdir(exist_ok=True)
    (tmp / "base-images" / "a.yaml").write_text(definition)
    (tmp / "bakery.yaml").write_text(config)
    return tmp


def _clean_env() -> dict[str, str]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("BAKERY_")}
    for k in saved:
        del os.environ[k]
    return saved


@pytest.mark.timeout(600)  # a hang fails the test instead of stalling CI
@FUZZ
@given(definitions())
def test_generated_definitions_never_crash(doc: dict[str, object]) -> None:
    saved = _clean_env()
    try:
        root = _project(yaml.safe_dump(doc, allow_unicode=True))
        code, text = run_cli(root, "list", "--format", "json")
        check(code, text)
    finally:
        os.environ.update(saved)


@pytest.mark.timeout(600)
@FUZZ
@given(configs())
def test_generated_configs_never_crash(doc: dict[str, object]) -> None:
    saved = _clean_env()
    try:
        root = _project("name: a\ntemplate: t\nvariables: {user: app}\nversions: "
                        "{'1': {parent: docker.io/library/debian:12}}\n", yaml.safe_dump(doc))
        code, text = run_cli(root, "list", "--format", "json")
        check(code, text)
    finally:
        os.environ.update(saved)


@pytest.mark.timeout(600)
@settings(FUZZ, max_examples=FUZZ.max_examples * 3 // 4)
@given(st.lists(RAW_PIECES, max_size=12).map("".join) | st.text(max_size=200))
def test_raw_yaml_text_is_parsed_or_refused_cleanly(text: str) -> None:
    from bakery.yamlsafe import parse

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        loaded = parse(text, "f.yaml")
        for problem in loaded.problems:
            assert problem.startswith("f.yaml: ") and "\n" not in problem
    except InputError as exc:
        message = str(exc)
        assert message.startswith("f.yaml: ") and "\n" not in message and len(message) < 400, message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: no blow-up


def teardown_module() -> None:
    import shutil

    for root in _ROOT:
        shutil.rmtree(root, ignore_errors=True)
