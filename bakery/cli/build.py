"""`bakery build`: render, bake, scan and push."""

from __future__ import annotations

import sys

import click

from bakery.cli._common import Context, emit_json, format_option, pass_ctx, table


@click.command("build")
@click.argument("refs", nargs=-1, metavar="[REF]...")
@click.option("--all", "all_", is_flag=True, help="Build the whole fleet.")
@click.option("--changed", is_flag=True, help="Build only what `bakery plan` says must be rebuilt.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Images built at once (default: build.jobs in bakery.yaml).")
@click.option("--push/--no-push", default=None,
              help="Push to the first environment's registry under an immutable build tag (default: build.push).")
@click.option("--scan/--no-scan", default=True, show_default=True,
              help="Scan each image after baking; an image failing the gate is not pushed.")
@click.option("--rescan", is_flag=True, help="Scan again even when a result for the image is stored.")
@click.option("--no-cache", is_flag=True, help="Do not use the Docker layer cache.")
@click.option("--engine", type=click.Choice(["auto", "buildkit", "classic"]), default=None,
              help="Docker build engine (default: build.engine, $BAKERY_BUILD_ENGINE; auto = BuildKit where the "
                   "daemon supports it, else the classic builder).")
@click.option("--secret", "secret_specs", multiple=True, metavar="id=ID,env=VAR|id=ID,src=FILE",
              help="Expose a secret to `RUN --mount=type=secret,id=ID` (BuildKit; repeatable; adds to "
                   "build.secrets). The value never reaches the image, the output or the ledger.")
@click.option("--fresh", "fresh_refs", multiple=True, metavar="REF",
              help="Give REF (among the images built) a new created label even when its inputs did not change, "
                   "so it is published as a new build: a rebuild for patches (repeatable; the nightly workflow "
                   "passes the plan's matrix.fresh; --changed does it by itself).")
@format_option("table", "json")
@pass_ctx
def build_cmd(ctx: Context, refs: tuple[str, ...], all_: bool, changed: bool, jobs: int | None,
              push: bool | None, scan: bool, rescan: bool, no_cache: bool, engine: str | None,
              secret_specs: tuple[str, ...], fresh_refs: tuple[str, ...], fmt: str) -> None:
    """Bake images, parents before children, independent ones in parallel.

    Each image's FROM is pinned to the exact digest of its parent; every image carries OCI labels and a
    fingerprint of its inputs. A failed build stops its descendants only. REF is NAME or
    NAME:VERSION[-VARIANT]. Unchanged inputs (recipe, parent, clean revision) rebuilt from a warm cache give
    the published image itself: nothing new is published ("reused" in --format json).

    \b
    Examples:
      bakery build --all                  # the whole fleet, pushed to dev
      bakery build python:3.11 --no-push  # one image, local only
      bakery build --changed              # only what changed since the last publish
      bakery build --all --format json    # per image: ref, image id, digest, tags, status, reused, timings
      bakery build app --secret id=pip,env=PIP_TOKEN   # RUN --mount=type=secret,id=pip reads it
      bakery build --all --engine classic # the Docker SDK's classic builder (no RUN --mount)
    """
    from bakery.build import BuildOptions, build, parse_secret
    from bakery.definitions import load_fleet
    from bakery.progress import Progress

    if refs and all_:
        raise click.UsageError("name images or pass --all, not both")
    if all_ and changed:
        raise click.UsageError("--all and --changed cannot be combined (--changed builds only what must be rebuilt)")
    if not refs and not all_ and not changed:
        raise click.UsageError("name the images to build (REF...), or pass --all or --changed")
    build_secrets = [parse_secret(text) for text in secret_specs]
    project = ctx.project
    fleet = load_fleet(project)
    specs = fleet.select(refs)
    fresh: frozenset = frozenset()
    if changed:
        from bakery.nightly import changed_specs

        specs, fresh = changed_specs(project, fleet, refs)
        if not specs:
            click.echo("nothing changed: every image is up to date", err=True)
            if fmt == "json":
                emit_json({"results": [], "ok": True})
            return
    if fresh_refs:
        chosen = {spec.key for spec in specs}
        named = set()
        for ref in fresh_refs:
            keys = {spec.key for spec in fleet.select((ref,))}
            outside = sorted(str(k) for k in keys - chosen)
            if outside:
                raise click.BadParameter(f"{ref!r} names {', '.join(outside)}, not among the images built",
                                         param_hint="--fresh")
            named |= keys
        fresh = frozenset(fresh) | frozenset(named)
    options = BuildOptions(jobs=jobs or project.config.build.jobs,
                           push=project.config.build.push if push is None else push,
                           scan=scan, rescan=rescan, no_cache=no_cache, engine=engine, secrets=build_secrets,
                           fresh=fresh)
    with Progress(enabled=not ctx.quiet) as progress:
        results = build(project, fleet, specs, options, progress)
    ok = all(r.ok for r in results)
    if fmt == "json":
        emit_json({"results": [r.to_json() for r in results], "ok": ok})
    else:
        rows = []
        for r in results:
            vulns = ""
            if r.scan:
                counts = r.scan.get("counts") or {}
                vulns = " ".join(f"{k[0]}:{v}" for k, v in counts.items() if v)
                vulns = vulns or "none"
            rows.append([str(r.key), r.status.value, r.build_tag or "-", r.digest[:19] or r.image_id[:19],
                         vulns or "-", f"{r.seconds:.1f}s", r.error or ""])
        table(["IMAGE", "STATUS", "BUILD TAG", "DIGEST", "VULNS", "TIME", "PROBLEM"], rows)
    if not ok:
        sys.exit(1)


commands = [build_cmd]
