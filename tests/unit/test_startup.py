"""Start-up stays small: the modules a short command imports (what `python -X importtime` shows) do not grow back.

Heavy libraries load only on the paths that use them: pydantic and yaml when the project is loaded; rich when a
table is printed; requests, boto3, docker, jinja2 when a registry, AWS, the daemon or a template is touched.
Each case runs in a fresh interpreter, as a user's command does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = {"pydantic", "pydantic_core", "yaml", "rich", "requests", "urllib3", "boto3", "botocore", "docker",
         "jinja2", "cryptography", "sqlite3", "moto"}

@pytest.fixture
def loaded(cli_probe):
    """``loaded(args, cwd)``: the heavy libraries a bakery command imported (tests/conftest.py's cli_probe)."""
    return lambda args, cwd: cli_probe(args, cwd)[1] & HEAVY


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "bakery.yaml").write_text("environments: {dev: {registry: '127.0.0.1:9/t'}}\n")
    (tmp_path / "base-images").mkdir()
    return tmp_path


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["status", "--help"], ["promote", "--help"],
                                  ["build", "--help"], ["nightly", "--help"], ["scan", "--help"]])
def test_help_imports_no_heavy_library(repo: Path, args: list[str], loaded) -> None:
    assert loaded(args, repo) == set()


def test_config_loads_only_what_validating_the_project_needs(repo: Path, tmp_path: Path, loaded,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKERY_CACHE_DIR", str(tmp_path / "cache"))
    assert loaded(["config"], repo) <= {"pydantic", "pydantic_core", "yaml"}
    # validated once: the next command reads the configuration back without pydantic (nor yaml for JSON)
    assert loaded(["config", "--format", "json"], repo) == set()
    assert loaded(["config"], repo) == {"yaml"}
    # a changed file is validated again
    (repo / "bakery.yaml").write_text("environments: {dev: {registry: '127.0.0.1:9/u'}}\n")
    assert {"pydantic", "yaml"} <= loaded(["config", "--format", "json"], repo)
    assert loaded(["config", "--format", "json"], repo) == set()


def test_the_probe_sees_a_heavy_import(repo: Path, loaded) -> None:
    """The checks above can fail: a command that validates definitions and templates shows pydantic and jinja2."""
    assert {"pydantic", "jinja2"} <= loaded(["plan", "--format", "json"], repo)


AMI_PROBE = """
import sys
from bakery import ami, definitions
from bakery.config import load_project
loads = []
real = definitions.load_fleet
definitions.load_fleet = lambda project: loads.append(1) or real(project)
project = load_project()
print(ami.ami_key(project, sys.argv[1]), bool(loads))
"""


def test_promote_does_not_load_the_fleet_to_rule_out_an_ami(repo: Path) -> None:
    """`bakery promote` asks whether REF is an AMI first: without an amazon-ebs definition that must not cost a
    load of every definition (YAML, models, templates: most of a short command's time on a large fleet)."""
    (repo / "base-images" / "app.yaml").write_text(
        "name: app\ntemplate: t\nversions:\n  '1.0':\n    parent: docker.io/library/debian:bookworm-slim\n")
    out = subprocess.run([sys.executable, "-c", AMI_PROBE, "app:1.0"], capture_output=True, text=True, cwd=repo,
                         timeout=60)
    assert out.stdout.split() == ["None", "False"], out.stderr
    # an amazon-ebs definition of another image does not make app's promotion load the fleet; its own does
    (repo / "base-images" / "ami.yaml").write_text(
        "name: ami\ntemplate: t\npacker: {kind: amazon-ebs}\nversions:\n  '1.0':\n    parent: ami-123\n")
    out = subprocess.run([sys.executable, "-c", AMI_PROBE, "app:1.0"], capture_output=True, text=True, cwd=repo,
                         timeout=60)
    assert out.stdout.split() == ["None", "False"], out.stderr
    out = subprocess.run([sys.executable, "-c", AMI_PROBE, "ami:1.0"], capture_output=True, text=True, cwd=repo,
                         timeout=60)
    assert out.stdout.split()[-1] == "True", out.stderr


IMPORT_PROBE = """
import sys
import bakery.cli.promote, bakery.cli.scan, bakery.promote, bakery.gates, bakery.scan, bakery.reports, bakery.speccache
print(" ".join(sorted({m.split(".")[0] for m in sys.modules} | {m for m in sys.modules if m.startswith("bakery.")})))
"""


def test_the_promote_and_scan_paths_import_no_heavy_library_until_they_use_it(repo: Path) -> None:
    """The modules of `bakery promote` and `bakery scan` (and the scan gate): requests loads with the first registry
    client, PyYAML with the first YAML file, cryptography with the first key, pydantic and the definitions only
    when the validated-fleet cache misses. A repeat scan served from the store needs none of them."""
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, cwd=repo, timeout=60)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) & (HEAVY | {"tenacity", "http", "email"}) == {"sqlite3"}  # (the ledger's)
    # nor an AMI's signed evidence (bakery.ami is asked about REF by every promotion): only where one is attested
    assert "bakery.ami_evidence" not in out.stdout.split()


def test_a_fleet_loaded_before_loads_without_pydantic(repo: Path, tmp_path: Path, loaded,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`bakery plan`/`nightly` load every definition: a file whose bytes were validated before is read back from
    its kept outcome (bakery.definitions._Outcomes), so a fleet seen before loads without pydantic."""
    monkeypatch.setenv("BAKERY_CACHE_DIR", str(tmp_path / "cache"))
    (repo / "templates" / "t").mkdir(parents=True)
    (repo / "templates" / "t" / "Dockerfile.j2").write_text("FROM {{ parent }}\n")
    definition = "name: a\ntemplate: t\nversions:\n  '1': {parent: 'docker.io/library/debian:12'}\n"
    (repo / "base-images" / "a.yaml").write_text(definition)
    assert "pydantic" in loaded(["list", "--format", "json"], repo)
    assert "pydantic" not in loaded(["list", "--format", "json"], repo)
    (repo / "base-images" / "a.yaml").write_text(definition.replace("'1'", "'2'"))  # a changed file: validated
    assert "pydantic" in loaded(["list", "--format", "json"], repo)
    assert "pydantic" not in loaded(["list", "--format", "json"], repo)


def test_a_build_loads_no_signing_or_ami_code_until_it_needs_it() -> None:
    """`bakery build` of container images without a signing key (issue 14: a warm rebuild's start-up) loads neither
    the evidence and signing modules (cryptography) nor the AMI and Packer code: they load when used."""
    code = ("import sys, bakery.build, bakery.cli.build; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography' or m in "
            "('bakery.evidence', 'bakery.signing', 'bakery.attest', 'bakery.ami', 'bakery.ami_evidence', "
            "'bakery.packer', 'boto3'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == []


# What a repeat `bakery scan IMAGE` (served from the store) imports, in the order the command imports it.
REPEAT_SCAN_PROBE = """
import sys
import bakery.cli, bakery.cli.scan, bakery.reports, bakery.scan, bakery.policy, bakery.validation
import bakery.configview, bakery.statecheck, bakery.cli._common, bakery.cachedir
bakery.cachedir.sha256(b"the configuration's cache key").hexdigest()
print(" ".join(sorted(sys.modules)))
"""
# issue 14: none of these on that path (each a measured share of its start-up, `python -X importtime`). uuid and
# platform are not listed: click 8.5 imports them itself.
NOT_ON_THE_REPEAT_SCAN = {"logging", "pkgutil", "traceback", "subprocess", "shutil", "shlex", "difflib", "string",
                          "hashlib", "_hashlib", "socket", "bakery.model", "bakery.registries", "bakery.cli.promote",
                          "bakery.cli.build", "bakery.cli.core", "bakery.cli.nightly", "bakery.cli.attest"}


def test_the_repeat_scan_path_imports_no_logging_subprocess_or_model(repo: Path) -> None:
    out = subprocess.run([sys.executable, "-c", REPEAT_SCAN_PROBE], capture_output=True, text=True, cwd=repo,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert {"bakery.scan", "bakery.cli.scan", "click"} <= loaded  # (the probe sees what it imported)
    assert loaded & (NOT_ON_THE_REPEAT_SCAN | HEAVY) == set()


LOGGING_PROBE = """
import sys
eager = sys.argv[2] == "eager"
if eager:
    import logging
from bakery.cli import _LOGGING
_LOGGING.configure(sys.argv[1] == "debug")
print("loaded at configure:", "logging" in sys.modules)
import logging
root = logging.getLogger()
print(logging.getLevelName(root.level), [h.formatter._fmt for h in root.handlers],
      [logging.getLevelName(logging.getLogger(n).level) for n in ("urllib3", "botocore", "boto3", "docker")])
logging.getLogger("bakery.tools").debug("run: trivy --version")
logging.getLogger("bakery.x").warning("a warning")
logging.getLogger("urllib3.connectionpool").warning("a library's warning")
"""


@pytest.mark.parametrize("mode", ["debug", "quiet"])
def test_logging_configured_on_its_first_import_is_configured_as_before(mode: str, tmp_path: Path) -> None:
    """The CLI no longer imports logging at start: it configures it when something first imports it. The level,
    format, silenced libraries and what reaches stderr are those of configuring it at once."""
    def run(order: str) -> tuple[list[str], str]:
        proc = subprocess.run([sys.executable, "-c", LOGGING_PROBE, mode, order], capture_output=True, text=True,
                              cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines(), proc.stderr

    (lazy_out, lazy_err), (eager_out, eager_err) = run("lazy"), run("eager")
    assert lazy_out[0] == "loaded at configure: False" and eager_out[0] == "loaded at configure: True"
    assert (lazy_out[1:], lazy_err) == (eager_out[1:], eager_err)
    assert "WARNING bakery.x: a warning" in lazy_err
    assert ("DEBUG bakery.tools: run: trivy --version" in lazy_err) == (mode == "debug")
    assert ("WARNING urllib3.connectionpool: a library's warning" in lazy_err) == (mode == "debug")


FREEZE_PROBE = """
import atexit, gc, sys
from bakery.cli import main
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
sys.argv = ["bakery", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("args,code", [(["--version"], 0), (["scna"], 2), (["config", "--format", "json"], 0)])
def test_the_cli_process_exits_without_collecting_its_garbage(repo: Path, args: list[str], code: int) -> None:
    """`bakery` run as a process freezes the collector on its way out (the interpreter's shutdown otherwise walks
    every object with full collections, ~7 ms of a repeat scan): whatever way the command ends. Called in-process
    (a test, another program), main() leaves the collector alone."""
    proc = subprocess.run([sys.executable, "-c", FREEZE_PROBE, *args], capture_output=True, text=True, cwd=repo,
                          timeout=60)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.splitlines()[-1] == "frozen at exit: True", proc.stdout
    from bakery.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    import gc

    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("chunks", [[], [b""], [b"bakery.yaml"], [b"a" * 100_000, b"b", b"\0" * 7], [bytes(range(256))] * 9])
def test_the_cache_key_digest_is_sha256(chunks: list[bytes]) -> None:
    """bakery.cachedir.sha256 (the interpreter's built-in SHA-256, no OpenSSL at start-up) gives hashlib's digests."""
    import hashlib

    from bakery import cachedir

    ours, theirs = cachedir.sha256(), hashlib.sha256()
    for chunk in chunks:
        ours.update(chunk)
        theirs.update(chunk)
    assert (ours.hexdigest(), ours.digest()) == (theirs.hexdigest(), theirs.digest())
    assert cachedir.sha256(b"".join(chunks)).hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
