"""Progress on long work: a live table on a terminal, one line per event elsewhere (CI logs)."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

from bakery import secrets


@dataclass
class _Row:
    state: str = "waiting"
    started: float = 0.0
    seconds: float = 0.0
    last: str = ""


@dataclass
class Progress:
    """Thread-safe progress reporter for a set of named tasks (images)."""

    enabled: bool = True
    live: bool = field(default_factory=lambda: sys.stderr.isatty())
    rows: dict[str, _Row] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._live = None
        if self.enabled and self.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(), console=Console(stderr=True), refresh_per_second=8, transient=False)

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()

    def _render(self):
        from rich.table import Table

        t = Table(box=None, show_header=False, pad_edge=False)
        t.add_column("image")
        t.add_column("state")
        t.add_column("time", justify="right")
        t.add_column("log", overflow="ellipsis", no_wrap=True, max_width=80)
        now = time.monotonic()
        for name, r in self.rows.items():
            secs = r.seconds if r.state not in ("running",) and r.seconds else (now - r.started if r.started else 0)
            style = {"failed": "red", "refused": "red", "skipped": "yellow", "running": "cyan"}.get(
                r.state.split()[0], "green")
            t.add_row(name, f"[{style}]{r.state}[/]", f"{secs:5.1f}s" if r.started else "",
                      secrets.mask(r.last)[-80:] if r.state == "running" else "")
        return t

    def _emit(self, line: str) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            self._live.update(self._render())
        else:
            print(secrets.mask(line), file=sys.stderr, flush=True)

    def add(self, name: str) -> None:
        with self._lock:
            self.rows.setdefault(name, _Row())

    def start(self, name: str, what: str = "running") -> None:
        with self._lock:
            row = self.rows.setdefault(name, _Row())
            row.state, row.started = "running", time.monotonic()
            self._emit(f"[{name}] {what}")

    def line(self, name: str, text: str) -> None:
        text = text.strip()
        if not text:
            return
        with self._lock:
            row = self.rows.setdefault(name, _Row())
            row.last = text
            if self._live is not None:
                self._live.update(self._render())

    def step(self, name: str, text: str) -> None:
        """A notable step (scan, push): shown as a line even without a terminal."""
        with self._lock:
            self.rows.setdefault(name, _Row()).last = text
            self._emit(f"[{name}] {text}")

    def done(self, name: str, state: str, detail: str = "") -> None:
        with self._lock:
            row = self.rows.setdefault(name, _Row())
            row.state = state
            row.seconds = time.monotonic() - row.started if row.started else 0.0
            self._emit(f"[{name}] {state} in {row.seconds:.1f}s" + (f": {detail}" if detail else ""))

    def block(self, title: str, lines: list[str]) -> None:
        """Print a block (a failed build's log) outside the live table."""
        if not self.enabled:
            return
        text = "\n".join([title, *("    " + ln for ln in lines)])
        with self._lock:
            if self._live is not None:
                self._live.console.print(secrets.mask(text), markup=False, highlight=False)
            else:
                print(secrets.mask(text), file=sys.stderr, flush=True)
