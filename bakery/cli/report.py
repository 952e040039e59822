"""`bakery report html`: the fleet dashboard as a static site."""

from __future__ import annotations

from pathlib import Path

import click

from bakery.cli._common import Context, echo, emit_json, pass_ctx


@click.group("report")
def report_group() -> None:
    """Reports about the whole fleet."""


@report_group.command("html")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Directory to write the site into: new, empty, or a site bakery wrote before (its pages are replaced).")
@click.option("--ledger-only", is_flag=True,
              help="Show what the ledger says each environment runs, without asking the registries.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: one line per page written; json: the pages and the model behind them.")
@pass_ctx
def html_cmd(ctx: Context, out: Path, ledger_only: bool, fmt: str) -> None:
    """Write the fleet dashboard: a static site that works from file:// and GitHub Pages.

    \b
    index.html       the fleet matrix: one row per image, one column per environment (build tag, digest,
                     age, age of the last scan, findings by severity with fixable counts, gate,
                     attestations), what is pending between environments, the latest drift report of
                     each environment (`bakery drift`) and the nightly runs
    images/*.html    per image: lineage with digests, ledger timeline, vulnerability trend over the
                     recorded nightly runs, the latest scan's failing/unfixed/ignored findings, the last
                     rebuild reasons and where it is deployed
    runs/*.html      one page per nightly run (from .bakery/nightly/report-*.json)

    What runs where comes from the registries (as `bakery status`); a registry that cannot be reached is
    noted on the page and its column shows the ledger's view. Exit 3 when the ledger cannot be read.

    \b
    Examples:
      bakery report html --out site && xdg-open site/index.html
      bakery report html --out site --ledger-only     # no registry traffic
    """
    from bakery import dashboard

    project = ctx.project
    model = dashboard.gather(project, live=not ledger_only)
    pages = dashboard.render(model, out)
    if fmt == "json":
        emit_json({"out": str(out), "pages": [str(p) for p in pages], "model": model.to_json()})
        return
    for note in model.notes:
        echo(f"note: {note}", err=True)
    echo(f"wrote {len(pages)} pages to {out} ({len(model.images)} images, {len(model.envs)} environments, "
         f"{len(model.runs)} nightly runs): open {out / 'index.html'}")


commands = [report_group]
