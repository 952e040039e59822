"""Benchmark: promoting the example Python image dev → staging with bakery, against the naive way.

    .venv/bin/python bench/promote.py [--port-base 5310] [--repeats 3] [--json]

One run, one throw-away stack on --port-base..+3 (mirror, dev, staging with basic auth, prod), the example
fleet's python image baked and pushed to dev by `bakery build python:VERSION --push --no-scan`. Then:

  bakery   `bakery promote python:VERSION --to staging` (CLI, Python start-up included) into a fresh
           namespace of the staging registry: registry-to-registry by digest, nothing through the daemon
           (the round's new bakery.yaml is validated once before, untimed: the configuration cache);
  skopeo   `skopeo copy --all --preserve-digests` dev → staging, the staging registry emptied first (the
           floor: a Go binary, no start-up cost to speak of, no gates, no ledger);
  naive    `docker pull` dev + `docker tag` + `docker push` staging (another fresh namespace), with the
           image and its parent removed from the daemon first, as on a fresh CI runner;
  repeat   a second promotion whose blobs (and manifest) the target already has: the same image pushed
           to dev under a new build tag, promoted again (CLI and in-process through `bakery.promote.promote`).

Targets: bakery ≤ 1.0 × skopeo (cold, CLI against CLI); bakery ≤ 0.25 × naive; repeat through the CLI
≤ 0.15 s. Medians of --repeats rounds, every figure measured in the same run (the machine is shared: the
absolute figures are measured under load, the ratios are what to compare). Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets as pysecrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from bakery import devstack  # noqa: E402
from bakery.config import load_project  # noqa: E402

BIN = Path(sys.executable).parent
USER_ENV, PASSWORD_ENV = "BENCH_REGISTRY_USER", "BENCH_REGISTRY_PASSWORD"


CPU: dict[int, float] = {}  # id(CompletedProcess) -> the child's CPU time (user + system), load-independent-ish


def run(args: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[id(proc)] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, proc


def check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        sys.exit(f"bench/promote.py: {what} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def write_config(work: Path, ports: dict[str, int], namespace: str) -> None:
    creds = {"username_env": USER_ENV, "password_env": PASSWORD_ENV}
    cfg = {
        "environments": {
            "dev": {"registry": f"127.0.0.1:{ports['dev']}/bench", "gates": {"require_previous": False}},
            "staging": {"registry": f"127.0.0.1:{ports['staging']}/{namespace}", "credentials": creds,
                        "aliases": ["{version}", "staging"], "gates": {"scan": False}},
            "prod": {"registry": f"127.0.0.1:{ports['prod']}/bench", "credentials": creds, "gates": {"scan": False}},
        },
        "mirrors": {"docker.io": f"127.0.0.1:{ports['mirror']}"},
        "dev_stack": {"ports": ports, "auth": {"staging": creds, "prod": creds}},
    }
    (work / "bakery.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def remove_local(client, image_ids: list[str]) -> None:
    for image_id in image_ids:
        try:
            client.api.remove_image(image_id, force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def fresh_staging(project) -> None:
    """Restart the staging registry on an empty store, so no round profits from an earlier one's blobs."""
    for member in devstack._members(project):
        if member.name == "staging":
            devstack._stop(member, devstack._read_state(member) or {})
            shutil.rmtree(member.directory / "data", ignore_errors=True)
    devstack.up(project, base=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port-base", type=int, default=5310)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--keep", action="store_true",
                    help="leave the stack and the project behind (for profiling); prints how to reach them")
    args = ap.parse_args()

    import docker

    client = docker.from_env(timeout=900)
    ports = {"mirror": args.port_base, "dev": args.port_base + 1, "staging": args.port_base + 2,
             "prod": args.port_base + 3}
    work = Path(tempfile.mkdtemp(prefix="bakery-bench-promote-"))
    shutil.copytree(REPO / "base-images", work / "base-images")
    shutil.copytree(REPO / "templates", work / "templates")
    (work / ".gitignore").write_text(".bakery/\n")
    write_config(work, ports, "ns0")
    for a in (["init", "-q"], ["add", "-A"], ["-c", "user.name=bench", "-c", "user.email=b@example.invalid",
                                               "commit", "-qm", "bench"]):
        subprocess.run(["git", *a], cwd=work, check=True, capture_output=True)
    user, password = "bench", pysecrets.token_hex(12)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAKERY_") or k == "BAKERY_CACHE_DIR"}
    # A user's bakery runs from compiled bytecode: compile once, and let the CLI read (not recompile) it.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "bakery")], check=True, env=env,
                   capture_output=True)
    env.update({USER_ENV: user, PASSWORD_ENV: password})
    os.environ.update({USER_ENV: user, PASSWORD_ENV: password})  # devstack and in-process promote read them
    project = load_project(work / "bakery.yaml", cwd=work, environ=env)
    auth = {"username": user, "password": password}
    rounds = []
    try:
        print(f"stack on {args.port_base}-{args.port_base + 3}, work dir {work}", file=sys.stderr)
        devstack.up(project, progress=lambda m: print(f"  {m}", file=sys.stderr))
        version = sorted(yaml.safe_load((work / "base-images" / "python.yaml").read_text())["versions"])[0]
        ref = f"python:{version}"
        print(f"baking {ref} and pushing it to dev", file=sys.stderr)
        _, proc = run([str(BIN / "bakery"), "build", "base:12", ref, "--push", "--no-scan", "--format", "json"], cwd=work,
                      env=env)
        check(proc, f"bakery build {ref}")
        results = {r["ref"]: r for r in json.loads(proc.stdout)["results"]}
        built = results[ref]
        local_ids = [r["image_id"] for r in results.values() if r.get("image_id")]
        dev_repo = built["repository"]  # 127.0.0.1:P/bench/python
        size = sum(int(x.get("size", 0)) for x in json.loads(subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{dev_repo}@{built['digest']}"],
            capture_output=True, text=True, check=True).stdout).get("layers", []))

        from bakery.promote import promote

        for i in range(args.repeats):
            ns = f"r{i}{pysecrets.token_hex(3)}"
            write_config(work, ports, ns)
            # the new bakery.yaml validated once (untimed), as the first command after any edit does: the
            # promotions below run on the cached configuration, as a pipeline's do
            check(run([str(BIN / "bakery"), "config", "--format", "json"], cwd=work, env=env)[1], "bakery config")
            fresh_staging(project)
            # skopeo: the same copy by digest into an emptied registry, then the repeat (blobs already there).
            skopeo = ["skopeo", "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false",
                      "--dest-tls-verify=false", "--dest-creds", f"{user}:{password}",
                      f"docker://{dev_repo}@{built['digest']}",
                      f"docker://127.0.0.1:{ports['staging']}/skopeo{ns}/python:{built['build_tag']}"]
            skopeo_s, proc = run(skopeo, cwd=work, env=env)
            check(proc, "skopeo copy")
            skopeo_cpu = CPU[id(proc)]
            skopeo_repeat_s, proc = run(skopeo, cwd=work, env=env)
            check(proc, "skopeo copy (repeat)")

            # naive: pull, tag, push, from a daemon that does not have the image.
            fresh_staging(project)
            remove_local(client, local_ids)
            naive_target = f"127.0.0.1:{ports['staging']}/naive{ns}/python"
            t0 = time.perf_counter()
            client.api.pull(dev_repo, built["build_tag"])
            client.api.tag(f"{dev_repo}:{built['build_tag']}", naive_target, built["build_tag"])
            naive_digest = None
            for item in client.api.push(naive_target, built["build_tag"], stream=True, decode=True,
                                        auth_config=auth):
                if "error" in item:
                    sys.exit(f"bench/promote.py: docker push failed: {item['error']}")
                naive_digest = (item.get("aux") or {}).get("Digest") or naive_digest
            naive_s = time.perf_counter() - t0
            local_ids.append(client.api.inspect_image(f"{dev_repo}:{built['build_tag']}")["Id"])

            fresh_staging(project)
            # bakery: registry to registry, by digest (last, so that the repeat below finds its blobs).
            bakery_s, proc = run([str(BIN / "bakery"), "promote", ref, "--to", "staging", "--format", "json"],
                                 cwd=work, env=env)
            check(proc, "bakery promote")
            bakery_cpu = CPU[id(proc)]
            promoted = json.loads(proc.stdout)
            assert promoted["action"] == "promoted" and promoted["digest"] == built["digest"]

            # repeat: the same image under a new dev build tag; the target has every blob and the manifest.
            new_tag = f"{built['build_tag']}{i + 2}"
            subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
                            "--dest-tls-verify=false", f"docker://{dev_repo}@{built['digest']}",
                            f"docker://{dev_repo}:{new_tag}"], check=True, capture_output=True)
            repeat_cli_s, proc = run([str(BIN / "bakery"), "promote", f"python:{new_tag}", "--to", "staging",
                                      "--format", "json"], cwd=work, env=env)
            check(proc, "bakery promote (repeat)")
            repeat_cpu = CPU[id(proc)]
            rep = json.loads(proc.stdout)
            assert rep["action"] == "promoted" and rep["copy"]["bytes_copied"] == 0, rep["copy"]
            new_tag2 = f"{new_tag}0"
            subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
                            "--dest-tls-verify=false", f"docker://{dev_repo}@{built['digest']}",
                            f"docker://{dev_repo}:{new_tag2}"], check=True, capture_output=True)
            p = load_project(work / "bakery.yaml", cwd=work, environ=env)
            t0 = time.perf_counter()
            api = promote(p, f"python:{new_tag2}", "staging")
            repeat_api_s = time.perf_counter() - t0
            assert api.action == "promoted" and api.copy and api.copy["bytes_copied"] == 0
            rounds.append({"bakery_copy_s": promoted["copy"]["seconds"], "bakery_in_cli_s": promoted["seconds"],
                           "bakery_s": bakery_s, "naive_s": naive_s, "skopeo_s": skopeo_s,
                           "skopeo_repeat_s": skopeo_repeat_s, "repeat_cli_s": repeat_cli_s,
                           "bakery_cpu_s": bakery_cpu, "skopeo_cpu_s": skopeo_cpu, "repeat_cli_cpu_s": repeat_cpu,
                           "repeat_api_s": repeat_api_s, "bytes": promoted["copy"]["bytes_copied"],
                           "naive_same_digest": naive_digest == built["digest"]})
            print(f"  round {i + 1}: bakery {bakery_s:.2f}s (copy {promoted['copy']['seconds']:.2f}s, "
                  f"promote {promoted['seconds']:.2f}s), skopeo {skopeo_s:.2f}s, naive {naive_s:.2f}s, repeat {repeat_cli_s:.2f}s CLI / "
                  f"{repeat_api_s:.3f}s in-process", file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept: cd {work} && {USER_ENV}={user} {PASSWORD_ENV}={password} {BIN / 'bakery'} promote "
                  f"python:TAG --to staging   (stop it: {BIN / 'bakery'} dev down --purge)", file=sys.stderr)
        else:
            devstack.down(project, purge=True)
            remove_local(client, local_ids if "local_ids" in locals() else [])
            shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(r[k] for r in rounds) for k in ("bakery_s", "naive_s", "repeat_cli_s",
                                                                  "repeat_api_s", "skopeo_s", "skopeo_repeat_s",
                                                                  "bakery_copy_s", "bakery_in_cli_s", "bakery_cpu_s",
                                                                  "skopeo_cpu_s", "repeat_cli_cpu_s")}
    ratio = med["bakery_s"] / med["naive_s"]
    ratio_skopeo = med["bakery_s"] / med["skopeo_s"]
    figures = {
        "image": ref, "compressed_layers_bytes": size, "rounds": rounds, "median": med,
        "ratio_bakery_to_naive": round(ratio, 3), "ratio_bakery_to_skopeo": round(ratio_skopeo, 3),
        "repeat_cli_s": round(med["repeat_cli_s"], 3),
        "repeat_in_process_s": round(med["repeat_api_s"], 3),
        "naive_kept_digest": all(r["naive_same_digest"] for r in rounds),
        "targets": {"skopeo_ratio<=1.0": ratio_skopeo <= 1.0, "ratio<=0.25": ratio <= 0.25,
                    "repeat_cli<=0.15s": med["repeat_cli_s"] <= 0.15},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{ref} ({size / 1e6:.1f} MB compressed), medians of {len(rounds)} rounds:")
        print("  (measured under load on a shared machine: compare the ratios)")
        print(f"  bakery promote dev→staging      {med['bakery_s']:.2f} s  (promote() inside the CLI "
              f"{med['bakery_in_cli_s']:.2f} s, of which the copy {med['bakery_copy_s']:.2f} s; the rest is start-up "
              f"and exit)")
        print(f"  skopeo copy --all               {med['skopeo_s']:.2f} s")
        print(f"  ratio bakery / skopeo           {ratio_skopeo:.2f}    (target ≤ 1.0)")
        print(f"  docker pull + tag + push        {med['naive_s']:.2f} s")
        print(f"  ratio bakery / naive            {ratio:.3f}   (target ≤ 0.25)")
        print(f"  repeat, blobs already there     {med['repeat_cli_s']:.3f} s CLI, {med['repeat_api_s']:.3f} s "
              f"in-process, skopeo {med['skopeo_repeat_s']:.3f} s   (target ≤ 0.15 s CLI)")
        print(f"  CPU time (user + system)        bakery {med['bakery_cpu_s']:.2f} s, skopeo {med['skopeo_cpu_s']:.2f} s; "
              f"repeat {med['repeat_cli_cpu_s']:.3f} s (the share of the wall time a busy machine does not inflate)")
        print(f"  naive kept the digest           {figures['naive_kept_digest']}")
    return 0 if all(figures["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
