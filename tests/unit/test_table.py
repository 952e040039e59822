"""The CLI's tables: the plain rendering (no rich import) is byte for byte what rich prints when stdout is not a
terminal, and every case it does not cover (non-ASCII, too wide, ragged rows) is left to rich."""

from __future__ import annotations

import io
import re
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from bakery.cli._common import PLAIN_WIDTH, plain_table, rich_table

ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=70)
header = st.text(st.sampled_from("ABCXYZ abc019()/._%#-"), max_size=12) | ascii_text  # mostly plain headers
any_text = st.text(max_size=30).filter(lambda t: "\n" not in t and "\r" not in t)


def _rich(columns: list[str], cells: list[list[str]]) -> str:
    buf = io.StringIO()
    Console(file=buf, highlight=False, width=PLAIN_WIDTH).print(rich_table(columns, cells))  # what out_console does
    return buf.getvalue()


@settings(max_examples=300)
@given(st.integers(1, 7).flatmap(lambda n: st.tuples(
    st.lists(header, min_size=n, max_size=n),
    st.lists(st.lists(ascii_text, min_size=n, max_size=n), max_size=6))))
def test_plain_tables_are_what_rich_prints(table) -> None:
    columns, cells = table
    plain = plain_table(columns, cells)
    if plain is not None:
        assert plain == _rich(columns, cells)
    else:  # only a table wider than the console, with an empty column or with markup in a header is left to rich
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
        assert min(widths) == 0 or sum(widths) + 2 * (len(columns) - 1) > PLAIN_WIDTH or \
            any(not re.match(r"^[A-Za-z0-9 ()/._%#-]*$", c) for c in columns)


@given(st.lists(any_text, min_size=1, max_size=3), st.lists(any_text, min_size=1, max_size=3))
def test_other_text_is_left_to_rich(columns, row) -> None:
    row = (row * len(columns))[:len(columns)]
    plain = plain_table(columns, [row])
    if any(not (" " <= ch <= "~") for ch in "".join(columns + row)):
        assert plain is None
    elif plain is not None:
        assert plain == _rich(columns, [row])


def test_ragged_rows_are_left_to_rich() -> None:
    assert plain_table(["A", "B"], [["x"]]) is None
    assert plain_table(["GATE", "RESULT"], []) == "GATE  RESULT\n" == _rich(["GATE", "RESULT"], [])


def test_a_table_on_a_pipe_imports_no_rich(tmp_path) -> None:
    probe = ("import sys\nfrom bakery.cli._common import table\n"
             "table(['GATE', 'RESULT', 'WHY'], [['scan', 'FAIL', 'CVE-2099-1 [red]x[/red]'], ['soak', 'pass', None]])\n"
             "print('rich' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == ["GATE  RESULT  WHY                    ", "scan  FAIL    CVE-2099-1 [red]x[/red]",
                     "soak  pass                           ", "False"]


def test_the_width_boundary() -> None:
    for total in (PLAIN_WIDTH - 1, PLAIN_WIDTH, PLAIN_WIDTH + 1):
        columns, cells = ["A", "B"], [["x" * 100, "y word " * ((total - 102) // 7) + "y" * ((total - 102) % 7)]]
        assert len(cells[0][0]) + 2 + len(cells[0][1]) == total
        plain = plain_table(columns, cells)
        assert (plain is None) == (total > PLAIN_WIDTH)
        if plain is not None:
            assert plain == _rich(columns, cells)
