"""A run lock: one `bakery nightly` at a time per configuration.

A ``filelock.FileLock`` on ``<state_dir>/nightly.lock.lck`` (an OS lock: the kernel drops it when the holder
exits or crashes, so there is never a stale lock to clean up). ``<state_dir>/nightly.lock`` records who holds
it (pid, host, user, start time) for the message the second run prints; it is read only while the lock is held
by someone, so a crashed holder's record is never believed.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import filelock

from bakery.errors import StepFailed


class LockHeld(StepFailed):
    """Another run holds the lock (exit 1)."""

    def __init__(self, message: str, holder: dict[str, Any]):
        super().__init__(message)
        self.holder = holder


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return str(os.getuid())


def describe(holder: dict[str, Any]) -> str:
    who = f"pid {holder.get('pid', '?')}"
    if holder.get("host") and holder.get("host") != socket.gethostname():
        who += f" on {holder['host']}"
    return f"{who} by {holder.get('user', '?')} since {holder.get('started', '?')}"


class RunLock:
    """``with RunLock(path, what="nightly", wait=False):`` — raises LockHeld when busy and not waiting."""

    def __init__(self, path: Path, *, what: str = "nightly", wait: bool = False, timeout: float | None = None,
                 poll: float = 0.2):
        self.path = Path(path)
        self.what = what
        self.wait = wait
        self.timeout = timeout
        self.poll = poll
        self._lock = filelock.FileLock(self.path.with_name(self.path.name + ".lck"))
        self._held = False
        self.waited = 0.0

    def holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        wait = 0 if not self.wait else (-1 if self.timeout is None else self.timeout)
        try:
            self._lock.acquire(timeout=wait, poll_interval=self.poll)
        except filelock.Timeout:
            holder = self.holder()
            if not self.wait:
                raise LockHeld(f"{self.what} already running ({describe(holder)}); use --wait to wait for it "
                               f"(lock: {self.path})", holder) from None
            raise LockHeld(f"{self.what} still running after waiting {self.timeout:g}s "
                           f"({describe(holder)})", holder) from None
        self._held = True
        self.waited = time.monotonic() - started
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "user": _user(),
                                   "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}))
        os.replace(tmp, self.path)  # a reader never sees half a record

    def release(self) -> None:
        if not self._held:
            return
        try:
            self.path.write_text("")
        finally:
            self._lock.release()
            self._held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def nightly_lock(state_dir: Path, *, wait: bool = False, timeout: float | None = None) -> RunLock:
    return RunLock(Path(state_dir) / "nightly.lock", what="nightly", wait=wait, timeout=timeout)
