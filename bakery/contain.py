"""Containment: every path bakery reads from a repository resolves inside that repository.

A pull request controls the repository, so a definition, a template, an include or a file under ``files/``
may be a symlink to ``/etc/shadow``, a FIFO that blocks a read forever, or a device. Every read goes through
here: a path is accepted when its real location (symlinks resolved) is inside the repository root and it is
of the kind expected (a regular file or a directory). A symlink pointing outside, a dangling symlink, a
symlink loop, a FIFO, a socket or a device is refused with an InputError naming it: never followed, never
silently skipped.

The check and the read are two system calls, so a process changing the repository *while* bakery runs could
swap a checked file for a symlink in between: reads therefore also check, on the open file descriptor
(``/proc/self/fd``), that the file actually opened lies inside the repository.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from bakery.errors import InputError
from bakery.text import show


def describe_mode(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "an unknown kind of file"


def _real_root(root: Path) -> Path:
    return Path(os.path.realpath(root))


def problem(root: Path, path: Path, display: str, *, want: str = "file") -> str | None:
    """Why ``path`` may not be read (None when it may): outside the repository, dangling, of the wrong kind.
    ``want`` is ``file`` (a regular file), ``dir`` (a directory) or ``any`` (either)."""
    shown = show(display, quote=False)
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return f"{shown}: not found"
    except OSError as exc:
        return f"{shown}: cannot be read ({exc.strerror or type(exc).__name__})"
    real_root = _real_root(root)
    try:
        real = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        if stat.S_ISLNK(lst.st_mode):
            return f"{shown}: a dangling symlink (to {show(os.readlink(path))}); refused"
        return f"{shown}: not found"
    except OSError as exc:
        if stat.S_ISLNK(lst.st_mode):
            return f"{shown}: a symlink that cannot be resolved ({exc.strerror or 'a loop'}); refused"
        return f"{shown}: cannot be read ({exc.strerror or type(exc).__name__})"
    if real != real_root and not real.is_relative_to(real_root):
        if stat.S_ISLNK(lst.st_mode):
            return (f"{shown}: a symlink to {show(os.readlink(path))}, outside the repository; bakery reads only "
                    f"files inside the repository")
        return f"{shown}: resolves to a place outside the repository ({show(str(real))}); refused"
    st = os.stat(real)
    if want == "file" and not stat.S_ISREG(st.st_mode):
        return f"{shown}: is {describe_mode(st.st_mode)}, not a regular file; refused"
    if want == "dir" and not stat.S_ISDIR(st.st_mode):
        return f"{shown}: is {describe_mode(st.st_mode)}, not a directory; refused"
    if want == "any" and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return f"{shown}: is {describe_mode(st.st_mode)}, not a regular file or directory; refused"
    return None


def require(root: Path, path: Path, display: str, *, want: str = "file") -> Path:
    """``path`` when it may be read; InputError naming it otherwise."""
    why = problem(root, path, display, want=want)
    if why:
        raise InputError(why)
    return path


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (that may not exist yet) lies lexically and really inside ``root``."""
    real_root = _real_root(root)
    real = Path(os.path.realpath(path))
    return real == real_root or real.is_relative_to(real_root)


def read_bytes(root: Path, path: Path, display: str, *, limit: int) -> bytes:
    """The bytes of a regular file inside the repository, at most ``limit``."""
    require(root, path, display)
    return read_file(path, show(display, quote=False), limit=limit, root=root)


def opened_inside(fd: int, root: Path) -> bool:
    """Whether the file open on ``fd`` lies inside ``root`` (Linux: /proc/self/fd names what was opened)."""
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True  # no /proc: the path check before the open is what there is
    real = Path(opened)
    real_root = _real_root(root)
    return real == real_root or real.is_relative_to(real_root)


def context_files(root: Path, tdir: Path, display_of) -> tuple[tuple[str, ...], list[str]]:
    """The files of a template's ``files/`` (paths relative to the template directory) and the problems found.

    Regular files and directories inside the repository only: a symlink to a regular file inside the
    repository is taken as that file; any other symlink (outside, dangling, to a directory), a FIFO, socket
    or device is a problem naming it. Nothing is skipped silently."""
    files_dir = tdir / "files"
    if not os.path.lexists(files_dir):
        return (), []
    why = problem(root, files_dir, display_of(files_dir), want="dir")
    if why:
        return (), [why]
    if files_dir.is_symlink():
        return (), [f"{show(display_of(files_dir), quote=False)}: a symlink to a directory; bakery does not follow "
                    f"directory symlinks in a build context (make it a real directory)"]
    out: list[str] = []
    problems: list[str] = []
    stack = [files_dir]
    while stack:
        here = stack.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as exc:
            problems.append(f"{show(display_of(here), quote=False)}: cannot be listed ({exc.strerror})")
            continue
        for entry in entries:
            path = Path(entry.path)
            display = display_of(path)
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                stack.append(path)
            elif stat.S_ISREG(mode):
                out.append(path.relative_to(tdir).as_posix())
            elif stat.S_ISLNK(mode):
                why = problem(root, path, display, want="any")
                if why:
                    problems.append(why)
                elif path.is_dir():
                    problems.append(f"{show(display, quote=False)}: a symlink to a directory; bakery does not follow "
                                    f"directory symlinks in a build context (make it a real directory)")
                else:
                    out.append(path.relative_to(tdir).as_posix())
            else:
                problems.append(f"{show(display, quote=False)}: is {describe_mode(mode)}; a build context holds "
                                f"regular files and directories only")
    return tuple(sorted(out)), problems


def read_file(path: Any, display: str, *, limit: int = 1024 * 1024, root: Any = None) -> bytes:
    """The bytes of a regular file, at most ``limit``: a FIFO, device or socket is refused (never opened for a
    blocking read), a larger file is refused without reading all of it. With ``root``, the file actually opened
    must lie inside it (checked on the open descriptor, so a symlink swapped in after bakery.contain's check
    is caught too)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise InputError(f"{display}: file not found") from None
    except PermissionError:
        raise InputError(f"{display}: cannot read it (permission denied)") from None
    except IsADirectoryError:
        raise InputError(f"{display}: is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"{display}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    try:
        if root is not None:
            if not opened_inside(fd, root):
                raise InputError(f"{display}: changed into a link out of the repository while bakery read it; "
                                 f"refused")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{display}: is {describe_mode(st.st_mode)}, not a regular file; refused")
        if st.st_size > limit:
            raise InputError(f"{display}: {st.st_size} bytes, larger than bakery's limit of {limit} for this file")
        chunks = []
        size = 0
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError as exc:
                raise InputError(f"{display}: cannot read it ({exc.strerror or type(exc).__name__})") from None
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise InputError(f"{display}: larger than bakery's limit of {limit} bytes for this file")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def decode_problem(data: bytes, exc: UnicodeDecodeError) -> str:
    """``line N: not valid UTF-8 (byte 0x.. at column C)`` for a file that failed to decode."""
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return f"line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})"


def decode_text(data: bytes, display: str) -> str:
    """UTF-8 text (a leading BOM dropped); invalid UTF-8 is an InputError naming the file, line and column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{display}: {decode_problem(data, exc)}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text
