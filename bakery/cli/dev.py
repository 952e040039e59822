"""`bakery dev up|down|status`: the local registries (one per environment + an upstream mirror)."""

from __future__ import annotations

import click

from bakery.cli._common import echo, emit_json, format_option, pass_ctx, table


def _progress():
    """Progress lines on stderr unless -q was given (also when stderr is not a terminal: CI logs)."""
    if click.get_current_context().find_root().params.get("quiet"):
        return None
    return lambda message: echo(f"dev: {message}", err=True)


def _show(st, fmt: str) -> None:
    if fmt == "json":
        emit_json(st.as_dict())
        return
    rows = [[r.name, r.address, "up" if r.running else "down", r.pid or r.container or "", r.mode or "",
             "basic" if r.auth else "", "" if r.repositories is None else r.repositories] for r in st.registries]
    table(["REGISTRY", "ADDRESS", "STATE", "PID/CONTAINER", "MODE", "AUTH", "REPOSITORIES"], rows)
    echo(f"base image: {st.base_image or '(not in the mirror; run `bakery dev up`)'}")


@click.group("dev")
def dev() -> None:
    """Local dev stack: registries on 127.0.0.1 for the mirror and every environment."""


@dev.command("up")
@click.option("--no-base", is_flag=True, help="Do not create/push the upstream base image into the mirror.")
@format_option("table", "json")
@pass_ctx
def up_cmd(ctx, no_base: bool, fmt: str) -> None:
    """Start the registries (idempotent) and put the upstream base image into the mirror."""
    from bakery import devstack

    st = devstack.up(ctx.project, progress=_progress(), base=not no_base)
    _show(st, fmt)


@dev.command("down")
@click.option("--purge", is_flag=True, help="Also delete the registries' data.")
@pass_ctx
def down_cmd(ctx, purge: bool) -> None:
    """Stop the registries that `bakery dev up` started."""
    from bakery import devstack

    stopped = devstack.down(ctx.project, purge=purge)
    echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running", err=True)


@dev.command("status")
@format_option("table", "json")
@pass_ctx
def status_cmd(ctx, fmt: str) -> None:
    """Show each registry: address, up/down, pid, number of repositories, and the mirror's base image."""
    from bakery import devstack

    _show(devstack.status(ctx.project), fmt)


commands = [dev]
