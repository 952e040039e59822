"""`bakery verify` and `bakery attestations` over every artifact kind: the store holding REF's build says what it
carries (bakery.store: registries through bakery.evidence, AMIs through bakery.ami_evidence)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bakery.config import Project
from bakery.evidence import DEFAULT_REQUIRED, Report, keys_for, required_for
from bakery.ledger import now as clock
from bakery.store import store_for


def verify_ref(project: Project, ref: str, env: str, *, key_file: str | None = None,
               max_scan_age: dt.timedelta | None = None, now: dt.datetime | None = None) -> Report:
    """Verify what REF's build carries in ``env``: the environment's required kinds (all four when it requires
    none), and, beyond the first environment, a signed promotion into ``env``."""
    project.config.env(env)
    keys = keys_for(project, env, key_file)
    store = store_for(project, env, ref if "@" not in ref else None)
    pub = store.pinned(ref)
    required = required_for(project, env) or list(DEFAULT_REQUIRED)
    promoted_to = env if env != project.config.first_env else None
    return store.verify_evidence(pub, keys, required, promoted_to=promoted_to, max_scan_age=max_scan_age,
                                 now=now or clock())


def list_ref(project: Project, ref: str, env: str) -> tuple[str, list[dict[str, Any]], str]:
    """(the build, what it carries, where the list came from)."""
    store = store_for(project, env, ref if "@" not in ref else None)
    pub = store.pinned(ref)
    rows, how = store.list_evidence(pub)
    return (pub.pinned if pub.repository else pub.digest), rows, how
