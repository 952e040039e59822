"""Notifications: the ``notify:`` webhooks of bakery.yaml, called on a failed nightly, a new fixable CRITICAL or
HIGH finding in a digest that runs in the last environment (prod), and drift found.

A webhook's URL comes from an environment variable only (``url_env``; it usually carries a token) and never
appears in output. Two payloads: ``json`` (``{"source": "bakery", "event", "title", "text", "details"}``) and
``slack`` (an incoming-webhook message: ``text`` and one mrkdwn section). A webhook that cannot be reached never
fails the step it reports on: :func:`send` says so in one warning line and returns.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery import ledger as ledger_mod
from bakery import scan, secrets
from bakery.errors import BakeryError

if TYPE_CHECKING:
    from bakery.config import Project, Webhook
    from bakery.drift import Report as DriftReport
    from bakery.nightly import NightlyReport

MAX_LINES = 20
SERIOUS = ("CRITICAL", "HIGH")


@dataclass
class Message:
    event: str  # nightly_failed | prod_vulnerability | drift
    title: str
    lines: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        shown = self.lines[:MAX_LINES]
        more = [f"… and {len(self.lines) - MAX_LINES} more"] if len(self.lines) > MAX_LINES else []
        return "\n".join(shown + more)


@dataclass
class Delivery:
    webhook: str
    ok: bool
    detail: str


def payload(hook: Webhook, msg: Message) -> dict[str, Any]:
    if hook.format == "slack":
        body = f"*{_slack(msg.title)}*"
        if msg.lines:
            body += "\n" + "\n".join(f"• {_slack(line)}" for line in msg.text().splitlines())
        return {"text": msg.title, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body[:2900]}}]}
    return {"source": "bakery", "event": msg.event, "title": msg.title, "text": msg.text(), "details": msg.details}


def _slack(text: str) -> str:
    """Slack mrkdwn control characters escaped (untrusted text must not become links or mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def subscribed(project: Project, event: str) -> bool:
    return any(event in hook.events for hook in project.config.notify.webhooks)


def notify(project: Project, event: str, make: Callable[[], Message | None], *,
           warn: Callable[[str], None]) -> list[Delivery]:
    """Build the message (only when a webhook listens for EVENT) and send it. Never raises: what goes wrong here
    (the ledger or scan store unreadable, a webhook down) is one warning line, and the step's result stands."""
    if not subscribed(project, event):
        return []
    try:
        msg = make()
    except (BakeryError, OSError) as exc:
        warn(secrets.mask(f"warning: notify: {event} not checked: {exc}"))
        return []
    return send(project, event, msg, warn=warn)


def send(project: Project, event: str, msg: Message | None, *, warn: Callable[[str], None]) -> list[Delivery]:
    """POST MSG to every webhook subscribed to EVENT. Never raises: a failure is one warning line."""
    import requests

    if msg is None:
        return []
    out = []
    for hook in project.config.notify.webhooks:
        if event not in hook.events:
            continue
        url = os.environ.get(hook.url_env, "")
        if not url:
            out.append(Delivery(hook.name, False, f"${hook.url_env} is not set"))
            warn(f"warning: notify {hook.name}: ${hook.url_env} is not set: {event} not sent")
            continue
        secrets.register(url)
        body = json.loads(secrets.mask(json.dumps(payload(hook, msg))))
        try:
            resp = requests.post(url, json=body, timeout=hook.timeout, allow_redirects=False)
            if resp.status_code >= 300:
                raise _HttpStatus(resp.status_code)
            out.append(Delivery(hook.name, True, str(resp.status_code)))
        except (requests.RequestException, _HttpStatus) as exc:
            why = f"HTTP {exc.status}" if isinstance(exc, _HttpStatus) else _reason(exc)
            out.append(Delivery(hook.name, False, why))
            warn(secrets.mask(f"warning: notify {hook.name}: webhook failed ({why}): {event} not delivered; "
                              f"the step's result stands"))
    return out


class _HttpStatus(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def _reason(exc: Exception) -> str:
    """Why a request failed, without its URL (requests puts the URL, and so the token, in its messages)."""
    import requests

    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "unreachable"
    return type(exc).__name__


# ------------------------------------------------------------------------------------------------ messages
def drift_message(report: DriftReport) -> Message | None:
    if not report.drifted:
        return None
    return Message("drift", f"bakery drift: {report.headline()}",
                   [f"{f.deployed.where}: {f.deployed.reference}: {f.label}" for f in report.drifted],
                   {"env": report.env, "drifted": len(report.drifted), "references": len(report.findings)})


def nightly_message(report: NightlyReport) -> Message | None:
    if report.ok or report.dry_run:
        return None
    lines = [f"{o.ref}: {o.error or o.result}" for o in report.failures] + list(report.problems)
    return Message("nightly_failed", f"bakery nightly failed: {report.headline()}", lines,
                   {"failed": [o.ref for o in report.failures], "aborted": report.aborted or None})


def _seen_path(project: Project) -> Path:
    return project.state_dir / "notify" / "prod-findings.json"


def prod_findings(project: Project) -> dict[str, list[str]]:
    """Fixable CRITICAL/HIGH findings of the digests the last environment (prod) runs, by the ledger and the
    scan store: ``{"IMAGE@DIGEST": ["CVE-… (CRITICAL, pkg)", …]}``."""
    env = project.config.env_order[-1]
    events = ledger_mod.open_ledger(project).events()
    out: dict[str, list[str]] = {}
    for image in sorted({e.image for e in events if e.to_env == env}):
        cur = ledger_mod.current(events, image, env)
        if cur is None:
            continue
        summaries = [e.scan for e in events if e.digest == cur.digest and e.scan]
        image_id = str((summaries[-1] or {}).get("image_id") or "") if summaries else ""
        result = scan.load_stored(project, image_id) if image_id.startswith("sha256:") else None
        if result is None:
            continue
        found = sorted({f"{f.id} ({f.severity}, {f.package}, fixed in {f.fixed})" for f in result.findings
                        if f.fixed and f.severity in SERIOUS})
        if found:
            out[f"{image}@{cur.digest}"] = found
    return out


def prod_vulnerability_message(project: Project, *, now: dt.datetime | None = None) -> Message | None:
    """A message for the fixable CRITICAL/HIGH findings in prod that were not reported before (remembered in
    ``.bakery/notify/prod-findings.json``), or None."""
    current = prod_findings(project)
    path = _seen_path(project)
    try:
        seen = json.loads(path.read_text())
        if not isinstance(seen, dict):
            seen = {}
    except (OSError, ValueError):
        seen = {}
    new = {k: [f for f in v if f not in (seen.get(k) or [])] for k, v in current.items()}
    new = {k: v for k, v in new.items() if v}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=1, sort_keys=True))
    if not new:
        return None
    env = project.config.env_order[-1]
    n = sum(len(v) for v in new.values())
    lines = [f"{ref.split('@', 1)[0]} ({ref.split('@', 1)[1][7:19]}): {f}" for ref, fs in sorted(new.items())
             for f in fs]
    return Message("prod_vulnerability", f"bakery: {n} new fixable CRITICAL/HIGH finding(s) in what {env} runs",
                   lines, {"env": env, "findings": new})
