"""`bakery plan`: which images must be rebuilt, and why — from the registries and the scan store only.

For every image (the ones named, plus their descendants) the newest build in the first environment is read
(the repository's tag list, read once per repository; the newest build tag's manifest and config blob only the
first time that tag is seen — build tags are immutable; every image in parallel, one HTTP session per registry
and thread) and compared with what a build would do now:

1. ``definition`` — the recipe (template, variables, build context) gives a different fingerprint than the
   published image's ``dev.bakery.fingerprint`` (or the image was never published);
2. ``upstream``   — the upstream parent tag now resolves to a different digest than the image's
   ``org.opencontainers.image.base.digest`` (for AMIs: a newer source AMI);
3. ``patches``    — the published image has findings with a fixed version (scan store, re-scanned by digest
   when the stored result is older than the DB), and it was built before the DB knew of the fix;
4. ``parent``     — a bakery parent is rebuilt (transitively) or was republished since;
5. ``forced``     — named with ``--force``;
otherwise up to date. The images to rebuild form a DAG in levels (parents first).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bakery import render, scan
from bakery.build import resolve_upstream
from bakery.configview import Project
from bakery.definitions import Fleet
from bakery.errors import BakeryError, EnvironmentFailure
from bakery.model import LABEL_FINGERPRINT, OCI, Held, ImageKey, ImageSpec, Reason
from bakery.store import ArtifactStore, TagLists, spec_kind, store_for

REASONS = ("definition", "upstream", "patches", "parent", "forced")
UP_TO_DATE = "up to date"
LABEL_BASE_DIGEST = OCI + "base.digest"
LABEL_CREATED = OCI + "created"
Current = Held  # the newest published build of one image (bakery.model.Held; nightly and tests use this name)
__all__ = ["LABEL_BASE_DIGEST", "LABEL_CREATED", "REASONS", "Current", "Judging", "Plan", "PlanItem", "Reason",
           "built_after", "make_plan", "matrix_slug", "scope", "scope_named"]


@dataclass
class PlanItem:
    key: ImageKey
    spec: ImageSpec
    reasons: list[Reason] = field(default_factory=list)
    current: Current | None = None
    fingerprint: str = ""  # what a build would produce now (with the parent the image was built on)
    upstream_digest: str = ""  # the upstream parent's digest now
    vulns: dict[str, int] | None = None  # counts on the published image (None: not checked)
    fixable: list[str] = field(default_factory=list)  # "CVE in package (fixed in V)" on the published image
    notes: list[str] = field(default_factory=list)
    error: str = ""  # the image could not be checked
    level: int | None = None  # level in the rebuild DAG

    @property
    def rebuild(self) -> bool:
        return bool(self.reasons)

    @property
    def reason(self) -> str:
        return self.reasons[0].kind if self.reasons else ("error" if self.error else UP_TO_DATE)

    def describe(self) -> str:
        if self.error:
            return self.error
        if not self.reasons:
            return "; ".join(self.notes) or "published image matches the definition, upstream and parents"
        return "; ".join(f"{r.kind}: {r.detail}" for r in self.reasons)

    def to_json(self) -> dict[str, Any]:
        cur = self.current
        return {
            "ref": str(self.key), "name": self.key.name, "version": self.key.version, "variant": self.key.variant,
            "rebuild": self.rebuild, "reason": self.reason, "reasons": [r.to_json() for r in self.reasons],
            "level": self.level, "fingerprint": self.fingerprint or None,
            "published": None if cur is None else {
                "repository": cur.repository, "build_tag": cur.build_tag, "digest": cur.digest,
                "fingerprint": cur.labels.get(LABEL_FINGERPRINT), "base_digest": cur.labels.get(LABEL_BASE_DIGEST),
                "created": cur.labels.get(LABEL_CREATED)},
            "upstream_digest": self.upstream_digest or None, "vulns": self.vulns, "fixable": list(self.fixable),
            "notes": list(self.notes), "error": self.error or None,
        }


MAX_MATRIX_JOBS = 256  # GitHub Actions: a matrix generates at most 256 jobs per workflow run


def matrix_slug(ref: str) -> str:
    """A matrix entry's ``slug``: the nightly workflow names its result files ``result-SLUG.json``."""
    return ref.replace(":", "-").replace(".", "_")


@dataclass
class Plan:
    items: dict[ImageKey, PlanItem]
    levels: list[list[ImageKey]]  # the images to rebuild, parents first
    seconds: float = 0.0
    requests: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rebuild(self) -> list[PlanItem]:
        return [self.items[k] for level in self.levels for k in level]

    @property
    def errors(self) -> list[PlanItem]:
        return [i for i in self.items.values() if i.error]

    def to_json(self) -> dict[str, Any]:
        return {
            "rebuild": [str(i.key) for i in self.rebuild],
            "levels": [[str(k) for k in level] for level in self.levels],
            "images": [i.to_json() for i in self.items.values()],
            "errors": [str(i.key) for i in self.errors],
            "seconds": round(self.seconds, 3), "requests": self.requests, "notes": list(self.notes),
        }

    def github_matrix(self, max_levels: int | None = None, *, max_jobs: int = MAX_MATRIX_JOBS,
                      pack: int = 1) -> dict[str, Any]:
        """``{"count": N, "levels": [{"include": [...]}, ...]}``: one GitHub Actions matrix per stage.

        A stage is a DAG level; with ``max_levels`` the levels from the last stage down are folded into it:
        each of its entries builds a subtree (``bakery build`` walks the levels inside the job), so a workflow
        with a fixed number of stage jobs builds a fleet of any depth. No matrix has more than ``max_jobs``
        entries (GitHub refuses more than 256): images are packed several to a job when a stage is wider.
        ``pack`` packs at least that many images into one job when there are enough (fewer, longer jobs:
        each job pays the runner's set-up once). Images packed together share their parents where possible;
        an entry's ``parent`` lists every rebuilt parent outside it (space-separated), ``refs`` its images in
        build order, ``image`` the first of them, ``label`` the job's name (``python:3.11 +12``), ``fresh``
        those of them rebuilt for ``patches`` (for ``bakery build --fresh``).
        """
        if max_jobs < 1 or pack < 1:
            raise ValueError("max_jobs and pack must be >= 1")
        levels = [list(level) for level in self.levels]
        depth = {k: n for n, level in enumerate(levels) for k in level}
        stages: list[list[list[ImageKey]]] = []  # stage -> units (a unit: images that must share a job)
        cut = max_levels if max_levels and len(levels) > max_levels else len(levels)
        for level in levels[:cut - 1] if cut < len(levels) else levels:
            stages.append([[k] for k in level])
        if cut < len(levels):
            children: dict[ImageKey, list[ImageKey]] = {}
            for level in levels[cut:]:
                for k in level:
                    children.setdefault(self._rebuilt_parent(k), []).append(k)  # type: ignore[arg-type]
            units = []
            for root in levels[cut - 1]:
                unit, todo = [], [root]
                while todo:
                    k = todo.pop()
                    unit.append(k)
                    todo.extend(children.get(k, []))
                units.append(sorted(unit, key=lambda k: (depth[k], str(k))))
            stages.append(units)
        out = []
        for units in stages:
            include = []
            for job in _pack(units, max_jobs, pack, key=lambda u: str(self._rebuilt_parent(u[0]) or "")):
                refs = sorted(job, key=lambda k: (depth[k], str(k)))
                inside = set(refs)
                parents = sorted({str(p) for k in refs if (p := self._rebuilt_parent(k)) is not None
                                  and p not in inside})
                first = self.items[refs[0]]
                reasons = sorted({self.items[k].reason for k in refs})
                include.append({"image": str(refs[0]),
                                "label": str(refs[0]) + (f" +{len(refs) - 1}" if len(refs) > 1 else ""),
                                "refs": " ".join(str(k) for k in refs), "parent": " ".join(parents),
                                "reason": first.reason if len(reasons) == 1 else ",".join(reasons),
                                "why": first.describe()[:200], "slug": matrix_slug(str(refs[0])),
                                "images": len(refs),
                                # rebuilt for patches: `bakery build --fresh` gives them a new created label
                                "fresh": " ".join(str(k) for k in refs
                                                  if any(r.kind == "patches" for r in self.items[k].reasons))})
            out.append({"include": include})
        return {"count": len(out), "levels": out, "rebuild": [str(i.key) for i in self.rebuild],
                "jobs": sum(len(stage["include"]) for stage in out)}

    def _rebuilt_parent(self, key: ImageKey) -> ImageKey | None:
        """The image's parent when it is built by bakery and rebuilt in this plan."""
        spec = self.items[key].spec
        pkey = spec.parent.key if spec is not None and spec.parent.kind == "bakery" else None
        return pkey if pkey is not None and pkey in self.items and self.items[pkey].rebuild else None


def _pack(units: list[list[ImageKey]], max_jobs: int, pack: int,
          key: Callable[[list[ImageKey]], str]) -> list[list[ImageKey]]:
    """Units into at most ``max_jobs`` jobs of about ``pack`` images or more, balanced by image count (the
    largest unit first into the lightest job). Units with the same ``key`` (parent) stay side by side."""
    total = sum(len(u) for u in units)
    if not units:
        return []
    jobs = max(1, min(max_jobs, len(units), -(-total // pack)))
    if jobs == len(units):
        return [list(u) for u in units]
    ordered = sorted(units, key=lambda u: (key(u), str(u[0])))
    if all(len(u) == 1 for u in units):  # a plain level: contiguous runs keep siblings together
        size, extra = divmod(len(ordered), jobs)
        out, i = [], 0
        for n in range(jobs):
            take = size + (1 if n < extra else 0)
            out.append([k for u in ordered[i:i + take] for k in u])
            i += take
        return out
    import heapq

    heap = [(0, n) for n in range(jobs)]
    bins: list[list[ImageKey]] = [[] for _ in range(jobs)]
    for unit in sorted(ordered, key=len, reverse=True):
        load, n = heapq.heappop(heap)
        bins[n].extend(unit)
        heapq.heappush(heap, (load + len(unit), n))
    return [b for b in bins if b]


# ------------------------------------------------------------------------------------------------ stores
class _Stores:
    """One store per artifact kind and worker thread for the first environment (a registry store holds one HTTP
    session, kept alive): what plan reads every image's current build through."""

    def __init__(self, project: Project, env: str):
        self._project = project
        self._env = env
        self._local = threading.local()
        self._lock = threading.Lock()
        self._made: list[ArtifactStore] = []
        self._tag_lists = TagLists()  # one tags request per repository for the whole plan

    def get(self, spec: ImageSpec) -> ArtifactStore:
        mine: dict[str, ArtifactStore] | None = getattr(self._local, "stores", None)
        if mine is None:
            mine = self._local.stores = {}
        kind = spec_kind(spec)  # an opaque key: which store serves this image is the store layer's decision
        store = mine.get(kind)
        if store is None:
            store = store_for(self._project, self._env, spec=spec, tag_lists=self._tag_lists,
                              client_options={"timeout": 15, "retries": 2, "backoff": 0.2})
            mine[kind] = store
            with self._lock:
                self._made.append(store)
        return store

    @property
    def requests(self) -> int:
        with self._lock:
            return sum(s.requests for s in self._made)


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def built_after(created: str | None, db_updated_at: dt.datetime) -> bool:
    """Whether an image whose ``created`` label is ``created`` was built after the DB of ``db_updated_at``.
    The label is to the second (``build._created_now``) and a DB's time is not: a build made in the very second
    the DB was updated counts as after it. Otherwise a nightly run within that second of a DB update would rebuild
    the same images again the next night, for fixes their build already had. A label with sub-seconds (another
    tool's) is compared as it is. No or an unreadable label: not after."""
    t = _parse_time(created)
    if t is None:
        return False
    return t >= (db_updated_at.replace(microsecond=0) if t.microsecond == 0 else db_updated_at)


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12] if digest else "(none)"


# ------------------------------------------------------------------------------------------------ the plan
def scope(fleet: Fleet, refs: Sequence[str]) -> list[ImageKey]:
    """The images a plan decides on: the named ones (all by default), their descendants and their ancestors
    (a named image is stale when a parent must be rebuilt; up-to-date ancestors are left out of the plan)."""
    keys = scope_named(fleet, refs)
    if refs:
        seen = set(keys)
        for k in list(keys):
            for a in fleet.ancestors(k):
                if a not in seen:
                    seen.add(a)
                    keys.append(a)
    return [s.key for s in fleet.ordered(keys)]


def scope_named(fleet: Fleet, refs: Sequence[str]) -> list[ImageKey]:
    """The named images and their descendants (what a scoped plan always shows)."""
    keys = [s.key for s in fleet.select(refs)]
    seen = set(keys)
    for k in list(keys):
        for d in fleet.descendants(k):
            if d not in seen:  # a set: list membership made scoping quadratic in the fleet's size
                seen.add(d)
                keys.append(d)
    return keys


def make_plan(project: Project, fleet: Fleet, refs: Sequence[str] = (), *, force: Iterable[str] = (),
              check_patches: bool = True, jobs: int = 8, now: dt.datetime | None = None) -> Plan:
    """Decide, for each image in scope, whether it must be rebuilt and why."""
    started = time.monotonic()
    keys = scope(fleet, refs)
    forced: set[ImageKey] = set()
    for ref in force:
        forced.update(fleet.resolve_ref(ref))
    items = {k: PlanItem(key=k, spec=fleet.specs[k]) for k in keys}
    context = set(keys)
    for k in keys:  # parents outside the scope: read their published digest too
        context.update(fleet.ancestors(k))
    stores = _Stores(project, project.config.first_env)
    upstream_refs = sorted({ref for k in keys if (ref := stores.get(fleet.specs[k]).upstream_ref(fleet.specs[k]))})

    stored_scans: dict[ImageKey, Any] = {}  # the scan store's result for each published image (patches)

    def fetch_current(k: ImageKey) -> tuple[ImageKey, ArtifactStore, Held | None, str]:
        store = stores.get(fleet.specs[k])
        try:
            held = store.held(k)
        except EnvironmentFailure:
            raise
        except BakeryError as exc:
            return k, store, None, f"cannot read the published image: {exc}"
        if check_patches and held is not None and held.image_id and store.scannable and k in items:
            stored_scans[k] = scan.load_stored(project, held.image_id)  # read here, while others wait on a registry
        return k, store, held, ""

    def fetch_upstream(ref: str) -> tuple[str, str, str]:
        try:
            return ref, resolve_upstream(project, ref)[1], ""
        except EnvironmentFailure:
            raise
        except BakeryError as exc:
            return ref, "", str(exc)

    currents: dict[ImageKey, Held | None] = {}
    upstream: dict[str, tuple[str, str]] = {}
    judges: dict[ImageKey, ArtifactStore] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        up_futs = [pool.submit(fetch_upstream, r) for r in upstream_refs]
        cur_futs = [pool.submit(fetch_current, k) for k in sorted(context, key=fleet.sort_key)]
        # every recipe is rendered while the registries answer: this thread's CPU is free until then
        recipes: dict[ImageKey, Any] = {}
        for k in keys:
            try:
                recipes[k] = render.render(project, fleet.specs[k])
            except BakeryError as exc:
                items[k].error = f"cannot render: {exc}"
        for fut in up_futs:
            ref, digest, err = fut.result()
            upstream[ref] = (digest, err)
        for cfut in cur_futs:
            k, store, cur, err = cfut.result()
            currents[k] = cur
            judges[k] = store
            if err and k in items:
                items[k].error = err
    requests = stores.requests + len(upstream_refs)

    # The published images' scans, for the `patches` reason.
    notes: list[str] = []
    if check_patches:
        notes += _check_patches(project, items, {k: c for k, c in currents.items() if judges[k].scannable}, now=now,
                                stored=stored_scans)

    rebuild: set[ImageKey] = set()
    judging = Judging(project=project, fleet=fleet, currents=currents, upstream=upstream, rebuild=rebuild)
    for level in fleet.levels(keys):
        for spec in level:
            item = items[spec.key]
            if item.error:
                continue
            judges[spec.key].judge(item, recipes.get(spec.key), judging)
            if spec.key in forced:
                item.reasons.append(Reason("forced", "named with --force"))
            item.reasons.sort(key=lambda r: REASONS.index(r.kind))
            if item.reasons:
                rebuild.add(spec.key)
    if refs:  # ancestors were decided on for their descendants' sake: shown only when they must be rebuilt
        named = set(scope_named(fleet, refs))
        items = {k: i for k, i in items.items() if k in named or k in rebuild or i.error}
    levels = [[s.key for s in level] for level in fleet.levels(rebuild)] if rebuild else []
    for i, level in enumerate(levels):
        for k in level:
            items[k].level = i
    plan = Plan(items=items, levels=levels, requests=requests, notes=notes)
    plan.seconds = time.monotonic() - started
    return plan


@dataclass
class Judging:
    """What plan knows when a store judges one image (:meth:`bakery.store.ArtifactStore.judge`)."""

    project: Project
    fleet: Fleet
    currents: dict[ImageKey, Held | None]  # what the first environment holds for each image in scope and parents
    upstream: dict[str, tuple[str, str]]  # upstream reference -> (digest now, error)
    rebuild: set[ImageKey]  # decided so far (parents first)

    def resolve_upstream(self, reference: str) -> str:
        """The digest an upstream reference resolves to now (a BakeryError when it cannot)."""
        return resolve_upstream(self.project, reference)[1]

    @staticmethod
    def fingerprint(recipe: Any, parent_digest: str) -> str:
        """What a build of ``recipe`` on ``parent_digest`` would be fingerprinted."""
        return render.fingerprint(recipe, parent_digest)

    def from_labels(self, item: PlanItem, recipe: Any) -> None:
        """The decision for builds that carry their recipe's fingerprint and their parent's digest as labels:
        definition, upstream, parent, patches."""
        _decide(self.project, self.fleet, item, recipe, self.currents, self.upstream, self.rebuild)


def _decide(project: Project, fleet: Fleet, item: PlanItem, recipe: Any, currents: dict[ImageKey, Held | None],
            upstream: dict[str, tuple[str, str]], rebuild: set[ImageKey]) -> None:
    spec = item.spec
    cur = currents.get(item.key)
    item.current = cur
    pkey = fleet.parent_key(spec)
    parent_now = ""
    if spec.parent.kind == "upstream":
        parent_now, err = upstream.get(spec.parent.reference, ("", "not resolved"))
        item.upstream_digest = parent_now
        if err:
            item.error = f"upstream parent: {err}"
            return
    elif pkey is not None:
        pcur = currents.get(pkey)
        parent_now = pcur.digest if pcur else ""
    if pkey is not None and pkey in rebuild:
        item.reasons.append(Reason("parent", f"parent {pkey} is rebuilt"))
    if cur is None:
        item.fingerprint = render.fingerprint(recipe, parent_now) if parent_now else ""
        item.reasons.append(Reason("definition", "never published"))
        return
    built_on = cur.labels.get(LABEL_BASE_DIGEST, "")
    published_fp = cur.labels.get(LABEL_FINGERPRINT, "")
    item.fingerprint = render.fingerprint(recipe, parent_now or built_on)
    if not published_fp or render.fingerprint(recipe, built_on) != published_fp:
        why = "no fingerprint label on the published image" if not published_fp else \
            f"recipe changed since {cur.build_tag} (template, variables or build context)"
        item.reasons.append(Reason("definition", why))
    if spec.parent.kind == "upstream":
        if parent_now and parent_now != built_on:
            item.reasons.append(Reason("upstream", f"{spec.parent.reference} moved {_short(built_on)} → "
                                                   f"{_short(parent_now)}"))
    elif pkey is not None and pkey not in rebuild:
        if not parent_now:
            item.notes.append(f"parent {pkey} is not published")
        elif parent_now != built_on:
            item.reasons.append(Reason("parent", f"parent {pkey} was republished since {cur.build_tag} "
                                                 f"({_short(built_on)} → {_short(parent_now)})"))
    if item.fixable:
        shown = ", ".join(item.fixable[:3]) + (f" (+{len(item.fixable) - 3} more)" if len(item.fixable) > 3 else "")
        item.reasons.append(Reason("patches", f"{len(item.fixable)} fixable finding(s) in {cur.build_tag}: {shown}"))


def _check_patches(project: Project, items: dict[ImageKey, PlanItem], currents: dict[ImageKey, Held | None],
                   *, now: dt.datetime | None, stored: dict[ImageKey, Any] | None = None) -> list[str]:
    """Fill ``vulns`` and ``fixable`` from the scan store; re-scan by digest when the result is older than the DB.
    ``stored``: the scan store's results already read for these images (by make_plan, as each image's build
    was read); the others are read here."""
    stored = stored or {}
    published = [(k, currents.get(k)) for k in items if currents.get(k) is not None and not items[k].error]
    if not published:
        return []
    try:
        sc = scan.scanner(project)
        db = scan.db_info(sc.cache_dir)
    except BakeryError as exc:
        return [f"patches not checked: {exc}"]
    if db is None:
        return [f"patches not checked: no vulnerability DB in {sc.cache_dir} (see `bakery scan-db`)"]
    try:
        db_sha = scan.db_sha256(project, db)
    except BakeryError as exc:
        return [f"patches not checked: {exc}"]

    def rescan(k: ImageKey, cur: Current) -> tuple[ImageKey, Any, str]:
        try:
            return k, scan.scan_image(project, cur.pinned, remote=True, sc=sc, now=now), ""
        except BakeryError as exc:
            return k, None, str(exc)

    results: list[tuple[ImageKey, Any, str]] = []
    todo: list[int] = []  # stored results older than the DB (or none): scanned again
    for k, cur in published:
        kept = stored[k] if k in stored else scan.load_stored(project, cur.image_id) if cur.image_id else None
        if kept is None or not scan.same_db(kept, db, db_sha, sc.version):
            todo.append(len(results))
        results.append((k, kept, ""))
    if todo:
        with ThreadPoolExecutor(max_workers=2) as pool:  # trivy serialises on its cache lock anyway
            for i, result in zip(todo, pool.map(lambda i: rescan(*published[i]), todo)):
                results[i] = result
    for k, result, err in results:
        item = items[k]
        cur = currents[k]
        assert cur is not None
        if result is None:
            item.notes.append(f"patches not checked: {err}")
            continue
        item.vulns = dict(result.counts)
        decision = scan.evaluate(project, result, spec=item.spec)
        ignored = {(f.id, f.package) for f, _ in decision.ignored}
        fixable = [f for f in result.findings if f.fixable and (f.id, f.package) not in ignored]
        if not fixable:
            continue
        if built_after(cur.labels.get(LABEL_CREATED), db.updated_at):
            item.notes.append(f"{len(fixable)} fixable finding(s), but {cur.build_tag} was built after the DB "
                              f"knew of the fixes: a rebuild would not pick them up")
            continue
        item.fixable = sorted({f"{f.id} in {f.package} {f.installed} (fixed in {f.fixed})" for f in fixable})
    return []
