"""The ledger: events round-trip through SQLite, filtering, ordering, masking, actor and clock."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path

import pytest

from bakery import ledger, secrets
from bakery.config import Config, Ledger as LedgerCfg, Project
from bakery.errors import InputError

UTC = dt.timezone.utc
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _project(tmp_path: Path, url: str = ".bakery/ledger.db") -> Project:
    return Project(root=tmp_path, config=Config(ledger=LedgerCfg(url=url)), config_file=None)


def _ev(kind="promote", image="python:3.11", digest=D1, to="staging", frm="dev", minute=0, **kw) -> ledger.Event:
    return ledger.Event(kind=kind, image=image, digest=digest, build_tag="3.11-20260101.1", from_env=frm,
                        to_env=to, actor="alice", time=dt.datetime(2026, 1, 1, 12, minute, tzinfo=UTC), **kw)


def test_default_ledger_is_sqlite_file_under_state_dir(tmp_path):
    led = ledger.open_ledger(_project(tmp_path))
    led.record(_ev())
    assert (tmp_path / ".bakery" / "ledger.db").is_file()
    assert isinstance(led, ledger.SqliteLedger)


def test_round_trip_keeps_every_field(tmp_path):
    led = ledger.open_ledger(_project(tmp_path))
    ev = _ev(gates=[{"name": "scan", "passed": True, "reason": "0 HIGH"}],
             scan={"counts": {"HIGH": 0}, "db_time": "2026-01-01T00:00:00Z"}, details={"copied_blobs": 3})
    led.record(ev)
    (back,) = ledger.open_ledger(_project(tmp_path)).events()
    assert back == ev
    assert back.time.tzinfo is not None and back.time.utcoffset() == dt.timedelta(0)


def test_events_oldest_first_and_filtered(tmp_path):
    led = ledger.open_ledger(_project(tmp_path))
    led.record(_ev(minute=5, to="prod", frm="staging"))
    led.record(_ev(kind="publish", minute=1, to="dev", frm=None))
    led.record(_ev(image="node:20", minute=3))
    led.record(_ev(image="python:3.12", minute=2))
    assert [e.time.minute for e in led.events()] == [1, 2, 3, 5]
    assert [e.to_env for e in led.events(image="python:3.11")] == ["dev", "prod"]
    assert [e.image for e in led.events(image="python")] == ["python:3.11", "python:3.12", "python:3.11"]
    assert [e.image for e in led.events(env="staging")] == ["python:3.12", "node:20"]
    assert led.events(image="python:3.11", env="prod")[0].kind == "promote"
    assert led.events(image="ruby") == []


def test_secrets_never_reach_the_ledger(tmp_path):
    secrets.register("hunter2-very-secret")
    led = ledger.open_ledger(_project(tmp_path))
    led.record(_ev(details={"error": "401 for user bob password hunter2-very-secret"}))
    raw = (tmp_path / ".bakery" / "ledger.db").read_bytes()
    assert b"hunter2-very-secret" not in raw
    assert "hunter2" not in led.events()[0].details["error"]


def test_concurrent_writers_to_one_sqlite_file_lose_nothing(tmp_path):
    def writer(n: int) -> None:
        led = ledger.open_ledger(_project(tmp_path))
        for i in range(25):
            led.record(_ev(image=f"w{n}:1", minute=i % 60))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ledger.open_ledger(_project(tmp_path)).events()) == 100


def test_event_ids_are_unique_and_sortable():
    t = dt.datetime(2026, 1, 1, tzinfo=UTC)
    ids = {ledger.new_id(t) for _ in range(1000)}
    assert len(ids) == 1000
    assert ledger.new_id(t) < ledger.new_id(t + dt.timedelta(microseconds=1))


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="unknown ledger event kind"):
        _ev(kind="deploy")


def test_naive_time_is_taken_as_utc():
    ev = ledger.Event(kind="gate", image="a:1", digest=D1, build_tag="t", from_env="dev", to_env="staging",
                      time=dt.datetime(2026, 1, 1, 8, 0))
    assert ev.time == dt.datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def test_actor_prefers_github_actor(monkeypatch):
    monkeypatch.delenv("BAKERY_ACTOR", raising=False)
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    assert ledger.actor() == "octocat"
    monkeypatch.delenv("GITHUB_ACTOR")
    assert ledger.actor()  # the OS user


def test_now_honours_bakery_now(monkeypatch):
    monkeypatch.setenv("BAKERY_NOW", "2030-05-01T10:00:00Z")
    assert ledger.now() == dt.datetime(2030, 5, 1, 10, tzinfo=UTC)
    monkeypatch.setenv("BAKERY_NOW", "yesterday")
    with pytest.raises(InputError, match="BAKERY_NOW"):
        ledger.now()
    monkeypatch.delenv("BAKERY_NOW")
    assert abs(ledger.now() - dt.datetime.now(UTC)) < dt.timedelta(seconds=5)


def test_unsupported_ledger_url(tmp_path):
    with pytest.raises(InputError, match="ledger.url"):
        ledger.open_ledger(_project(tmp_path, "ftp://x/y"))
    with pytest.raises(InputError, match="no bucket"):
        ledger.open_ledger(_project(tmp_path, "s3:///prefix"))


def test_queries_first_seen_and_current(tmp_path):
    evs = [
        _ev(kind="publish", to="dev", frm=None, minute=0),
        _ev(kind="gate", digest=D1, minute=1),
        _ev(kind="promote", digest=D1, minute=2),
        _ev(kind="publish", digest=D2, to="dev", frm=None, minute=3),
        _ev(kind="promote", digest=D2, minute=4),
        _ev(kind="rollback", digest=D1, frm="staging", minute=5),
    ]
    assert ledger.first_seen(evs, D1, "staging").minute == 2
    assert ledger.first_seen(evs, D2, "prod") is None
    assert ledger.current(evs, "python:3.11", "staging").kind == "rollback"
    assert ledger.current(evs, "python:3.11", "dev").digest == D2


def test_sqlite_file_is_plain_sqlite(tmp_path):
    ledger.open_ledger(_project(tmp_path)).record(_ev())
    rows = sqlite3.connect(tmp_path / ".bakery" / "ledger.db").execute("SELECT kind, image FROM events").fetchall()
    assert rows == [("promote", "python:3.11")]


def test_a_claim_is_won_once_across_threads_and_names_its_holder(tmp_path):
    """Eight writers (own connections) claim one build tag at once: exactly one wins, all see the same holder."""
    from bakery import integrity

    path = tmp_path / "ledger.db"
    outcomes: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        led = ledger.SqliteLedger(path)
        holder, won = integrity.reserve(led, image="python:3.11", env="dev", repository="reg/ns/python",
                                        build_tag="3.11-20260101.1", digest=f"sha256:{i:064d}")
        with lock:
            outcomes.append((holder.digest, won))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [won for _, won in outcomes].count(True) == 1
    assert len({d for d, _ in outcomes}) == 1
    evs = ledger.SqliteLedger(path).events()
    assert [e.kind for e in evs] == ["reserve"]  # a lost claim records nothing


def test_a_nightly_reads_the_history_only_when_a_promotion_intent_is_pending(tmp_path):
    """Every nightly first completes promotions recorded as intents only (bakery.integrity.recover). SQLite says
    whether any is pending from two columns; the answer is integrity.pending's, and the events are read only then."""
    from bakery import integrity

    led = ledger.open_ledger(_project(tmp_path))
    reads: list[int] = []
    real = led.events
    led.events = lambda *a, **kw: reads.append(1) or real(*a, **kw)  # a spy on the one full read

    def pending_now() -> bool:
        answer = led.may_have_pending_intents()
        assert answer == bool(integrity.pending(real()))
        return answer

    assert not pending_now()
    led.record(_ev(kind="publish", to="dev", frm=None))
    assert not pending_now()
    led.record(_ev(kind="intent", minute=1, to="nowhere", details={"claim": "promote t@D1 after -"}))
    assert pending_now()
    integrity.recover(_project(tmp_path), led)  # its environment is gone: left pending, but the events were read
    assert reads == [1]
    led.record(_ev(kind="promote", minute=2, details={"claim": "promote t@D1 after -"}))
    assert not pending_now()
    assert integrity.recover(_project(tmp_path), led) == [] and reads == [1]  # nothing pending: no read
    led.record(_ev(kind="promote", minute=3))  # a completion without a claim (recorded before write-ahead)
    led.record(_ev(kind="intent", minute=4, details={}))  # ... and an intent without one: pending() says done
    assert not pending_now()
    led.record(_ev(kind="intent", minute=5, digest=D2, details={"claim": "promote t@D2 after -"}))
    assert pending_now()
