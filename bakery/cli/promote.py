"""`bakery promote`, `rollback`, `history`, `status`: moving digests between environments, and the record."""

from __future__ import annotations

import sys
import time

import click

from bakery.cli._common import Context, echo, emit_json, format_option, pass_ctx, table
from bakery.errors import EXIT_ENVIRONMENT, EXIT_FAILED, InputError


def _short(digest: str | None) -> str:
    return digest[7:19] if digest and digest.startswith("sha256:") else (digest or "-")


def _time(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else "-"


@click.command("promote")
@click.argument("ref", metavar="REF|IMAGE@DIGEST|BUILD_TAG")
@click.option("--to", "to_env", required=True, metavar="ENV", help="Target environment.")
@click.option("--from", "from_env", metavar="ENV", help="Source environment (default: the one before --to).")
@click.option("--dry-run", is_flag=True, help="Evaluate the gates and print; change nothing.")
@click.option("--approved-by", metavar="WHO", help="The approver (recorded; required where gates list approvers).")
@click.option("--git-tag/--no-git-tag", default=None,
              help="Also create the annotated git tag ENV/NAME/BUILD_TAG (default: per environment).")
@format_option("table", "json")
@pass_ctx
def promote_cmd(ctx: Context, ref: str, to_env: str, from_env: str | None, dry_run: bool,
                approved_by: str | None, git_tag: bool | None, fmt: str) -> None:
    """Copy an image's exact digest to the next environment, behind its gates.

    REF is NAME:VERSION (the newest build of that version in the source), NAME:BUILD_TAG (or just
    BUILD_TAG when one image of the fleet has it), or NAME@sha256:…. Manifests and blobs are copied registry to registry by digest (no rebuild, no
    Docker daemon); the build tag and the environment's aliases are written only once everything is
    there. A failed gate exits 1 with nothing copied; promoting what the target already holds is a
    no-op.

    \b
    Examples:
      bakery promote python:3.11 --to staging
      bakery promote python:3.11-20260101.1 --to prod --approved-by alice
      bakery promote python@sha256:… --to prod --dry-run --format json
    """
    from bakery.promote import promote

    if not dry_run:
        ctx.repository  # noqa: B018 - refuses to change registries on the built-in defaults
    result = promote(ctx.project, ref, to_env, from_env=from_env, dry_run=dry_run, approved_by=approved_by,
                     git_tag=git_tag, on_progress=_progress())
    if fmt == "json":
        emit_json(result.to_json())
    else:
        echo(f"{result.image}  {result.build_tag}  {_short(result.digest)}  {result.from_env} → {result.to_env}",
             err=True)
        if result.gates:
            table(["GATE", "RESULT", "WHY"],
                  [[g.name, "pass" if g.passed else "FAIL", g.reason] for g in result.gates])
        line = {"promoted": f"promoted to {result.target} as {', '.join(result.tags)}",
                "up-to-date": result.message, "refused": f"refused: {result.message}",
                "would-promote": f"dry run: would copy {result.source} to {result.target} as "
                                 f"{', '.join(result.tags)}",
                "would-refuse": "dry run: would refuse" + (f": {result.message}" if result.message else "")}
        echo(line.get(result.action, result.action))
        if result.copy:
            c = result.copy
            echo(f"copied {c['blobs_copied']} blobs ({c['bytes_copied']} bytes), mounted {c['blobs_mounted']}, "
                 f"skipped {c['blobs_skipped']}; {c['manifests_copied']} manifests in {result.seconds:.2f}s",
                 err=True)
        if result.git_tag:
            echo(f"git tag {result.git_tag}", err=True)
    if not result.ok:
        sys.exit(EXIT_FAILED)


@click.command("rollback")
@click.argument("ref", metavar="REF")
@click.option("--env", "env", required=True, metavar="ENV", help="Environment whose aliases move back.")
@click.option("--to", "to", metavar="DIGEST|BUILD_TAG", help="What to point at (default: the previous promotion).")
@format_option("table", "json")
@pass_ctx
def rollback_cmd(ctx: Context, ref: str, env: str, to: str | None, fmt: str) -> None:
    """Point ENV's alias tags back at the previously promoted digest (or the one named). Nothing is deleted.

    REF is NAME:VERSION (or one of its build tags); --to must be a build of that same version. Rolling back
    twice goes further back. An alias shared by all versions (e.g. `staging`) moves only if it pointed at
    this version's current build.

    \b
    Examples:
      bakery rollback python:3.11 --env prod
      bakery rollback python:3.11 --env prod --to 3.11-20260101.1
    """
    from bakery.promote import rollback

    ctx.repository  # noqa: B018 - refuses to change registries on the built-in defaults
    result = rollback(ctx.project, ref, env, to=to)
    if fmt == "json":
        emit_json(result.to_json())
    elif result.action == "up-to-date":
        echo(f"{result.image} in {env} already points at {result.build_tag} ({_short(result.digest)})")
    else:
        moved = ", ".join(result.tags) or result.target
        echo(f"{result.image} in {env}: {moved} → {result.build_tag} ({_short(result.digest)}), "
             f"was {_short(result.previous_digest)}")
    if result.left and fmt != "json":
        echo(f"left alone: {', '.join(result.left)} (shared by every version; it points at another version's "
             f"build, promoted after this one)", err=True)


@click.command("history")
@click.argument("ref", metavar="REF", required=False)
@click.option("--env", "env", metavar="ENV", help="Only events into this environment.")
@click.option("--all", "show_all", is_flag=True,
              help="Also the build tag reservations and promotion intents (the write-ahead records).")
@format_option("table", "json")
@pass_ctx
def history_cmd(ctx: Context, ref: str | None, env: str | None, show_all: bool, fmt: str) -> None:
    """List the ledger's events (publish, gate, promote, rollback), oldest first.

    REF is NAME or NAME:VERSION[-VARIANT]; without it, every image. A promotion recorded by recovery (the
    process stopped between writing the tags and recording them) shows "recovered".
    """
    from bakery.ledger import open_ledger

    project = ctx.project
    if env:
        project.config.env(env)
    image = None
    digest = None
    if ref:
        from bakery.ref import FleetRef

        r = FleetRef.parse(ref, require_tag_or_digest=False)
        image, digest = r.image, r.digest
    events = open_ledger(project).events(image=image, env=env)
    if not show_all:
        events = [e for e in events if e.kind not in ("reserve", "intent")]
    if digest:
        events = [e for e in events if e.digest == digest]
    if ref and not events:
        from bakery.store import known_to_fleet, unknown_image_message

        if not open_ledger(project).events(image=image) and not known_to_fleet(project, ref):
            raise InputError(unknown_image_message(ref))
    if fmt == "json":
        emit_json({"events": [e.to_json() for e in events]})
        return
    rows = []
    for e in events:
        if e.kind == "gate":
            failed = [g["name"] for g in e.gates if not g.get("passed")]
            result = "passed" if e.passed else f"failed: {', '.join(failed)}"
        elif e.kind == "rollback":
            result = f"was {_short(e.details.get('previous_digest'))}"
        elif e.details.get("recovered"):
            result = "recovered"
        else:
            result = ""
        rows.append([_time(e.time), e.kind, e.image, e.build_tag, _short(e.digest),
                     f"{e.from_env or '-'}→{e.to_env}", e.actor, result])
    table(["TIME (UTC)", "EVENT", "IMAGE", "BUILD TAG", "DIGEST", "FROM→TO", "ACTOR", "RESULT"], rows)


@click.command("status")
@click.argument("ref", metavar="[REF]", required=False)
@click.option("--env", "env", metavar="ENV", help="Only this environment.")
@format_option("table", "json")
@pass_ctx
def status_cmd(ctx: Context, ref: str | None, env: str | None, fmt: str) -> None:
    """What runs where: per image and environment, the build tag, digest, age, vulnerabilities and gate state.

    Read from the registries and the ledger; when they disagree the registry wins (and the row says so).
    An unreachable registry is shown with the ledger's view and makes the exit status 3.
    """
    from bakery.status import status

    rows = status(ctx.project, ref, env)
    unreachable = any(r.unreachable for r in rows)
    if fmt == "json":
        emit_json({"images": [r.to_json() for r in rows]})
        if unreachable:
            sys.exit(EXIT_ENVIRONMENT)
        return
    out = []
    for r in rows:
        vulns = "-"
        if r.vulnerabilities is not None:
            vulns = " ".join(f"{k[0]}:{v}" for k, v in r.vulnerabilities.items() if v) or "none"
        out.append([r.image, r.env, r.build_tag or "-", _short(r.digest), r.age, vulns, r.gate, r.note])
    table(["IMAGE", "ENV", "BUILD TAG", "DIGEST", "AGE", "VULNS", "GATE", "NOTE"], out)
    if unreachable:
        what = ("refused our credentials" if all(r.failure == "authentication" for r in rows if r.failure)
                else "is unreachable")
        echo(f"error: a registry {what}; its rows show the ledger's view only", err=True)
        sys.exit(EXIT_ENVIRONMENT)


def _progress():
    """One line per copy state change on stderr (``eu-west-1 ami-1: available (12s)``)."""
    started = time.monotonic()

    def show(where: str, what: str, state: str) -> None:
        echo(f"  {where} {what}: {state} ({time.monotonic() - started:.0f}s)", err=True)

    return show


commands = [promote_cmd, rollback_cmd, history_cmd, status_cmd]
