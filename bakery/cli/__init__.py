"""The `bakery` command line. Commands parse, call the core and print; nothing else lives here.

Every command module in this package (``bakery/cli/*.py``, not starting with ``_``) exposes
``commands: list[click.Command]``. :data:`COMMANDS` names the module of each command, and a command's module is
imported only when that command runs (click's lazy group): `bakery scan IMAGE` loads ``bakery.cli.scan`` alone.
The top-level help and shell completion load the modules they list. tests/unit/test_cli_lazy.py checks the table
against the modules.
"""

from __future__ import annotations

import errno
import os
import sys

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


# command name -> its module in bakery/cli/ (one entry per command of every module's ``commands``)
COMMANDS = {
    "amis": "packer", "attestations": "attest", "audit": "audit", "build": "build", "config": "core",
    "dev": "dev", "drift": "drift", "gc": "packer", "history": "promote", "init": "nightly", "list": "core",
    "nightly": "nightly", "plan": "nightly", "promote": "promote", "render": "core", "report": "report",
    "rollback": "promote", "scan": "scan", "scan-db": "scan", "schema": "core", "status": "promote",
    "verify": "attest",
}


class LazyGroup(click.Group):
    """A group whose commands are imported when first asked for (click's documented lazy-loading pattern).

    Listings (the help, shell completion, "No such command" suggestions) see every name of :data:`COMMANDS`;
    only the help and completion, which show each command's short help, import the modules.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self._load(COMMANDS[cmd_name])
        return self.commands.get(cmd_name)

    def _load(self, module_name: str) -> None:
        __import__(f"bakery.cli.{module_name}")
        module = sys.modules[f"bakery.cli.{module_name}"]
        for command in module.commands:
            if command.name not in self.commands:
                self.add_command(command)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                           list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:  # suggest from every name, not only the loaded ones
            raise click.exceptions.NoSuchCommand(exc.command_name, possibilities=self.list_commands(ctx),
                                                 ctx=exc.ctx) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
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
    _LOGGING.configure(debug)
    if not debug:  # a library's warning (urllib3 on a damaged response) is handled by bakery, not shown
        import warnings

        warnings.filterwarnings("ignore", module="urllib3")
    ctx.obj = Context(config_path=config_path, debug=debug, quiet=quiet)


class _LoggingSetup:
    """The command's logging configuration, applied when :mod:`logging` is loaded.

    Start-up: a command that logs nothing (a repeat scan served from the store) does not import logging (~5 ms).
    When logging is already loaded it is configured at once; otherwise this finder waits on ``sys.meta_path`` for
    its first import and configures it right after the module ran, before the importer (bakery.tools, urllib3,
    botocore, docker) can log anything: the same configuration, at the first moment it can matter.
    """

    def __init__(self) -> None:
        self.debug = False

    def configure(self, debug: bool) -> None:
        self.debug = debug
        if "logging" in sys.modules:
            self.apply(sys.modules["logging"])
        elif self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def apply(self, logging) -> None:  # noqa: ANN001 - the logging module
        logging.basicConfig(level=logging.DEBUG if self.debug else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        if not self.debug:
            for noisy in ("urllib3", "botocore", "boto3", "docker"):
                logging.getLogger(noisy).setLevel(logging.CRITICAL)

    def find_spec(self, name: str, path=None, target=None):  # noqa: ANN001, ANN201 - importlib's finder protocol
        if name != "logging":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        run_module = loader.exec_module

        def exec_module(module) -> None:  # noqa: ANN001
            run_module(module)
            self.apply(module)

        loader.exec_module = exec_module  # this spec's own loader instance (a source or bytecode file)
        return spec


_LOGGING = _LoggingSetup()


def main(argv: list[str] | None = None) -> None:
    """Entry point: one catch for BakeryError, one line for the user, the traceback only with --debug."""
    try:
        _main(argv)
    finally:
        if argv is None:  # the process's own command line (the console script, python -m bakery): it exits now
            _exit_fast()


def _exit_fast() -> None:
    """Let the interpreter exit without garbage-collecting what the command left behind.

    The output is written and every ``with`` block closed; what remains are modules, classes and functions, which
    the interpreter's shutdown would otherwise walk with full garbage collections (~7 ms of a repeat scan's
    ~60 ms, issue 14). ``gc.freeze()`` moves them out of the collector's sight. atexit handlers still run, the
    standard streams are still flushed; only finalizers of objects caught in reference cycles are not run at exit,
    which Python never promises anyway (the data model's ``__del__``: "It is not guaranteed that __del__() methods
    are called for objects that still exist when the interpreter exits").
    """
    import gc

    gc.freeze()


def _main(argv: list[str] | None) -> None:
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
            _traceback()
        problems = list(dict.fromkeys(exc.problems))
        for line in problems[:MAX_PROBLEMS]:
            click.echo(f"error: {_printable(line)}", err=True)
        if len(problems) > MAX_PROBLEMS:
            click.echo(f"error: … and {len(problems) - MAX_PROBLEMS} more problems", err=True)
        sys.exit(exc.exit_code)
    except BakeryError as exc:
        if debug:  # the traceback, then the same line and the same exit code as without --debug
            _traceback()
        click.echo(f"error: {_printable(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # a destination bakery cannot write (unwritable state_dir, --out, init target; a name too long): the user's
        # input names a place that does not work, so exit 2 naming it, not an internal error
        if debug:
            _traceback()
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
            _traceback()
        _internal(exc)
    sys.exit(0)


MAX_PROBLEMS = 200  # lines printed for one ValidationError; the rest are counted
_INPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR,
                 errno.ELOOP, errno.EEXIST, errno.ENOENT}


def _traceback() -> None:
    import traceback  # start-up: only with --debug, on a failure

    traceback.print_exc()


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
