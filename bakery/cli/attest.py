"""`bakery verify` and `bakery attestations`: the signed evidence a digest carries (bakery.evidence)."""

from __future__ import annotations

import sys

import click

from bakery.cli._common import Context, echo, emit_json, format_option, pass_ctx, table
from bakery.errors import EXIT_FAILED, InputError


@click.command("verify")
@click.argument("ref", metavar="IMAGE@DIGEST|REF")
@click.option("--env", "env", required=True, metavar="ENV", help="The environment whose registry and keys to use.")
@click.option("--key", "key_file", metavar="FILE", help="Verify with this PEM public key instead of the "
                                                         "environment's trusted_keys.")
@click.option("--max-scan-age", metavar="DURATION", help="Also fail when the newest signed scan is older "
                                                          "(e.g. 24h, 7d).")
@format_option("table", "json")
@pass_ctx
def verify_cmd(ctx: Context, ref: str, env: str, key_file: str | None, max_scan_age: str | None, fmt: str) -> None:
    """Verify the signed attestations of a digest, offline, with the configured public keys.

    Checks, from the registry alone: provenance, SBOM, scan and VEX (or what the environment's
    gates.require_attestations lists) each signed by a trusted key (environments.ENV.trusted_keys, or
    --key), each about this very digest; the newest signed scan passed its gate; and, beyond the first
    environment, a signed promotion into ENV (a digest copied there by hand has none). Exit 1 naming
    every failed check.

    \b
    Examples:
      bakery verify python:3.11 --env prod
      bakery verify 127.0.0.1:5003/bakery/python@sha256:… --env prod --format json
      bakery verify python:3.11-20260101.1 --env dev --key cosign.pub --max-scan-age 24h
    """
    from bakery import verify
    from bakery.config import parse_duration

    age = None
    if max_scan_age:
        try:
            age = parse_duration(max_scan_age)
        except ValueError as exc:
            raise InputError(f"--max-scan-age: {exc}") from None
    report = verify.verify_ref(ctx.project, ref, env, key_file=key_file, max_scan_age=age)
    if fmt == "json":
        emit_json(report.to_json())
    else:
        echo(f"{report.image}  ({env}, referrers via {report.listing})", err=True)
        table(["CHECK", "RESULT", "WHY"], [[c.kind, "ok" if c.passed else "FAIL", c.reason] for c in report.checks])
        echo("verified" if report.passed else "NOT verified: " + "; ".join(report.failures()))
    if not report.passed:
        sys.exit(EXIT_FAILED)


@click.command("attestations")
@click.argument("ref", metavar="IMAGE@DIGEST|REF")
@click.option("--env", "env", metavar="ENV", help="Environment (default: the first).")
@format_option("table", "json")
@pass_ctx
def attestations_cmd(ctx: Context, ref: str, env: str | None, fmt: str) -> None:
    """List what a digest carries next to it in the registry (nothing is verified: see `bakery verify`).

    \b
    Examples:
      bakery attestations python:3.11
      bakery attestations python:3.11 --env prod --format json
    """
    from bakery import verify

    env = env or ctx.project.config.first_env
    image, rows, how = verify.list_ref(ctx.project, ref, env)
    if fmt == "json":
        emit_json({"image": image, "env": env, "listing": how, "attestations": rows})
        return
    echo(f"{image}  ({env}, referrers via {how})", err=True)
    table(["KIND", "TYPE", "ARTIFACT", "CREATED", "KEYID"],
          [[r.get("kind") or "-", r.get("artifactType"), r["digest"][7:19], r.get("created") or "-",
            ",".join((k or "")[:16] for k in r.get("keyids") or []) or "-"] for r in rows])
    if not rows:
        echo("no attestations")


commands = [verify_cmd, attestations_cmd]
