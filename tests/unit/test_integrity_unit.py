"""bakery.integrity's pure parts: pending intents, the completion key's epoch, the interrupted state line, and
one promote row per promotion on the SQLite ledger."""

from __future__ import annotations

import datetime as dt

from bakery import integrity, ledger

UTC = dt.timezone.utc
A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
T = dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _ev(kind: str, digest: str = A, minute: int = 0, **details) -> ledger.Event:
    return ledger.Event(kind=kind, image="python:3.11", digest=digest, build_tag="3.11-20260302.1", from_env="dev",
                        to_env="staging", actor="ci", time=T + dt.timedelta(minutes=minute), details=details)


def test_epoch_ignores_moves_of_the_same_digest():
    first = _ev("promote", A, 0)
    other = _ev("promote", B, 1)
    again = _ev("promote", A, 2)
    assert integrity.epoch([], "python:3.11", "staging", A) == "-"
    assert integrity.epoch([first], "python:3.11", "staging", A) == "-"  # racing twins share a key
    assert integrity.epoch([first, other], "python:3.11", "staging", A) == other.id  # promoted again after B
    assert integrity.epoch([first, other, again], "python:3.11", "staging", A) == other.id


def test_pending_lists_intents_without_a_completion_once():
    key = integrity.completion_key("reg/ns/python", A, "-")
    i1, i2 = _ev("intent", A, 0, claim=key), _ev("intent", A, 1, claim=key)
    assert integrity.pending([i1, i2]) == [i1]
    assert integrity.pending([i1, i2, _ev("promote", A, 2, claim=key)]) == []


def test_target_state_says_what_was_written():
    assert integrity.target_state([], "t.1", ["3.11", "staging"]) == "no tag was written in the target"
    assert integrity.target_state(["t.1"], "t.1", ["3.11", "staging"]) == "build tag t.1 written, aliases not"
    assert integrity.target_state(["t.1", "3.11"], "t.1", ["3.11", "staging"]) == \
        "build tag t.1 written, aliases staging not"
    assert integrity.target_state(["t.1", "3.11", "staging"], "t.1", ["3.11", "staging"]) == \
        "build tag and aliases written"


def test_a_promotion_is_recorded_once_whoever_completes_it(tmp_path):
    led = ledger.SqliteLedger(tmp_path / "ledger.db")
    key = integrity.completion_key("reg/ns/python", A, "-")
    intents = [_ev("intent", A, 0, claim=key), _ev("intent", A, 0, claim=key)]
    for i in intents:
        led.record(i)
    assert integrity.complete(led, intents[0], _ev("promote", A, 1)) is True
    assert integrity.complete(led, intents[1], _ev("promote", A, 1)) is False
    rows = [e for e in led.events() if e.kind == "promote"]
    assert len(rows) == 1 and rows[0].details["intent"] == intents[0].id
    assert integrity.pending(led.events()) == []


def test_a_build_reservation_holds_for_its_image_id_only(tmp_path):
    led = ledger.SqliteLedger(tmp_path / "ledger.db")
    held, won = integrity.reserve(led, image="python:3.11", env="dev", repository="reg/ns/python",
                                  build_tag="3.11-20260302.1", config=A)
    assert won and integrity.holds(held, config=A) and not integrity.holds(held, config=B)
    again, won2 = integrity.reserve(led, image="python:3.11", env="dev", repository="reg/ns/python",
                                    build_tag="3.11-20260302.1", config=B)
    assert not won2 and again.id == held.id
    assert integrity.identity(again) == f"image {A}"

