"""`bakery nightly`: plan → build in DAG order → scan → publish to dev → optionally promote → a report.

One image failing stops only its descendants; the report (Markdown, appended to ``$GITHUB_STEP_SUMMARY``
when set, and JSON under ``<state_dir>/nightly/``) lists what was rebuilt, why, the vulnerability counts
before and after, and what failed. A lock keeps two runs on the same configuration from overlapping.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery import integrity, secrets
from bakery.build import BuildOptions, build
from bakery.configview import Project
from bakery.definitions import Fleet
from bakery.errors import BakeryError, EnvironmentFailure, InputError
from bakery.ledger import open_ledger
from bakery.lock import nightly_lock
from bakery.model import SEVERITIES, ImageKey, ImageSpec
from bakery.plan import Current, Plan, PlanItem, Reason, make_plan, matrix_slug
from bakery.promote import promote


def changed_specs(project: Project, fleet: Fleet,
                  refs: Sequence[str] = ()) -> tuple[list[ImageSpec], frozenset[ImageKey]]:
    """The images `bakery plan` says must be rebuilt (among REFs and their descendants), parents first, and those
    of them rebuilt for ``patches`` (BuildOptions.fresh: a new ``created`` label even when the image comes out the
    same)."""
    plan = make_plan(project, fleet, refs)
    return [i.spec for i in plan.rebuild], patched(plan)


def patched(plan: Plan) -> frozenset[ImageKey]:
    """The images a plan rebuilds for ``patches``: their build gets a new `created` label even when it gives the
    same image, so the next plan knows they were built after the DB knew of the fixes (bakery.build)."""
    return frozenset(i.key for i in plan.rebuild if any(r.kind == "patches" for r in i.reasons))


@dataclass
class Outcome:
    """One image in the nightly report."""

    ref: str
    reason: str  # the plan's first reason, "up to date" or "error"
    why: str
    status: str  # rebuilt | failed | refused | skipped | planned | up to date | error
    build_tag: str = ""  # the new build's tag (rebuilt), else the published one (up to date)
    digest: str = ""
    before: dict[str, int] | None = None
    after: dict[str, int] | None = None
    error: str = ""
    promotions: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    previous_tag: str = ""  # the published build tag of an image planned for rebuild (not what was built)

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "refused", "skipped", "error") or any(not p.get("ok") for p in self.promotions)

    @property
    def refusals(self) -> str:
        """Why promotions did not happen (``promote to prod refused: soak (…)``), "" when none failed."""
        return "; ".join(f"promote to {p.get('to')} {p.get('action')}: {p.get('detail') or p.get('message') or '?'}"
                         for p in self.promotions if not p.get("ok"))

    @property
    def result(self) -> str:
        """The status, and why a promotion did not happen (``rebuilt; promote to prod refused: soak (…)``)."""
        return "; ".join(x for x in (self.status, self.refusals) if x)

    @property
    def tag_shown(self) -> str:
        """The BUILD TAG column: never the previous build's tag as if it were this run's."""
        if self.build_tag:
            return self.build_tag
        return f"(previous: {self.previous_tag})" if self.previous_tag else "-"

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "reason": self.reason, "why": self.why, "status": self.status,
                "result": self.result, "build_tag": self.build_tag or None, "digest": self.digest or None,
                "previous_build_tag": self.previous_tag or None, "vulns_before": self.before,
                "vulns_after": self.after, "error": self.error or None, "promotions": self.promotions,
                "seconds": round(self.seconds, 3), "failed": self.failed}


@dataclass
class NightlyReport:
    started: dt.datetime
    seconds: float
    dry_run: bool
    outcomes: list[Outcome]  # every image in scope; rebuilt ones first
    plan_seconds: float = 0.0
    promote_to: str | None = None
    notes: list[str] = field(default_factory=list)
    aborted: str = ""  # an environment failure stopped the run
    problems: list[str] = field(default_factory=list)  # inputs that could not be read (--summarize)

    @property
    def rebuilt(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "rebuilt"]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def planned(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.reason not in ("up to date", "error")]

    @property
    def nothing_to_do(self) -> bool:
        return not self.planned and not self.failures

    @property
    def ok(self) -> bool:
        return not self.failures and not self.aborted and not self.problems

    def headline(self) -> str:
        if self.aborted:
            return f"nightly aborted: {self.aborted}"
        if self.nothing_to_do and not self.problems:
            return (f"nothing to do: all {len(self.outcomes)} images are up to date "
                    f"(checked in {self.seconds:.2f}s)")
        if self.dry_run:
            return f"dry run: {len(self.planned)} of {len(self.outcomes)} images would be rebuilt"
        return (f"{len(self.rebuilt)} rebuilt, {len(self.failures)} failed, "
                f"{len(self.outcomes) - len(self.planned)} up to date ({self.seconds:.1f}s)")

    def to_json(self) -> dict[str, Any]:
        return {"started": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"), "seconds": round(self.seconds, 3),
                "plan_seconds": round(self.plan_seconds, 3), "dry_run": self.dry_run, "promote_to": self.promote_to,
                "ok": self.ok, "nothing_to_do": self.nothing_to_do, "summary": self.headline(),
                "rebuilt": [o.ref for o in self.rebuilt], "failed": [o.ref for o in self.failures],
                "images": [o.to_json() for o in self.outcomes], "notes": list(self.notes),
                "problems": list(self.problems), "aborted": self.aborted or None}

    def to_markdown(self) -> str:
        lines = [f"## bakery nightly — {self.started.strftime('%Y-%m-%d %H:%M UTC')}", "", f"**{self.headline()}**", ""]
        shown = [o for o in self.outcomes if o.reason != "up to date" or o.failed]
        if shown:
            lines += ["| image | reason | result | build tag | vulns before | vulns after | note |",
                      "|---|---|---|---|---|---|---|"]
            for o in shown:
                note = o.error or o.why
                if o.promotions:
                    note += "; " + ", ".join(f"{p.get('to')}: {p.get('action')}" for p in o.promotions)
                lines.append(f"| `{o.ref}` | {o.reason} | {_status_icon(o)} {_md(o.result)} | {_md(o.tag_shown)} | "
                             f"{_counts(o.before)} | {_counts(o.after)} | {_md(note)} |")
            lines.append("")
        if self.failures or self.problems:
            lines += ["### Failed", ""] + [f"- `{o.ref}`: {_md(_failure(o))}" for o in self.failures]
            lines += [f"- {_md(p)}" for p in self.problems] + [""]
        up = [o.ref for o in self.outcomes if o.reason == "up to date" and not o.failed]
        if up and shown:
            lines += [f"Up to date ({len(up)}): " + ", ".join(f"`{r}`" for r in up), ""]
        lines += [f"- {_md(n)}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def _md(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:300]


def _failure(o: Outcome) -> str:
    """One line of the Failed section: the error, else the status; then any promotion refusal and its reason."""
    return "; ".join(x for x in (o.error or o.status, o.refusals) if x)


def _status_icon(o: Outcome) -> str:
    return "❌" if o.failed else ("✅" if o.status == "rebuilt" else "•")


def _counts(c: dict[str, int] | None) -> str:
    if c is None:
        return "-"
    parts = [f"{s[0]}:{c[s]}" for s in reversed(SEVERITIES) if c.get(s)]
    return " ".join(parts) or "0"


def _outcomes(plan: Plan, results: dict[str, dict[str, Any]], promotions: dict[str, list[dict[str, Any]]],
              dry_run: bool) -> list[Outcome]:
    out: list[Outcome] = []
    order = [i for i in plan.rebuild] + [i for i in plan.items.values() if not i.rebuild]
    for item in order:
        ref = str(item.key)
        o = Outcome(ref=ref, reason=item.reason, why=item.describe(), status="up to date", before=item.vulns)
        if item.current is not None and not item.rebuild:
            o.build_tag, o.digest = item.current.build_tag, item.current.digest
        elif item.current is not None:
            o.previous_tag = item.current.build_tag
        if item.error:
            o.status, o.error = "error", item.error
        elif item.rebuild:
            r = results.get(ref)
            if dry_run:
                o.status = "planned"
            elif r is None:
                o.status, o.error = "skipped", "not built"
            else:
                status = r.get("status")
                o.status = "rebuilt" if status in ("pushed", "built", "cached") else status or "failed"
                if o.status == "rebuilt":
                    o.build_tag, o.digest = r.get("build_tag") or "", r.get("digest") or ""
                scan = r.get("scan") or {}
                o.after = dict(scan["counts"]) if scan.get("counts") else None
                o.error = r.get("error") or ""
                o.seconds = float(r.get("seconds") or 0)
            o.promotions = promotions.get(ref, [])
        out.append(o)
    return out


def run(project: Project, fleet: Fleet, refs: Sequence[str] = (), *, force: Sequence[str] = (), dry_run: bool = False,
        jobs: int | None = None, promote_to: str | None = None, wait: bool = False, progress: Any = None,
        say: Callable[[str], None] | None = None) -> NightlyReport:
    """The whole nightly run under the lock. Environment failures (registry, daemon) end in an aborted report
    (written) and are raised again."""
    say = say or (lambda _m: None)
    if promote_to is not None:
        project.config.env(promote_to)
        if promote_to == project.config.first_env:
            promote_to = None  # builds are published there already
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.monotonic()
    with nightly_lock(project.state_dir, wait=wait) as lock:
        if lock.waited > 0.5:
            say(f"waited {lock.waited:.0f}s for another nightly run to finish")
        try:
            plan = make_plan(project, fleet, refs, force=force, jobs=max(8, jobs or 0))
        except EnvironmentFailure as exc:
            # Nothing was planned, built or promoted: the report says so, and why.
            report = NightlyReport(started=started_at, seconds=time.monotonic() - started, dry_run=dry_run,
                                   outcomes=[], promote_to=promote_to, aborted=f"planning failed: {exc}",
                                   notes=["nothing was planned, built, published or promoted"])
            write_report(project, report)
            raise
        say(f"plan: {len(plan.rebuild)} of {len(plan.items)} images to rebuild ({plan.seconds:.2f}s)")
        if not dry_run:  # promotions an earlier run made but could not record (bakery.integrity)
            for ev in integrity.recover(project, open_ledger(project)):
                say(f"recorded an unrecorded promotion: {ev.image} {ev.build_tag} → {ev.to_env} (recovered)")
        results: dict[str, dict[str, Any]] = {}
        promotions: dict[str, list[dict[str, Any]]] = {}  # filled as promotions happen, kept if one aborts
        aborted = ""
        if plan.rebuild and not dry_run:
            options = BuildOptions(jobs=jobs or project.config.build.jobs, push=True, scan=True, fresh=patched(plan))
            try:
                for r in build(project, fleet, [i.spec for i in plan.rebuild], options, progress):
                    results[str(r.key)] = r.to_json()
                if promote_to is not None:
                    _promote(project, [results[str(i.key)] for i in plan.rebuild
                                       if results.get(str(i.key), {}).get("status") == "pushed"],
                             promote_to, say, promotions)
            except EnvironmentFailure as exc:
                aborted = str(exc)
        report = NightlyReport(started=started_at, seconds=0.0, dry_run=dry_run,
                               outcomes=_outcomes(plan, results, promotions, dry_run), plan_seconds=plan.seconds,
                               promote_to=promote_to, aborted=aborted)
        report.notes += plan.notes
        report.seconds = time.monotonic() - started
        write_report(project, report)
    if aborted:
        raise EnvironmentFailure(aborted)
    return report


def _promote(project: Project, pushed: list[dict[str, Any]], promote_to: str, say: Callable[[str], None],
             out: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Promote each freshly pushed digest through every environment up to ``promote_to``, gates applied.

    Each step is recorded in ``out`` as it happens: when an environment failure stops the run midway, it is
    recorded (``action: aborted``) and raised again, and the promotions already done stay in ``out``."""
    order = project.config.env_order
    targets = order[1:order.index(promote_to) + 1]
    out = {} if out is None else out
    for r in pushed:
        ref = r["ref"]
        for env in targets:
            try:
                p = promote(project, f"{r['name']}@{r['digest']}", env)
                entry = {"to": env, "action": p.action, "ok": p.ok, "message": p.message or None}
                refused = [f"{g.name} ({g.reason})" for g in p.gates if not g.passed]
                if not p.ok and refused:
                    entry["detail"] = ", ".join(refused)
            except EnvironmentFailure as exc:
                out.setdefault(ref, []).append({"to": env, "action": "aborted", "ok": False, "message": str(exc)})
                say(f"promote {ref} → {env}: aborted")
                raise
            except BakeryError as exc:
                entry = {"to": env, "action": "failed", "ok": False, "message": str(exc)}
            out.setdefault(ref, []).append(entry)
            say(f"promote {ref} → {env}: {entry['action']}")
            if not entry["ok"]:
                break
    return out


def report_dir(project: Project) -> Path:
    return project.state_dir / "nightly"


def write_report(project: Project, report: NightlyReport) -> tuple[Path, Path]:
    """Write the JSON and Markdown reports (``last.json``/``last.md`` and a timestamped copy); append the
    Markdown to ``$GITHUB_STEP_SUMMARY`` when it is set. A dry run's report goes to ``dry-run.json``/``dry-run.md``
    only: it is not the last run, nor a run's summary."""
    d = report_dir(project)
    d.mkdir(parents=True, exist_ok=True)
    stamp = report.started.strftime("%Y%m%dT%H%M%SZ")
    data = json.dumps(report.to_json(), indent=2)
    md = report.to_markdown()
    data, md = secrets.mask(data), secrets.mask(md)
    if report.dry_run:
        (d / "dry-run.json").write_text(data)
        (d / "dry-run.md").write_text(md)
        return d / "dry-run.json", d / "dry-run.md"
    for name in (f"report-{stamp}", "last"):
        (d / f"{name}.json").write_text(data)
        (d / f"{name}.md").write_text(md)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(md + "\n")
    return d / "last.json", d / "last.md"


def summarize(project: Project, plan_json: Path, result_files: Sequence[Path]) -> NightlyReport:
    """A report from a plan (``bakery plan --format json``) and ``bakery build --format json`` outputs: what the
    nightly workflow's summary job runs after the matrix builds."""
    try:
        pdata = json.loads(Path(plan_json).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{plan_json}: not a plan JSON file ({exc})") from None
    items = {}
    for img in pdata.get("images", []):
        key = ImageKey(img["name"], img["version"], img.get("variant"))
        spec = None  # the report needs no spec
        item = PlanItem(key=key, spec=spec, reasons=[Reason(r["kind"], r["detail"]) for r in img.get("reasons", [])],  # type: ignore[arg-type]
                        vulns=img.get("vulns"), error=img.get("error") or "", notes=list(img.get("notes") or []))
        pub = img.get("published")
        if pub:
            item.current = Current(repository=pub["repository"], build_tag=pub["build_tag"], digest=pub["digest"],
                                   image_id="", labels={})
        items[key] = item
    order = {ref: i for i, ref in enumerate(pdata.get("rebuild", []))}
    levels = [sorted((k for k in items if str(k) in order), key=lambda k: order[str(k)])] if order else []
    plan = Plan(items=items, levels=levels, seconds=float(pdata.get("seconds") or 0))
    results: dict[str, dict[str, Any]] = {}
    unreadable: list[tuple[Path, str]] = []
    for f in result_files:
        try:
            data = json.loads(Path(f).read_text())
        except (OSError, ValueError) as exc:
            # A matrix job that failed (environment error, timeout) before writing its output: its image is
            # reported as failed with that reason (below), and the rest of the report is still written.
            unreadable.append((Path(f), str(exc)))
            continue
        if not isinstance(data, dict) or not isinstance(data.get("results", []), list):
            raise InputError(f"{f}: not a `bakery build --format json` output")
        for r in data.get("results", []):
            results[r["ref"]] = r
    why = "result file empty or unreadable: the job failed before writing it"
    slugs = {matrix_slug(ref): ref for ref in order}
    problems: list[str] = []
    for f, exc in unreadable:
        ref = slugs.get(f.stem.removeprefix("result-"))
        if ref is None:
            problems.append(f"{f.name}: {why} ({exc})")
        elif ref not in results:
            results[ref] = {"ref": ref, "status": "failed", "error": f"{why} ({f.name})"}
    report = NightlyReport(started=dt.datetime.now(dt.timezone.utc), seconds=plan.seconds, dry_run=False,
                           outcomes=_outcomes(plan, results, {}, False), plan_seconds=plan.seconds,
                           problems=problems)
    write_report(project, report)
    return report
