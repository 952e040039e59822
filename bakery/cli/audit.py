"""`bakery audit`: the registries and the ledger, compared."""

from __future__ import annotations

import sys

import click

from bakery.cli._common import Context, echo, emit_json, format_option, pass_ctx, table
from bakery.errors import EXIT_FAILED


@click.command("audit")
@click.argument("ref", metavar="[REF]", required=False)
@click.option("--env", "env", metavar="ENV", help="Only this environment.")
@format_option("table", "json")
@pass_ctx
def audit_cmd(ctx: Context, ref: str | None, env: str | None, fmt: str) -> None:
    """List every disagreement between the registries and the ledger; exit 1 when there is any.

    \b
    moved                 a build tag names another digest than the ledger recorded or reserved
    unrecorded            a build tag the ledger has no record of (pushed or copied outside bakery)
    unrecorded-promotion  a promotion moved the tags but was not recorded (`bakery promote` or
                          `bakery status` records it from its write-ahead intent)
    conflict              the ledger holds two digests for one build tag
    missing               the build the ledger says an environment runs is not in its registry
    alias                 a version alias points at another digest than the ledger's current build

    REF is NAME or NAME:VERSION[-VARIANT]; without it, every image in the ledger. Run it in CI after
    promotions: exit 0 means the registries and the ledger tell the same story. An unreachable
    registry exits 3.

    \b
    Examples:
      bakery audit
      bakery audit python:3.11 --env prod --format json
    """
    from bakery.audit import audit

    found = audit(ctx.project, ref, env)
    if fmt == "json":
        emit_json({"ok": not found, "disagreements": [d.to_json() for d in found]})
    elif found:
        table(["KIND", "IMAGE", "ENV", "TAG", "REGISTRY", "LEDGER"],
              [[d.kind, d.image, d.env, d.tag, d.registry or "-", d.ledger or "-"] for d in found])
        for d in found:
            echo(f"{d.kind}: {d.message}", err=True)
    else:
        echo("registries and ledger agree", err=True)
    if found:
        sys.exit(EXIT_FAILED)


commands = [audit_cmd]
