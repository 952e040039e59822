"""The fleet dashboard: what runs where, how old and how vulnerable it is, as a static site.

Two steps, kept apart so that each can be tested and measured alone:

* :func:`gather` reads what bakery already knows (the registries through ``status``, the ledger, the scan
  store, the nightly JSON reports, the definitions and the last drift report) into a :class:`FleetModel`;
* :func:`render` writes that model as static HTML (Jinja, autoescaped: image names, finding titles and ledger
  text are untrusted) into a directory: ``index.html`` (the fleet matrix), ``images/*.html`` (one page per
  image) and ``runs/*.html`` (one page per nightly run). No server and no JavaScript framework: the pages work
  from ``file://`` and GitHub Pages; one small script sorts and filters the matrix and is not needed to read it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup, escape

from bakery import ledger as ledger_mod
from bakery import nightly, policy, scan, status, verify
from bakery.definitions import load_fleet
from bakery.errors import BakeryError, InputError
from bakery.ledger import Event, Ledger
from bakery.scan import SEVERITY_ORDER

if TYPE_CHECKING:
    from bakery.config import Project

SEVERITIES = tuple(reversed(SEVERITY_ORDER))  # CRITICAL first
SHOWN_SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW")
TREND_COLORS = {"CRITICAL": "#b3261e", "HIGH": "#e8710a", "MEDIUM": "#c9a100", "LOW": "#5f6368"}
MAX_TIMELINE = 200  # newest ledger events shown on an image page
MAX_FINDINGS = 300  # per section of an image page (the total is still shown)
MAX_RUNS = 60  # nightly runs kept in the trend and listed
SITE_MARKER = ".bakery-site"  # in a directory render wrote: only such a directory is written over


# ------------------------------------------------------------------------------------------------ model
@dataclass
class Cell:
    """One image in one environment."""

    env: str
    build_tag: str = ""
    digest: str = ""
    since: dt.datetime | None = None  # when this digest arrived in env
    scanned_at: dt.datetime | None = None
    counts: dict[str, int] | None = None  # findings by severity
    fixable: dict[str, int] | None = None  # of which with a fixed version
    gate: str = "-"  # passed | failed | -
    attestations: str = "unknown"
    note: str = ""

    @property
    def present(self) -> bool:
        return bool(self.digest)


@dataclass
class Lineage:
    image: str  # NAME:VERSION, or the upstream reference
    kind: str  # bakery | upstream | self
    digest: str = ""
    build_tag: str = ""
    slug: str = ""  # its page, for bakery images in the model


@dataclass
class TimelineEntry:
    time: dt.datetime
    kind: str  # publish | gate | promote | rollback
    env: str
    from_env: str
    build_tag: str
    digest: str
    actor: str
    outcome: str  # passed/failed for gates, the message of a refusal, the previous digest of a rollback


@dataclass
class TrendPoint:
    run: str  # the run's slug
    started: dt.datetime
    counts: dict[str, int]


@dataclass
class FindingRow:
    section: str  # failing | unfixed | ignored | expired | below (fixable, under the gate's threshold)
    id: str
    package: str
    installed: str
    fixed: str
    severity: str
    title: str
    note: str = ""  # why it fails, or the ignore rule and its expiry


@dataclass
class DriftRow:
    source: str
    where: str
    reference: str
    status: str
    build_tag: str = ""
    detail: str = ""
    image: str = ""
    env: str = ""


@dataclass
class ImageModel:
    image: str  # NAME:VERSION[-VARIANT]
    slug: str
    cells: dict[str, Cell]
    pending: list[str] = field(default_factory=list)
    lineage: list[Lineage] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)
    timeline_total: int = 0
    trend: list[TrendPoint] = field(default_factory=list)
    findings: list[FindingRow] = field(default_factory=list)
    findings_total: dict[str, int] = field(default_factory=dict)
    findings_of: str = ""  # env and build the findings belong to
    rebuild_reasons: list[str] = field(default_factory=list)
    drift: list[DriftRow] = field(default_factory=list)


@dataclass
class RunRow:
    """One image in a nightly run, as its page shows it."""

    ref: str
    reason: str
    result: str
    build_tag: str
    before: str
    after: str
    why: str
    failed: bool


def run_row(entry: dict[str, Any]) -> RunRow:
    return RunRow(ref=str(entry.get("ref") or ""), reason=str(entry.get("reason") or ""),
                  result=str(entry.get("result") or entry.get("status") or ""),
                  build_tag=str(entry.get("build_tag") or entry.get("previous_build_tag") or "-"),
                  before=counts_text(entry.get("vulns_before")), after=counts_text(entry.get("vulns_after")),
                  why=str(entry.get("error") or entry.get("why") or ""), failed=bool(entry.get("failed")))


@dataclass
class RunModel:
    slug: str
    started: dt.datetime
    summary: str
    ok: bool
    dry_run: bool
    seconds: float
    images: list[dict[str, Any]]
    notes: list[str]
    problems: list[str]
    aborted: str = ""
    rows: list[RunRow] = field(default_factory=list)


@dataclass
class DriftModel:
    env: str
    time: dt.datetime | None
    sources: list[str]
    rows: list[DriftRow]
    drifted: int


@dataclass
class FleetModel:
    generated: dt.datetime
    envs: list[str]
    images: list[ImageModel]
    runs: list[RunModel] = field(default_factory=list)
    drift: list[DriftModel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return json.loads(json.dumps(asdict(self), default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso(value)
    raise TypeError(type(value).__name__)


# ------------------------------------------------------------------------------------------------ helpers
def iso(t: dt.datetime | None) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else ""


def human_age(now: dt.datetime, then: dt.datetime | None) -> str:
    if then is None:
        return "-"
    s = int((now - then).total_seconds())
    if s < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str) -> str:
    """A file name for TEXT: safe characters only, plus a short hash so that two names never collide."""
    base = _SLUG_BAD.sub("_", text).strip("._")[:80] or "x"
    return f"{base}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12] if digest else ""


def attestations_for(project: Project | None, image: str, env: str, digest: str, *, live: bool) -> str:
    """The kinds of attestation the digest carries in ``env`` ("provenance, sbom, scan, vex"), as its store lists
    them (bakery.verify.list_ref: the referrers of the digest; listed, not verified — `bakery verify` verifies).
    "none" when it carries nothing, "unknown" when the store cannot say or the site is built from the ledger
    alone (``--ledger-only`` asks no registry)."""
    if not digest:
        return "-"
    if not live or project is None:
        return "unknown"
    try:
        _, rows, _ = verify.list_ref(project, f"{image}@{digest}", env)
    except BakeryError:
        return "unknown"
    kinds = sorted({str(r["kind"]) for r in rows if r.get("kind") and not r.get("error")})
    return ", ".join(kinds) if kinds else "none"


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def pending(envs: list[str], cells: dict[str, Cell], order: list[str]) -> list[str]:
    """"staging is 2 builds ahead of prod": for each pair of consecutive environments, how many builds (in the
    order they were published, ``order`` = digests oldest first) the earlier one is ahead of the later one."""
    out = []
    for a, b in zip(envs, envs[1:]):
        ca, cb = cells.get(a), cells.get(b)
        if not ca or not ca.digest or (cb and cb.digest == ca.digest):
            continue
        if not cb or not cb.digest:
            out.append(f"{a} has {ca.build_tag or short(ca.digest)}, not in {b} yet")
            continue
        if ca.digest in order and cb.digest in order:
            n = order.index(ca.digest) - order.index(cb.digest)
            if n > 0:
                out.append(f"{a} is {n} build{'s' if n != 1 else ''} ahead of {b}")
            elif n < 0:
                out.append(f"{b} is {-n} build{'s' if n != -1 else ''} ahead of {a}")
        else:
            out.append(f"{a} and {b} differ")
    return out


def refused(envs: list[str], cells: dict[str, Cell], events: list[Event]) -> list[str]:
    """The promotions whose last gate decision said no, for builds that are not in that environment."""
    out = []
    for env in envs:
        gates = [e for e in events if e.kind == "gate" and e.to_env == env]
        if not gates or gates[-1].passed is not False or gates[-1].digest == cells[env].digest:
            continue
        last = gates[-1]
        why = "; ".join(f"{g.get('name')}: {g.get('reason')}" for g in last.gates if not g.get("passed"))
        out.append(f"promotion of {last.build_tag or short(last.digest)} to {env} refused"
                   + (f" ({why})" if why else ""))
    return out


def publish_order(events: Iterable[Event], image: str) -> list[str]:
    """The image's builds (digests), oldest first, in the order they were first published."""
    out: list[str] = []
    for e in events:
        if e.image == image and e.kind == "publish" and e.digest not in out:
            out.append(e.digest)
    return out


def _fixable_counts(findings: Iterable[Any]) -> dict[str, int]:
    out = {s: 0 for s in SEVERITIES}
    for f in findings:
        if f.fixed:
            out[f.severity if f.severity in out else "UNKNOWN"] += 1
    return out


# ------------------------------------------------------------------------------------------------ gather
def gather(project: Project, *, now: dt.datetime | None = None, ledger: Ledger | None = None,
           live: bool = True, status_fn: Callable[..., list[Any]] | None = None) -> FleetModel:
    """Everything the dashboard shows, read from the project's registries, ledger, scan store and reports.

    ``live`` asks the registries what each environment runs (the truth, via ``bakery status``); without it the
    ledger's view is used (no network)."""
    now = now or ledger_mod.now()
    led = ledger or ledger_mod.open_ledger(project)
    events = led.events()
    envs = list(project.config.env_order)
    notes: list[str] = []

    fleet = None
    try:
        fleet = load_fleet(project)
    except Exception as exc:  # noqa: BLE001 - a ledger without definitions still has a dashboard
        notes.append(f"definitions not loaded: {exc}")

    # what each environment runs
    live_rows: dict[tuple[str, str], Any] = {}
    if live:
        for row in (status_fn or status.status)(project, now=now, ledger=led):
            live_rows[(row.image, row.env)] = row
            if getattr(row, "unreachable", False) and f"{row.env}: {row.note}" not in notes:
                notes.append(f"{row.env}: {row.note}")
    images = sorted({e.image for e in events} | {i for i, _ in live_rows}
                    | ({str(k) for k in fleet.specs} if fleet else set()))

    by_image: dict[str, list[Event]] = {}
    for e in events:
        by_image.setdefault(e.image, []).append(e)
    scans_by_digest: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.scan and e.digest:
            scans_by_digest[e.digest] = e.scan

    runs = load_runs(nightly.report_dir(project))
    run_index = _index_runs(runs)
    drift = load_drift(project)
    slugs = {i: slug(i) for i in images}
    out: list[ImageModel] = []
    stored_cache: dict[str, Any] = {}

    def stored(digest: str) -> Any:
        if digest not in stored_cache:
            summary = scans_by_digest.get(digest) or {}
            image_id = str(summary.get("image_id") or "")
            stored_cache[digest] = scan.load_stored(project, image_id) if image_id.startswith("sha256:") else None
        return stored_cache[digest]

    for image in images:
        evs = by_image.get(image, [])
        cells: dict[str, Cell] = {}
        for env in envs:
            row = live_rows.get((image, env))
            if live:
                digest = (row.digest or "") if row else ""
                build_tag = row.build_tag if row else ""
                note = row.note if row else ""
                if row and not digest and row.ledger_digest and getattr(row, "unreachable", False):
                    digest = row.ledger_digest  # the registry cannot say: the ledger's view, with the note
            else:
                cur = ledger_mod.current(evs, image, env)
                digest, build_tag, note = (cur.digest, cur.build_tag, "") if cur else ("", "", "")
            cell = Cell(env=env, build_tag=build_tag, digest=digest, note=note)
            if digest:
                cell.since = ledger_mod.first_seen(evs, digest, env)
                summary = scans_by_digest.get(digest)
                if summary:
                    cell.counts = summary.get("counts")
                    cell.scanned_at = _parse_time(summary.get("scanned_at"))
                result = stored(digest)
                if result is not None:
                    cell.counts = result.counts
                    cell.fixable = _fixable_counts(result.findings)
                    cell.scanned_at = result.scanned_at
                gates = [x for x in evs if x.kind == "gate" and x.digest == digest and x.to_env == env]
                published = [x for x in evs if x.kind == "publish" and x.digest == digest and x.to_env == env
                             and isinstance(x.scan, dict) and "passed" in x.scan]
                if gates:
                    cell.gate = "passed" if gates[-1].passed else "failed"
                elif any(x.kind == "promote" and x.digest == digest and x.to_env == env for x in evs):
                    cell.gate = "passed"
                elif published:  # the scan gate of the build that published it
                    cell.gate = "passed" if published[-1].scan.get("passed") else "failed"
                cell.attestations = attestations_for(project, image, env, digest, live=live)
            cells[env] = cell
        model = ImageModel(image=image, slug=slugs[image], cells=cells,
                           pending=pending(envs, cells, publish_order(evs, image)) + refused(envs, cells, evs))
        model.timeline_total = len(evs)
        model.timeline = [_timeline(e) for e in reversed(evs[-MAX_TIMELINE:])]
        model.lineage = _lineage(fleet, image, evs, cells, envs, slugs, live_rows, by_image)
        model.trend = _trend(run_index.get(image, []))
        model.rebuild_reasons = _rebuild_reasons(run_index.get(image, []))
        # the latest scan's findings: of the build furthest along (prod first), else the newest
        for env in reversed(envs):
            cell = cells[env]
            result = stored(cell.digest) if cell.digest else None
            if result is None:
                continue
            spec = None
            if fleet is not None:
                try:
                    spec = fleet.select([image])[0]
                except Exception:  # noqa: BLE001 - an image only the ledger knows
                    spec = None
            decision = policy.evaluate(project, result, spec=spec, now=now.date())
            model.findings, model.findings_total = _findings(decision)
            model.findings_of = f"{env} · {cell.build_tag or short(cell.digest)} · scanned {iso(result.scanned_at)}"
            break
        for d in drift:
            model.drift.extend(r for r in d.rows if r.image == image)
        out.append(model)
    return FleetModel(generated=now, envs=envs, images=out, runs=runs, drift=drift, notes=notes)


def _timeline(e: Event) -> TimelineEntry:
    outcome = ""
    if e.kind == "gate":
        outcome = "passed" if e.passed else "refused"
        msg = e.details.get("message")
        if msg:
            outcome += f": {msg}"
    elif e.kind == "rollback":
        prev = e.details.get("previous_digest") or ""
        outcome = f"from {short(str(prev))}" if prev else ""
    elif e.kind == "promote" and e.details.get("approved_by"):
        outcome = f"approved by {e.details['approved_by']}"
    return TimelineEntry(time=e.time, kind=e.kind, env=e.to_env, from_env=e.from_env or "", build_tag=e.build_tag,
                         digest=e.digest, actor=e.actor, outcome=str(outcome))


def _recorded_parent(evs: list[Event], digest: str) -> str:
    """The pinned parent reference the build of DIGEST was made FROM (its publish event), else ""."""
    publishes = [e for e in evs if e.kind == "publish" and (not digest or e.digest == digest)]
    return str(publishes[-1].details.get("parent") or "") if publishes else ""


def _lineage(fleet: Any, image: str, evs: list[Event], cells: dict[str, Cell], envs: list[str],
             slugs: dict[str, str], live_rows: dict[tuple[str, str], Any],
             by_image: dict[str, list[Event]]) -> list[Lineage]:
    first = envs[0] if envs else ""
    own = cells.get(first) or Cell(env=first)
    chain = [Lineage(image=image, kind="self", digest=own.digest, build_tag=own.build_tag, slug=slugs.get(image, ""))]
    publishes = [e for e in evs if e.kind == "publish" and (not own.digest or e.digest == own.digest)]
    parent_ref = str(publishes[-1].details.get("parent") or "") if publishes else ""
    spec = None
    if fleet is not None:
        try:
            spec = fleet.select([image])[0]
        except Exception:  # noqa: BLE001 - an image only the ledger knows: its recorded parent
            spec = None
    if spec is None:
        if parent_ref:
            chain.append(Lineage(image=parent_ref.split("@", 1)[0], kind="upstream",
                                 digest=parent_ref.split("@", 1)[1] if "@" in parent_ref else ""))
        return chain
    for key in fleet.ancestors(spec.key):  # parent first, up to the root
        name = str(key)
        row = live_rows.get((name, first))
        chain.append(Lineage(image=name, kind="bakery", digest=(row.digest or "") if row else "",
                             build_tag=row.build_tag if row else "", slug=slugs.get(name, "")))
    ancestors = fleet.ancestors(spec.key)
    root = fleet.get(ancestors[-1]) if ancestors else spec
    if root.parent.kind == "upstream":
        ref = root.parent.reference
        digest = root.parent.pinned_digest or ""
        if not digest:  # what the root's build in the first environment was made FROM
            if ancestors:
                top = chain[-1]
                recorded = _recorded_parent(by_image.get(top.image, []), top.digest)
            else:
                recorded = parent_ref
            digest = recorded.split("@", 1)[1] if "@" in recorded else ""
        chain.append(Lineage(image=ref.split("@", 1)[0], kind="upstream", digest=digest))
    return chain


def _index_runs(runs: list[RunModel]) -> dict[str, list[tuple[RunModel, dict[str, Any]]]]:
    """Each image's entries in the recorded runs, oldest run first."""
    out: dict[str, list[tuple[RunModel, dict[str, Any]]]] = {}
    for run in sorted(runs, key=lambda r: r.started):
        for entry in run.images:
            ref = entry.get("ref")
            if isinstance(ref, str):
                out.setdefault(ref, []).append((run, entry))
    return out


def _trend(entries: list[tuple[RunModel, dict[str, Any]]]) -> list[TrendPoint]:
    points = []
    for run, entry in entries:
        counts = entry.get("vulns_after") or entry.get("vulns_before")
        if isinstance(counts, dict):
            points.append(TrendPoint(run=run.slug, started=run.started,
                                     counts={s: _int(counts.get(s)) for s in SHOWN_SEVERITIES}))
    return points


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _rebuild_reasons(entries: list[tuple[RunModel, dict[str, Any]]]) -> list[str]:
    for run, entry in reversed(entries):
        if entry.get("reason") not in (None, "up to date"):
            return [f"{iso(run.started)}: {entry.get('reason')}: {entry.get('why') or ''} → "
                    f"{entry.get('result') or entry.get('status') or ''}".strip()]
    return []


def _findings(decision: Any) -> tuple[list[FindingRow], dict[str, int]]:
    rows: list[FindingRow] = []
    below_fixable = [f for f in decision.below if f.fixed]
    totals = {"failing": len(decision.failing), "unfixed": len(decision.unfixed),
              "ignored": len(decision.ignored), "expired": sum(len(fs) for _, fs in decision.expired),
              "fixable below the threshold": len(below_fixable)}

    def add(section: str, f: Any, note: str) -> None:
        rows.append(FindingRow(section=section, id=f.id, package=f.package, installed=f.installed,
                               fixed=f.fixed or "", severity=f.severity, title=f.title, note=note))

    for f, why in decision.failing[:MAX_FINDINGS]:
        add("failing", f, why)
    for f in sorted(decision.unfixed, key=lambda x: -x.rank)[:MAX_FINDINGS]:
        add("unfixed", f, "no fixed version yet")
    for f, rule in decision.ignored[:MAX_FINDINGS]:
        add("ignored", f, rule.describe())
    for rule, fs in decision.expired:
        for f in fs[:MAX_FINDINGS]:
            add("expired", f, f"ignore expired: {rule.describe()}")
    for f in sorted(below_fixable, key=lambda x: -x.rank)[:MAX_FINDINGS]:
        add("below", f, f"below the {decision.severity} threshold; fixed in {f.fixed}")
    return rows, totals


def load_runs(directory: Path) -> list[RunModel]:
    """The recorded nightly runs (``report-*.json``), newest first; unreadable files are skipped."""
    runs = []
    for path in sorted(directory.glob("report-*.json"), reverse=True)[:MAX_RUNS]:
        try:
            data = json.loads(path.read_text())
            started = _parse_time(data.get("started")) or dt.datetime.fromtimestamp(path.stat().st_mtime,
                                                                                    dt.timezone.utc)
            images = [i for i in data.get("images") or [] if isinstance(i, dict)]
            runs.append(RunModel(slug=slug(path.stem), started=started, summary=str(data.get("summary") or ""),
                                 ok=bool(data.get("ok")), dry_run=bool(data.get("dry_run")),
                                 seconds=float(data.get("seconds") or 0), images=images,
                                 notes=[str(n) for n in data.get("notes") or []],
                                 problems=[str(p) for p in data.get("problems") or []],
                                 aborted=str(data.get("aborted") or ""), rows=[run_row(i) for i in images]))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return runs


def drift_dir(project: Project) -> Path:
    return project.state_dir / "drift"


def load_drift(project: Project) -> list[DriftModel]:
    """The latest drift report of each environment (written by ``bakery drift``)."""
    out = []
    for path in sorted(drift_dir(project).glob("last-*.json")):
        try:
            data = json.loads(path.read_text())
            rows = [DriftRow(source=str(r.get("source") or ""), where=str(r.get("where") or ""),
                             reference=str(r.get("reference") or ""), status=str(r.get("status") or ""),
                             build_tag=str(r.get("build_tag") or ""),
                             detail=str(r.get("detail") or ""), image=str(r.get("image") or ""),
                             env=str(data.get("env") or ""))
                    for r in data.get("references") or []]
            out.append(DriftModel(env=str(data.get("env") or ""), time=_parse_time(data.get("time")),
                                  sources=[str(s) for s in data.get("sources") or []], rows=rows,
                                  drifted=int(data.get("drifted") or 0)))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return out


# ------------------------------------------------------------------------------------------------ render
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("bakery", "resources/dashboard"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["short"] = short
    env.filters["iso"] = iso
    env.filters["digest"] = digest_html
    env.filters["counts"] = counts_html
    env.filters["counts_text"] = counts_text
    return env


def digest_html(digest: str) -> Markup:
    """A short digest; the full one on hover (title) and for copying (the script copies the title)."""
    if not digest:
        return Markup('<span class="muted">-</span>')
    return Markup(f'<code class="digest" title="{escape(digest)}">{escape(short(digest))}</code>')


def counts_html(counts: dict[str, int] | None, fixable: dict[str, int] | None = None) -> Markup:
    """Findings by severity (C/H/M/L), with how many are fixable (``/Nf``). Numbers only: nothing to escape."""
    if counts is None:
        return Markup('<span class="muted">not scanned</span>')
    parts = []
    for s in SHOWN_SEVERITIES:
        n = _int(counts.get(s))
        f = _int(fixable.get(s)) if fixable is not None else 0
        fix = f"<small>/{f}f</small>" if f else ""
        parts.append(f'<i class="{s[0].lower()}{"" if n else " z"}">{s[0]} {n}{fix}</i>')
    return Markup('<span class="vulns">' + "".join(parts) + "</span>")


def counts_text(counts: Any) -> str:
    if not isinstance(counts, dict):
        return "-"
    return " ".join(f"{s[0]}{_int(counts.get(s))}" for s in SHOWN_SEVERITIES)


def trend_svg(points: list[TrendPoint], width: int = 640, height: int = 180) -> dict[str, Any]:
    """The geometry of the trend chart (numbers only; the template draws it): one polyline per severity."""
    pad_l, pad_r, pad_t, pad_b = 36, 10, 10, 24
    top = max([1] + [p.counts.get(s, 0) for p in points for s in SHOWN_SEVERITIES])
    n = len(points)
    xs = [pad_l + (i * (width - pad_l - pad_r) / (n - 1) if n > 1 else (width - pad_l - pad_r) / 2) for i in range(n)]

    def y(v: int) -> float:
        return round(pad_t + (height - pad_t - pad_b) * (1 - v / top), 1)

    series = []
    for s in SHOWN_SEVERITIES:
        pts = [(round(x, 1), y(p.counts.get(s, 0))) for x, p in zip(xs, points)]
        series.append({"severity": s, "color": TREND_COLORS[s], "points": " ".join(f"{a},{b}" for a, b in pts),
                       "dots": pts, "last": points[-1].counts.get(s, 0) if points else 0})
    labels = []
    if points:
        same_day = points[0].started.date() == points[-1].started.date()
        fmt = "%m-%d %H:%M" if same_day else "%m-%d"
        labels = [(round(xs[0], 1), points[0].started.strftime(fmt))]
        if n > 1:
            labels.append((round(xs[-1], 1), points[-1].started.strftime(fmt)))
    chart = {"width": width, "height": height, "top": top, "y_top": y(top), "y_zero": y(0), "x0": pad_l,
             "x1": width - pad_r, "series": series, "labels": labels, "n": n}
    chart["svg"] = _svg(chart) if n else Markup("")
    return chart


def _svg(c: dict[str, Any]) -> Markup:
    """The chart as inline SVG. Only numbers, dates and the fixed severity names and colours go into it, so
    it is built as a string (escaping a few thousand floats per page costs more than the rest of the page)."""
    out = [f'<svg id="trend" class="trend" role="img" aria-label="findings by severity per nightly run" '
           f'width="{c["width"]}" height="{c["height"]}" viewBox="0 0 {c["width"]} {c["height"]}" '
           f'xmlns="http://www.w3.org/2000/svg">',
           f'<line x1="{c["x0"]}" y1="{c["y_zero"]}" x2="{c["x1"]}" y2="{c["y_zero"]}" stroke="#999"/>',
           f'<line x1="{c["x0"]}" y1="{c["y_top"]}" x2="{c["x0"]}" y2="{c["y_zero"]}" stroke="#999"/>',
           f'<text x="{c["x0"] - 4}" y="{c["y_top"] + 4}" text-anchor="end" font-size="11">{c["top"]}</text>',
           f'<text x="{c["x0"] - 4}" y="{c["y_zero"]}" text-anchor="end" font-size="11">0</text>']
    for i, (lx, text) in enumerate(c["labels"]):
        out.append(f'<text x="{lx}" y="{c["height"] - 6}" text-anchor="{"start" if i == 0 else "end"}" '
                   f'font-size="11">{escape(text)}</text>')
    for sr in reversed(c["series"]):  # CRITICAL drawn last, on top of a less severe line with the same counts
        out.append(f'<polyline class="series" data-severity="{sr["severity"]}" fill="none" stroke="{sr["color"]}" '
                   f'stroke-width="2" points="{sr["points"]}"/>')
        out.extend(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{sr["color"]}"/>' for x, y in sr["dots"])
    out.append("</svg>")
    return Markup("\n".join(out))


def render(model: FleetModel, out: Path) -> list[Path]:
    """Write the site into OUT (created; bakery's own files in it are replaced). Returns the pages written."""
    try:
        return _render(model, out)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write the site: {exc.strerror or exc}") from None


def _render(model: FleetModel, out: Path) -> list[Path]:
    env = _environment()
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).is_file():
        raise InputError(f"--out {out}: not empty and not a site bakery wrote (no {SITE_MARKER}); "
                         f"pick a new directory or empty this one")
    out.mkdir(parents=True, exist_ok=True)
    (out / SITE_MARKER).write_text("written by `bakery report html`; its images/ and runs/ are replaced\n")
    for sub in ("images", "runs"):
        d = out / sub
        if d.is_dir():
            shutil.rmtree(d)
        d.mkdir()
    assets = out / "assets"
    assets.mkdir(exist_ok=True)
    for name in ("style.css", "table.js"):
        src = Path(__file__).parent / "resources" / "dashboard" / name
        (assets / name).write_bytes(src.read_bytes())
    common = {"model": model, "now": model.generated, "age": lambda t: human_age(model.generated, t),
              "severities": SHOWN_SEVERITIES}
    written = []
    page = env.get_template("index.html.j2")
    (out / "index.html").write_text(page.render(root="", **common), encoding="utf-8")
    written.append(out / "index.html")
    image_page = env.get_template("image.html.j2")
    for img in model.images:
        path = out / "images" / f"{img.slug}.html"
        path.write_text(image_page.render(root="../", img=img, chart=trend_svg(img.trend), **common),
                        encoding="utf-8")
        written.append(path)
    run_page = env.get_template("run.html.j2")
    for run in model.runs:
        path = out / "runs" / f"{run.slug}.html"
        path.write_text(run_page.render(root="../", run=run, slugs={i.image: i.slug for i in model.images},
                                        **common), encoding="utf-8")
        written.append(path)
    return written
