"""The ledger: an append-only audit trail of publishes, promotions, rollbacks and gate decisions.

Two backends, chosen by ``ledger.url`` in bakery.yaml:

* a path (default ``.bakery/ledger.db``): an SQLite file, WAL mode, one row per event;
* ``s3://bucket/prefix``: one JSON object per event under ``prefix/events/NAME/VERSION/ID.json``,
  written with ``If-None-Match: *`` so that two writers can never overwrite (lose) each other's records.

Every event is masked (:mod:`bakery.secrets`) before it is stored: no credential reaches the ledger.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import itertools
import json
import os
import sqlite3
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from bakery import secrets
from bakery.errors import EnvironmentFailure, InputError
from bakery.ref import split_image

if TYPE_CHECKING:
    from bakery.config import Project

EventKind = Literal["publish", "promote", "rollback", "gate", "reserve", "intent"]
# reserve: a build tag claimed for one image in one repository (bakery.integrity); intent: a promotion about to
# copy (write-ahead; its completion is the promote event)
KINDS = ("publish", "promote", "rollback", "gate", "reserve", "intent")


def now() -> dt.datetime:
    """The current time (aware UTC). ``$BAKERY_NOW`` (ISO 8601) overrides it, for tests."""
    raw = os.environ.get("BAKERY_NOW")
    if raw:
        try:
            t = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"BAKERY_NOW: not an ISO 8601 time: {raw!r}") from None
        return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.now(dt.timezone.utc)


def actor() -> str:
    """Who is acting: ``$BAKERY_ACTOR``, else ``$GITHUB_ACTOR``, else the OS user."""
    for var in ("BAKERY_ACTOR", "GITHUB_ACTOR"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return f"uid{os.getuid()}"


_counter = itertools.count()


def new_id(when: dt.datetime) -> str:
    """A sortable unique id: UTC time to the microsecond, a per-process sequence (events recorded at the same
    instant keep their order) and 8 random hex digits."""
    return f"{when.astimezone(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}-{next(_counter) % 0x10000:04x}{uuid.uuid4().hex[:8]}"


@dataclass
class Event:
    """One ledger record."""

    kind: str  # publish | promote | rollback | gate
    image: str  # NAME:VERSION[-VARIANT]
    digest: str
    build_tag: str
    from_env: str | None
    to_env: str
    actor: str = field(default_factory=actor)
    time: dt.datetime = field(default_factory=now)
    gates: list[dict[str, Any]] = field(default_factory=list)
    scan: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown ledger event kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.time.tzinfo is None:
            self.time = self.time.replace(tzinfo=dt.timezone.utc)
        self.time = self.time.astimezone(dt.timezone.utc)
        if not self.id:
            self.id = new_id(self.time)

    @property
    def name(self) -> str:
        return split_image(self.image)[0]

    @property
    def passed(self) -> bool | None:
        """For gate events: whether every gate passed."""
        if "passed" in self.details:
            return bool(self.details["passed"])
        if self.gates:
            return all(g.get("passed") for g in self.gates)
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = self.time.isoformat().replace("+00:00", "Z")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        data = dict(data)
        data["time"] = dt.datetime.fromisoformat(str(data["time"]).replace("Z", "+00:00"))
        known = {k: data.get(k) for k in cls.__dataclass_fields__ if k in data}
        known.setdefault("gates", [])
        known.setdefault("details", {})
        if known.get("gates") is None:
            known["gates"] = []
        if known.get("details") is None:
            known["details"] = {}
        return cls(**known)

    def masked(self) -> Event:
        """A copy with every registered secret replaced by the mask."""
        text = secrets.mask(json.dumps(self.to_json(), default=str))
        return Event.from_json(json.loads(text))


def _matches(ev: Event, image: str | None, env: str | None) -> bool:
    if image:
        if ":" in image:
            if ev.image != image:
                return False
        elif ev.name != image:
            return False
    if env and ev.to_env != env:
        return False
    return True


def _sort_key(ev: Event) -> tuple[dt.datetime, str]:
    return ev.time, ev.id


def merged(events: list[Event], more: list[Event]) -> list[Event]:
    """``events`` with ``more`` (just recorded) in the ledger's order: what reading the ledger again would give
    for the same filter, without reading it again (an S3 ledger reads one object per event)."""
    return sorted([*events, *more], key=_sort_key) if more else events


class Ledger(Protocol):
    url: str

    def record(self, event: Event) -> None: ...

    def claim(self, event: Event, key: str) -> bool:
        """Record ``event`` only if no event holds ``key`` yet (an atomic conditional write); False when another
        event holds it (nothing recorded then)."""
        ...

    def claimed(self, key: str, image: str) -> Event | None:
        """The event that holds ``key`` (recorded by :meth:`claim` for ``image``), or None."""
        ...

    def events(self, image: str | None = None, env: str | None = None) -> list[Event]:
        """Events oldest first; ``image`` is NAME:VERSION (exact) or NAME (all versions); ``env`` matches
        the event's target environment."""
        ...

    def may_have_pending_intents(self) -> bool:
        """False only when no promotion intent lacks its completion (bakery.integrity.pending would find none):
        what every nightly asks first, answered without reading every event where the ledger can."""
        ...


def _sqlite_busy(exc: BaseException) -> bool:
    """The database is busy or locked by another connection (by its SQLite result code, not its message)."""
    return isinstance(exc, sqlite3.OperationalError) and \
        (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteLedger:
    """An SQLite file; safe for several processes on one machine (WAL, busy timeout)."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        image TEXT NOT NULL,
        name TEXT NOT NULL,
        digest TEXT NOT NULL,
        build_tag TEXT NOT NULL,
        from_env TEXT,
        to_env TEXT NOT NULL,
        actor TEXT NOT NULL,
        time TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_image ON events(image, time);
    CREATE INDEX IF NOT EXISTS events_name ON events(name, time);
    CREATE TABLE IF NOT EXISTS claims (
        key TEXT PRIMARY KEY,
        event_id TEXT NOT NULL
    );
    """

    def __init__(self, path: Path):
        self.path = path
        self.url = str(path)

        def open_db() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(self.SCHEMA)

        # Several processes opening a new file at once: the schema step can race (SQLITE_BUSY/LOCKED): retried.
        # The first attempt goes without tenacity (its import is ~4 ms of a promotion's start-up; bench/promote.py).
        try:
            try:
                open_db()
            except sqlite3.Error as exc:
                if not _sqlite_busy(exc):
                    raise
                import tenacity  # deferred: it imports asyncio (~40 ms measured), and every command imports the ledger

                retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(_sqlite_busy),
                                             stop=tenacity.stop_after_attempt(49),
                                             wait=tenacity.wait_incrementing(start=0.05, increment=0.01), reraise=True)
                retrying(open_db)
        except (OSError, sqlite3.Error) as exc:
            raise EnvironmentFailure(f"ledger {path}: cannot open: {exc}") from None

    def _insert(self, ev: Event) -> None:
        body = json.dumps(ev.to_json(), sort_keys=True)
        self._db.execute(
            "INSERT INTO events (id, kind, image, name, digest, build_tag, from_env, to_env, actor, time, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ev.id, ev.kind, ev.image, ev.name, ev.digest, ev.build_tag, ev.from_env, ev.to_env, ev.actor,
             ev.to_json()["time"], body))

    def record(self, event: Event) -> None:
        try:
            self._insert(event.masked())
        except sqlite3.Error as exc:
            raise EnvironmentFailure(f"ledger {self.path}: cannot record event: {exc}") from None

    def claim(self, event: Event, key: str) -> bool:
        """The claim and its event in one transaction: the primary key on ``claims.key`` decides the race."""
        ev = event.masked()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO claims (key, event_id) VALUES (?, ?)", (key, ev.id))
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                return False
            try:
                self._insert(ev)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return True
        except sqlite3.Error as exc:
            raise EnvironmentFailure(f"ledger {self.path}: cannot record event: {exc}") from None

    def claimed(self, key: str, image: str) -> Event | None:
        try:
            row = self._db.execute("SELECT e.body FROM claims c JOIN events e ON e.id = c.event_id WHERE c.key = ?",
                                   (key,)).fetchone()
        except sqlite3.Error as exc:
            raise EnvironmentFailure(f"ledger {self.path}: cannot read: {exc}") from None
        return Event.from_json(json.loads(row[0])) if row else None

    def events(self, image: str | None = None, env: str | None = None) -> list[Event]:
        sql, args = "SELECT body FROM events", []
        if image and ":" in image:
            sql += " WHERE image = ?"
            args.append(image)
        elif image:
            sql += " WHERE name = ?"
            args.append(image)
        try:
            rows = self._db.execute(sql + " ORDER BY time, seq", args).fetchall()
        except sqlite3.Error as exc:
            raise EnvironmentFailure(f"ledger {self.path}: cannot read: {exc}") from None
        out = [Event.from_json(json.loads(r[0])) for r in rows]
        return sorted((e for e in out if _matches(e, image, env)), key=_sort_key)

    def may_have_pending_intents(self) -> bool:
        """bakery.integrity.pending's test (an intent whose claim no promote event carries) over two small
        columns SQLite extracts, instead of every event's body parsed in Python (a no-op nightly otherwise reads
        the whole history)."""
        try:
            rows = self._db.execute("SELECT kind, json_extract(body, '$.details.claim') FROM events "
                                    "WHERE kind IN ('intent', 'promote')").fetchall()
        except sqlite3.Error:
            return True  # e.g. an SQLite without JSON: the caller reads the events
        done = {claim for kind, claim in rows if kind == "promote"}
        return any(kind == "intent" and claim not in done for kind, claim in rows)

    def close(self) -> None:
        self._db.close()


class S3Ledger:
    """One object per event; conditional writes (If-None-Match) so concurrent writers never collide."""

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None = None, region: str = "us-east-1",
                 client: Any = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        if client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                                  config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"},
                                                    connect_timeout=10, read_timeout=30))
        self.s3 = client

    def _base(self) -> str:
        return f"{self.prefix}/events/" if self.prefix else "events/"

    def _key(self, ev: Event) -> str:
        name, version = split_image(ev.image)
        return f"{self._base()}{_safe(name)}/{_safe(version or '_')}/{ev.id}.json"

    def record(self, event: Event) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        ev = event.masked()
        for _attempt in range(5):
            body = json.dumps(ev.to_json(), sort_keys=True).encode()
            try:
                self.s3.put_object(Bucket=self.bucket, Key=self._key(ev), Body=body, IfNoneMatch="*",
                                   ContentType="application/json")
                event.id = ev.id
                return
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    ev.id = new_id(ev.time)  # a (vanishingly unlikely) id collision: take a fresh id
                    continue
                raise EnvironmentFailure(f"ledger {self.url}: cannot record event: {code or exc}") from None
            except BotoCoreError as exc:
                raise EnvironmentFailure(f"ledger {self.url}: cannot record event: {exc}") from None
        raise EnvironmentFailure(f"ledger {self.url}: cannot record event: id collisions")

    def _claim_key(self, key: str, image: str) -> str:
        name, _, version = image.partition(":")
        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        return f"{self._base()}{_safe(name)}/{_safe(version or '_')}/claim-{digest}.json"

    def claim(self, event: Event, key: str) -> bool:
        """One object per key, written with ``If-None-Match: *``: across processes and machines one writer wins.
        The object is the event itself (listed with the image's other events)."""
        from botocore.exceptions import BotoCoreError, ClientError

        ev = event.masked()
        body = json.dumps(ev.to_json(), sort_keys=True).encode()
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._claim_key(key, ev.image), Body=body, IfNoneMatch="*",
                               ContentType="application/json")
            return True
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise EnvironmentFailure(f"ledger {self.url}: cannot record event: {code or exc}") from None
        except BotoCoreError as exc:
            raise EnvironmentFailure(f"ledger {self.url}: cannot record event: {exc}") from None

    def claimed(self, key: str, image: str) -> Event | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._claim_key(key, image))["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise EnvironmentFailure(f"ledger {self.url}: cannot read: {code or exc}") from None
        except BotoCoreError as exc:
            raise EnvironmentFailure(f"ledger {self.url}: cannot read: {exc}") from None
        return Event.from_json(json.loads(body))

    def events(self, image: str | None = None, env: str | None = None) -> list[Event]:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = self._base()
        if image:
            name, version = split_image(image)
            prefix += f"{_safe(name)}/" + (f"{_safe(version)}/" if version else "")
        out: list[Event] = []
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    body = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                    out.append(Event.from_json(json.loads(body)))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise EnvironmentFailure(f"ledger {self.url}: cannot read: {code or exc}") from None
        except BotoCoreError as exc:
            raise EnvironmentFailure(f"ledger {self.url}: cannot read: {exc}") from None
        return sorted((e for e in out if _matches(e, image, env)), key=_sort_key)

    def may_have_pending_intents(self) -> bool:
        return True  # one object per event: the caller reads them (bakery.integrity.recover)


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in part) or "_"


def open_ledger(project: Project) -> Ledger:
    """The configured ledger: SQLite (a path, relative to the project root) or ``s3://bucket/prefix``."""
    cfg = project.config.ledger
    url = cfg.url
    if url.startswith("s3://"):
        rest = url[5:]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise InputError(f"ledger.url: no bucket in {url!r} (use s3://bucket/prefix)")
        return S3Ledger(bucket, prefix, endpoint_url=cfg.endpoint_url, region=cfg.region)
    if "://" in url:
        raise InputError(f"ledger.url: unsupported scheme in {url!r} (a file path or s3://bucket/prefix)")
    return SqliteLedger(project.path(url))


# Queries over the ledger used by promotion, rollback and status.

def arrivals(events: list[Event], digest: str, env: str) -> list[Event]:
    """Events that put ``digest`` into ``env`` (publish, promote or rollback), oldest first."""
    return [e for e in events if e.digest == digest and e.to_env == env and e.kind in ("publish", "promote",
                                                                                          "rollback")]


def arrival_order(events: list[Event]) -> dict[str, list[str]]:
    """image -> identities (digest / AMI origin) in order of first arrival (publish, promote or rollback)."""
    out: dict[str, list[str]] = {}
    for ev in events:
        if ev.kind not in ("publish", "promote", "rollback"):
            continue
        lst = out.setdefault(ev.image, [])
        if ev.digest not in lst:
            lst.append(ev.digest)
    return out


def first_seen(events: list[Event], digest: str, env: str) -> dt.datetime | None:
    hits = arrivals(events, digest, env)
    return hits[0].time if hits else None


def current(events: list[Event], image: str, env: str) -> Event | None:
    """The latest event that moved ``env``'s aliases for ``image`` (what the ledger believes is live)."""
    moves = [e for e in events if e.image == image and e.to_env == env and e.kind in ("publish", "promote",
                                                                                         "rollback")]
    return moves[-1] if moves else None
