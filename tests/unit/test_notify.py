"""Webhook notifications, against a real HTTP server on loopback."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_dashboard import _digest, fleet  # noqa: F401 - the shared fleet fixture

from bakery import notify
from bakery.config import load_project
from bakery.nightly import NightlyReport, Outcome

TOKEN = "T0KEN-s3cr3t-4f8e"


class Hook:
    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{kind}/{TOKEN}"


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure(root: Path, hooks: str) -> None:
    text = (root / "bakery.yaml").read_text()
    (root / "bakery.yaml").write_text(text + "notify:\n  webhooks:\n" + hooks)


def test_drift_posts_json_and_slack_payloads_and_never_shows_the_url(fleet: Path, hook: Hook, bakery) -> None:  # noqa: F811
    configure(fleet, "    - {name: ops, url_env: OPS_HOOK}\n"
                     "    - {name: chat, url_env: CHAT_HOOK, format: slack, events: [drift]}\n"
                     "    - {name: nightly-only, url_env: NIGHTLY_HOOK, events: [nightly_failed]}\n")
    (fleet / "c.yml").write_text(f"services:\n  app: {{image: 'r/app@{_digest(2)}'}}\n  x: {{image: '<b>x</b>:1'}}\n")
    env = {"OPS_HOOK": hook.url("json"), "CHAT_HOOK": hook.url("slack"), "NIGHTLY_HOOK": hook.url("nightly")}
    r = bakery("drift", "--env", "prod", "c.yml", cwd=fleet, env=env)
    assert r.code == 1
    assert TOKEN not in r.out + r.err
    by_path = {p.split("/")[2]: body for p, body in hook.received}
    assert sorted(by_path) == ["json", "slack"]  # the nightly-only hook is not called for drift
    plain = by_path["json"]
    assert plain["source"] == "bakery" and plain["event"] == "drift" and plain["details"]["drifted"] == 2
    assert "prod: 2 of 2 deployed references drifted" in plain["title"]
    slack = by_path["slack"]
    assert slack["text"] == plain["title"] and slack["blocks"][0]["text"]["type"] == "mrkdwn"
    assert "&lt;b&gt;x&lt;/b&gt;" in slack["blocks"][0]["text"]["text"]  # untrusted text cannot make links


def test_a_webhook_that_is_down_is_one_warning_and_the_step_result_stands(fleet: Path, bakery) -> None:  # noqa: F811
    configure(fleet, "    - {name: ops, url_env: OPS_HOOK, timeout: 2}\n")
    (fleet / "c.yml").write_text(f"services:\n  app: {{image: 'r/app@{_digest(2)}'}}\n")
    url = f"http://127.0.0.1:{_closed_port()}/hooks/{TOKEN}"
    r = bakery("drift", "--env", "prod", "c.yml", "--format", "json", cwd=fleet, env={"OPS_HOOK": url})
    assert r.code == 1  # drift found: the step's own result, not 3 for the webhook
    assert json.loads(r.out)["drifted"] == 1
    warnings = [line for line in r.err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: notify ops: webhook failed (unreachable): drift not delivered; the step's "
                        "result stands"]
    assert TOKEN not in r.err
    r = bakery("drift", "--env", "prod", "c.yml", cwd=fleet)  # variable unset: said, not silent
    assert "warning: notify ops: $OPS_HOOK is not set: drift not sent" in r.err


def test_new_fixable_critical_in_prod_is_reported_once(fleet: Path, hook: Hook, monkeypatch) -> None:  # noqa: F811
    configure(fleet, "    - {name: sec, url_env: SEC_HOOK, events: [prod_vulnerability]}\n")
    monkeypatch.setenv("SEC_HOOK", hook.url("json"))
    project = load_project(fleet / "bakery.yaml", cwd=fleet)
    msg = notify.prod_vulnerability_message(project)
    assert msg is not None and msg.details["findings"] == {f"app:1@{_digest(1)}": [
        "CVE-2026-0001 (CRITICAL, openssl, fixed in 3.0.2)", "CVE-2026-0003 (HIGH, curl, fixed in 8.1)"]}
    warnings: list[str] = []
    assert [d.ok for d in notify.send(project, "prod_vulnerability", msg, warn=warnings.append)] == [True]
    assert hook.received[0][1]["event"] == "prod_vulnerability" and not warnings
    assert notify.prod_vulnerability_message(project) is None  # already reported


def test_failed_nightly_message() -> None:
    ok = NightlyReport(started=dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc), seconds=1, dry_run=False,
                       outcomes=[Outcome(ref="a:1", reason="up to date", why="", status="up to date")])
    assert notify.nightly_message(ok) is None
    bad = NightlyReport(started=ok.started, seconds=1, dry_run=False,
                        outcomes=[Outcome(ref="a:1", reason="patches", why="", status="failed", error="build failed")])
    msg = notify.nightly_message(bad)
    assert msg is not None and msg.lines == ["a:1: build failed"] and msg.details["failed"] == ["a:1"]


@pytest.mark.parametrize("hooks, problem", [
    ("    - {name: ops, url: 'http://x/T0KEN'}\n", "notify.webhooks.0"),
    ("    - {name: ops, url_env: OPS, events: [sometimes]}\n", "notify.webhooks.0.events.0"),
    ("    - {name: ops, url_env: 'not a var'}\n", "notify.webhooks.0.url_env"),
    ("    - {name: a, url_env: A}\n    - {name: a, url_env: B}\n", "unique"),
])
def test_bad_notify_config_is_an_input_error(fleet: Path, bakery, hooks: str, problem: str) -> None:  # noqa: F811
    configure(fleet, hooks)
    r = bakery("drift", "--env", "prod", "bakery.yaml", cwd=fleet)
    assert r.code == 2 and problem in r.err and "Traceback" not in r.err


def test_a_failed_nightly_summary_posts_once_and_exits_1(fleet: Path, hook: Hook, bakery, tmp_path: Path) -> None:  # noqa: F811
    configure(fleet, "    - {name: ops, url_env: OPS_HOOK}\n")
    d = tmp_path / "nightly"
    d.mkdir()
    (d / "plan.json").write_text(json.dumps({"rebuild": ["app:1"], "seconds": 1, "images": [
        {"ref": "app:1", "name": "app", "version": "1", "variant": None,
         "reasons": [{"kind": "patches", "detail": "openssl"}]}]}))
    (d / "result-app-1.json").write_text("")  # the matrix job died before writing it
    r = bakery("nightly", "--summarize", str(d), cwd=fleet, env={"OPS_HOOK": hook.url("json")})
    assert r.code == 1
    events = [body["event"] for _, body in hook.received]
    assert events.count("nightly_failed") == 1
    failed = next(body for _, body in hook.received if body["event"] == "nightly_failed")
    assert failed["details"]["failed"] == ["app:1"] and "app:1" in failed["text"]
    # the prod digest's fixable CRITICAL/HIGH findings, reported after the same run
    assert "prod_vulnerability" in events


def test_a_webhook_that_is_down_never_fails_a_good_nightly(fleet: Path, bakery, tmp_path: Path) -> None:  # noqa: F811
    configure(fleet, "    - {name: sec, url_env: SEC_HOOK, timeout: 2}\n")
    d = tmp_path / "nightly"
    d.mkdir()
    (d / "plan.json").write_text(json.dumps({"rebuild": [], "seconds": 1, "images": [
        {"ref": "app:1", "name": "app", "version": "1", "variant": None, "reasons": []}]}))
    url = f"http://127.0.0.1:{_closed_port()}/{TOKEN}"
    r = bakery("nightly", "--summarize", str(d), cwd=fleet, env={"SEC_HOOK": url})
    assert r.code == 0, r.err  # nothing failed: a webhook that is down does not change that
    assert [line for line in r.err.splitlines() if line.startswith("warning:")] == [
        "warning: notify sec: webhook failed (unreachable): prod_vulnerability not delivered; the step's result "
        "stands"]
    assert TOKEN not in r.out + r.err


def test_without_webhooks_nothing_is_read_or_written(fleet: Path, bakery, tmp_path: Path) -> None:  # noqa: F811
    d = tmp_path / "nightly"
    d.mkdir()
    (d / "plan.json").write_text(json.dumps({"rebuild": [], "seconds": 1, "images": []}))
    r = bakery("nightly", "--summarize", str(d), cwd=fleet)
    assert r.code == 0 and "warning" not in r.err
    assert not (fleet / ".bakery" / "notify").exists()


def test_a_ledger_that_cannot_be_read_is_a_warning_not_a_failure(fleet: Path, monkeypatch) -> None:  # noqa: F811
    configure(fleet, "    - {name: sec, url_env: SEC_HOOK, events: [prod_vulnerability]}\n")
    project = load_project(fleet / "bakery.yaml", cwd=fleet)
    from bakery.errors import EnvironmentFailure

    def down() -> notify.Message:
        raise EnvironmentFailure("ledger s3://b/p: cannot read: timeout")

    warnings: list[str] = []
    assert notify.notify(project, "prod_vulnerability", down, warn=warnings.append) == []
    assert warnings == ["warning: notify: prod_vulnerability not checked: ledger s3://b/p: cannot read: timeout"]
