"""A run lock: one `bakery nightly` at a time per configuration.

An ``fcntl.flock`` on ``<state_dir>/nightly.lock``: the kernel drops it when the holder exits or crashes,
so there is never a stale lock to clean up. The file records who holds it (pid, host, user, start time)
for the message the second run prints.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

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
        self._fh: IO[str] | None = None
        self.waited = 0.0

    def holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the lock's lifetime
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not self.wait:
                    fh.close()
                    holder = self.holder()
                    raise LockHeld(f"{self.what} already running ({describe(holder)}); use --wait to wait for it "
                                   f"(lock: {self.path})", holder) from None
                if self.timeout is not None and time.monotonic() - started > self.timeout:
                    fh.close()
                    holder = self.holder()
                    raise LockHeld(f"{self.what} still running after waiting {self.timeout:g}s "
                                   f"({describe(holder)})", holder) from None
                time.sleep(self.poll)
        self.waited = time.monotonic() - started
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "user": _user(),
                             "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self._fh.seek(0)
            self._fh.truncate()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
        finally:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def nightly_lock(state_dir: Path, *, wait: bool = False, timeout: float | None = None) -> RunLock:
    return RunLock(Path(state_dir) / "nightly.lock", what="nightly", wait=wait, timeout=timeout)
