"""`bakery scan` (scan an image and apply the gate) and `bakery scan-db` (build/push an offline trivy DB)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from bakery.cli._common import Context, echo, err_console, pass_ctx


def _is_image(target: str) -> bool:
    return "/" in target or "@" in target or target.startswith("sha256:")


def _local_exists(target: str) -> bool:
    try:
        from bakery.scan import _inspect_local

        _inspect_local(target)
        return True
    except Exception:
        return False


def _spec_for_labels(project, image: str):
    """The definition an image was baked from (its bakery labels), for per-definition policy; None if unknown."""
    from bakery.scan import _inspect_local
    from bakery.terms import LABEL_NAME, LABEL_VARIANT, LABEL_VERSION

    try:
        labels = _inspect_local(image).labels
    except Exception:  # not an image in the local daemon: the scan itself says what is wrong with it
        return None
    if LABEL_NAME not in labels or not project.definitions_dir.is_dir():
        return None  # an image not from this fleet: the global policy
    from bakery.model import ImageKey

    key = ImageKey(labels[LABEL_NAME], labels.get(LABEL_VERSION, ""), labels.get(LABEL_VARIANT) or None)
    # a fleet that does not load raises its problems (exit 2): the image's own policy is then unknown, and the
    # global one in its place would be a silent change of gate
    return _spec(project, key)


def _spec(project, key):
    """``load_fleet(project).specs.get(key)``, from the validated-fleet cache when the repository is unchanged
    (bakery.speccache: no YAML, no pydantic on a repeat scan)."""
    from bakery import speccache

    def load(p):
        from bakery.definitions import load_fleet

        return load_fleet(p)

    return speccache.spec_for(project, key, load)


def _check_reference(target: str) -> None:
    """An image reference (it has '/' or '@') by the Docker grammar: exit 2 before the daemon, a registry or the
    scanner is asked anything."""
    if _is_image(target):
        from bakery.errors import InputError
        from bakery.validation import reference_problem

        problem = reference_problem(target)
        if problem:
            raise InputError(problem)


def resolve_target(project, target: str, env: str | None, remote: bool | None):
    """TARGET → (image reference to scan, remote?, ImageSpec or None).

    ``IMAGE[@DIGEST]`` (contains '/' or '@', or exists in the daemon) is scanned as given; ``repo@sha256:…``
    from its registry unless ``--local``. Otherwise TARGET is a definition ``NAME:VERSION`` and its latest
    published build in ENV (default: the first environment) is scanned by digest.
    """
    _check_reference(target)
    if _is_image(target) or _local_exists(target):
        is_remote = ("@sha256:" in target and "/" in target) if remote is None else remote
        if is_remote and "@sha256:" in target:
            from bakery.scan import require_pushed

            require_pushed(project, target)
        spec = None if is_remote else _spec_for_labels(project, target)
        return target, is_remote, spec
    from bakery import speccache
    from bakery.errors import InputError
    from bakery.publish import latest

    if not project.definitions_dir.is_dir():
        raise InputError(f"{target!r} is not an image in the docker daemon, and there are no definitions "
                         f"({project.rel(project.definitions_dir)}/) to read it as NAME:VERSION")
    # NAME:VERSION[-VARIANT] of the fleet as validated before (bakery.speccache); any other form, a changed
    # repository or an unknown image goes through the full load, its resolution and its messages
    spec = speccache.exactly_named(project, target)
    if spec is None:
        from bakery.definitions import load_fleet

        fleet = speccache.load_and_store(project, load_fleet)
        try:
            keys = fleet.resolve_ref(target)
        except InputError as err:
            raise InputError(f"{target!r} is not an image in the docker daemon, nor a definition: {err}") from None
        if len(keys) != 1:
            raise InputError(f"{target!r} names {len(keys)} images ({', '.join(map(str, keys))}); give "
                             f"NAME:VERSION[-VARIANT]")
        spec = fleet.get(keys[0])
    keys = [spec.key]
    env_name = env or project.config.first_env
    # REF → the newest published build in ENV, scanned by digest from the registry
    published = latest(project, keys[0], env_name)
    if published is None:
        raise InputError(f"{keys[0]} has no published build in {env_name} (run `bakery build {keys[0]}` first, "
                         f"or give a local image)")
    return published.pinned, True if remote is None else remote, spec


@click.command("scan")
@click.argument("target", metavar="REF|IMAGE[@DIGEST]")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "sarif", "markdown"]), default="table",
              show_default=True, help="table for people, json for machines, sarif for code scanning, markdown for "
                                      "$GITHUB_STEP_SUMMARY.")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the report to FILE (appended when FILE is $GITHUB_STEP_SUMMARY).")
@click.option("--sbom", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write a CycloneDX SBOM of the image (made by trivy).")
@click.option("--rescan", is_flag=True, help="Scan again even if this image was scanned with the same DB.")
@click.option("--remote/--local", "remote", default=None,
              help="Scan from the registry (--image-src remote) or from the docker daemon. Default: remote for "
                   "repo@sha256:…, else local.")
@click.option("--env", "env", metavar="ENV", help="For a definition REF: the environment whose latest build is "
                                                  "scanned (default: the first).")
@pass_ctx
def scan_cmd(ctx: Context, target: str, fmt: str, output: Path | None, sbom: Path | None, rescan: bool,
             remote: bool | None, env: str | None) -> None:
    """Scan an image with trivy and apply the policy gate (exit 1 when it fails, 3 when the scan cannot run).

    \b
    TARGET is a local image (name:tag or ID), a pushed image repo@sha256:…, or a definition NAME:VERSION
    (its latest build in the first environment). Results are kept by image ID under .bakery/scans/:
    the same image with the same DB is served from there unless --rescan.
    """
    from bakery import reports
    from bakery.errors import GateFailed
    from bakery.scan import gate, scanner

    project = ctx.project
    _check_reference(target)  # bad input is exit 2 even when trivy is missing (exit 3)
    sc = scanner(project)  # fails closed (exit 3) before anything else when trivy is missing or too old
    if not ctx.quiet:
        click.echo(f"scanner: {sc.describe()}", err=True)
    image, is_remote, spec = resolve_target(project, target, env, remote)
    result, decision = gate(project, image, remote=is_remote, spec=spec, rescan=rescan, sbom=sbom)
    text = reports.render(fmt, result, decision)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        mode = "a" if summary and Path(summary).resolve() == output.resolve() else "w"
        with output.open(mode) as fh:
            fh.write(text)
        err_console().print(f"{fmt} report written to {output}")
        if fmt != "table":
            sys.stdout.write(reports.table(result, decision))
    else:
        sys.stdout.write(text)
    if sbom is not None:
        err_console().print(f"CycloneDX SBOM written to {sbom}")
    if not decision.passed:
        raise GateFailed(f"scan gate failed for {result.image}: {decision.reason()}")


@click.group("scan-db")
def scan_db() -> None:
    """Make an offline trivy vulnerability DB from an advisory YAML file (air-gapped setups, demo, tests)."""


@scan_db.command("build")
@click.option("--advisories", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE", help="Advisory YAML (see tests/fixtures/advisories.yaml).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Trivy cache dir to write db/ into (default: scanner.cache_dir; with --push and no --cache-dir "
                   "the DB is only pushed, so that trivy fetches it from the registry).")
@click.option("--push", "push", metavar="HOST[:PORT]/REPO:TAG",
              help="Push the DB as the OCI artifact `trivy --db-repository` pulls.")
@click.option("--insecure/--tls", default=None, help="Plain HTTP for --push (default: on loopback hosts).")
@pass_ctx
def scan_db_build(ctx: Context, advisories: Path, cache_dir: Path | None, push: str | None,
                  insecure: bool | None) -> None:
    """Write a trivy DB (db/trivy.db + metadata.json) from the advisory FILE, and/or push it to a registry.

    \b
    A helper for air-gapped setups, the demo and the tests: trivy cannot download its DB here.
      bakery scan-db build --advisories tests/fixtures/advisories.yaml
      bakery scan-db build --advisories FILE --push 127.0.0.1:5000/trivy-db:2
      then scanner.db_repository: 127.0.0.1:5000/trivy-db:2 (or BAKERY_DB_REPOSITORY)
    """
    import tempfile

    from bakery.errors import InputError
    from bakery.ref import Ref
    from bakery.registries import client_for_host
    from bakery.scan import db_info
    from bakery.trivydb import build_db, push_db

    target_ref = None
    if push:
        try:
            target_ref = Ref.parse(push, require_registry=True)
        except InputError as exc:
            raise InputError(f"--push: expected HOST[:PORT]/REPO:TAG, got {push!r} ({exc})") from None
        if target_ref.digest:
            raise InputError(f"--push: expected HOST[:PORT]/REPO:TAG, got {push!r} (a digest cannot be pushed to)")
        target_ref = target_ref.with_tag(target_ref.tag or "2")
    project = ctx.project
    with tempfile.TemporaryDirectory(prefix="bakery-trivydb-") as tmp:
        if cache_dir is None and target_ref is None:
            cache_dir = project.path(project.config.scanner.cache_dir)
        target = cache_dir or Path(tmp)
        db_dir = build_db(advisories, target)
        info = db_info(target)
        assert info is not None
        if cache_dir is not None:
            echo(f"vulnerability DB written to {db_dir} (UpdatedAt {info.updated_at.isoformat()})")
        if target_ref is not None:
            client = client_for_host(project, target_ref.registry, insecure=insecure)
            digest = push_db(target, client, repository=target_ref.repository, tag=target_ref.tag or "2")
            echo(f"pushed to {target_ref} ({digest}, UpdatedAt {info.updated_at.isoformat()}); "
                 f"use scanner.db_repository: {target_ref}")


commands = [scan_cmd, scan_db]
