"""`bakery drift`: what is deployed against what an environment has promoted."""

from __future__ import annotations

import sys

import click

from bakery.cli._common import Context, echo, emit_json, pass_ctx, table


# The sources `bakery drift` reads (here, not in bakery.drift: --help must not import the drift readers).
SOURCE_HELP = """\b
SOURCE is one of:
  PATH                 a file or directory: Kubernetes manifests (multi-document YAML, rendered Helm or
                       kustomize output), Compose files, Terraform state (`terraform show -json` output or
                       a .tfstate); directories are searched for *.yaml, *.yml, *.json and *.tfstate
  ec2:tag:KEY=VALUE    the AMIs of the running EC2 instances tagged KEY=VALUE
  docker:              the containers running on the Docker daemon (DOCKER_HOST)
  docker:label=K[=V]   those of them with that label"""


@click.command("drift", epilog=SOURCE_HELP)
@click.option("--env", "env", required=True, metavar="ENV", help="The environment the sources deploy (e.g. prod).")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True, help="table for people, json for machines, markdown for a PR or step summary.")
@click.option("--no-save", is_flag=True, help="Do not store the report for the dashboard (.bakery/drift/).")
@click.option("--no-notify", is_flag=True, help="Do not call the `notify:` webhooks of bakery.yaml.")
@pass_ctx
def drift_cmd(ctx: Context, env: str, sources: tuple[str, ...], fmt: str, no_save: bool, no_notify: bool) -> None:
    """Compare what SOURCEs deploy with what ENV has promoted (the ledger).

    \b
    Each deployed image reference is one of:
      current                        the build ENV has promoted
      behind by N builds             an older build of the image (with the fixable findings the
                                     current build fixes)
      rolled back                    a build ENV was rolled back from
      ahead by N builds              a newer build than ENV has promoted
      not promoted to ENV            a bakery build that never reached ENV
      not from bakery                a digest or AMI bakery never published
      mutable reference (no digest)  a tag: what runs can change under it
      not an image reference         a value that does not parse (e.g. an unrendered ${VAR})
    Exit 1 when anything drifted (anything but current), so CI can gate on it; 2 for a bad source; 3 when
    the Docker daemon, EC2 or the ledger cannot be reached. The report is stored for `bakery report html`.

    \b
    Examples:
      helm template myapp ./chart > rendered.yaml && bakery drift --env prod rendered.yaml
      bakery drift --env prod k8s/ docker-compose.yml terraform.tfstate --format markdown
      bakery drift --env prod ec2:tag:Environment=prod docker:
    """
    from bakery import drift

    project = ctx.project
    parsed = [drift.parse_source(s) for s in sources]
    report = drift.check(project, env, parsed)
    if not no_save:
        drift.save(project, report)
    if fmt == "json":
        emit_json(report.to_json())
    elif fmt == "markdown":
        echo(report.to_markdown())
    else:
        if report.findings:
            table(["SOURCE", "WHERE", "REFERENCE", "IMAGE", "BUILD", "STATUS"], report.rows())
        echo(report.headline(), err=True)
    if report.drifted and not no_notify:
        from bakery import notify

        notify.notify(project, "drift", lambda: notify.drift_message(report), warn=lambda m: echo(m, err=True))
    if report.drifted:
        sys.exit(1)


commands = [drift_cmd]
