"""Issue 14 (cold promotion at skopeo's pace): `bakery promote` imports only what every promotion uses. The scan
module (trivy, policies) loads where the scan gate applies; the signed-evidence modules (signing, attestations) in
the background while the image is copied (bakery.store.RegistryStore.copy); the ECR client for a `kind: ecr`
environment; git (bakery.tools) where a promotion writes a git tag. Fresh interpreter, as a user's command."""

from __future__ import annotations

import subprocess
import sys

PROBE = ("import sys, bakery.cli.promote, bakery.promote; "
         "print(' '.join(sorted(m for m in sys.modules if m.startswith('bakery.'))))")

NOT_ON_THE_PATH = {"bakery.scan", "bakery.policy", "bakery.trivydb", "bakery.evidence", "bakery.signing",
                   "bakery.attest", "bakery.ami_evidence", "bakery.ecr", "bakery.tools", "bakery.gitrefs",
                   "bakery.definitions", "bakery.config"}


def _loaded(code: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_the_promote_path_imports_no_module_a_promotion_may_not_use() -> None:
    loaded = _loaded(PROBE)
    assert {"bakery.promote", "bakery.store", "bakery.gates", "bakery.integrity", "bakery.registry"} <= loaded
    assert loaded & NOT_ON_THE_PATH == set(), sorted(loaded & NOT_ON_THE_PATH)


def test_the_probe_sees_a_module_that_comes_back() -> None:
    """The check above can fail: a module that imports the scan module at its top shows it (and what it pulls)."""
    loaded = _loaded(PROBE.replace("bakery.promote;", "bakery.promote, bakery.scan;"))
    assert {"bakery.scan", "bakery.policy", "bakery.tools"} <= loaded
