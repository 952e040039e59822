"""The command table of the lazy `bakery` group (bakery.cli.COMMANDS) against the command modules themselves.

A command's module is imported when that command runs; the listings (help, completion, "No such command" and its
suggestions) must still be what a group with every command registered at import gives, byte for byte.
"""

from __future__ import annotations

import importlib
import pkgutil

import click
import pytest
from click.shell_completion import BashComplete
from click.testing import CliRunner

import bakery.cli as cli_pkg
from bakery.cli import COMMANDS, LazyGroup, cli


def _modules() -> list[str]:
    return sorted(i.name for i in pkgutil.iter_modules(cli_pkg.__path__) if not i.name.startswith("_"))


def _lazy() -> LazyGroup:
    """`bakery` as a fresh process has it: nothing loaded yet (this process's ``cli`` keeps what it loaded)."""
    assert type(cli) is LazyGroup
    return LazyGroup(name=cli.name, callback=cli.callback, params=cli.params, help=cli.help, epilog=cli.epilog,
                     context_settings=cli.context_settings)


def _eager() -> click.Group:
    """What `bakery` was before the lazy table: a plain group with every module's commands registered at import."""
    group = click.Group(name=cli.name, callback=cli.callback, params=cli.params, help=cli.help, epilog=cli.epilog,
                        context_settings=cli.context_settings)
    for name in _modules():
        for command in importlib.import_module(f"bakery.cli.{name}").commands:
            group.add_command(command)
    return group


def test_the_table_names_every_command_of_every_module_and_nothing_else() -> None:
    found = {command.name: name for name in _modules()
             for command in importlib.import_module(f"bakery.cli.{name}").commands}
    assert found == COMMANDS


@pytest.mark.parametrize("args", [["--help"], [], ["scna"], ["help"], ["promte", "x"], ["--bogus"], ["sacn-db"]])
@pytest.mark.parametrize("width", [60, 100, 200])
def test_listings_and_errors_are_those_of_the_eager_group(args: list[str], width: int) -> None:
    runner = CliRunner()
    lazy = runner.invoke(_lazy(), args, prog_name="bakery", terminal_width=width)
    eager = runner.invoke(_eager(), args, prog_name="bakery", terminal_width=width)
    assert (lazy.exit_code, lazy.output) == (eager.exit_code, eager.output)
    assert lazy.output.strip()


def test_the_eager_comparison_can_fail() -> None:
    """The reference group above really differs when a command is missing from it (the check is not vacuous)."""
    runner = CliRunner()
    eager = _eager()
    del eager.commands["scan-db"]
    assert runner.invoke(_lazy(), ["--help"]).output != runner.invoke(eager, ["--help"]).output
    assert "Did you mean" in runner.invoke(_lazy(), ["sacn-db"]).output
    assert "scan-db" not in runner.invoke(eager, ["sacn-db"]).output


@pytest.mark.parametrize("args,incomplete", [([], ""), ([], "s"), ([], "pro"), (["scan-db"], ""), (["dev"], ""),
                                             (["scan"], "--"), (["report"], "")])
def test_shell_completion_is_that_of_the_eager_group(args: list[str], incomplete: str) -> None:
    def complete(group: click.Group) -> list[tuple[str, str, str | None]]:
        items = BashComplete(group, {}, "bakery", "_BAKERY_COMPLETE").get_completions(args, incomplete)
        return [(i.type, i.value, i.help) for i in items]

    assert complete(_lazy()) == complete(_eager())
    assert complete(_lazy())


NO_SUCH = "Error: No such command 'scna'. (Did you mean one of: 'scan', 'schema'?)"


@pytest.mark.parametrize("args,loaded", [
    (["scan", "--help"], ["bakery.cli._common", "bakery.cli.scan"]),
    (["status", "--help"], ["bakery.cli._common", "bakery.cli.promote"]),
    (["--version"], ["bakery.cli._common"]),
    (["scna"], ["bakery.cli._common"]),
])
def test_a_command_imports_its_own_module_only(args: list[str], loaded: list[str], tmp_path, cli_probe) -> None:
    def commands(modules: set[str]) -> list[str]:
        return sorted(m for m in modules if m.startswith("bakery.cli."))

    proc, modules = cli_probe(args, tmp_path, full=True)
    assert commands(modules) == loaded, proc.stderr
    assert args != ["scna"] or (NO_SUCH in proc.stderr and "Traceback" not in proc.stderr)
    # the top-level help lists every command: it loads every module
    proc, modules = cli_probe(["--help"], tmp_path, full=True)
    assert commands(modules) == ["bakery.cli._common", *(f"bakery.cli.{m}" for m in _modules())]
