"""The `bakery` command line. Commands parse, call the core and print; nothing else lives here.

Every command module in this package (``bakery/cli/*.py``, not starting with ``_``) exposes
``commands: list[click.Command]``; they are registered on the ``bakery`` group at import.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import pkgutil
import sys
import traceback

# bakery uses no pydantic plugins; looking for them scans every installed package's entry points, ~40 ms of
# each command's start-up. The CLI owns its process, so it opts out (a value the user set still wins).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import click  # noqa: E402

from bakery import __version__, secrets  # noqa: E402
from bakery.cli._common import Context, err_console  # noqa: E402
from bakery.errors import EXIT_ENVIRONMENT, EXIT_FAILED, EXIT_INPUT, BakeryError, ValidationError  # noqa: E402

EPILOG = """\b
Exit codes: 0 ok, 1 a pipeline step or gate failed, 2 bad input or usage,
3 environment (docker daemon, registry or scanner unreachable or missing).
Configuration: bakery.yaml in this directory or above (or --config / $BAKERY_CONFIG);
BAKERY_* environment variables override it (see `bakery config --help`)."""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EPILOG)
@click.version_option(__version__, prog_name="bakery")
@click.option("--config", "config_path", metavar="FILE", envvar="BAKERY_CONFIG",
              help="bakery.yaml to use (default: ./bakery.yaml or the nearest one above).")
@click.option("--debug", is_flag=True, envvar="BAKERY_DEBUG", help="Log commands and show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool, quiet: bool) -> None:
    """bakery bakes, scans and promotes immutable machine and container images.

    \b
    base-images/*.yaml ──render──▶ Dockerfile / *.pkr.hcl ──build──▶ image ──scan──▶ gate
        ──publish──▶ dev registry ──promote (same digest)──▶ staging ──▶ prod
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not debug:  # a library's warning (urllib3 on a damaged response) is handled by bakery, not shown
        for noisy in ("urllib3", "botocore", "boto3", "docker"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        import warnings

        warnings.filterwarnings("ignore", module="urllib3")
    ctx.obj = Context(config_path=config_path, debug=debug, quiet=quiet)


def _register() -> None:
    import bakery.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bakery.cli.{info.name}")
        for command in getattr(module, "commands", []):
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: one catch for BakeryError, one line for the user, the traceback only with --debug."""
    debug = "--debug" in (argv if argv is not None else sys.argv) or bool(os.environ.get("BAKERY_DEBUG"))
    try:
        cli.main(args=argv, prog_name="bakery", standalone_mode=False)
    except click.exceptions.Abort:
        err_console().print("aborted")
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_INPUT)
    except ValidationError as exc:
        if debug:  # the traceback, then the same lines and the same exit code as without --debug
            traceback.print_exc()
        problems = list(dict.fromkeys(exc.problems))
        for line in problems[:MAX_PROBLEMS]:
            click.echo(f"error: {_printable(line)}", err=True)
        if len(problems) > MAX_PROBLEMS:
            click.echo(f"error: … and {len(problems) - MAX_PROBLEMS} more problems", err=True)
        sys.exit(exc.exit_code)
    except BakeryError as exc:
        if debug:  # the traceback, then the same line and the same exit code as without --debug
            traceback.print_exc()
        click.echo(f"error: {_printable(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # a destination bakery cannot write (unwritable state_dir, --out, init target; a name too long): the user's
        # input names a place that does not work, so exit 2 naming it, not an internal error
        if debug:
            traceback.print_exc()
        if exc.errno not in _INPUT_ERRNOS:
            _internal(exc)
        where = exc.filename if exc.filename is not None else "(a path)"
        click.echo(f"error: {_printable(str(where))}: {exc.strerror}", err=True)
        sys.exit(EXIT_INPUT)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: still one line, traceback with --debug
        if debug:
            traceback.print_exc()
        _internal(exc)
    sys.exit(0)


MAX_PROBLEMS = 200  # lines printed for one ValidationError; the rest are counted
_INPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR,
                 errno.ELOOP, errno.EEXIST, errno.ENOENT}


def _printable(text: str) -> str:
    """Secrets masked, and every control or escape character escaped: one problem is one printed line."""
    from bakery.text import one_line

    return one_line(secrets.mask(text))


def _internal(exc: BaseException) -> None:
    exit_code = EXIT_FAILED
    name = type(exc).__name__
    import docker.errors  # deferred: only an unexpected failure pays for it

    if isinstance(exc, docker.errors.DockerException):  # the daemon, by the exception's type
        exit_code = EXIT_ENVIRONMENT
    click.echo(f"error: internal error: {name}: {_printable(str(exc))[:500]} (run with --debug for the "
               f"traceback)", err=True)
    sys.exit(exit_code)
