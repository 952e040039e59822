"""`bakery plan`, `bakery nightly` and `bakery init`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bakery.cli._common import Context, echo, emit_json, pass_ctx, table, write_json


@click.command("plan")
@click.argument("refs", nargs=-1, metavar="[REF]...")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "github-matrix"]), default="table",
              show_default=True, help="table for people, json for machines, github-matrix for a workflow's "
                                      "`strategy.matrix` (one `include` list per level).")
@click.option("--force", multiple=True, metavar="REF", help="Rebuild this image (and its descendants) anyway.")
@click.option("--no-patches", is_flag=True, help="Do not consult the scan store (skip the `patches` reason).")
@click.option("--max-levels", type=click.IntRange(1, 32), default=None,
              help="github-matrix: the workflow's number of stage jobs; deeper levels fold into the last stage "
                   "(its entries build their subtree, level by level, inside the job).")
@click.option("--max-jobs", type=click.IntRange(1, 256), default=256, show_default=True,
              help="github-matrix: most entries in one matrix (GitHub's limit is 256); wider levels are packed.")
@click.option("--pack", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="github-matrix: put at least this many images into one job when a level has enough (fewer, "
                   "longer jobs: each job pays the runner's set-up once).")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Registry requests in parallel.")
@click.option("--json-out", type=click.Path(dir_okay=False, writable=True, path_type=Path), metavar="FILE",
              help="Also write the plan as JSON (what --format json prints) to FILE: one plan, one pass over the "
                   "registries, for both (the nightly workflow's matrix and its plan.json).")
@pass_ctx
def plan_cmd(ctx: Context, refs: tuple[str, ...], fmt: str, force: tuple[str, ...], no_patches: bool,
             max_levels: int | None, max_jobs: int, pack: int, jobs: int, json_out: Path | None) -> None:
    """Decide which images must be rebuilt, and why, from the registries and the scan store only.

    \b
    Reasons, in order:
      definition  the recipe (template, variables, build context) differs from the published image's
                  fingerprint, or the image was never published
      upstream    the upstream parent tag resolves to a new digest (the image's base.digest label differs)
      patches     the published image has findings with a fixed version (re-scanned by digest when the
                  stored result is older than the DB)
      parent      a parent is rebuilt (the whole subtree follows) or was republished
      forced      named with --force
    otherwise "up to date". REF is NAME or NAME:VERSION[-VARIANT]; descendants of the named images are
    planned too. Exit 1 when an image could not be checked.

    \b
    Examples:
      bakery plan                                   # the whole fleet
      bakery plan python --format json
      bakery plan --format github-matrix --max-levels 6 --pack 4   # 6 stage jobs, ~4 images a job
      bakery plan --format github-matrix --json-out plan.json     # the matrix, and the plan it came from
    """
    from bakery.definitions import load_fleet
    from bakery.plan import make_plan

    project = ctx.project
    fleet = load_fleet(project)
    plan = make_plan(project, fleet, refs, force=force, check_patches=not no_patches, jobs=jobs)
    if json_out is not None:
        write_json(json_out, plan.to_json())
    if fmt == "json":
        emit_json(plan.to_json())
    elif fmt == "github-matrix":
        click.echo(json.dumps(plan.github_matrix(max_levels, max_jobs=max_jobs, pack=pack), separators=(",", ":")))
    else:
        rows = []
        for item in plan.items.values():
            rows.append([str(item.key), "-" if item.level is None else str(item.level),
                         "rebuild" if item.rebuild else ("error" if item.error else "-"), item.reason,
                         item.current.build_tag if item.current else "-", item.describe()])
        rows.sort(key=lambda r: (r[1] == "-", r[1], r[0]))
        table(["IMAGE", "LEVEL", "ACTION", "REASON", "PUBLISHED", "WHY"], rows)
        for note in plan.notes:
            echo(f"note: {note}", err=True)
        echo(f"{len(plan.rebuild)} of {len(plan.items)} images to rebuild in {len(plan.levels)} level(s) "
             f"(planned in {plan.seconds:.2f}s)", err=True)
    if plan.errors:
        sys.exit(1)


@click.command("nightly")
@click.argument("refs", nargs=-1, metavar="[REF]...")
@click.option("--dry-run", is_flag=True, help="Plan and report; build nothing.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Images built at once (default: build.jobs in bakery.yaml).")
@click.option("--promote-to", metavar="ENV", help="Then promote each rebuilt image through the gates up to ENV.")
@click.option("--force", multiple=True, metavar="REF", help="Rebuild this image (and its descendants) anyway.")
@click.option("--wait", is_flag=True, help="If another nightly run holds the lock, wait for it instead of exiting.")
@click.option("--summarize", "summarize_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              metavar="DIR", help="Build no image: write the report from DIR/plan.json and the "
                                  "`bakery build --format json` outputs under DIR (the workflow's summary job).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True, help="How to print the report (it is also written under .bakery/nightly/).")
@pass_ctx
def nightly_cmd(ctx: Context, refs: tuple[str, ...], dry_run: bool, jobs: int | None, promote_to: str | None,
                force: tuple[str, ...], wait: bool, summarize_dir: Path | None, fmt: str) -> None:
    """Plan → build in DAG order → scan → publish to dev → optionally promote → report.

    One image failing stops its descendants only. The report lists what was rebuilt, why, the
    vulnerability counts before and after, and what failed; it is written to .bakery/nightly/last.{json,md}
    and appended to $GITHUB_STEP_SUMMARY when that is set (a --dry-run's report goes to
    .bakery/nightly/dry-run.{json,md} only). A run stopped by an environment failure, even while planning,
    still writes its (aborted) report.

    \b
    The `notify:` webhooks of bakery.yaml are called for a failed run and for new fixable CRITICAL/HIGH
    findings in what the last environment runs; a webhook that is down is one warning line, never a failure.

    \b
    Exit codes: 0 everything planned was rebuilt (or nothing to do), 1 something failed — or another
    nightly run on this configuration holds the lock (the message names its pid, user and start time;
    --wait waits instead), 2 bad input, 3 registry/daemon/scanner unavailable.
    """
    from bakery.definitions import load_fleet
    from bakery.nightly import run, summarize
    from bakery.progress import Progress

    project = ctx.project
    if summarize_dir is not None:
        plan_file = summarize_dir / "plan.json"
        results = sorted(p for p in summarize_dir.rglob("*.json") if p.name != "plan.json")
        report = summarize(project, plan_file, results)
    else:
        fleet = load_fleet(project)
        say = (lambda m: echo(m, err=True)) if not ctx.quiet else None
        with Progress(enabled=not ctx.quiet and fmt == "table") as progress:
            report = run(project, fleet, refs, force=force, dry_run=dry_run, jobs=jobs, promote_to=promote_to,
                         wait=wait, progress=progress, say=say)
    if fmt == "json":
        emit_json(report.to_json())
    elif fmt == "markdown":
        echo(report.to_markdown())
    else:
        shown = [o for o in report.outcomes if o.reason != "up to date" or o.failed]
        if shown:
            from bakery.nightly import _counts

            table(["IMAGE", "REASON", "RESULT", "BUILD TAG", "BEFORE", "AFTER", "NOTE"],
                  [[o.ref, o.reason, o.result, o.tag_shown, _counts(o.before), _counts(o.after),
                    o.error or o.why] for o in shown])
        for problem in report.problems:
            echo(f"failed: {problem}", err=True)
        echo(report.headline())
    if not dry_run:
        from bakery import notify

        warn = lambda m: echo(m, err=True)  # noqa: E731
        notify.notify(project, "nightly_failed", lambda: notify.nightly_message(report), warn=warn)
        notify.notify(project, "prod_vulnerability", lambda: notify.prod_vulnerability_message(project), warn=warn)
    if not report.ok:
        sys.exit(1)


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dev-registry", default="127.0.0.1:5001/bakery", show_default=True, metavar="HOST[:PORT]/NS",
              help="The first environment's registry.")
@click.option("--mirror", default="127.0.0.1:5000", show_default=True, metavar="HOST[:PORT]",
              help="Where docker.io images are pulled from (the dev stack's mirror).")
@click.option("--force", is_flag=True, help="Write into a non-empty directory (existing files are kept).")
def init_cmd(directory: Path, dev_registry: str, mirror: str, force: bool) -> None:
    """Scaffold a new bakery repository in DIRECTORY: bakery.yaml, one definition, one template and the
    GitHub workflows (ci, nightly, promote). `bakery dev up` then `bakery build --all` builds it at once."""
    from bakery.scaffold import scaffold

    written = scaffold(directory, dev_registry=dev_registry, mirror=mirror, force=force)
    for p in written:
        echo(f"created {p}")
    echo(f"\nnext: cd {directory} && bakery dev up && bakery build --all")


commands = [plan_cmd, nightly_cmd, init_cmd]
