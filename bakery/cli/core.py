"""Commands over definitions and recipes: config, schema, list, render."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bakery.cli._common import Context, echo, emit_json, format_option, pass_ctx, table


@click.command("config")
@format_option("yaml", "json", default="yaml")
@pass_ctx
def config_cmd(ctx: Context, fmt: str) -> None:
    """Print the effective configuration (defaults < bakery.yaml < BAKERY_* variables), secrets masked.

    \b
    Environment overrides use double underscores for nesting:
      BAKERY_SCANNER__TIMEOUT=120   BAKERY_ENVIRONMENTS__DEV__REGISTRY=host:5000/team
    and shortcuts: BAKERY_TRIVY, BAKERY_LEDGER, BAKERY_PACKER, BAKERY_JOBS, BAKERY_BUILD_ENGINE,
    BAKERY_DB_REPOSITORY.
    """
    from bakery.configview import effective

    data = effective(ctx.project.config)
    if fmt == "json":
        emit_json(data)
    else:
        import yaml

        source = str(ctx.project.config_file) if ctx.project.config_file else "(built-in defaults)"
        echo(f"# effective configuration; file: {source}")
        echo(yaml.safe_dump(data, sort_keys=False).rstrip())


@click.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of a definition file (base-images/*.yaml), for editors and CI."""
    from bakery.definitions import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@click.command("list")
@click.argument("refs", nargs=-1, metavar="[REF]...")
@format_option("table", "json")
@pass_ctx
def list_cmd(ctx: Context, refs: tuple[str, ...], fmt: str) -> None:
    """Show image families, versions, variants, parents and tags (validates every definition).

    TAGS are the alias tags `bakery build` pushes beside the immutable build tag in the first environment.

    REF is NAME (all its versions) or NAME:VERSION[-VARIANT].
    """
    from bakery.definitions import load_fleet
    from bakery.ledger import now
    from bakery.tags import image_aliases

    fleet = load_fleet(ctx.project)
    specs = fleet.select(refs)
    depth = {s.key: i for i, level in enumerate(fleet.levels()) for s in level}
    first_env, today = ctx.project.config.first_env, now().date()
    rows = [{
        "ref": str(s.key), "name": s.key.name, "version": s.key.version, "variant": s.key.variant,
        "parent": s.parent.reference, "parent_kind": s.parent.kind,
        "tags": image_aliases(ctx.project, s, first_env, today),
        "builder": s.builder, "template": s.template, "level": depth[s.key], "file": s.source_file,
    } for s in specs]
    if fmt == "json":
        emit_json(rows)
        return
    table(["IMAGE", "PARENT", "LEVEL", "BUILDER", "TAGS", "FILE"],
          [[r["ref"], r["parent"], r["level"], r["builder"], ", ".join(r["tags"]), r["file"]] for r in rows])


@click.command("render")
@click.argument("refs", nargs=-1, metavar="[REF]...")
@click.option("--out", "out_arg", type=click.Path(file_okay=False),
              help="Directory to write to (default: .bakery/rendered). Each recipe directory is written into a "
                   "fresh temporary directory and swapped in; nothing else in DIR is touched.")
@click.option("--check", "check_arg", type=click.Path(file_okay=False),
              help="Do not write; exit 1 with a diff when DIR differs from what would be rendered.")
@pass_ctx
def render_cmd(ctx: Context, refs: tuple[str, ...], out_arg: str | None, check_arg: str | None) -> None:
    """Render definitions into recipes: NAME/VERSION[-VARIANT]/Dockerfile (and *.pkr.hcl).

    Output is deterministic: the same definitions and templates give byte-identical files.
    Templates are untrusted input: they render in Jinja's immutable sandbox, within 10 s and 8 MiB per
    recipe, and read only files inside the repository (README: Security model).
    REF is NAME (all its versions) or NAME:VERSION[-VARIANT]; none means the whole fleet.

    \b
    Examples:
      bakery render                       # everything into .bakery/rendered/
      bakery render python:3.11 --out recipes/
      bakery render --check recipes/      # CI: fail when recipes were edited by hand
    """
    from bakery import render
    from bakery.definitions import load_fleet

    from bakery.errors import InputError

    for flag, value in (("--out", out_arg), ("--check", check_arg)):
        if value is not None and not value.strip():
            raise InputError(f"{flag}: an empty path; name a directory (e.g. {flag} recipes/)")
    out = Path(out_arg) if out_arg is not None else None
    check_dir = Path(check_arg) if check_arg is not None else None
    if out and check_dir:
        raise click.UsageError("--out and --check cannot be combined")
    project = ctx.project
    fleet = load_fleet(project)
    specs = fleet.select(refs)
    if check_dir is not None:
        diff = render.check(project, specs, check_dir, whole=not refs)
        if diff:
            sys.stdout.writelines(diff)
            echo(f"error: {check_dir}: recipes differ from the definitions ({len(specs)} checked); "
                 f"run `bakery render --out {check_dir}` (and remove what no image renders)", err=True)
            sys.exit(1)
        echo(f"{len(specs)} recipes in {check_dir} match the definitions", err=True)
        return
    target = out or project.rendered_dir
    recipes = render.render_all(project, specs, target)
    for r in recipes:
        echo(str(render.output_dir(target, r.spec)))
    echo(f"rendered {len(recipes)} recipes into {target}", err=True)


commands = [config_cmd, schema_cmd, list_cmd, render_cmd]
