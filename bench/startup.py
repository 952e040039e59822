"""Benchmark: start-up of short commands against `python3 -c pass` and `bakery --help`, in the same run.

    .venv/bin/python bench/startup.py [--repeat 15] [--importtime]

Each command runs as a user's does (a fresh interpreter, compiled bytecode) in a throw-away repository with
a bakery.yaml and the example fleet; medians of --repeat runs, interleaved so that load from other processes
hits every command alike (the machine is shared: absolute figures are measured under load, the ratios are
what to compare). Targets: `--help` < 60 ms, commands that load the project < 0.1 s. With --importtime,
the ten slowest imports of `bakery config` (`python -X importtime`, cumulative µs) are printed.
Repeat promotion and repeat scan through the CLI are in bench/promote.py and bench/scan.py.
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
BIN = Path(sys.executable).parent

COMMANDS = {
    "python3 -c pass": [sys.executable, "-c", "pass"],
    "bakery --help": [str(BIN / "bakery"), "--help"],
    "bakery status --help": [str(BIN / "bakery"), "status", "--help"],
    "bakery --version": [str(BIN / "bakery"), "--version"],
    "bakery config": [str(BIN / "bakery"), "config"],
    "bakery config --format json": [str(BIN / "bakery"), "config", "--format", "json"],
    "bakery list": [str(BIN / "bakery"), "list"],  # loads and validates every definition (kept outcomes)
    "bakery history": [str(BIN / "bakery"), "history"],  # opens the (empty) SQLite ledger
}
TARGETS = {"bakery --help": 0.060, "bakery status --help": 0.060, "bakery config": 0.100, "bakery list": 0.100,
           "bakery history": 0.100}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--importtime", action="store_true")
    args = ap.parse_args()
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "bakery")], check=True, env=env,
                   capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="bakery-bench-startup-"))
    try:
        shutil.copy(ROOT / "bakery.yaml", work / "bakery.yaml")
        shutil.copytree(ROOT / "base-images", work / "base-images")
        shutil.copytree(ROOT / "templates", work / "templates")
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for _ in range(args.repeat):
            for name, argv in COMMANDS.items():
                started = time.perf_counter()
                proc = subprocess.run(argv, cwd=work, env=env, capture_output=True)
                times[name].append(time.perf_counter() - started)
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr.decode()[-1000:]}")
        med = {name: statistics.median(t) for name, t in times.items()}
        base, help_ = med["python3 -c pass"], med["bakery --help"]
        print(f"medians of {args.repeat} (measured under load on a shared machine; compare the ratios):")
        ok = True
        for name, t in med.items():
            target = TARGETS.get(name)
            verdict = ""
            if target is not None:
                verdict = f"target < {target * 1000:.0f} ms: {'OK' if t < target else 'MISSED'}"
                ok = ok and t < target
            print(f"  {name:30s} {t * 1000:7.1f} ms  {t / base:5.1f}x python  {t / help_:5.2f}x --help  {verdict}")
        print(json.dumps({name: round(t, 4) for name, t in med.items()}))
        if args.importtime:
            proc = subprocess.run([sys.executable, "-X", "importtime", str(BIN / "bakery"), "config"], cwd=work,
                                  env=env, capture_output=True, text=True)
            rows = []
            for line in proc.stderr.splitlines():
                parts = line.split("|")
                if len(parts) == 3 and parts[1].strip().isdigit():
                    rows.append((int(parts[1]), parts[2].rstrip()))
            print("slowest imports of `bakery config` (cumulative µs):")
            for us, name in sorted(rows, reverse=True)[:10]:
                print(f"  {us:8d}  {name}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
