"""The Jinja sandbox recipes render in: templates are untrusted input (a pull request can change them).

- Jinja's ``ImmutableSandboxedEnvironment``: no attribute starting with ``_`` (so no
  ``cycler.__init__.__globals__``), no mutation of lists and dicts, no unsafe callables.
- Templates and includes are read through ``bakery.contain``: inside the repository, regular files only,
  no ``..`` in a template name, no symlink out.
- A **time limit per recipe**, checked in-process at the points a template can spend time: every call
  (``call``), every attribute or item lookup, and every step of every ``{% for %}`` loop. The loop check is
  a compile-time rewrite: each ``For`` node's iterable is wrapped in the ``bakery_guard`` filter (a filter, so
  a template cannot shadow it with a variable of its own), which checks the deadline before each item.
  ``range`` is Jinja's sandboxed range (at most 100,000 items) and checks the deadline per item too; Jinja
  has no ``while``, and ``loopcontrols``/``do`` are not enabled. So a template cannot loop, recurse or call
  for longer than the limit without passing a check. A signal- or thread-based timeout was rejected: a
  signal only reaches the main thread (bakery renders in build worker threads) and neither can interrupt a
  single long C operation — which is what the size guards below prevent instead.
- An **output-size limit per recipe**: the rendered text is produced as a stream and counted chunk by chunk.
- **Size guards** on what could allocate gigabytes in one C call before any check runs: ``*`` repeating a
  string or list, ``**``, ``%`` formatting, ``str.format`` widths, ``center``/``ljust``/``rjust``/``zfill``/
  ``expandtabs``/``replace`` on strings, and the ``center``, ``indent``, ``wordwrap`` and ``format`` filters.
  ``lipsum`` is removed. ``{{ 'x' * 1024**3 }}`` is refused before it allocates anything.
"""

from __future__ import annotations

import operator
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from bakery import contain
from bakery.errors import InputError

MAX_VALUE = 4 * 1024 * 1024  # characters or items in one value a template computes
MAX_BITS = 1_000_000  # bits of one integer a template computes
_WIDTH_RE = re.compile(r"%[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")
_FORMAT_WIDTH_RE = re.compile(r"\{[^{}]*:[^{}]*?(\d{5,})[^{}]*\}")


class UnsafeTemplateFile(jinja2.TemplateError):
    """A template or include that bakery.contain refuses (outside the repository, not a regular file, not UTF-8)."""


class RenderLimit(SecurityError):
    """A template exceeded the recipe's time or size limit."""


class _Budget(threading.local):
    deadline: float | None = None
    seconds: float = 0.0


_budget = _Budget()


def start(seconds: float) -> None:
    """Arm the time limit for the recipe about to render (in this thread)."""
    _budget.deadline = time.monotonic() + seconds
    _budget.seconds = seconds


def stop() -> None:
    _budget.deadline = None


def check_deadline() -> None:
    deadline = _budget.deadline
    if deadline is not None and time.monotonic() > deadline:
        raise RenderLimit(f"took longer than the limit of {_budget.seconds:g}s per recipe (an endless or huge "
                          f"loop?)")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


def _too_big(what: str, n: int | float) -> RenderLimit:
    return RenderLimit(f"{what} would make a value of {int(n)} characters or items, above the limit of {MAX_VALUE}")


def _guard_iter(value: Any) -> Iterator[Any]:
    check_deadline()
    for item in value:
        check_deadline()
        yield item


def _guarded_range(*args: int) -> Iterator[int]:
    from jinja2.sandbox import safe_range

    for i in safe_range(*args):
        check_deadline()
        yield i


class _RepoLoader(jinja2.BaseLoader):
    """Templates by name under the templates directory, read through bakery.contain (inside the repository,
    regular files only, size-limited)."""

    def __init__(self, templates_dir: str, root: str):
        self.templates_dir = templates_dir
        self.root = root

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        from pathlib import Path

        from jinja2.loaders import split_template_path

        pieces = split_template_path(template)  # refuses '..' (TemplateNotFound)
        path = Path(self.templates_dir, *pieces)
        if not os.path.lexists(path):
            raise jinja2.TemplateNotFound(template)
        display = os.path.relpath(path, self.root)
        try:
            source = contain.decode_text(contain.read_bytes(Path(self.root), path, display, limit=1024 * 1024), display)
        except InputError as exc:
            raise UnsafeTemplateFile(str(exc)) from None
        mtime = os.stat(path).st_mtime_ns

        def uptodate() -> bool:
            try:
                return os.stat(path).st_mtime_ns == mtime
            except OSError:
                return False

        return source, str(path), uptodate


_STR_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs"}


class RecipeSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    @classmethod
    def for_templates(cls, templates_dir: str, root: str) -> RecipeSandbox:
        env = cls(loader=_RepoLoader(templates_dir, root), undefined=jinja2.StrictUndefined,
                  keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
        env.filters["words"] = lambda v: " ".join(v) if isinstance(v, list) else v
        env.filters["bakery_guard"] = _guard_iter
        env.globals.pop("lipsum", None)
        env.globals["range"] = _guarded_range
        for name in ("center", "indent", "wordwrap"):
            env.filters[name] = _width_guarded(env.filters[name])
        env.filters["format"] = _format_guarded(env.filters["format"])
        return env

    # -- loops: every {% for %} iterates through bakery_guard --------------------------------------------------
    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "bakery_guard", [], [], None, None, lineno=loop.lineno)
        return tree

    # -- calls, lookups and operators ---------------------------------------------------------------------------
    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        check_deadline()
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format; look at what it wraps
        owner = getattr(target, "__self__", None)
        name = getattr(target, "__name__", "")
        if isinstance(owner, str):
            if name in _STR_WIDTH_METHODS:
                for a in [*args, *kwargs.values()]:
                    if isinstance(a, int) and a > MAX_VALUE:
                        raise _too_big(f"str.{name}({a})", a)
            elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
                if (owner.count(args[0]) if args[0] else len(owner) + 1) * len(args[1]) > MAX_VALUE:
                    raise _too_big("str.replace", len(owner) * len(args[1]))
            elif name in ("format", "format_map") and _FORMAT_WIDTH_RE.search(owner):
                raise RenderLimit("a format width of 5 digits or more is not allowed")
        result = ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)
        if _size(result) > MAX_VALUE:
            raise _too_big(f"calling {name or 'a function'}", _size(result))
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        check_deadline()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        check_deadline()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        check_deadline()
        if operator_ == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_VALUE:
                    raise _too_big("'*'", len(seq) * n)
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_BITS:
                raise RenderLimit(f"'*' would make an integer of more than {MAX_BITS} bits")
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 256:
                raise RenderLimit(f"'**' with an exponent of {right} is not allowed (at most 256)")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and left.bit_length() * right > MAX_BITS:
                raise RenderLimit(f"'**' would make an integer of more than {MAX_BITS} bits")
            if isinstance(right, (int, float)) and right > 10_000:
                raise RenderLimit(f"'**' with an exponent of {right} is not allowed")
            return operator.pow(left, right)
        if operator_ == "%":
            if isinstance(left, str):
                _check_percent(left)
            return operator.mod(left, right)
        if operator_ == "+":
            if _size(left) + _size(right) > MAX_VALUE:
                raise _too_big("'+'", _size(left) + _size(right))
            return operator.add(left, right)
        return super().call_binop(context, operator_, left, right)


def _check_percent(fmt: str) -> None:
    for m in _WIDTH_RE.finditer(fmt):
        for part in m.groups():
            if part == "*":
                raise RenderLimit("'%' formatting with a '*' width is not allowed")
            if part and int(part) > 10_000:
                raise RenderLimit(f"'%' formatting with a width of {part} is not allowed")


def _width_guarded(f: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        for a in [*args[1:], *kwargs.values()]:
            if isinstance(a, int) and not isinstance(a, bool) and a > 10_000:
                raise RenderLimit(f"a width of {a} is not allowed (at most 10000)")
        result = f(*args, **kwargs)
        if _size(result) > MAX_VALUE:
            raise _too_big(getattr(f, "__name__", "a filter"), _size(result))
        return result

    for attr in ("jinja_pass_arg",):
        if hasattr(f, attr):
            setattr(guarded, attr, getattr(f, attr))
    return guarded


def _format_guarded(f: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            _check_percent(value)
        return f(value, *args, **kwargs)

    return guarded


def render_limited(template: jinja2.Template, ctx: dict[str, Any], budget: list[int]) -> str:
    """Render a template as a stream, counting its output against ``budget[0]`` bytes (shared by the recipe's
    templates) and checking the deadline between chunks."""
    out: list[str] = []
    for chunk in template.generate(ctx):
        check_deadline()
        budget[0] -= len(chunk)
        if budget[0] < 0:
            raise RenderLimit("its output is larger than the limit per recipe")
        out.append(chunk)
    return "".join(out)


def iter_guarded(values: Iterable[Any]) -> Iterator[Any]:
    return _guard_iter(values)
