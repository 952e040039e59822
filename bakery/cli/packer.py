"""`bakery gc` (retention for AMIs and container build tags) and `bakery amis` (what each environment runs)."""

from __future__ import annotations

import click

from bakery.cli._common import Context, echo, emit_json, format_option, pass_ctx, table


@click.command("gc")
@click.option("--env", "env", required=True, metavar="ENV", help="Environment to clean up.")
@click.option("--keep", type=int, required=True, metavar="N", help="Builds to keep per image version (>= 1).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--image", metavar="NAME[:VERSION]", help="Only this image family or version.")
@format_option("table", "json")
@pass_ctx
def gc_command(ctx: Context, env: str, keep: int, dry_run: bool, image: str | None, fmt: str) -> None:
    """Deregister old AMIs (and delete their snapshots) and delete old container build tags.

    Keeps the N newest builds per image version in ENV, and never removes a build that any
    environment currently runs or that a later environment was promoted from. A container build
    tag goes by deleting its manifest digest (the registry deletes by digest only), so it stays when
    a kept tag (an alias such as `12` or `staging`) points to the same digest.

    \b
    Examples:
      bakery gc --env dev --keep 3 --dry-run
      bakery gc --env dev --keep 3 --format json
    """
    from bakery.gc import gc

    report = gc(ctx.project if dry_run else ctx.repository, env, keep, dry_run, image=image)
    if fmt == "json":
        emit_json(report.to_json())
        return
    verb = "would delete" if dry_run else "deleted"
    rows = [[i.image, i.kind, i.ref, i.where, i.build_tag,
             (verb if i.action == "delete" else "keep"), i.reason] for i in report.items]
    if rows:
        table(["IMAGE", "KIND", "REF", "WHERE", "BUILD TAG", "ACTION", "WHY"], rows)
    n = len(report.deleted)
    echo(f"{env}: {verb} {n} item{'s' if n != 1 else ''}, kept {len(report.kept)} (keep {keep} per version)",
         err=True)


@click.command("amis")
@click.argument("ref", required=False, metavar="[NAME[:VERSION]]")
@click.option("--env", "env", metavar="ENV", help="Only this environment.")
@format_option("table", "json")
@pass_ctx
def amis_command(ctx: Context, ref: str | None, env: str | None, fmt: str) -> None:
    """The AMIs each environment currently runs (from the ledger), per region.

    \b
    Examples:
      bakery amis
      bakery amis ami-debian:12 --env staging --format json
    """
    from bakery import ami

    records = ami.running(ctx.project, ref, env)
    if fmt == "json":
        emit_json([r.to_json() for r in records])
        return
    rows = []
    for r in records:
        for region, ami_id in sorted(r.amis.items()):
            rows.append([r.image, r.env, region, ami_id, r.build_tag, r.source_ami, r.event_kind])
    if not rows:
        echo("no AMIs recorded in the ledger", err=True)
        return
    table(["IMAGE", "ENV", "REGION", "AMI", "BUILD TAG", "SOURCE AMI", "BY"], rows)


commands = [gc_command, amis_command]
