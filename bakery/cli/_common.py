"""Shared CLI helpers: the command context, output formats and consoles."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pathlib import Path

    from bakery.config import Project

from bakery import secrets


@dataclass
class Context:
    config_path: str | None = None
    debug: bool = False
    quiet: bool = False
    _project: Any = field(default=None, repr=False)

    @cached_property
    def project(self) -> Project:
        # Start-up: a configuration validated before comes back from the cache without pydantic or yaml.
        from bakery.configview import load_project_fast

        project = load_project_fast(self.config_path)
        if project is None:
            from bakery.config import load_project

            project = load_project(self.config_path)
        from bakery import statecheck
        from bakery.text import one_line

        statecheck.check(project)  # state files a pull request committed are refused, never read (exit 2)
        for warning in project.warnings:
            click.echo(f"warning: {one_line(warning)}", err=True)
        return project

    @property
    def repository(self) -> Project:
        """The project, for commands that change registries or the ledger: a bakery.yaml must be in use."""
        import os

        from bakery.configview import require_config_file

        require_config_file(self.project, dict(os.environ))
        return self.project


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def format_option(*choices: str, default: str = "table"):
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=default, show_default=True,
                        help="Output format: table for people, json for machines.")


def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, markup=False, emoji=False)  # user text as written (no [x], :x:)


def out_console():
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200, markup=False, emoji=False)


def emit_json(data: Any) -> None:
    """Print JSON on stdout (secrets masked)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str)
    click.echo(secrets.mask(text))


def write_json(path: Path, data: Any) -> None:
    """Write what :func:`emit_json` prints to ``path`` (secrets masked)."""
    path.write_text(secrets.mask(json.dumps(data, indent=2, sort_keys=False, default=str)) + "\n")


def echo(text: str = "", err: bool = False) -> None:
    click.echo(secrets.mask(text), err=err)


PLAIN_WIDTH = 200  # what out_console() renders to when stdout is not a terminal
_PLAIN_HEADER = re.compile(r"^[A-Za-z0-9 ()/._%#-]*$")


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """A rich table on stdout; plain aligned text when stdout is not a terminal."""
    from bakery.text import one_line

    cells = [[one_line(secrets.mask("" if v is None else str(v))) for v in r] for r in rows]
    if title is None and not sys.stdout.isatty() and not _styled(os.environ):
        text = plain_table(columns, cells)
        if text is not None:  # start-up: the same bytes as rich's, without importing rich (~30 ms)
            sys.stdout.write(text)
            sys.stdout.flush()
            return
    out_console().print(rich_table(columns, cells, title))


def rich_table(columns: list[str], cells: list[list[str]], title: str | None = None) -> Any:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, show_edge=False, header_style="bold", box=None, pad_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in cells:  # Text, not str: '[red]' in a file name is shown as written, never read as rich markup
        t.add_row(*[Text(v) for v in r])
    return t


def _styled(environ: Any) -> bool:
    """Whether rich would style output that is not a terminal (it honours these variables)."""
    return any(environ.get(k) is not None for k in ("FORCE_COLOR", "TTY_COMPATIBLE"))


def plain_table(columns: list[str], cells: list[list[str]], width: int = PLAIN_WIDTH) -> str | None:
    """What :func:`rich_table` prints on a console of ``width`` that is not a terminal, when that is plain
    alignment: printable ASCII, every row as wide as the header, the whole within ``width`` (nothing folded);
    None otherwise (then rich renders it). tests/unit/test_table.py compares the two."""
    if not columns or any(len(r) != len(columns) for r in cells) or not all(_PLAIN_HEADER.match(c) for c in columns):
        return None  # (rich reads a header as markup, with :emoji: codes)
    for text in (*columns, *(v for r in cells for v in r)):
        if not all(" " <= ch <= "~" for ch in text):
            return None
    widths = [max([len(columns[i]), *(len(r[i]) for r in cells)]) for i in range(len(columns))]
    if min(widths) == 0 or sum(widths) + 2 * (len(columns) - 1) > width:  # (rich sizes empty columns its own way)
        return None
    return "".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "\n" for r in [columns, *cells])
