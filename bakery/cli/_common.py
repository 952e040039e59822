"""Shared CLI helpers: the command context, output formats and consoles."""

from __future__ import annotations

import json
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
        from bakery.text import one_line

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

    return Console(stderr=True, highlight=False)


def out_console():
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def emit_json(data: Any) -> None:
    """Print JSON on stdout (secrets masked)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str)
    click.echo(secrets.mask(text))


def write_json(path: Path, data: Any) -> None:
    """Write what :func:`emit_json` prints to ``path`` (secrets masked)."""
    path.write_text(secrets.mask(json.dumps(data, indent=2, sort_keys=False, default=str)) + "\n")


def echo(text: str = "", err: bool = False) -> None:
    click.echo(secrets.mask(text), err=err)


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """A rich table on stdout; plain aligned text when stdout is not a terminal."""
    from rich.table import Table
    from rich.text import Text

    from bakery.text import one_line

    t = Table(title=title, show_edge=False, header_style="bold", box=None if not sys.stdout.isatty() else None,
              pad_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:  # Text, not str: '[red]' in a file name is shown as written, never read as rich markup
        t.add_row(*[Text(one_line(secrets.mask("" if v is None else str(v)))) for v in r])
    out_console().print(t)
