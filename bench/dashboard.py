"""Benchmark: `bakery report html` over a synthetic fleet (target: 500 images × 3 environments in under 2 s,
no page over 1 MB).

Generates a temporary project: a SQLite ledger with, per image, N builds published to dev and promoted through
staging and prod (gate and promote events), a stored scan per build (40 findings each), and R nightly JSON
reports listing every image. Then times, in-process (imports done before the clock starts):

* gather: the model from the ledger, scan store and reports (``--ledger-only``: no registry traffic);
* render: the model written as the static site (index, one page per image, one per run);
* the total, wall and CPU time (judged on CPU: this machine is shared), and the largest page against 1 MB;
* references measured in the same run: ``json.dumps`` of the same model, and a plain Jinja render of a bare
  one-row-per-cell table of the same matrix (what the cheapest HTML of the matrix costs here).

Usage: .venv/bin/python bench/dashboard.py [--images 500] [--builds 4] [--runs 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET_S = 2.0
MAX_PAGE = 1_000_000
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
SEV = ("CRITICAL", "HIGH", "MEDIUM", "LOW")


def make_project(root: Path, images: int, builds: int, runs: int) -> None:
    from bakery.config import load_project
    from bakery.ledger import Event, SqliteLedger
    from bakery.scan import Finding, ScanResult, save

    root.mkdir(parents=True)
    (root / "bakery.yaml").write_text("environments:\n  dev: {registry: 127.0.0.1:5999/b}\n"
                                      "  staging: {registry: 127.0.0.1:5998/b}\n  prod: {registry: 127.0.0.1:5997/b}\n")
    (root / "base-images").mkdir()
    project = load_project(root / "bakery.yaml", cwd=root)
    led = SqliteLedger(project.state_dir / "ledger.db")
    led._db.execute("BEGIN")
    t0 = NOW - dt.timedelta(days=60)
    for i in range(images):
        image = f"family{i // 5:03d}:{i % 5}.0"
        for b in range(builds):
            n = i * 100 + b
            digest = f"sha256:{n:064x}"
            findings = [Finding(id=f"CVE-2026-{k:05d}", package=f"pkg{k}", installed="1.0",
                                fixed="1.1" if k % 3 else "", severity=SEV[k % 4], title=f"a flaw in pkg{k}")
                        for k in range(40 - b * 5)]
            result = ScanResult(image=f"x@{digest}", image_id=f"sha256:{n + 10**9:064x}", digest=digest,
                                trivy_version="0.59.1", db_updated_at=NOW, scanned_at=NOW - dt.timedelta(hours=b),
                                findings=findings)
            save(project, result)
            when = t0 + dt.timedelta(days=b * 10)
            tag = f"{i % 5}.0-202610{b + 10:02d}.1"
            led.record(Event(kind="publish", image=image, digest=digest, build_tag=tag, from_env=None, to_env="dev",
                             time=when, scan=result.summary(), actor="ci"))
            for k, env in enumerate(("staging", "prod")):
                if b == builds - 1 and env == "prod":
                    continue  # the newest build is not in prod yet
                at = when + dt.timedelta(days=k + 1)
                led.record(Event(kind="gate", image=image, digest=digest, build_tag=tag, from_env="dev", to_env=env,
                                 time=at, details={"passed": True}, actor="alice"))
                led.record(Event(kind="promote", image=image, digest=digest, build_tag=tag, from_env="dev",
                                 to_env=env, time=at, actor="alice"))
    led._db.execute("COMMIT")
    led.close()
    d = project.state_dir / "nightly"
    d.mkdir(parents=True)
    for r in range(runs):
        started = NOW - dt.timedelta(days=runs - r)
        rows = [{"ref": f"family{i // 5:03d}:{i % 5}.0", "reason": "up to date", "why": "", "status": "up to date",
                 "vulns_before": {s: (runs - r + i) % 7 for s in SEV}} for i in range(images)]
        (d / f"report-{started:%Y%m%dT%H%M%SZ}.json").write_text(json.dumps(
            {"started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "summary": "nothing to do", "ok": True,
             "images": rows}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--builds", type=int, default=4)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated project and site")
    args = ap.parse_args()

    import jinja2

    from bakery import dashboard
    from bakery.config import load_project

    tmp = Path(tempfile.mkdtemp(prefix="bakery-bench-dashboard-", dir=args.tmpdir))
    try:
        t = time.perf_counter()
        make_project(tmp / "p", args.images, args.builds, args.runs)
        print(f"generated {args.images} images × 3 environments, {args.builds} builds each, {args.runs} nightly "
              f"reports in {time.perf_counter() - t:.1f}s")
        os.environ["BAKERY_NOW"] = NOW.isoformat()
        gathers, renders, totals, cpus, dumps, bare = [], [], [], [], [], []
        bare_tpl = jinja2.Environment(autoescape=True).from_string(
            "<table>{% for i in images %}<tr><th>{{ i.image }}</th>{% for c in i.cells.values() %}<td>{{ c.build_tag }}"
            " {{ c.digest }} {{ c.counts }}</td>{% endfor %}</tr>{% endfor %}</table>")
        pages: list[Path] = []
        for _ in range(args.repeat):
            project = load_project(tmp / "p" / "bakery.yaml", cwd=tmp / "p")
            c0 = time.process_time()
            t0 = time.perf_counter()
            model = dashboard.gather(project, now=NOW, live=False)
            t1 = time.perf_counter()
            pages = dashboard.render(model, tmp / "site")
            t2 = time.perf_counter()
            cpus.append(time.process_time() - c0)
            gathers.append(t1 - t0)
            renders.append(t2 - t1)
            totals.append(t2 - t0)
            t3 = time.perf_counter()
            json.dumps(model.to_json())
            dumps.append(time.perf_counter() - t3)
            t4 = time.perf_counter()
            (tmp / "bare.html").write_text(bare_tpl.render(images=model.images))
            bare.append(time.perf_counter() - t4)
        biggest = max(pages, key=lambda p: p.stat().st_size)
        total = statistics.median(totals)
        size = biggest.stat().st_size
        print(f"pages: {len(pages)} ({sum(p.stat().st_size for p in pages) / 1e6:.1f} MB in all)")
        print(f"gather (ledger, scan store, reports): {statistics.median(gathers):.3f}s")
        print(f"render (write the site):              {statistics.median(renders):.3f}s")
        cpu = statistics.median(cpus)
        print(f"total:                                {total:.3f}s wall, {cpu:.3f}s CPU (target < {TARGET_S:.0f}s, "
              f"judged on CPU: the wall time on a shared machine counts other processes too)")
        print(f"largest page: {biggest.relative_to(tmp / 'site')} {size / 1e6:.3f} MB (target < 1 MB)")
        print(f"reference json.dumps(model):          {statistics.median(dumps):.3f}s "
              f"(total = {total / statistics.median(dumps):.1f}×)")
        print(f"reference bare Jinja matrix table:    {statistics.median(bare):.3f}s "
              f"(render = {statistics.median(renders) / statistics.median(bare):.1f}×)")
        ok = cpu < TARGET_S and size < MAX_PAGE
        print("PASS" if ok else "FAIL", "(medians of", args.repeat, "runs; measured on a shared machine)")
        if args.keep:
            print(f"kept: {tmp}")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
