"""A small delaying / cutting TCP proxy for the integration tests (asyncio, loopback only, bounded).

It sits in front of one real service (a registry, moto) and forwards bytes both ways. Rules look at the
HTTP request lines the client sends (``METHOD PATH HTTP/1.x``) and can

* ``delay``: hold that request for ``seconds`` before forwarding it (widens race windows);
* ``cut``: forward the request, then send only the first ``keep`` bytes of the answer and close both sides
  (a response cut in the middle of its headers);
* ``refuse``: close the client connection without forwarding anything (the service "died").

Each rule fires at most ``times`` times (None: always), and with ``after`` only once a request line matching it
went through. ``seen`` lists every request line with what was done, ``stamps`` when each arrived.
Bounded: at most ``max_connections`` connections at once, every connection closes after ``idle`` seconds of
silence, and the proxy binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field

_REQUEST = re.compile(rb"(?:^|\r\n)(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/1\.[01]\r\n")


@dataclass
class Rule:
    action: str  # delay | cut | refuse
    method: str | None = None  # None: any method
    path: str = ".*"  # a regex searched in the request path
    seconds: float = 0.0
    keep: int = 40  # cut: bytes of the answer passed on before the cut
    times: int | None = None
    after: str | None = None  # a regex over earlier request lines ("PUT /v2/…"): the rule waits for one of them
    hits: int = 0

    def matches(self, method: str, path: str, seen: list[str]) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.after is not None and not any(re.search(self.after, line) for line in seen):
            return False
        return (self.method is None or self.method == method) and re.search(self.path, path) is not None


@dataclass
class FaultProxy:
    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    max_connections: int = 64
    idle: float = 120.0
    port: int = 0
    seen: list[str] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)  # time.monotonic() when each line of ``seen`` arrived

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")

    # -- control (from the test's thread) ------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(self.max_connections)
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:  # connections still held (a delay, a slow peer): end them with the proxy
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

    def _decide(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, self.seen):
                    rule.hits += 1
                    self.seen.append(f"{method} {path} {rule.action}")
                    self.stamps.append(time.monotonic())
                    return rule
            self.seen.append(f"{method} {path} ok")
            self.stamps.append(time.monotonic())
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._slots:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.upstream_port), 10)
            except (OSError, asyncio.TimeoutError):
                writer.close()
                return
            cut: list[int] = []  # bytes of the next answer to pass before cutting (set by the request side)
            done = asyncio.Event()

            async def requests() -> None:
                while not done.is_set():
                    data = await asyncio.wait_for(reader.read(65536), self.idle)
                    if not data:
                        break
                    for m in _REQUEST.finditer(data):
                        rule = self._decide(m.group(1).decode(), m.group(2).decode("latin-1"))
                        if rule is None:
                            continue
                        if rule.action == "delay":
                            await asyncio.sleep(rule.seconds)
                        elif rule.action == "cut":
                            cut.append(rule.keep)
                        elif rule.action == "refuse":
                            return
                    up_writer.write(data)
                    await up_writer.drain()

            async def answers() -> None:
                passed = 0
                while not done.is_set():
                    data = await asyncio.wait_for(up_reader.read(65536), self.idle)
                    if not data:
                        break
                    if cut:
                        keep = cut[0]
                        writer.write(data[:max(0, keep - passed)])
                        await writer.drain()
                        passed += len(data)
                        if passed >= keep:
                            return
                        continue
                    writer.write(data)
                    await writer.drain()

            tasks = [asyncio.ensure_future(requests()), asyncio.ensure_future(answers())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                done.set()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for w in (writer, up_writer):
                    try:
                        w.close()
                    except Exception:  # noqa: BLE001 - already gone
                        pass
